//! A run on this host: its process (created into its own session and, where
//! the machine allows, its own cgroup leaf), found again by a new daemon, and
//! watched through its pidfd.
//!
//! A run is recorded (`spawning`, no pid) before its process exists, so a
//! daemon that dies in between leaves a record the next one resolves; the
//! process carries `CORRAL_RUN_ID` so it can be found even then. Files and the
//! process are created on a blocking thread. The exit is read without reaping
//! (`waitid(WNOWAIT)`): the process stays a zombie — its pid, group and
//! session reserved — until its end is committed, then its owner reaps it.
//! A re-adopted process is not our child: its exit status comes from field 52
//! of its `/proc/<pid>/stat` while it is a zombie (whoever its parent is), or
//! from the kernel through its pidfd once its parent has reaped it
//! (`PIDFD_INFO_EXIT`, Linux ≥ 6.15).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::platform::cgroup::{Controllers, Leaf};
use crate::platform::files::User;
use crate::platform::{self, ExitKind, ProcessHandle, Stdio};
use crate::store::RunRecord;

use super::super::spec::{RunAs, Spec};
use super::super::view::{Proc, Sample};
use super::super::{Shared, leaf_name, lock};
use super::tree::Tracker;

/// What went wrong before the process ran.
pub(crate) enum StartError {
    /// The agent dir or a log file.
    Files(platform::files::FilesError),
    /// The program (or its cwd, user, limits).
    Exec(std::io::Error),
    /// The cluster engine refused the job.
    Engine(String),
    /// The agent's user cannot be resolved now: the run does not start.
    User(String),
}

/// A process started for a run.
pub(crate) struct Started {
    pub handle: ProcessHandle,
    pub leaf: Option<Leaf>,
    /// How each of its limits is enforced.
    pub limits: BTreeMap<String, crate::model::LimitState>,
}

/// The current run's process on this host.
pub(crate) struct LocalRun {
    pub proc_: Arc<Proc>,
    /// The pidfd, registered with the runtime: readable once the process exits.
    afd: AsyncFd<Arc<Proc>>,
    /// Started by this process (so it reaps it); false when re-adopted.
    pub our_child: bool,
    /// When it started (monotonic), for the runtime limit.
    pub started: Instant,
    /// Its exit has been read.
    pub exited: bool,
    /// Its end is committed (and, for our child, it is reaped).
    pub ended: bool,
    /// The run's probes, when it has any (dropped, they end).
    pub probes: Option<super::super::probes::Registration>,
    /// What a stop has seen and signalled of the tree, while one is under way.
    pub track: Option<Box<Tracker>>,
    /// Members a pause without a cgroup stopped (SIGSTOP), by identity: the
    /// resume continues them.
    pub stopped: std::collections::HashSet<(i32, u64)>,
}

impl Drop for LocalRun {
    fn drop(&mut self) {
        self.stop_probes();
    }
}

impl LocalRun {
    pub(crate) fn new(proc_: Arc<Proc>, our_child: bool) -> std::io::Result<Self> {
        // SAFETY: the pidfd belongs to the ProcessHandle inside the Arc, which the
        // AsyncFd keeps alive, and a ProcessHandle never changes its pidfd.
        let afd = unsafe { AsyncFd::register_with_interest(proc_.clone(), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let age = (platform::boottime_seconds() - proc_.started_s).max(0.0);
        Ok(Self {
            afd,
            started: Instant::now()
                .checked_sub(Duration::from_secs_f64(age))
                .unwrap_or_else(Instant::now),
            proc_,
            our_child,
            exited: false,
            ended: false,
            probes: None,
            track: None,
            stopped: Default::default(),
        })
    }

    /// Ends the run's probe checks (a check in progress is killed and reaped).
    pub(crate) fn stop_probes(&mut self) {
        self.probes = None;
    }

    pub(crate) fn pid(&self) -> i32 {
        self.proc_.handle.pid()
    }

    pub(crate) fn leaf(&self) -> Option<&Leaf> {
        self.proc_.leaf.as_ref()
    }

    /// Resolves once the main process has exited (never, once its exit is read).
    pub(crate) async fn exit(&self) {
        if self.exited {
            return std::future::pending().await;
        }
        wait_exit(&self.afd).await
    }

    /// Resolves when the main process exits, or — `stopping` — when the tree
    /// being stopped may have changed.
    pub(crate) async fn event(&mut self, stopping: bool) -> super::Event {
        let exited = self.exited;
        let Self { afd, track, .. } = self;
        let exit = async {
            if exited {
                std::future::pending::<()>().await;
            }
            wait_exit(afd).await
        };
        let tree = async {
            if stopping {
                super::tree::changed(track).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            biased;
            () = exit => super::Event::MainExit,
            () = tree => super::Event::Tree,
        }
    }

    /// How the main process ended, without reaping it (None when the kernel
    /// no longer tells: a re-adopted process reaped by another parent on a
    /// kernel before 6.15).
    pub(crate) async fn read_exit(&mut self) -> Option<ExitKind> {
        self.exited = true;
        self.stop_probes();
        read_exit(self.our_child, &self.proc_).await
    }

    /// Seconds the main process ran (until now, or until it exited).
    pub(crate) fn ran_s(&self) -> f64 {
        (platform::boottime_seconds() - self.proc_.started_s).max(0.0)
    }

    /// Reaps the main process once its end is on record (our child only).
    pub(crate) fn reap(&mut self, sh: &Shared, agent_id: &str) {
        if self.our_child && !self.ended {
            if let Err(e) = self.proc_.handle.reap() {
                tracing::warn!(agent_id, pid = self.pid(), error = %e, "cannot reap the agent");
            }
            lock(&sh.owned).remove(&self.pid());
        }
        self.ended = true;
    }

    /// Kills a process whose start could not be recorded, with its whole tree,
    /// and waits (bounded) for it to exit, then reaps it. It was never
    /// acknowledged, so it must not run.
    pub(crate) async fn kill_unrecorded(&mut self, sh: &Shared, agent_id: &str) {
        if let Some(leaf) = self.leaf().cloned() {
            let _ = tokio::task::spawn_blocking(move || leaf.kill()).await;
        }
        let _ = self
            .proc_
            .handle
            .signal_group(rustix::process::Signal::KILL);
        if tokio::time::timeout(Duration::from_secs(5), self.exit())
            .await
            .is_err()
        {
            tracing::error!(
                agent_id,
                pid = self.pid(),
                "an unrecorded process survived SIGKILL"
            );
        }
        self.exited = true;
        self.reap(sh, agent_id);
    }
}

/// Kills a new process that cannot be watched (no descriptor left to register
/// its pidfd) with its whole tree, and reaps it on a blocking thread: our own
/// unreaped child, so its pid cannot be reused meanwhile.
pub(crate) async fn kill_unwatched(sh: &Arc<Shared>, proc_: Arc<Proc>) {
    let _ = proc_.handle.signal_group(rustix::process::Signal::KILL);
    let sh = sh.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(leaf) = &proc_.leaf {
            let _ = leaf.kill();
        }
        let pid = proc_.handle.pid();
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            platform::kill_and_reap_child(pid);
        }
        lock(&sh.owned).remove(&pid);
        // Removed once its last member is gone (or swept later, if not yet).
        release(&sh, proc_.leaf.clone().filter(|l| !l.populated()));
    })
    .await;
}

/// Resolves once the pidfd says the process has exited.
async fn wait_exit(afd: &AsyncFd<Arc<Proc>>) {
    loop {
        match afd.readable().await {
            Ok(mut ready) => {
                if afd.get_ref().handle.has_exited() {
                    return;
                }
                ready.clear_ready();
            }
            Err(e) => {
                tracing::error!(pid = afd.get_ref().handle.pid(), error = %e, "cannot wait on a pidfd");
                return std::future::pending().await;
            }
        }
    }
}

/// How the process ended, without reaping it.
async fn read_exit(our_child: bool, proc_: &Proc) -> Option<ExitKind> {
    if our_child {
        match proc_.handle.peek_exit() {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
            Err(e) => {
                tracing::warn!(pid = proc_.handle.pid(), error = %e, "cannot read an exit status");
                return None;
            }
        }
    }
    // Not ours: a zombie's status is in its stat; once its parent has reaped it,
    // the kernel keeps it for pidfd holders. Between the two there is no event:
    // ask again for a short, bounded time.
    for _ in 0..25 {
        if let Some(exit) = proc_.handle.zombie_exit() {
            return Some(exit);
        }
        match proc_.handle.exit_status_from_kernel() {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                tracing::debug!(pid = proc_.handle.pid(), error = %e, "the kernel gives no exit status (needs Linux 6.15)");
                return None;
            }
        }
    }
    None
}

/// Creates a run's files and process on a blocking thread, at most a few at
/// once (the permits bound how many blocking threads spawning takes).
pub(crate) async fn start(
    sh: &Arc<Shared>,
    spec: &Arc<Spec>,
    run_id: i64,
    run: u32,
) -> Result<Started, StartError> {
    let _permit = sh.spawn_permits.acquire().await;
    let (sh, spec) = (sh.clone(), spec.clone());
    tokio::task::spawn_blocking(move || create(&sh, &spec, run_id, run))
        .await
        .unwrap_or_else(|e| Err(StartError::Exec(std::io::Error::other(e.to_string()))))
}

/// Re-adopts the process of a stored live run (blocking lookup): the same
/// process (pid, start time, boot), or — when its pid was never recorded — the
/// one carrying its `CORRAL_RUN_ID`. The bool says it was found the second way.
pub(crate) async fn find(sh: &Arc<Shared>, rec: &RunRecord) -> Option<(Started, bool)> {
    let (shared, record) = (sh.clone(), rec.clone());
    let found = tokio::task::spawn_blocking(move || find_process(&shared, &record))
        .await
        .ok()
        .flatten()?;
    let (handle, leaf, recovered) = found;
    let kernel = match (&leaf, &sh.cgroup) {
        (Some(_), Ok(root)) => root.controllers(),
        _ => Default::default(),
    };
    let limits =
        super::super::limits::enforcement(&rec.spec.limits.clone().unwrap_or_default(), kernel);
    Some((
        Started {
            handle,
            leaf,
            limits,
        },
        recovered,
    ))
}

/// `ready` and `probe` of a run that has not been checked yet.
pub(crate) fn probe_state(
    spec: &Spec,
) -> (Option<bool>, Option<Arc<super::super::probes::ProbeCell>>) {
    let probes = spec.request.probes.as_ref();
    (
        probes.and_then(|p| p.readiness.as_ref()).map(|_| false),
        probes.map(|p| Arc::new(std::sync::Mutex::new(super::super::probes::initial(p)))),
    )
}

/// One sample of a process taken outside the sampler's pass (at start, at the
/// end of the window): CPU% over its whole life so far.
pub(crate) fn sample_now(proc_: &Proc, page_size: u64) {
    let Ok(s) = proc_.handle.sample() else { return };
    let now = platform::boottime_seconds();
    let age = (now - proc_.started_s).max(1e-3);
    let cpu_percent = s.cpu_ticks as f64 / platform::clock_ticks_per_second() as f64 / age * 100.0;
    let memory_mb = (s.rss_pages * page_size) as f64 / (1024.0 * 1024.0);
    let (tree, tree_tasks) = proc_.sample().map_or(
        (
            crate::model::TreeSummary {
                processes: 1,
                cpu_percent,
                memory_mb,
            },
            u64::from(s.num_threads),
        ),
        |old| (old.tree, old.tree_tasks),
    );
    proc_.set_sample(Sample {
        state: s.state,
        cpu_percent,
        memory_mb,
        num_threads: s.num_threads,
        tree,
        tree_tasks,
        taken_s: now,
    });
}

/// Creates the run's files and process (blocking). The user is looked up
/// again for every run: one deleted since the spawn fails the run, and a run
/// never starts as another uid than the one asked for.
fn create(sh: &Shared, spec: &Spec, run_id: i64, run: u32) -> Result<Started, StartError> {
    let run_as = match spec.request.user.as_deref() {
        None => RunAs::Daemon,
        Some(name) => RunAs::lookup(Some(name)),
    };
    let user = run_as.user().map_err(StartError::User)?;
    // The ids the agent got when it was spawned (or when this daemon loaded
    // it): a name that now maps to other ids is another account.
    if let (Some(now), Ok(Some(then))) = (user, spec.user.user()) {
        let (a, b) = (&now.credentials, &then.credentials);
        if (a.uid, a.gid) != (b.uid, b.gid) {
            return Err(StartError::User(format!(
                "user {:?} is now uid {} gid {}, not uid {} gid {} as when the agent was given it; corral never runs it as another user",
                now.name, a.uid, a.gid, b.uid, b.gid
            )));
        }
    }
    let owner = user.map(|u| &u.credentials);
    let files = platform::agent_dir::create_run_files(&spec.agent_dir, run, owner)
        .map_err(StartError::Files)?;
    let stdin = std::fs::File::open("/dev/null").map_err(StartError::Exec)?;
    let stdio = Stdio {
        stdin: stdin.as_fd(),
        stdout: files.stdout.as_fd(),
        stderr: files.stderr.as_fd(),
    };
    start_process(sh, spec, user, run_id, run, stdio).map_err(StartError::Exec)
}

/// `PATH` of an agent that does not inherit the daemon's environment (systemd's
/// default for services).
const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent's environment: the daemon's (for agents of the daemon's own user
/// that do not ask for `inherit_env: false`) or a clean one, then the
/// request's, then corral's own variables.
///
/// An agent of another user never sees the daemon's environment (a root
/// daemon's secrets stay its own): like a systemd `User=` service it gets
/// `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL` and `LANG` (the daemon's, or
/// `C.UTF-8`).
pub(crate) fn environment(
    sh: &Shared,
    spec: &Spec,
    user: Option<&User>,
    run_id: i64,
) -> std::io::Result<Vec<CString>> {
    let another_user =
        user.is_some_and(|u| u.credentials.uid != rustix::process::geteuid().as_raw());
    let inherit = !another_user && spec.request.inherit_env.unwrap_or(true);
    let mut env: BTreeMap<OsString, OsString> = if inherit {
        sh.base_env.iter().cloned().collect()
    } else {
        let daemon = |k: &str| {
            sh.base_env
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        let mut clean = BTreeMap::new();
        clean.insert("PATH".into(), CLEAN_PATH.into());
        clean.insert(
            "LANG".into(),
            daemon("LANG").unwrap_or_else(|| "C.UTF-8".into()),
        );
        if user.is_none() {
            // The daemon's own user: its own names for itself.
            for k in ["HOME", "USER", "LOGNAME", "SHELL"] {
                if let Some(v) = daemon(k) {
                    clean.insert(k.into(), v);
                }
            }
        }
        clean
    };
    if let Some(user) = user {
        env.insert("HOME".into(), user.home.clone().into_os_string());
        env.insert("USER".into(), user.name.clone().into());
        env.insert("LOGNAME".into(), user.name.clone().into());
        if !user.shell.as_os_str().is_empty() {
            env.insert("SHELL".into(), user.shell.clone().into_os_string());
        }
    }
    for (k, v) in &spec.request.env {
        env.insert(k.into(), v.into());
    }
    env.insert("CORRAL_AGENT_ID".into(), spec.id.as_str().into());
    // Names this run: lets a restarted daemon find a process whose spawn it
    // could not record before it died.
    env.insert("CORRAL_RUN_ID".into(), run_id.to_string().into());
    // Agents of another user cannot reach the daemon's private socket: they
    // get the agent socket, which serves only agent routes.
    let socket = if another_user {
        sh.config.agent_socket_path.as_ref()
    } else {
        sh.config.socket_path.as_ref()
    };
    if let Some(sock) = socket {
        env.insert("CORRAL_SOCKET".into(), sock.clone().into_os_string());
    }
    env.iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            platform::c_string("environment variable", &kv)
        })
        .collect()
}

/// What an exec needs, as C strings.
struct Exec {
    envp: Vec<CString>,
    argv: Vec<CString>,
    program: CString,
    cwd: CString,
}

/// The run's environment, argv, program (resolved against the agent's
/// `PATH`) and working directory.
fn exec_of(sh: &Shared, spec: &Spec, user: Option<&User>, run_id: i64) -> std::io::Result<Exec> {
    let envp = environment(sh, spec, user, run_id)?;
    let path_var = envp
        .iter()
        .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
        .and_then(|p| std::str::from_utf8(p).ok());
    let program = spec.request.command.first().map_or("", String::as_str);
    let resolved = platform::resolve_program(program, path_var)?;
    let argv = spec
        .request
        .command
        .iter()
        .map(|a| platform::c_string("argument", a.as_bytes()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Exec {
        envp,
        argv,
        program: platform::c_path(&resolved)?,
        cwd: platform::c_path(&spec.cwd)?,
    })
}

/// A new cgroup leaf for the run, with the limits the kernel can enforce set
/// on it, and its directory open for `CLONE_INTO_CGROUP`; no leaf (process-
/// group containment) when there is no cgroup subtree or it cannot be made.
/// Called under the spawn gate.
fn leaf_for(
    sh: &Shared,
    spec: &Spec,
    run: u32,
    limits: &crate::model::Limits,
) -> (Option<Leaf>, Controllers, Option<std::fs::File>) {
    let mut leaf = new_leaf(sh, spec, run);
    let kernel = match (&leaf, &sh.cgroup) {
        (Some(leaf), Ok(root)) => leaf.set_limits(
            root.controllers(),
            limits.memory_mb,
            limits.pids,
            limits.cpu_percent,
        ),
        _ => Default::default(),
    };
    let dir = leaf.as_ref().and_then(|l| l.open_dir().ok());
    if leaf.is_some() && dir.is_none() {
        release(sh, leaf.take());
    }
    (leaf, kernel, dir)
}

/// Resolves the program against the agent's PATH and starts it, in a new
/// cgroup leaf where there is one. The new pid enters `owned` before the orphan
/// sweep can look.
fn start_process(
    sh: &Shared,
    spec: &Spec,
    user: Option<&User>,
    run_id: i64,
    run: u32,
    stdio: Stdio<'_>,
) -> std::io::Result<Started> {
    let Exec {
        envp,
        argv,
        program: program_c,
        cwd: cwd_c,
    } = exec_of(sh, spec, user, run_id)?;
    let nofile = spec.request.limits.as_ref().and_then(|l| l.nofile);
    // The leaf is created and the process born in it under the spawn gate: the
    // sweep of empty leaves never sees a new run's leaf empty.
    let _gate = sh.spawn_gate.read().unwrap_or_else(|p| p.into_inner());
    let limits = spec.request.limits.clone().unwrap_or_default();
    let (mut leaf, kernel, dir) = leaf_for(sh, spec, run, &limits);
    if leaf.is_none() {
        // Listening before the fork: every fork of the tree is seen.
        super::tree::follow_forks(sh);
    }
    let mut spawn_spec = platform::SpawnSpec {
        program: &program_c,
        argv: &argv,
        envp: &envp,
        cwd: &cwd_c,
        stdio,
        cgroup: dir.as_ref().map(|d| d.as_fd()),
        credentials: user.map(|u| &u.credentials),
        nofile,
    };
    let pid = match platform::spawn(&spawn_spec) {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported && leaf.is_some() => {
            tracing::warn!(agent_id = %spec.id, error = %e, "process-group containment only for this agent");
            spawn_spec.cgroup = None;
            release(sh, leaf.take());
            super::tree::follow_forks(sh);
            platform::spawn(&spawn_spec)
        }
        other => other,
    };
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            release(sh, leaf.take());
            return Err(e);
        }
    };
    lock(&sh.owned).insert(pid.as_raw_nonzero().get());
    drop(_gate);
    let limits = super::super::limits::enforcement(
        &limits,
        if leaf.is_some() {
            kernel
        } else {
            Default::default()
        },
    );
    match ProcessHandle::open(pid, None) {
        Ok(Some(handle)) => Ok(Started {
            handle,
            leaf,
            limits,
        }),
        // Our own unreaped child cannot vanish; failing here means no fds left.
        Ok(None) => Err(std::io::Error::other(
            "the new process vanished before it could be watched",
        )),
        Err(e) => {
            platform::kill_and_reap_child(pid);
            lock(&sh.owned).remove(&pid.as_raw_nonzero().get());
            release(sh, leaf);
            Err(std::io::Error::new(
                e.kind(),
                format!("cannot watch the new process: {e}"),
            ))
        }
    }
}

fn new_leaf(sh: &Shared, spec: &Spec, run: u32) -> Option<Leaf> {
    let root = sh.cgroup.as_ref().ok()?;
    match root.create_leaf(&leaf_name(spec.id.as_str(), run)) {
        Ok(leaf) => Some(leaf),
        Err(e) => {
            tracing::warn!(agent_id = %spec.id, error = %e, "cannot create a cgroup; process-group containment only");
            None
        }
    }
}

fn release(sh: &Shared, leaf: Option<Leaf>) {
    if let (Some(leaf), Ok(root)) = (leaf, &sh.cgroup) {
        let _ = root.remove_leaf(&leaf);
    }
}

/// The process of a stored live run, if it is still there (blocking): by its
/// recorded identity, or — when its pid was never recorded — by the
/// `CORRAL_RUN_ID` it carries. The bool says it was found the second way.
fn find_process(sh: &Shared, rec: &RunRecord) -> Option<(ProcessHandle, Option<Leaf>, bool)> {
    let same_boot = rec.boot_id.as_deref() == Some(sh.boot_id.as_str());
    let by_identity = match (
        rec.pid.and_then(rustix::process::Pid::from_raw),
        rec.start_ticks,
    ) {
        (Some(pid), Some(ticks)) if same_boot => {
            ProcessHandle::open(pid, Some(ticks)).ok().flatten()
        }
        _ => None,
    };
    let (handle, recovered) = match by_identity {
        Some(h) => (h, false),
        None if rec.pid.is_none() => {
            let h = find_unrecorded(sh, rec)?;
            tracing::warn!(agent_id = %rec.agent_id, pid = h.pid(), "found the process of an unrecorded spawn");
            (h, true)
        }
        None => return None,
    };
    let leaf = sh
        .cgroup
        .as_ref()
        .ok()
        .map(|root| root.leaf(&leaf_name(&rec.agent_id, rec.run)))
        .filter(|l| l.contains(handle.pid()));
    Some((handle, leaf, recovered))
}

/// The process of a run whose spawn was never recorded: it leads its own
/// session and carries the run's `CORRAL_RUN_ID` and `CORRAL_AGENT_ID`
/// (looked for in the run's cgroup when it has one, else in all of `/proc`).
fn find_unrecorded(sh: &Shared, rec: &RunRecord) -> Option<ProcessHandle> {
    let run = rec.run_id.to_string();
    let in_leaf: Option<Vec<i32>> = sh
        .cgroup
        .as_ref()
        .ok()
        .map(|root| root.leaf(&leaf_name(&rec.agent_id, rec.run)))
        .filter(Leaf::exists)
        .map(|leaf| leaf.pids());
    let mut candidates: Vec<platform::ProcEntry> = platform::process_table()
        .into_iter()
        .filter(|p| p.session == p.pid && p.state != 'Z')
        .filter(|p| in_leaf.as_ref().is_none_or(|pids| pids.contains(&p.pid)))
        .filter(|p| {
            platform::environ_var(p.pid, "CORRAL_RUN_ID").as_deref() == Some(run.as_str())
                && platform::environ_agent_id(p.pid).as_deref() == Some(rec.agent_id.as_str())
        })
        .collect();
    // The agent started before anything it started.
    candidates.sort_by_key(|p| p.start_ticks);
    let first = candidates.first()?;
    ProcessHandle::open_member(first.pid, first.start_ticks)
        .ok()
        .flatten()
}

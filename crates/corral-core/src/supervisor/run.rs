//! Starting a run — the one path first spawns, re-spawns and restarts take —
//! and taking over a run a previous daemon started (recovery).
//!
//! A run is recorded (`spawning`, no pid) before its process exists, so a
//! daemon that dies in between leaves a record the next one resolves; the
//! process carries `CORRAL_RUN_ID` so it can be found even then. Files and the
//! process are created on a blocking thread; the pid is committed before the
//! agent is shown or the spawn answered.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::model::PersistentStatus;
use crate::platform::{self, ProcessHandle, Stdio, cgroup::Leaf};
use crate::store::{self, RunRecord};

use super::actor::{Actor, LiveRun, Phase};
use super::spec::Spec;
use super::state::{Happening, Tag};
use super::view::{Proc, Sample, View};
use super::{Shared, blocking, leaf_name, lock};

/// Lines of stderr quoted when an agent dies inside its verification window.
const STDERR_TAIL_LINES: usize = 10;

/// What went wrong before the process ran.
pub(crate) enum StartError {
    /// The agent dir or a log file.
    Files(platform::files::FilesError),
    /// The program (or its cwd, user, limits).
    Exec(std::io::Error),
    /// The cluster engine refused the job.
    Engine(String),
}

/// A process started for a run.
pub(crate) struct Started {
    pub handle: ProcessHandle,
    pub leaf: Option<Leaf>,
    /// How each of its limits is enforced.
    pub limits: BTreeMap<String, crate::model::LimitState>,
}

impl Actor {
    /// Starts a new run of the agent: record, files, process, then the
    /// verification window (or `running` at once with `verify_ms` 0).
    pub(crate) async fn start_run(&mut self) {
        let run = self.view.as_ref().map_or(1, |v| v.run + 1);
        let started_at = store::now_rfc3339();
        let attempt = self.history.attempt;
        let write = store::insert_run(
            &self.spec.request,
            &self.spec.agent_dir,
            run,
            attempt,
            &started_at,
        );
        let run_id = match self.sh.store.commit(write).await {
            Ok(id) => id,
            Err(e) => {
                // Nothing happened: the agent stays as it was.
                self.phase = Phase::Ended;
                let e = match e {
                    Error::Store { .. } | Error::StoreGone { .. } => Error::Unavailable {
                        reason: e.to_string(),
                    },
                    other => other,
                };
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a new run");
                self.answer(Err(e));
                return;
            }
        };
        let record = self.new_record(run_id, run, started_at, attempt);
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        if super::placement::slurm_of(self.spec.request.placement.as_ref()).is_some() {
            // Boxed: a local start does not carry the engine's larger state.
            return Box::pin(self.submit_job()).await;
        }
        let _permit = self.sh.spawn_permits.acquire().await;
        let sh = self.sh.clone();
        let spec = self.spec.clone();
        let started = tokio::task::spawn_blocking(move || create(&sh, &spec, run_id, run))
            .await
            .unwrap_or_else(|e| Err(StartError::Exec(std::io::Error::other(e.to_string()))));
        drop(_permit);
        match started {
            Ok(started) => self.started(started).await,
            Err(e) => self.start_failed(e).await,
        }
    }

    /// A run in `spawning`, before it has a process.
    pub(crate) fn new_record(
        &self,
        run_id: i64,
        run: u32,
        started_at: String,
        attempt: u32,
    ) -> RunRecord {
        RunRecord {
            run_id,
            run,
            agent_id: self.spec.id.to_string(),
            status: PersistentStatus::Spawning,
            spec: self.spec.request.clone(),
            log_dir: self.spec.agent_dir.join("runs").join(run.to_string()),
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at,
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
            progress_at: None,
            next_restart_at: None,
            restart_attempt: attempt,
            job: None,
        }
    }

    pub(crate) async fn start_failed(&mut self, e: StartError) {
        let program = self
            .spec
            .request
            .command
            .first()
            .cloned()
            .unwrap_or_default();
        let error = match e {
            StartError::Files(f) => Error::Files {
                agent_id: self.spec.id.to_string(),
                field: "agent_dir",
                path: f.path,
                source: f.source,
            },
            StartError::Exec(source) => Error::Spawn {
                agent_id: self.spec.id.to_string(),
                program,
                source,
            },
            StartError::Engine(reason) => Error::Engine {
                agent_id: self.spec.id.to_string(),
                engine: "slurm",
                reason,
            },
        };
        let reason = error.to_string();
        tracing::warn!(agent_id = %self.spec.id, error = %reason, "spawn failed");
        self.record_failed_start(reason).await;
        self.answer(Err(error));
    }

    /// Records a run that never got going as failed, and ends the actor.
    pub(crate) async fn record_failed_start(&mut self, reason: String) {
        let ending = store::Ending {
            status: PersistentStatus::Failed,
            ended_at: store::now_rfc3339(),
            exit_code: None,
            exit_signal: None,
            end_reason: reason.clone(),
            next_restart_at: None,
        };
        let run_id = self.current().run_id;
        if let Err(e) = self
            .sh
            .store
            .commit_retrying(store::finish(run_id, ending.clone(), None))
            .await
        {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a failed start");
        }
        self.move_to(Happening::StartFailed);
        self.phase = Phase::Ended;
        self.publish(|v| {
            v.status = PersistentStatus::Failed;
            v.ended_at = Some(ending.ended_at);
            v.end_reason = Some(reason);
            v.runtime_at_end = Some(0.0);
        });
    }

    /// The process runs: record its identity, show it, open the window.
    async fn started(&mut self, started: Started) {
        let verify = !self.spec.verify.is_zero();
        let status = if verify {
            PersistentStatus::Spawning
        } else {
            PersistentStatus::Running
        };
        let (pid, ticks) = (started.handle.pid(), started.handle.start_ticks());
        let run_id = self.current().run_id;
        let write = store::set_process(run_id, pid, ticks, &self.sh.boot_id, status);
        if let Err(e) = self.sh.store.commit(write).await {
            // Never acknowledged, so it must not run: kill it, record the failed start.
            tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot record a started process; killing it");
            self.kill_unrecorded(&started).await;
            self.record_failed_start(format!(
                "the start could not be recorded ({e}); the process was killed"
            ))
            .await;
            self.answer(Err(Error::Unavailable {
                reason: e.to_string(),
            }));
            return;
        }
        let containment = if started.leaf.is_some() {
            "cgroup"
        } else {
            "process-group"
        };
        let limits = started.limits;
        self.sh
            .counters
            .spawns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let proc_ = Arc::new(Proc::new(
            started.handle,
            started.leaf,
            self.sh.ticks_per_second,
        ));
        sample_now(&proc_, self.sh.page_size);
        match LiveRun::new(proc_.clone(), true) {
            Ok(run) => self.run = Some(run),
            Err(e) => {
                tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot watch the new process");
                return self.start_failed(StartError::Exec(e)).await;
            }
        }
        let tag = self.move_to(Happening::Started { verify });
        self.phase = match tag {
            Tag::Verifying => Phase::Verifying {
                until: Instant::now() + self.spec.verify,
            },
            _ => Phase::Running,
        };
        self.publish(|v| {
            v.status = status;
            v.pid = Some(pid);
            v.proc_ = Some(proc_);
            v.containment = containment;
            v.limits = limits;
            (v.ready, v.probes) = probe_state(&v.spec);
        });
        self.start_probes();
        tracing::info!(agent_id = %self.spec.id, pid, run = self.current().run, "agent started");
        if !verify {
            let response = self.current().spawn_response(None);
            self.answer(Ok(response));
        }
    }

    async fn kill_unrecorded(&self, started: &Started) {
        if let Some(leaf) = &started.leaf {
            let _ = leaf.kill();
        }
        let _ = started.handle.signal_group(rustix::process::Signal::KILL);
        let end = Instant::now() + Duration::from_secs(5);
        while !started.handle.has_exited() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = started.handle.reap();
        lock(&self.sh.owned).remove(&started.handle.pid());
        self.release_leaf(started.leaf.as_ref());
    }

    /// The window closed with the agent alive: it is `running`.
    pub(crate) async fn verify_elapsed(&mut self) {
        let run_id = self.current().run_id;
        let write = store::set_status(run_id, PersistentStatus::Running);
        if let Err(e) = self.sh.store.commit(write.clone()).await {
            let pid = self.current().pid;
            self.answer(Err(Error::Unavailable {
                reason: format!(
                    "agent {} started (pid {}) but its start cannot be recorded: {e}; it will be once the store takes writes",
                    self.spec.id,
                    pid.unwrap_or(0)
                ),
            }));
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a verified start");
            }
        }
        self.move_to(Happening::VerifyElapsed);
        self.phase = Phase::Running;
        if let Some(run) = &self.run {
            // A sample at the end of the window shows the settled process.
            sample_now(&run.proc_, self.sh.page_size);
        }
        self.publish(|v| v.status = PersistentStatus::Running);
        tracing::info!(agent_id = %self.spec.id, pid = self.current().pid, "agent running");
        let response = self.current().spawn_response(None);
        self.answer(Ok(response));
    }

    /// The spawn answer for a run that ended inside its window: the tail of its stderr.
    pub(crate) async fn failed_answer(&self) -> Option<String> {
        let view = self.current();
        if view.status != PersistentStatus::Failed {
            return None;
        }
        let path = view.stderr_log();
        let tail =
            blocking(move || Ok(crate::logs::tail(&path, STDERR_TAIL_LINES).unwrap_or_default()))
                .await
                .unwrap_or_default();
        let why = view.end_reason.clone().unwrap_or_else(|| "failed".into());
        Some(if tail.trim().is_empty() {
            format!(
                "agent {} {why} during verification (stderr is empty)",
                view.id
            )
        } else {
            format!(
                "agent {} {why} during verification; last stderr lines:\n{}",
                view.id,
                tail.trim_end()
            )
        })
    }

    /// Takes over a run the store holds as live: the same process (pid, start
    /// time, boot) is re-adopted; a spawn whose pid was never recorded is looked
    /// for by its `CORRAL_RUN_ID`; anything else ended while no daemon ran.
    pub(crate) async fn adopt(&mut self, record: RunRecord) {
        if record.job.is_some()
            || super::placement::slurm_of(record.spec.placement.as_ref()).is_some()
        {
            return Box::pin(self.adopt_job(record)).await;
        }
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        self.history.attempt = record.restart_attempt;
        let sh = self.sh.clone();
        let rec = record.clone();
        let found = blocking(move || Ok(find_process(&sh, &rec)))
            .await
            .ok()
            .flatten();
        let Some((handle, leaf, recovered_pid)) = found else {
            let reason = if record.pid.is_none() {
                "the daemon stopped before the process was recorded; the start did not complete"
            } else {
                "exit status lost: the process ended while no corral daemon was running"
            };
            tracing::warn!(agent_id = %record.agent_id, pid = record.pid, "{reason}");
            return self.record_failed_start(reason.to_owned()).await;
        };
        let pid = handle.pid();
        if recovered_pid || record.status == PersistentStatus::Spawning {
            let write = store::set_process(
                record.run_id,
                pid,
                handle.start_ticks(),
                &self.sh.boot_id,
                PersistentStatus::Running,
            );
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %record.agent_id, error = %e, "cannot record a re-adopted process");
            }
        }
        let containment = if leaf.is_some() {
            "cgroup"
        } else {
            "process-group"
        };
        // Re-opened in the process that started it (a library user): still ours to reap.
        let ours = handle
            .sample()
            .is_ok_and(|s| s.ppid == std::process::id() as i32);
        if ours {
            lock(&self.sh.owned).insert(pid);
        }
        let proc_ = Arc::new(Proc::new(handle, leaf, self.sh.ticks_per_second));
        sample_now(&proc_, self.sh.page_size);
        match LiveRun::new(proc_.clone(), ours) {
            Ok(run) => self.run = Some(run),
            Err(e) => {
                tracing::error!(agent_id = %record.agent_id, pid, error = %e, "cannot watch a re-adopted process");
                return self
                    .record_failed_start(format!("cannot watch the re-adopted process: {e}"))
                    .await;
            }
        }
        self.move_to(Happening::Started { verify: false });
        self.phase = Phase::Running;
        if proc_.handle.has_exited() {
            // Ended while no daemon ran, but its exit status is still there to read:
            // resolve it before anyone is shown a running agent.
            self.view = Some(Arc::new(View {
                pid: Some(pid),
                ..View::from_record(&record, self.spec.clone())
            }));
            self.on_exit().await;
            return;
        }
        tracing::info!(agent_id = %record.agent_id, pid, "re-adopted a running agent");
        let kernel = match (&proc_.leaf, &self.sh.cgroup) {
            (Some(_), Ok(root)) => root.controllers(),
            _ => Default::default(),
        };
        let limits =
            super::limits::enforcement(&record.spec.limits.clone().unwrap_or_default(), kernel);
        self.publish(|v| {
            v.status = PersistentStatus::Running;
            v.pid = Some(pid);
            v.proc_ = Some(proc_);
            v.containment = containment;
            v.limits = limits;
            (v.ready, v.probes) = probe_state(&v.spec);
        });
        self.start_probes();
    }

    /// Resumes a restart planned by a previous daemon: waits out what is left of
    /// the delay (nothing was started for it yet, or its run would be the latest).
    pub(crate) async fn resume_backoff(&mut self, record: RunRecord) {
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        let at = record
            .next_restart_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or_else(SystemTime::now);
        let store = self.sh.store.clone();
        let id = record.agent_id.clone();
        let limit = self.spec.restart.max_restarts + 1;
        let recent = blocking(move || store.recent_restarts(&id, limit))
            .await
            .unwrap_or_default();
        self.history.restarts_at = recent
            .iter()
            .rev()
            .filter_map(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(epoch_s)
            .collect();
        self.phase = Phase::Ended;
        self.plan = Some(super::actor::Plan {
            at,
            attempt: record.restart_attempt + 1,
        });
        tracing::info!(agent_id = %record.agent_id, at = record.next_restart_at.as_deref().unwrap_or("now"), "resuming a planned restart");
        self.after_run();
    }
}

/// `ready` and `probe` of a run that has not been checked yet.
pub(crate) fn probe_state(spec: &Spec) -> (Option<bool>, Option<crate::model::ProbesState>) {
    let probes = spec.request.probes.as_ref();
    (
        probes.and_then(|p| p.readiness.as_ref()).map(|_| false),
        probes.map(super::probes::initial),
    )
}

pub(crate) fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One sample of a process taken outside the sampler's pass (at start, at the
/// end of the window): CPU% over its whole life so far.
pub(crate) fn sample_now(proc_: &Proc, page_size: u64) {
    let Ok(s) = proc_.handle.sample() else { return };
    let age = (platform::boottime_seconds() - proc_.started_s).max(1e-3);
    let cpu_percent = s.cpu_ticks as f64 / platform::clock_ticks_per_second() as f64 / age * 100.0;
    let memory_mb = (s.rss_pages * page_size) as f64 / (1024.0 * 1024.0);
    let tree = proc_
        .sample()
        .map(|old| old.tree)
        .unwrap_or(crate::model::TreeSummary {
            processes: 1,
            cpu_percent,
            memory_mb,
        });
    proc_.set_sample(Sample {
        state: s.state,
        cpu_percent,
        memory_mb,
        num_threads: s.num_threads,
        tree,
    });
}

/// Creates the run's files and process (blocking).
fn create(sh: &Shared, spec: &Spec, run_id: i64, run: u32) -> Result<Started, StartError> {
    let owner = spec.user.as_ref().map(|u| &u.credentials);
    let files = platform::files::create_run_files(&spec.agent_dir, run, owner)
        .map_err(StartError::Files)?;
    let stdin = std::fs::File::open("/dev/null").map_err(StartError::Exec)?;
    let stdio = Stdio {
        stdin: stdin.as_fd(),
        stdout: files.stdout.as_fd(),
        stderr: files.stderr.as_fd(),
    };
    start_process(sh, spec, run_id, run, stdio).map_err(StartError::Exec)
}

/// The agent's environment: the daemon's, the request's, and corral's own.
pub(crate) fn environment(sh: &Shared, spec: &Spec, run_id: i64) -> std::io::Result<Vec<CString>> {
    let mut env: BTreeMap<OsString, OsString> = sh.base_env.iter().cloned().collect();
    if let Some(user) = &spec.user {
        env.insert("HOME".into(), user.home.clone().into_os_string());
        env.insert("USER".into(), user.name.clone().into());
        env.insert("LOGNAME".into(), user.name.clone().into());
    }
    for (k, v) in &spec.request.env {
        env.insert(k.into(), v.into());
    }
    env.insert("CORRAL_AGENT_ID".into(), spec.id.as_str().into());
    // Names this run: lets a restarted daemon find a process whose spawn it
    // could not record before it died.
    env.insert("CORRAL_RUN_ID".into(), run_id.to_string().into());
    if let Some(sock) = &sh.config.socket_path {
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

/// Resolves the program against the agent's PATH and starts it, in a new
/// cgroup leaf where there is one. The new pid enters `owned` before the orphan
/// sweep can look.
fn start_process(
    sh: &Shared,
    spec: &Spec,
    run_id: i64,
    run: u32,
    stdio: Stdio<'_>,
) -> std::io::Result<Started> {
    let envp = environment(sh, spec, run_id)?;
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
    let program_c = platform::c_path(&resolved)?;
    let cwd_c = platform::c_path(&spec.cwd)?;
    let nofile = spec.request.limits.as_ref().and_then(|l| l.nofile);
    // The leaf is created and the process born in it under the spawn gate: the
    // sweep of empty leaves never sees a new run's leaf empty.
    let _gate = sh.spawn_gate.read().unwrap_or_else(|p| p.into_inner());
    let mut leaf = new_leaf(sh, spec, run);
    let limits = spec.request.limits.clone().unwrap_or_default();
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
    let mut spawn_spec = platform::SpawnSpec {
        program: &program_c,
        argv: &argv,
        envp: &envp,
        cwd: &cwd_c,
        stdio,
        cgroup: dir.as_ref().map(|d| d.as_fd()),
        credentials: spec.user.as_ref().map(|u| &u.credentials),
        nofile,
    };
    let pid = match platform::spawn(&spawn_spec) {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported && leaf.is_some() => {
            tracing::warn!(agent_id = %spec.id, error = %e, "process-group containment only for this agent");
            spawn_spec.cgroup = None;
            release(sh, leaf.take());
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
    let limits = super::limits::enforcement(
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

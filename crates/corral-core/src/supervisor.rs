//! The supervisor: owns every agent of one state dir.
//!
//! Theory of operation:
//! - The in-memory table maps each id to its current run (an `Agent`). Reads
//!   (`get_agent_status`, `monitor_all_agents`, ...) answer from it in
//!   microseconds: the latest metrics sample plus a live liveness check on the
//!   agent's pidfd. Nothing on a read path sleeps or samples.
//! - Lifecycle transitions are serialised per agent (an async lock held across
//!   the store commit) and become visible in memory only after the store has
//!   committed them, so nothing is ever reported that a crash could take back.
//! - Each live agent has one task awaiting its pidfd. When the process exits the
//!   task reaps exactly that pid (`waitid(P_PIDFD)`), records the end and wakes
//!   whoever waits (a verification window, a stop).
//! - One sampler thread reads `/proc/<pid>/stat` of every live agent through
//!   files kept open, once per interval, and keeps CPU% as psutil defines it:
//!   CPU time used over the last interval, as a percentage of one CPU.
//! - A stop runs stage by stage over the agent's whole tree (see [`crate::tree`]
//!   for who belongs to it): every member is signalled, then the stop waits on
//!   the members' pidfds, the agent's recorded end and the orphan reaper, and
//!   looks again. Concurrent stops share each scan of the process table.
//! - As a subreaper (the daemon), a SIGCHLD-driven sweep reaps orphans by pid;
//!   agents' pids are excluded under the same lock their spawn holds, so an
//!   agent's exit status always reaches its own watcher.
//! - On open, runs the store holds as live are re-adopted (same pid, start time
//!   and boot id) or recorded as ended with the reason; a spawn the previous
//!   daemon did not finish recording is found by its `CORRAL_RUN_ID`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, Signal};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::id::{AgentId, Selector};
use crate::logs;
use crate::model::{
    AgentStatus, CleanupOptions, Health, HealthReport, PersistentStatus, ProcessSummary, Removal,
    SpawnRequest, SpawnResponse, StopReport, StopStage,
};
use crate::platform::cgroup::{CgroupRoot, Leaf};
use crate::platform::{self, ExitKind, ProcEntry, ProcessHandle, Stdio};
use crate::store::{Ending, RunRecord, Store};
use crate::tree;

/// Staged-stop waits when none are given: SIGTERM, 10 s, SIGTERM, 5 s, SIGKILL, 5 s.
pub const DEFAULT_STOP_TIMEOUTS: [f64; 3] = [10.0, 5.0, 5.0];
/// Verification window when none is given, ms.
pub const DEFAULT_VERIFY_MS: u64 = 100;
/// Longest verification window accepted, ms.
pub const MAX_VERIFY_MS: u64 = 60_000;
/// Longest single stop-stage wait accepted, seconds.
pub const MAX_STOP_WAIT_S: f64 = 86_400.0;
/// Lines of stderr quoted when an agent dies inside its verification window.
const STDERR_TAIL_LINES: usize = 10;
/// Longest progress message kept, bytes.
const MAX_PROGRESS_MESSAGE: usize = 1024;

/// How a [`Supervisor`] is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `corral.db` and `agents/<id>/`.
    pub state_dir: PathBuf,
    /// Exported to agents as `CORRAL_SOCKET`, when there is a daemon socket.
    pub socket_path: Option<PathBuf>,
    /// How often metrics are sampled.
    pub sample_interval: Duration,
    /// Make this process a child subreaper and reap every orphan reparented to
    /// it. Only for a process whose other children nobody waits for (the daemon,
    /// the demo): the reaper takes the exit status of any child corral did not
    /// start itself.
    pub subreaper: bool,
    /// Contain each agent in a cgroup v2 leaf where the machine allows it
    /// (`false` forces the process-group/subreaper fallback).
    pub cgroups: bool,
}

impl Config {
    /// Defaults for a state dir: no socket, sampling every second.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            socket_path: None,
            sample_interval: Duration::from_secs(1),
            subreaper: false,
            cgroups: true,
        }
    }
}

/// The latest metrics of one process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    state: char,
    cpu_ticks: u64,
    /// Boot-clock seconds when taken.
    at: f64,
    cpu_percent: f64,
    memory_mb: f64,
    num_threads: u32,
}

/// Mutable part of a run; read under a short lock, never across an await.
#[derive(Debug)]
struct LiveState {
    status: PersistentStatus,
    /// Set the moment the process is reaped (before the store has the end).
    exit: Option<ExitKind>,
    reaped: bool,
    ended_at: Option<String>,
    end_reason: Option<String>,
    runtime_at_end: Option<f64>,
    stop_requested: bool,
    sample: Option<Sample>,
    progress: Option<u8>,
    progress_message: Option<String>,
}

/// One run of one agent.
struct Agent {
    id: AgentId,
    run_id: i64,
    record: RunRecord,
    cmdline: String,
    restarts: u32,
    proc_: Option<Arc<ProcessHandle>>,
    /// The run's cgroup, when it is contained in one.
    leaf: Option<Leaf>,
    state: Mutex<LiveState>,
    /// Serialises transitions: held across each store commit.
    transition: tokio::sync::Mutex<()>,
    /// Flips to true once the end is committed.
    ended: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

impl Agent {
    fn new(record: RunRecord, restarts: u32, proc_: Option<Arc<ProcessHandle>>) -> Result<Self> {
        let id = AgentId::new(record.agent_id.clone())?;
        let ended = record.ended_at.is_some() || !record.status.is_live();
        Ok(Self {
            id,
            run_id: record.run_id,
            cmdline: record.command.join(" "),
            restarts,
            proc_,
            leaf: None,
            state: Mutex::new(LiveState {
                status: record.status,
                exit: None,
                reaped: ended,
                ended_at: record.ended_at.clone(),
                end_reason: record.end_reason.clone(),
                runtime_at_end: None,
                stop_requested: false,
                sample: None,
                progress: record.progress,
                progress_message: record.progress_message.clone(),
            }),
            transition: tokio::sync::Mutex::new(()),
            ended: watch::Sender::new(ended),
            record,
        })
    }

    fn pid(&self) -> i32 {
        self.proc_
            .as_ref()
            .map_or(self.record.pid.unwrap_or(0), |p| p.pid())
    }

    fn status_now(&self) -> PersistentStatus {
        lock(&self.state).status
    }

    fn stdout_log(&self) -> PathBuf {
        self.record.agent_dir.join("stdout.log")
    }

    fn stderr_log(&self) -> PathBuf {
        self.record.agent_dir.join("stderr.log")
    }

    /// Takes a fresh sample through the open stat file; false once the process is gone.
    fn refresh_sample(&self, clock: &Clock) -> bool {
        let Some(proc_) = &self.proc_ else {
            return false;
        };
        let Ok(raw) = proc_.sample() else {
            return false;
        };
        let now = platform::boottime_seconds();
        let mut st = lock(&self.state);
        // The baseline of the first sample is the process's start: zero CPU time then.
        let (prev_ticks, prev_at) = st.sample.map_or(
            (0, proc_.start_ticks() as f64 / clock.ticks_per_second),
            |s| (s.cpu_ticks, s.at),
        );
        let elapsed = now - prev_at;
        let cpu_percent = if elapsed > 0.0 {
            (raw.cpu_ticks.saturating_sub(prev_ticks) as f64 / clock.ticks_per_second) / elapsed
                * 100.0
        } else {
            st.sample.map_or(0.0, |s| s.cpu_percent)
        };
        st.sample = Some(Sample {
            state: raw.state,
            cpu_ticks: raw.cpu_ticks,
            at: now,
            cpu_percent,
            memory_mb: (raw.rss_pages * clock.page_size) as f64 / (1024.0 * 1024.0),
            num_threads: raw.num_threads,
        });
        true
    }

    fn status(&self, clock: &Clock) -> AgentStatus {
        let st = lock(&self.state);
        let live_proc = self.proc_.as_ref().filter(|_| !st.reaped);
        let exited = live_proc.is_some_and(|p| p.has_exited());
        let process_alive = live_proc.is_some() && !exited;
        let is_zombie = live_proc.is_some() && exited;
        let sample = st.sample.filter(|_| process_alive);
        let process_status = if is_zombie {
            "zombie"
        } else if process_alive {
            sample.map_or("running", |s| platform::psutil_status(s.state))
        } else {
            "dead"
        };
        let (exit_code, exit_signal) = match st.exit {
            Some(ExitKind::Code(c)) => (Some(c), None),
            Some(ExitKind::Signal(s)) => (None, Some(s)),
            None => (self.record.exit_code, self.record.exit_signal),
        };
        let runtime_seconds = match (live_proc, st.runtime_at_end) {
            (Some(p), _) => {
                platform::boottime_seconds() - p.start_ticks() as f64 / clock.ticks_per_second
            }
            (None, Some(r)) => r,
            (None, None) => stored_runtime(&self.record.started_at, st.ended_at.as_deref()),
        }
        .max(0.0);
        let health = if process_alive {
            Health::Healthy
        } else if is_zombie {
            Health::Zombie
        } else {
            match st.status {
                PersistentStatus::Completed => Health::Completed,
                PersistentStatus::Cancelled if exit_code == Some(0) => Health::Completed,
                PersistentStatus::Failed | PersistentStatus::Cancelled
                    if exit_code.is_some() || exit_signal.is_some() || self.pid() == 0 =>
                {
                    Health::Failed
                }
                _ => Health::Unknown,
            }
        };
        AgentStatus {
            agent_id: self.id.to_string(),
            pid: self.pid(),
            process_alive,
            process_status: process_status.to_owned(),
            exit_code,
            is_zombie,
            cpu_percent: sample.map_or(0.0, |s| s.cpu_percent),
            memory_mb: sample.map_or(0.0, |s| s.memory_mb),
            runtime_seconds,
            num_threads: sample.map_or(0, |s| s.num_threads),
            cmdline: self.cmdline.clone(),
            health,
            persistent_status: st.status,
            started_at: self.record.started_at.clone(),
            progress: st.progress,
            progress_message: st.progress_message.clone(),
            exit_signal,
            ended_at: st.ended_at.clone(),
            end_reason: st.end_reason.clone(),
            restarts: self.restarts,
            labels: self.record.labels.clone(),
            stdout_log: self.stdout_log(),
            stderr_log: self.stderr_log(),
            containment: if self.leaf.is_some() {
                "cgroup"
            } else {
                "process-group"
            }
            .to_owned(),
            tree: None,
        }
    }
}

/// A short, stable tag for a state dir (FNV-1a of its path): names its cgroup subtree.
fn state_tag(dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The cgroup leaf name of one run.
fn leaf_name(agent_id: &str, run_id: i64) -> String {
    format!("{agent_id}.{run_id}")
}

fn stored_runtime(started_at: &str, ended_at: Option<&str>) -> f64 {
    let start = humantime::parse_rfc3339_weak(started_at).ok();
    let end = ended_at.and_then(|e| humantime::parse_rfc3339_weak(e).ok());
    match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).map_or(0.0, |d| d.as_secs_f64()),
        _ => 0.0,
    }
}

/// Kernel clock constants, read once.
#[derive(Debug, Clone, Copy)]
struct Clock {
    ticks_per_second: f64,
    page_size: u64,
}

struct Inner {
    config: Config,
    store: Store,
    boot_id: String,
    clock: Clock,
    agents: Mutex<HashMap<AgentId, Arc<Agent>>>,
    /// Ids between "conflict check passed" and "run recorded": taken.
    reserved: Mutex<HashSet<AgentId>>,
    /// Pids of agents whose exit status their own watcher collects. Held across
    /// posix_spawn, so the orphan reaper can never take an agent's status.
    owned: Mutex<HashSet<i32>>,
    /// Woken whenever a spawn releases its id reservation.
    spawned: tokio::sync::Notify,
    /// Woken after every orphan-reaping sweep (stops wait on it for zombies).
    reaped: tokio::sync::Notify,
    tables: TableCache,
    /// corral's cgroup subtree, or why there is none.
    cgroup: std::result::Result<CgroupRoot, String>,
    base_env: Vec<(OsString, OsString)>,
    _sampler_stop: mpsc::Sender<()>,
}

/// Owns the agents of one state dir. Cheap to clone; all clones share state.
///
/// Must be used inside a tokio runtime (exit watching uses the runtime's reactor).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Releases an id reservation on every exit path of `spawn_agent`.
struct Reservation<'a> {
    inner: &'a Inner,
    id: AgentId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.inner.reserved).remove(&self.id);
        self.inner.spawned.notify_waiters();
    }
}

fn validate_timeouts(agent_id: &str, raw: &[f64]) -> Result<[f64; 3]> {
    match raw {
        [a, b, c]
            if raw
                .iter()
                .all(|t| t.is_finite() && *t >= 0.0 && *t <= MAX_STOP_WAIT_S) =>
        {
            Ok([*a, *b, *c])
        }
        _ => Err(Error::Invalid {
            agent_id: agent_id.to_owned(),
            reason: format!(
                "stop_timeouts must be three waits in seconds (TERM, TERM, KILL), each 0–{MAX_STOP_WAIT_S}; got {raw:?}"
            ),
        }),
    }
}

impl Supervisor {
    /// Opens the state dir (creating it), loads the store and resolves every run the
    /// store still holds as live: re-adopted when the same process still runs (same
    /// pid, start time and boot), recorded as ended otherwise.
    pub async fn open(config: Config) -> Result<Self> {
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir.join("agents")).map_err(|e| Error::StateDir {
            path: dir.clone(),
            action: "create",
            source: e,
        })?;
        let store = Store::open(&dir.join("corral.db"))?;
        let boot_id = platform::boot_id().map_err(|e| Error::StateDir {
            path: "/proc/sys/kernel/random/boot_id".into(),
            action: "read the boot id",
            source: e,
        })?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let cgroup = if config.cgroups {
            CgroupRoot::discover(&state_tag(&config.state_dir))
        } else {
            Err("disabled by configuration".to_owned())
        };
        match &cgroup {
            Ok(root) => {
                tracing::info!(cgroup = %root.dir().display(), "agents are contained in cgroups")
            }
            Err(why) => {
                tracing::info!(reason = %why, "no cgroup containment; using process groups and subreaping")
            }
        }
        let inner = Arc::new(Inner {
            base_env: std::env::vars_os()
                .filter(|(k, _)| {
                    !matches!(
                        k.to_str(),
                        Some("CORRAL_AGENT_ID" | "CORRAL_SOCKET" | "CORRAL_RUN_ID")
                    )
                })
                .collect(),
            clock: Clock {
                ticks_per_second: platform::clock_ticks_per_second() as f64,
                page_size: platform::page_size(),
            },
            config,
            store,
            boot_id,
            agents: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            owned: Mutex::new(HashSet::new()),
            reaped: tokio::sync::Notify::new(),
            spawned: tokio::sync::Notify::new(),
            tables: TableCache::new(),
            cgroup,
            _sampler_stop: stop_tx,
        });
        let sup = Self { inner };
        if sup.inner.config.subreaper {
            platform::become_subreaper().map_err(|e| Error::StateDir {
                path: sup.inner.config.state_dir.clone(),
                action: "become a child subreaper",
                source: e,
            })?;
            sup.start_orphan_reaper()?;
        }
        sup.load().await?;
        sup.sweep_stale_leaves();
        let weak = Arc::downgrade(&sup.inner);
        let interval = sup.inner.config.sample_interval;
        std::thread::Builder::new()
            .name("corral-sampler".into())
            .spawn(move || sampler_loop(weak, stop_rx, interval))
            .map_err(|e| Error::StateDir {
                path: sup.inner.config.state_dir.clone(),
                action: "start the sampler thread",
                source: e,
            })?;
        Ok(sup)
    }

    async fn load(&self) -> Result<()> {
        for (record, restarts) in self.inner.store.load_latest()? {
            let Ok(id) = AgentId::new(record.agent_id.clone()) else {
                tracing::warn!(agent_id = %record.agent_id, "skipping a stored run with an invalid id");
                continue;
            };
            let agent = if record.status.is_live() {
                self.reconcile(record, restarts).await?
            } else {
                Arc::new(Agent::new(record, restarts, None)?)
            };
            lock(&self.inner.agents).insert(id, agent);
        }
        Ok(())
    }

    /// Decides what a run stored as live is now: the same process (re-adopt) or gone.
    async fn reconcile(&self, record: RunRecord, restarts: u32) -> Result<Arc<Agent>> {
        let same_boot = record.boot_id.as_deref() == Some(self.inner.boot_id.as_str());
        let mut handle = match (record.pid.and_then(Pid::from_raw), record.start_ticks) {
            (Some(pid), Some(ticks)) if same_boot => ProcessHandle::open(pid, Some(ticks))
                .map_err(|e| Error::os(&record.agent_id, "check a stored process", e))?,
            _ => None,
        };
        let mut record = record;
        if handle.is_none()
            && record.pid.is_none()
            && let Some(found) = self.find_unrecorded(&record)
        {
            // The daemon died between starting this process and recording it.
            tracing::warn!(agent_id = %record.agent_id, pid = found.pid(), "found the process of an unrecorded spawn");
            self.inner
                .store
                .set_process(
                    record.run_id,
                    found.pid(),
                    found.start_ticks(),
                    self.inner.boot_id.clone(),
                    PersistentStatus::Running,
                )
                .await?;
            record.pid = Some(found.pid());
            record.start_ticks = Some(found.start_ticks());
            record.boot_id = Some(self.inner.boot_id.clone());
            record.status = PersistentStatus::Running;
            handle = Some(found);
        }
        match handle {
            Some(handle) => {
                tracing::info!(agent_id = %record.agent_id, pid = handle.pid(), "re-adopted a running agent");
                if record.status == PersistentStatus::Spawning {
                    self.inner
                        .store
                        .set_status(record.run_id, PersistentStatus::Running)
                        .await?;
                    record.status = PersistentStatus::Running;
                }
                let pid = handle.pid();
                let name = leaf_name(&record.agent_id, record.run_id);
                let mut agent = Agent::new(record, restarts, Some(Arc::new(handle)))?;
                agent.leaf = self
                    .inner
                    .cgroup
                    .as_ref()
                    .ok()
                    .map(|root| root.leaf(&name))
                    .filter(|l| l.contains(pid));
                let agent = Arc::new(agent);
                agent.refresh_sample(&self.inner.clock);
                self.watch(agent.clone());
                Ok(agent)
            }
            None => {
                let reason = if record.pid.is_none() {
                    "the daemon stopped before the process was recorded; the start did not complete"
                } else {
                    "exit status lost: the process ended while no corral daemon was running"
                };
                let end = Ending {
                    status: PersistentStatus::Failed,
                    ended_at: now_rfc3339(),
                    exit_code: None,
                    exit_signal: None,
                    end_reason: reason.to_owned(),
                };
                self.inner.store.finish(record.run_id, end.clone()).await?;
                tracing::warn!(agent_id = %record.agent_id, pid = record.pid, "{reason}");
                let mut record = record;
                record.status = end.status;
                record.ended_at = Some(end.ended_at);
                record.end_reason = Some(end.end_reason);
                Ok(Arc::new(Agent::new(record, restarts, None)?))
            }
        }
    }

    /// Reaps orphans on every SIGCHLD. Agents' own exits are left to their watchers.
    fn start_orphan_reaper(&self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = signal(SignalKind::child()).map_err(|e| Error::StateDir {
            path: self.inner.config.state_dir.clone(),
            action: "listen for SIGCHLD",
            source: e,
        })?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let Some(inner) = weak.upgrade() else { return };
                Supervisor { inner }.reap_orphans();
            }
        });
        Ok(())
    }

    /// Reaps every exited child that is not an agent (descendants of agents that
    /// were reparented to this subreaper). Returns how many it reaped.
    pub fn reap_orphans(&self) -> usize {
        // Read /proc before taking the lock (spawns and watchers need it), then
        // hold it across the waitids: a new agent enters `owned` under this lock
        // together with its spawn, so no agent's exit status can be taken here.
        let children = platform::own_children();
        let mut reaped = 0;
        {
            let owned = lock(&self.inner.owned);
            for pid in children.into_iter().filter(|pid| !owned.contains(pid)) {
                // An agent reaped by its watcher since the read: waitid takes nothing.
                if let Some(exit) = platform::reap_child(pid) {
                    reaped += 1;
                    tracing::debug!(pid, ?exit, "reaped an orphan");
                }
            }
        }
        if reaped > 0 {
            // An orphan may have been the last process in an ended agent's cgroup.
            let ended: Vec<Arc<Agent>> = lock(&self.inner.agents)
                .values()
                .filter(|a| a.leaf.is_some() && !a.status_now().is_live())
                .cloned()
                .collect();
            for agent in ended {
                self.release_leaf(&agent);
            }
            self.inner.reaped.notify_waiters();
        }
        reaped
    }

    /// Checks that the store takes writes (for readiness probes).
    pub async fn check_store(&self) -> Result<()> {
        self.inner.store.ping().await
    }

    /// Stored events after `seq` (oldest first, at most `limit`).
    pub fn events_since(&self, seq: i64, limit: usize) -> Result<Vec<crate::model::Event>> {
        self.inner.store.events_since(seq, limit)
    }

    /// Watches the newest event's sequence number (changes after each commit that adds events).
    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.inner.store.subscribe_events()
    }

    /// Sweeps for anything not yet reaped: orphans of agents, and agents whose
    /// exit their watcher has not collected. Returns the ids of agents this sweep
    /// had to reap itself (normally none: exits are reaped the moment they happen).
    pub async fn reap_zombies(&self) -> Vec<String> {
        let orphans = self.reap_orphans();
        let exited: Vec<Arc<Agent>> = lock(&self.inner.agents)
            .values()
            .filter(|a| {
                a.status_now().is_live() && a.proc_.as_ref().is_some_and(|p| p.has_exited())
            })
            .cloned()
            .collect();
        let mut reaped = Vec::new();
        for agent in exited {
            // Its watcher normally records the exit within microseconds; give it a moment.
            let mut ended = agent.ended.subscribe();
            if tokio::time::timeout(Duration::from_millis(100), ended.wait_for(|e| *e))
                .await
                .is_ok()
            {
                continue;
            }
            if let Some(proc_) = agent.proc_.clone()
                && let Some(exit) = self.reap_agent(&agent, &proc_)
            {
                self.record_exit(&agent, exit).await;
                tracing::warn!(agent_id = %agent.id, pid = proc_.pid(), "reap sweep collected an agent its watcher missed");
                reaped.push(agent.id.to_string());
            }
        }
        tracing::info!(orphans, agents = reaped.len(), "reap sweep");
        reaped
    }

    /// corral's cgroup subtree for this state dir, when agents are contained in cgroups.
    pub fn cgroup_subtree(&self) -> Option<&Path> {
        self.inner.cgroup.as_ref().ok().map(CgroupRoot::dir)
    }

    /// The process of a run whose spawn was never recorded: it leads its own
    /// session and carries the run's `CORRAL_RUN_ID` and `CORRAL_AGENT_ID`
    /// (looked for in the run's cgroup when it has one, else in all of `/proc`).
    fn find_unrecorded(&self, record: &RunRecord) -> Option<ProcessHandle> {
        let run = record.run_id.to_string();
        let in_leaf: Option<HashSet<i32>> = self
            .inner
            .cgroup
            .as_ref()
            .ok()
            .map(|root| root.leaf(&leaf_name(&record.agent_id, record.run_id)))
            .filter(Leaf::exists)
            .map(|leaf| leaf.pids().into_iter().collect());
        let mut candidates: Vec<ProcEntry> = platform::process_table()
            .into_iter()
            .filter(|p| p.session == p.pid && p.state != 'Z')
            .filter(|p| in_leaf.as_ref().is_none_or(|pids| pids.contains(&p.pid)))
            .filter(|p| {
                platform::environ_var(p.pid, "CORRAL_RUN_ID").as_deref() == Some(run.as_str())
                    && platform::environ_agent_id(p.pid).as_deref()
                        == Some(record.agent_id.as_str())
            })
            .collect();
        // The agent started before anything it started.
        candidates.sort_by_key(|p| p.start_ticks);
        let first = candidates.first()?;
        ProcessHandle::open_member(first.pid, first.start_ticks)
            .ok()
            .flatten()
    }

    /// Forgets an agent whose current run has ended: every stored run of it, and
    /// its logs when they are in the default place (`<state dir>/agents/<id>`).
    /// A live agent is refused (stop it first).
    pub async fn remove_agent(&self, id: &AgentId) -> Result<Removal> {
        let agent = self.agent(id)?;
        let _t = agent.transition.lock().await;
        let status = agent.status_now();
        if status.is_live() || lock(&self.inner.reserved).contains(id) {
            return Err(Error::Conflict {
                agent_id: id.to_string(),
                status: status.to_string(),
                pid: agent.pid(),
            });
        }
        let runs_removed = self.inner.store.delete_agent(id.as_str()).await?;
        lock(&self.inner.agents).remove(id);
        self.remove_default_logs(&agent);
        tracing::info!(agent_id = %id, runs_removed, "agent removed");
        Ok(Removal {
            removed: vec![id.to_string()],
            runs_removed,
        })
    }

    /// Removes every ended run from the store: agents whose current run has
    /// ended are forgotten (with their default logs); live agents keep only
    /// their current run.
    pub async fn prune(&self) -> Result<Removal> {
        let ended: Vec<Arc<Agent>> = lock(&self.inner.agents)
            .values()
            .filter(|a| !a.status_now().is_live())
            .cloned()
            .collect();
        let runs_removed = self.inner.store.prune().await?;
        let mut removed = Vec::new();
        {
            let mut agents = lock(&self.inner.agents);
            for agent in &ended {
                // Only if no new run of the id started meanwhile.
                if agents
                    .get(&agent.id)
                    .is_some_and(|a| a.run_id == agent.run_id)
                {
                    agents.remove(&agent.id);
                    removed.push(agent.id.to_string());
                }
            }
        }
        // Only for ids forgotten here: a new run of an id keeps its log files.
        for agent in ended.iter().filter(|a| removed.contains(&a.id.to_string())) {
            self.remove_default_logs(agent);
        }
        removed.sort();
        tracing::info!(agents = removed.len(), runs_removed, "pruned ended runs");
        Ok(Removal {
            removed,
            runs_removed,
        })
    }

    fn remove_default_logs(&self, agent: &Agent) {
        let default = self
            .inner
            .config
            .state_dir
            .join("agents")
            .join(agent.id.as_str());
        if agent.record.agent_dir == default
            && let Err(e) = std::fs::remove_dir_all(&default)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(agent_id = %agent.id, error = %e, "cannot remove the agent's logs");
        }
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.inner.config.state_dir
    }

    /// The store (for history queries).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The agent's current run, waiting (briefly) for a spawn of this id that is
    /// under way: an agent may report progress before its spawn call returns.
    async fn settled_agent(&self, id: &AgentId) -> Result<Arc<Agent>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.inner.spawned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock(&self.inner.reserved).contains(id) {
                return self.agent(id);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.agent(id);
            }
        }
    }

    fn agent(&self, id: &AgentId) -> Result<Arc<Agent>> {
        lock(&self.inner.agents)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                agent_id: id.to_string(),
            })
    }

    /// Starts an agent and verifies it: the seed's `spawn_agent`.
    ///
    /// Returns an error, with the OS reason, when the program cannot be started
    /// (the run is then recorded as failed). Otherwise waits for the verification
    /// window (`verify_ms`), returning early if the agent exits inside it; such an
    /// agent is reported `completed` or `failed` with its exit code and the tail of
    /// its stderr.
    pub async fn spawn_agent(&self, req: SpawnRequest) -> Result<SpawnResponse> {
        let id = AgentId::new(req.agent_id.clone())?;
        let invalid = |reason: String| Error::Invalid {
            agent_id: id.to_string(),
            reason,
        };
        let program = match req.command.first() {
            Some(p) if !p.is_empty() => p.clone(),
            _ => {
                return Err(invalid(
                    "command must name a program (got an empty command)".into(),
                ));
            }
        };
        let timeouts = validate_timeouts(
            id.as_str(),
            req.stop_timeouts
                .as_deref()
                .unwrap_or(&DEFAULT_STOP_TIMEOUTS),
        )?;
        let verify_ms = req.verify_ms.unwrap_or(DEFAULT_VERIFY_MS);
        if verify_ms > MAX_VERIFY_MS {
            return Err(invalid(format!(
                "verify_ms must be at most {MAX_VERIFY_MS}; got {verify_ms}"
            )));
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format!(
                    "environment variable name {key:?} is not valid"
                )));
            }
        }
        for (what, path) in [("cwd", &req.cwd), ("agent_dir", &req.agent_dir)] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                return Err(invalid(format!(
                    "{what} must be an absolute path; got {}",
                    p.display()
                )));
            }
        }
        let agent_dir = req
            .agent_dir
            .clone()
            .unwrap_or_else(|| self.inner.config.state_dir.join("agents").join(id.as_str()));
        let cwd = req.cwd.clone().unwrap_or_else(|| agent_dir.clone());

        // Reserve the id: refused while a run of it is alive or being started.
        let restarts = {
            let agents = lock(&self.inner.agents);
            let mut reserved = lock(&self.inner.reserved);
            if reserved.contains(&id) {
                return Err(Error::Conflict {
                    agent_id: id.to_string(),
                    status: "spawning".into(),
                    pid: 0,
                });
            }
            let restarts = match agents.get(&id) {
                Some(a) => {
                    let status = a.status_now();
                    if status.is_live() {
                        return Err(Error::Conflict {
                            agent_id: id.to_string(),
                            status: status.to_string(),
                            pid: a.pid(),
                        });
                    }
                    a.restarts + 1
                }
                None => 0,
            };
            reserved.insert(id.clone());
            restarts
        };
        let _reservation = Reservation {
            inner: &self.inner,
            id: id.clone(),
        };

        std::fs::create_dir_all(&agent_dir)
            .map_err(|e| Error::os(&id, format!("create agent dir {}", agent_dir.display()), e))?;
        let open_log = |name: &str| -> Result<File> {
            let path = agent_dir.join(name);
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)
                .map_err(|e| Error::os(&id, format!("open {}", path.display()), e))
        };
        let stdout = open_log("stdout.log")?;
        let stderr = open_log("stderr.log")?;
        let stdin = File::open("/dev/null").map_err(|e| Error::os(&id, "open /dev/null", e))?;

        let mut record = RunRecord {
            run_id: 0,
            agent_id: id.to_string(),
            status: PersistentStatus::Spawning,
            command: req.command.clone(),
            cwd: cwd.clone(),
            agent_dir: agent_dir.clone(),
            env: req.env.clone(),
            labels: req.labels.clone(),
            stop_timeouts: timeouts,
            verify_ms,
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at: now_rfc3339(),
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
        };
        record.run_id = self.inner.store.insert_run(&record).await?;

        let leaf = self.new_leaf(&id, record.run_id);
        let stdio = Stdio {
            stdin: stdin.as_fd(),
            stdout: stdout.as_fd(),
            stderr: stderr.as_fd(),
        };
        let (started, leaf) = match self.start_process(&record, stdio, leaf.clone()) {
            Ok(started) => started,
            Err(source) => {
                if let (Some(leaf), Ok(root)) = (&leaf, &self.inner.cgroup) {
                    let _ = root.remove_leaf(leaf);
                }
                let reason = format!("cannot start {program:?}: {source}");
                record.status = PersistentStatus::Failed;
                record.ended_at = Some(now_rfc3339());
                record.end_reason = Some(reason.clone());
                self.inner
                    .store
                    .finish(
                        record.run_id,
                        Ending {
                            status: PersistentStatus::Failed,
                            ended_at: record.ended_at.clone().unwrap_or_default(),
                            exit_code: None,
                            exit_signal: None,
                            end_reason: reason,
                        },
                    )
                    .await?;
                let agent = Arc::new(Agent::new(record, restarts, None)?);
                lock(&self.inner.agents).insert(id.clone(), agent);
                tracing::warn!(agent_id = %id, error = %source, "spawn failed");
                return Err(Error::Spawn {
                    agent_id: id.to_string(),
                    program,
                    source,
                });
            }
        };
        let pid = started.pid();
        let first_status = if verify_ms == 0 {
            PersistentStatus::Running
        } else {
            PersistentStatus::Spawning
        };
        record.pid = Some(pid);
        record.start_ticks = Some(started.start_ticks());
        record.boot_id = Some(self.inner.boot_id.clone());
        let start_ticks = started.start_ticks();
        let mut agent = Agent::new(record, restarts, Some(Arc::new(started)))?;
        agent.leaf = leaf;
        let agent = Arc::new(agent);
        // Visible at once (the agent may report progress inside its window), but
        // its transitions wait for this commit: the exit watcher and progress
        // reports take the same lock.
        let transition = agent.transition.lock().await;
        lock(&self.inner.agents).insert(id.clone(), agent.clone());
        drop(_reservation);
        agent.refresh_sample(&self.inner.clock);
        self.watch(agent.clone());
        let committed = self
            .inner
            .store
            .set_process(
                agent.run_id,
                pid,
                start_ticks,
                self.inner.boot_id.clone(),
                first_status,
            )
            .await;
        if committed.is_ok() {
            lock(&agent.state).status = first_status;
        }
        drop(transition);
        tracing::info!(agent_id = %id, pid, "agent started");
        committed?;

        if verify_ms > 0 {
            let mut ended = agent.ended.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(verify_ms), ended.wait_for(|e| *e))
                .await;
            self.transition_to_running(&agent).await?;
            // A sample at the end of the window shows the settled process, not the
            // instant after exec.
            agent.refresh_sample(&self.inner.clock);
        }
        Ok(self.spawn_response(&agent))
    }

    /// Removes the empty cgroups of runs that are not alive (left by a daemon
    /// that died before it could remove them).
    fn sweep_stale_leaves(&self) {
        let Ok(root) = &self.inner.cgroup else { return };
        let live: HashSet<PathBuf> = lock(&self.inner.agents)
            .values()
            .filter(|a| a.status_now().is_live())
            .filter_map(|a| a.leaf.as_ref().map(|l| l.dir().to_owned()))
            .collect();
        let Ok(entries) = std::fs::read_dir(root.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || live.contains(&entry.path()) {
                continue;
            }
            let leaf = root.leaf(&entry.file_name().to_string_lossy());
            if leaf.populated() {
                tracing::warn!(cgroup = %leaf.dir().display(), "processes of an ended run are still running in its cgroup");
            } else if let Err(e) = root.remove_leaf(&leaf) {
                tracing::warn!(cgroup = %leaf.dir().display(), error = %e, "cannot remove a stale cgroup");
            }
        }
    }

    /// Creates the cgroup leaf for a new run, when cgroups are available.
    fn new_leaf(&self, id: &AgentId, run_id: i64) -> Option<Leaf> {
        let root = self.inner.cgroup.as_ref().ok()?;
        match root.create_leaf(&leaf_name(id.as_str(), run_id)) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(agent_id = %id, error = %e, "cannot create a cgroup; process-group containment only");
                None
            }
        }
    }

    /// Removes an ended run's cgroup once nothing is left in it.
    fn release_leaf(&self, agent: &Agent) {
        if let (Some(leaf), Ok(root)) = (&agent.leaf, &self.inner.cgroup)
            && !leaf.populated()
        {
            let _ = root.remove_leaf(leaf);
        }
    }

    /// Resolves the program against the agent's PATH and starts it.
    fn start_process(
        &self,
        record: &RunRecord,
        stdio: Stdio<'_>,
        leaf: Option<Leaf>,
    ) -> std::io::Result<(ProcessHandle, Option<Leaf>)> {
        let id = &record.agent_id;
        let program = record.command.first().map_or("", String::as_str);
        let cwd = record.cwd.as_path();
        let meta = std::fs::metadata(cwd).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("working directory {}: {e}", cwd.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("working directory {} is not a directory", cwd.display()),
            ));
        }
        let mut env: BTreeMap<OsString, OsString> = self.inner.base_env.iter().cloned().collect();
        for (k, v) in &record.env {
            env.insert(k.into(), v.into());
        }
        env.insert("CORRAL_AGENT_ID".into(), id.into());
        // Names this run: lets a restarted daemon find a process whose spawn it
        // could not record before it died.
        env.insert("CORRAL_RUN_ID".into(), record.run_id.to_string().into());
        if let Some(sock) = &self.inner.config.socket_path {
            env.insert("CORRAL_SOCKET".into(), sock.clone().into_os_string());
        }
        let path_var = env
            .get(std::ffi::OsStr::new("PATH"))
            .and_then(|p| p.to_str());
        let resolved = platform::resolve_program(program, path_var)?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                platform::c_string("environment variable", &kv)
            })
            .collect::<std::io::Result<Vec<CString>>>()?;
        let argv = record
            .command
            .iter()
            .map(|a| platform::c_string("argument", a.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let program_c = platform::c_path(&resolved)?;
        let cwd_c = platform::c_path(cwd)?;
        let procs = match &leaf {
            Some(leaf) => match leaf.open_dir() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(agent_id = %id, error = %e, "cannot open the cgroup; process-group containment only");
                    None
                }
            },
            None => None,
        };
        let leaf = match (leaf, &procs) {
            (Some(leaf), None) => {
                if let Ok(root) = &self.inner.cgroup {
                    let _ = root.remove_leaf(&leaf);
                }
                None
            }
            (leaf, _) => leaf,
        };
        let pid = {
            let mut owned = lock(&self.inner.owned);
            let pid = match &procs {
                Some(dir) => platform::spawn_into_cgroup(
                    &program_c,
                    &argv,
                    &envp,
                    &cwd_c,
                    &stdio,
                    dir.as_fd(),
                )?,
                None => platform::spawn(&program_c, &argv, &envp, Some(&cwd_c), &stdio)?,
            };
            owned.insert(pid.as_raw_nonzero().get());
            pid
        };
        match ProcessHandle::open(pid, None) {
            Ok(Some(handle)) => Ok((handle, leaf)),
            // Our own unreaped child cannot vanish; failing here means no fds left.
            Ok(None) => Err(std::io::Error::other(
                "the new process vanished before it could be watched",
            )),
            Err(e) => {
                platform::kill_and_reap_child(pid);
                lock(&self.inner.owned).remove(&pid.as_raw_nonzero().get());
                Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot watch the new process: {e}"),
                ))
            }
        }
    }

    fn spawn_response(&self, agent: &Agent) -> SpawnResponse {
        let status = agent.status(&self.inner.clock);
        let error = match status.persistent_status {
            PersistentStatus::Failed => {
                let tail = logs::tail(&agent.stderr_log(), STDERR_TAIL_LINES).unwrap_or_default();
                let why = status.end_reason.clone().unwrap_or_else(|| "failed".into());
                Some(if tail.trim().is_empty() {
                    format!(
                        "agent {} {why} during verification (stderr is empty)",
                        agent.id
                    )
                } else {
                    format!(
                        "agent {} {why} during verification; last stderr lines:\n{}",
                        agent.id,
                        tail.trim_end()
                    )
                })
            }
            _ => None,
        };
        SpawnResponse {
            agent_id: status.agent_id,
            pid: status.pid,
            status: status.persistent_status,
            started_at: status.started_at,
            stdout_log: status.stdout_log,
            stderr_log: status.stderr_log,
            exit_code: status.exit_code,
            exit_signal: status.exit_signal,
            error,
        }
    }

    async fn transition_to_running(&self, agent: &Agent) -> Result<()> {
        let _t = agent.transition.lock().await;
        if agent.status_now() != PersistentStatus::Spawning {
            return Ok(());
        }
        self.inner
            .store
            .set_status(agent.run_id, PersistentStatus::Running)
            .await?;
        lock(&agent.state).status = PersistentStatus::Running;
        tracing::info!(agent_id = %agent.id, pid = agent.pid(), "agent running");
        Ok(())
    }

    /// Starts the task that waits for the agent's exit.
    fn watch(&self, agent: Arc<Agent>) {
        let sup = self.clone();
        tokio::spawn(async move {
            let exit = sup.wait_exit(&agent).await;
            sup.record_exit(&agent, exit).await;
        });
    }

    /// Waits, without polling, until the agent's process exits; reaps it.
    async fn wait_exit(&self, agent: &Agent) -> Option<ExitKind> {
        let proc_ = agent.proc_.clone()?;
        // SAFETY: the pidfd is owned by the ProcessHandle, which the Arc keeps alive
        // (and never changes) for as long as the AsyncFd exists.
        let registered =
            unsafe { AsyncFd::register_with_interest(proc_.clone(), Interest::READABLE) };
        let afd = match registered {
            Ok(afd) => afd,
            Err(e) => {
                tracing::error!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "cannot watch the pidfd");
                return None;
            }
        };
        loop {
            let mut ready = match afd.readable().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "pidfd wait failed");
                    return None;
                }
            };
            match self.reap_agent(agent, &proc_) {
                Some(None) => return self.exit_from_kernel(agent, &proc_).await,
                Some(exit) => return exit,
                None => ready.clear_ready(),
            }
        }
    }

    /// The exit status of an agent that is not our child (re-adopted after a
    /// daemon restart), from the kernel through its pidfd. The kernel has it
    /// once the real parent has reaped the process; there is no event for that,
    /// so this asks again for a bounded time before giving up.
    async fn exit_from_kernel(&self, agent: &Agent, proc_: &ProcessHandle) -> Option<ExitKind> {
        const TRIES: u32 = 40;
        for _ in 0..TRIES {
            match proc_.exit_status_from_kernel() {
                Ok(Some(exit)) => {
                    lock(&agent.state).exit = Some(exit);
                    return Some(exit);
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::debug!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "the kernel gives no exit status (needs Linux 6.15)");
                    return None;
                }
            }
        }
        None
    }

    /// Reaps the agent's process if it has exited: `None` while it runs, else how
    /// it ended (`Some(None)` when the status is not ours to read: an agent
    /// re-adopted after a daemon restart has another parent).
    fn reap_agent(&self, agent: &Agent, proc_: &ProcessHandle) -> Option<Option<ExitKind>> {
        match proc_.try_reap() {
            Ok(Some(exit)) => {
                lock(&self.inner.owned).remove(&proc_.pid());
                let mut st = lock(&agent.state);
                st.exit = Some(exit);
                st.reaped = true;
                Some(Some(exit))
            }
            Ok(None) => None,
            Err(e) => {
                let mut st = lock(&agent.state);
                if !st.reaped {
                    tracing::debug!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "exit status not available");
                    st.reaped = true;
                }
                Some(st.exit)
            }
        }
    }

    async fn record_exit(&self, agent: &Agent, exit: Option<ExitKind>) {
        let _t = agent.transition.lock().await;
        if !agent.status_now().is_live() {
            return; // already recorded (by a reap sweep)
        }
        let runtime = agent.proc_.as_ref().map(|p| {
            platform::boottime_seconds()
                - p.start_ticks() as f64 / self.inner.clock.ticks_per_second
        });
        let stop_requested = lock(&agent.state).stop_requested;
        let (status, reason) = match exit {
            _ if stop_requested => (
                PersistentStatus::Cancelled,
                match exit {
                    Some(ExitKind::Code(c)) => format!("stopped on request; exited with code {c}"),
                    Some(ExitKind::Signal(s)) => {
                        format!("stopped on request; killed by {}", signal_name(s))
                    }
                    None => "stopped on request".to_owned(),
                },
            ),
            Some(ExitKind::Code(0)) => {
                (PersistentStatus::Completed, "exited with code 0".to_owned())
            }
            Some(ExitKind::Code(c)) => (PersistentStatus::Failed, format!("exited with code {c}")),
            Some(ExitKind::Signal(s)) => (
                PersistentStatus::Failed,
                format!("killed by {}", signal_name(s)),
            ),
            None => (
                PersistentStatus::Failed,
                "exit status lost: the agent was re-adopted after a daemon restart and the kernel did not report how it ended (needs Linux 6.15, and a parent that reaps it)".to_owned(),
            ),
        };
        let end = Ending {
            status,
            ended_at: now_rfc3339(),
            exit_code: match exit {
                Some(ExitKind::Code(c)) => Some(c),
                _ => None,
            },
            exit_signal: match exit {
                Some(ExitKind::Signal(s)) => Some(s),
                _ => None,
            },
            end_reason: reason,
        };
        if let Err(e) = self.inner.store.finish(agent.run_id, end.clone()).await {
            // The end is still shown (memory) and logged; the store keeps the run live,
            // and the next daemon start resolves it.
            tracing::error!(agent_id = %agent.id, pid = agent.pid(), error = %e, "cannot record the end of a run");
        }
        {
            let mut st = lock(&agent.state);
            st.status = end.status;
            st.ended_at = Some(end.ended_at);
            st.end_reason = Some(end.end_reason.clone());
            st.runtime_at_end = runtime;
            st.reaped = true;
        }
        self.release_leaf(agent);
        tracing::info!(agent_id = %agent.id, pid = agent.pid(), status = %end.status, reason = %end.end_reason, "agent ended");
        agent.ended.send_replace(true);
    }

    /// One agent's status: the seed's `get_agent_status`. Answers from memory
    /// (latest sample + a live pidfd check); never blocks on sampling.
    pub fn get_agent_status(&self, id: &AgentId) -> Result<AgentStatus> {
        Ok(self.agent(id)?.status(&self.inner.clock))
    }

    /// Every agent's status, by id: the seed's `monitor_all_agents`.
    pub fn monitor_all_agents(&self) -> BTreeMap<String, AgentStatus> {
        let agents: Vec<Arc<Agent>> = lock(&self.inner.agents).values().cloned().collect();
        agents
            .iter()
            .map(|a| (a.id.to_string(), a.status(&self.inner.clock)))
            .collect()
    }

    /// Counts by state and summed resources: the seed's `get_process_summary`.
    pub fn get_process_summary(&self) -> ProcessSummary {
        let mut sum = ProcessSummary::default();
        for status in self.monitor_all_agents().values() {
            sum.total += 1;
            match status.persistent_status {
                PersistentStatus::Spawning => sum.spawning += 1,
                PersistentStatus::Running => sum.running += 1,
                PersistentStatus::Completed => sum.completed += 1,
                PersistentStatus::Failed => sum.failed += 1,
                PersistentStatus::Cancelled => sum.cancelled += 1,
            }
            if status.is_zombie {
                sum.zombie += 1;
            }
            sum.total_memory_mb += status.memory_mb;
            sum.total_cpu_percent += status.cpu_percent;
        }
        sum
    }

    /// True when the agent is alive and not a zombie: the seed's `check_process_health`.
    pub fn check_process_health(&self, id: &AgentId) -> Result<bool> {
        Ok(self.health_report(id)?.healthy)
    }

    /// `check_process_health` with the health word.
    pub fn health_report(&self, id: &AgentId) -> Result<HealthReport> {
        let status = self.get_agent_status(id)?;
        Ok(HealthReport {
            agent_id: status.agent_id,
            healthy: status.health == Health::Healthy,
            health: status.health,
        })
    }

    /// Records progress reported by (or for) a live agent: 0–100 and an optional message.
    pub async fn set_progress(
        &self,
        id: &AgentId,
        progress: i64,
        message: Option<String>,
    ) -> Result<()> {
        let invalid = |reason: String| Error::Invalid {
            agent_id: id.to_string(),
            reason,
        };
        let progress = u8::try_from(progress)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| invalid(format!("progress must be 0–100; got {progress}")))?;
        if message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_PROGRESS_MESSAGE)
        {
            return Err(invalid(format!(
                "progress message must be at most {MAX_PROGRESS_MESSAGE} bytes"
            )));
        }
        let agent = self.settled_agent(id).await?;
        let _t = agent.transition.lock().await;
        let status = agent.status_now();
        if !status.is_live() {
            return Err(invalid(format!(
                "progress is only taken from a live agent; this run is {status}"
            )));
        }
        self.inner
            .store
            .set_progress(agent.run_id, progress, message.clone())
            .await?;
        let mut st = lock(&agent.state);
        st.progress = Some(progress);
        st.progress_message = message;
        Ok(())
    }

    /// Stops the agents `selector` picks, all at once, each through its stages
    /// (SIGTERM, wait, SIGTERM, wait, SIGKILL, wait; straight to SIGKILL with
    /// `force`): the seed's `cleanup`. `None` stops every agent.
    pub async fn cleanup(
        &self,
        selector: Option<&Selector>,
        opts: CleanupOptions,
    ) -> Result<Vec<StopReport>> {
        let targets: Vec<Arc<Agent>> = {
            let agents = lock(&self.inner.agents);
            let mut picked: Vec<_> = agents
                .values()
                .filter(|a| selector.is_none_or(|s| s.matches(&a.id)))
                .cloned()
                .collect();
            picked.sort_by(|a, b| a.id.cmp(&b.id));
            picked
        };
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        let override_timeouts = match &opts.stop_timeouts {
            Some(t) => Some(validate_timeouts("-", t)?),
            None => None,
        };
        let stops = targets.into_iter().map(|agent| {
            let sup = self.clone();
            let timeouts = override_timeouts.unwrap_or(agent.record.stop_timeouts);
            let force = opts.force;
            tokio::spawn(async move { sup.stop_one(&agent, timeouts, force).await })
        });
        let mut reports = Vec::new();
        for stop in stops.collect::<Vec<_>>() {
            match stop.await {
                Ok(report) => reports.push(report),
                Err(e) => tracing::error!(error = %e, "a stop task failed"),
            }
        }
        Ok(reports)
    }

    /// Stops one agent: the seed's `kill_agent`. True when it is gone afterwards.
    pub async fn kill_agent(&self, id: &AgentId, force: bool) -> Result<bool> {
        let agent = self.agent(id)?;
        let report = self
            .stop_one(&agent, agent.record.stop_timeouts, force)
            .await;
        Ok(report.stage != StopStage::Unkillable)
    }

    /// Runs one agent's stop sequence over its whole tree.
    ///
    /// Each stage signals every member (the agent's group through the agent's
    /// still-unreaped pid, every other member through a pidfd opened with its
    /// start time checked), then waits — on the members' pidfds, the agent's
    /// recorded end and the orphan reaper — until no member is left or the
    /// stage's time is up. Processes forked during the stop are found by
    /// re-reading the process table after every wake-up, and signalled too.
    async fn stop_one(&self, agent: &Agent, timeouts: [f64; 3], force: bool) -> StopReport {
        let began = Instant::now();
        let mut ended = agent.ended.subscribe();
        let Some(leader) = agent.proc_.clone().filter(|_| !*ended.borrow()) else {
            return self.stop_report(agent, StopStage::AlreadyEnded, began, None);
        };
        lock(&agent.state).stop_requested = true;
        let stages: Vec<(StopStage, Signal, f64)> = if force {
            vec![(StopStage::Kill, Signal::KILL, timeouts[2].max(1.0))]
        } else {
            vec![
                (StopStage::Term, Signal::TERM, timeouts[0]),
                (StopStage::SecondTerm, Signal::TERM, timeouts[1]),
                (StopStage::Kill, Signal::KILL, timeouts[2]),
            ]
        };
        let leader_id = (leader.pid(), leader.start_ticks());
        let mut seen: HashSet<(i32, u64)> = HashSet::new();
        for (stage, sig, wait) in stages {
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
            let mut signalled: HashSet<(i32, u64)> = HashSet::new();
            let mut handles: HashMap<(i32, u64), Arc<ProcessHandle>> = HashMap::new();
            let signal = if sig == Signal::KILL {
                "SIGKILL"
            } else {
                "SIGTERM"
            };
            tracing::info!(agent_id = %agent.id, pid = leader.pid(), stage = ?stage, "stop stage: sending {signal}");
            let data = serde_json::json!({"stage": stage, "signal": signal, "pid": leader.pid()});
            // Queued now, ahead of the end it leads to; its commit is awaited off the
            // signalling path.
            let recorded = self
                .inner
                .store
                .record_event(agent.run_id, "stop_stage", data);
            let (agent_id, pid) = (agent.id.to_string(), leader.pid());
            tokio::spawn(async move {
                if let Err(e) = recorded.committed().await {
                    tracing::error!(agent_id, pid, error = %e, "cannot record a stop stage");
                }
            });
            loop {
                let table = self
                    .inner
                    .tables
                    .fresh(Instant::now(), &self.inner.owned)
                    .await;
                let members = self.members(agent, &leader, &table, &seen);
                seen.extend(members.iter().map(|m| (m.pid, m.start_ticks)));
                let live: Vec<ProcEntry> =
                    members.iter().filter(|m| m.state != 'Z').copied().collect();
                if live.len() < members.len() && self.reap_orphans() > 0 {
                    continue; // zombies reparented to us are gone now: look again
                }
                if tree_is_dead(&members)
                    && *ended.borrow()
                    && !agent.leaf.as_ref().is_some_and(Leaf::populated)
                {
                    self.release_leaf(agent);
                    let descendants = seen.iter().filter(|m| **m != leader_id).count() as u32;
                    return self.stop_report(agent, stage, began, Some(descendants));
                }
                if sig == Signal::KILL
                    && let Some(leaf) = &agent.leaf
                    && let Err(e) = leaf.kill()
                {
                    tracing::warn!(agent_id = %agent.id, error = %e, "cgroup.kill failed");
                }
                for m in &live {
                    let key = (m.pid, m.start_ticks);
                    if !signalled.insert(key) {
                        continue;
                    }
                    if key == leader_id {
                        if let Err(e) = leader.signal_group(sig) {
                            tracing::warn!(agent_id = %agent.id, pid = m.pid, error = %e, "signal failed");
                        }
                        handles.insert(key, leader.clone());
                    } else if let Ok(Some(h)) = ProcessHandle::open_member(m.pid, m.start_ticks) {
                        // Identity checked through the pidfd: never a stranger.
                        let _ = h.signal(sig);
                        handles.insert(key, Arc::new(h));
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                // The agent itself is covered by `ended` (its pidfd is its watcher's).
                let waiting: Vec<Arc<ProcessHandle>> = live
                    .iter()
                    .filter(|m| (m.pid, m.start_ticks) != leader_id)
                    .filter_map(|m| handles.get(&(m.pid, m.start_ticks)).cloned())
                    .collect();
                let nothing_to_wait_on = waiting.is_empty() && *ended.borrow();
                let all_exited = async {
                    if nothing_to_wait_on {
                        // Only a non-empty cgroup or zombies of others are left,
                        // and neither has an event here: look again shortly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return;
                    }
                    for h in &waiting {
                        wait_exited(h).await;
                    }
                    let _ = ended.wait_for(|e| *e).await;
                };
                tokio::select! {
                    _ = all_exited => {}
                    _ = self.inner.reaped.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        let snapshot = self
            .inner
            .tables
            .fresh(Instant::now(), &self.inner.owned)
            .await;
        // Zombies are dead: the orphan reaper takes ours on their SIGCHLD.
        let left: Vec<ProcEntry> = self
            .members(agent, &leader, &snapshot, &seen)
            .into_iter()
            .filter(|m| m.state != 'Z')
            .collect();
        let descendants = seen.iter().filter(|m| **m != leader_id).count() as u32;
        if left.is_empty() && !*ended.borrow() {
            // Everything is dead; only the record of the agent's end is still on
            // its way (thousands of exits commit at once): wait for it, bounded.
            let _ = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(|e| *e)).await;
        }
        if left.is_empty() && *ended.borrow() && !agent.leaf.as_ref().is_some_and(Leaf::populated) {
            self.release_leaf(agent);
            self.stop_report(agent, StopStage::Kill, began, Some(descendants))
        } else {
            tracing::error!(agent_id = %agent.id, pid = leader.pid(), left = left.len(), "processes survived SIGKILL");
            self.stop_report(agent, StopStage::Unkillable, began, Some(descendants))
        }
    }

    /// The agent's tree in `table`.
    fn members(
        &self,
        agent: &Agent,
        leader: &ProcessHandle,
        table: &tree::Snapshot,
        known: &HashSet<(i32, u64)>,
    ) -> Vec<ProcEntry> {
        let unreaped = !lock(&agent.state).reaped;
        let contained = agent.leaf.as_ref().map(Leaf::pids).unwrap_or_default();
        tree::members(
            table,
            &tree::Lookup {
                leader: leader.pid(),
                leader_start: leader.start_ticks(),
                leader_unreaped: unreaped,
                daemon: std::process::id() as i32,
                known,
                agent_id: agent.id.as_str(),
                contained: &contained,
            },
        )
    }

    fn stop_report(
        &self,
        agent: &Agent,
        stage: StopStage,
        began: Instant,
        descendants: Option<u32>,
    ) -> StopReport {
        let st = lock(&agent.state);
        StopReport {
            agent_id: agent.id.to_string(),
            pid: agent.pid(),
            stage,
            duration_ms: began.elapsed().as_secs_f64() * 1000.0,
            exit_code: match st.exit {
                Some(ExitKind::Code(c)) => Some(c),
                _ => agent.record.exit_code,
            },
            exit_signal: match st.exit {
                Some(ExitKind::Signal(s)) => Some(s),
                _ => agent.record.exit_signal,
            },
            descendants_killed: descendants,
            persistent_status: st.status,
        }
    }
}

/// True when no member is alive: none at all, or only zombies whose parent is
/// not this daemon (a re-adopted agent's tree: reaping those is their parent's
/// job; zombies that are our children are reaped by us before this is asked).
fn tree_is_dead(members: &[ProcEntry]) -> bool {
    let me = std::process::id() as i32;
    members.iter().all(|m| m.state == 'Z' && m.ppid != me)
}

/// Resolves once the process behind `h` has exited (its pidfd is readable).
async fn wait_exited(h: &Arc<ProcessHandle>) {
    // SAFETY: the Arc keeps the ProcessHandle, and so its pidfd, alive and
    // unchanged for as long as the AsyncFd exists.
    let registered = unsafe { AsyncFd::register_with_interest(h.clone(), Interest::READABLE) };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Snapshots of the process table shared by concurrent stops: a request for a
/// table taken after instant T is answered by one scan however many ask.
struct TableCache {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<tree::Snapshot>)>>,
}

impl TableCache {
    fn new() -> Self {
        Self {
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// A snapshot taken at or after `after`; `owned` (the agents' own pids) tells
    /// orphans from agents.
    async fn fresh(&self, after: Instant, owned: &Mutex<HashSet<i32>>) -> Arc<tree::Snapshot> {
        let mut latest = self.latest.lock().await;
        if let Some((taken, table)) = latest.as_ref()
            && *taken >= after
        {
            return table.clone();
        }
        let taken = Instant::now();
        let owned = lock(owned).clone();
        let scan = tokio::task::spawn_blocking(move || {
            let mut snap = tree::Snapshot::new(platform::process_table());
            snap.attribute_orphans(
                std::process::id() as i32,
                &owned,
                platform::environ_agent_id,
            );
            snap
        });
        let table = Arc::new(
            scan.await
                .unwrap_or_else(|_| tree::Snapshot::new(Vec::new())),
        );
        tracing::debug!(
            took_us = taken.elapsed().as_micros() as u64,
            "process table scanned"
        );
        *latest = Some((taken, table.clone()));
        table
    }
}

fn sampler_loop(inner: Weak<Inner>, stop: mpsc::Receiver<()>, interval: Duration) {
    loop {
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let live: Vec<Arc<Agent>> = lock(&inner.agents)
            .values()
            .filter(|a| a.proc_.is_some() && !lock(&a.state).reaped)
            .cloned()
            .collect();
        for agent in live {
            agent.refresh_sample(&inner.clock);
        }
    }
}

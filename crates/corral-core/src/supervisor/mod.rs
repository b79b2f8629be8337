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

mod agent;
mod exit;
mod recover;
mod spawn;
mod stop;

use stop::TableCache;

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

    /// corral's cgroup subtree for this state dir, when agents are contained in cgroups.
    pub fn cgroup_subtree(&self) -> Option<&Path> {
        self.inner.cgroup.as_ref().ok().map(CgroupRoot::dir)
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

    fn agent(&self, id: &AgentId) -> Result<Arc<Agent>> {
        lock(&self.inner.agents)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                agent_id: id.to_string(),
            })
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

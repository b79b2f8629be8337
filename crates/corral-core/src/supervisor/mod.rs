//! The supervisor: a registry of agents, each owned by one task.
//!
//! Theory of operation:
//! - **One owner per agent.** Every agent id being supervised has an owner
//!   (`owner/`): one task that holds its one [`lifecycle::Lifecycle`] — the
//!   state on the wire (`starting`, `running`, `stopping`, `paused`,
//!   `backoff`, `ended`) with the data each state needs — changed only by
//!   [`lifecycle::Lifecycle::apply`], a pure function that refuses illegal
//!   moves. The owner takes commands over a channel, runs its stop stages as
//!   timers in its own loop, commits each transition to the store and only
//!   then publishes it. Nothing else writes an agent's rows.
//! - **A run ends with its tree.** Where a run executes is one type
//!   ([`execution::Execution`]: a process tree here, a job on an engine, or
//!   what is left of a run whose main process is gone). When the main process
//!   exits, what it left behind is stopped (cause `leftovers`) and the run is
//!   `ended` only when nothing of it is left in `/proc`.
//! - **Stops are durable.** A stop is on record before its first signal; a
//!   new daemon finishes it at its stored stage (`owner/adopt.rs`).
//! - **Pauses are durable.** A pause is on record before its tree is frozen,
//!   a resume after it is thawed; a new daemon freezes a paused run again
//!   and keeps it paused (`owner/pause.rs`, `execution/pause.rs`).
//! - **No agent without an owner.** An owner that fails is noticed at once:
//!   the failure is logged and a new owner takes the agent over from its
//!   record ([`launch`]).
//! - **Readers never wait.** Status, listings and summaries read each agent's
//!   last published [`view::View`] plus a live pidfd check, in microseconds.
//! - **The registry** maps ids to their owner's command channel and published
//!   view; spawning takes an id under its lock, so a live id cannot be taken
//!   twice, and an id is published (status and progress route) before its
//!   process exists. Requests whose client goes away do not cancel anything:
//!   the work belongs to the owner, which finishes it.
//! - **Blocking work off the async workers.** Process creation and file
//!   creation run on blocking threads, `/proc` scans too, SQLite in its writer
//!   thread; one sampler thread reads `/proc` once per interval for every
//!   agent and its tree (`sampler.rs`).
//! - **Reaping.** An agent's exit is read without reaping it; the process
//!   stays a zombie until its end is committed, then its owner reaps it
//!   through its pidfd. As a subreaper (the daemon), a SIGCHLD-driven sweep
//!   reaps orphans by pid, never an agent (`reaper.rs`).
//! - **Recovery.** On open, every run the store holds as not ended gets an
//!   owner that re-adopts it (same pid, start time and boot), finishes its
//!   stop, or records its end; planned restarts are resumed (`recover.rs`);
//!   `open` returns once every agent's first state is published, so the first
//!   answer is already true.
//!
//! The public methods are in `agents.rs` (spawning and reading) and `ops.rs`
//! (stopping, pausing, reaping, forgetting).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::id::AgentId;
use crate::model::{StopReport, StopStage};
use crate::platform::{self, cgroup::CgroupRoot};
use crate::store::Store;

mod agents;
mod ending;
mod execution;
mod helper;
pub(crate) mod history;
mod lane;
pub(crate) mod lifecycle;
mod limits;
mod ops;
mod owner;
mod policy;
mod probes;
mod reaper;
mod recover;
mod rotate;
mod sampler;
pub(crate) mod spec;
mod team_stop;
mod teams;
mod view;

pub use agents::Listed;
pub use spec::{
    DEFAULT_STOP_TIMEOUTS, DEFAULT_VERIFY_MS, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS,
    MAX_LOG_KEEP, MAX_PROGRESS_MESSAGE, MAX_RUNTIME_S, MAX_STOP_WAIT_S, MAX_VERIFY_MS,
    MIN_LOG_MAX_MB,
};
pub use teams::{MAX_TEAM_AGENTS, MAX_TEAM_CPU_PERCENT, MAX_TEAM_MEMORY_MB, MAX_TEAM_PIDS};
use view::{Published, View};

/// How a [`Supervisor`] is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `corral.db` and `agents/<id>/`.
    pub state_dir: PathBuf,
    /// Exported to agents as `CORRAL_SOCKET`, when there is a daemon socket.
    pub socket_path: Option<PathBuf>,
    /// The agent socket (reachable by every user, serving only agent routes):
    /// exported as `CORRAL_SOCKET` to agents that run as another user, who
    /// cannot reach the private socket.
    pub agent_socket_path: Option<PathBuf>,
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
    /// Without a cgroup, follow every fork of an agent's tree through the
    /// kernel's process-events connector where the kernel allows it (root):
    /// descendants that leave the session and clear their environment are
    /// still stopped with their agent. `false` keeps it off (stop reports
    /// then say when an escape cannot be excluded).
    pub proc_events: bool,
    /// Where agents whose request names no placement run (`None`: this host).
    pub default_placement: Option<crate::model::Placement>,
    /// Exported to agents placed on a cluster engine, besides their own
    /// environment (the daemon's TCP address and token file, so an agent on
    /// another host can report progress).
    pub job_env: BTreeMap<String, String>,
    /// Runs go to this fake platform instead of this host (the owner's
    /// deterministic tests).
    #[cfg(test)]
    pub(crate) fake: Option<Arc<execution::fake::FakeWorld>>,
}

impl Config {
    /// Defaults for a state dir: no socket, sampling every second.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            socket_path: None,
            agent_socket_path: None,
            sample_interval: Duration::from_secs(1),
            subreaper: false,
            cgroups: true,
            proc_events: true,
            default_placement: None,
            job_env: BTreeMap::new(),
            #[cfg(test)]
            fake: None,
        }
    }
}

/// What an agent's actor is asked to do.
pub(crate) enum Cmd {
    /// Stop the run's whole tree in stages (or at once with `force`).
    Stop {
        /// `User`, or `Parent` for an agent whose parent agent is being stopped.
        cause: crate::model::StopCause,
        timeouts: [f64; 3],
        force: bool,
        reply: oneshot::Sender<StopReport>,
    },
    /// Record self-reported progress.
    Progress {
        progress: u8,
        message: Option<String>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A probe of run `run` was checked.
    Probe { run: u32, report: probes::Report },
    /// The sampler saw run `run` over a limit it enforces, or its team over
    /// a budget: `event` is recorded and the run stopped (cause `limit`).
    Limit {
        run: u32,
        reason: String,
        event: crate::model::EventBody,
    },
    /// Record `event` on run `run` while it is the current one (a log the
    /// sampler had to truncate without a whole copy, a team's CPU crossing).
    Note {
        run: u32,
        event: crate::model::EventBody,
    },
    /// Record the end of a main process that has exited and is not on record
    /// yet (`reap_zombies`); answers whether this did.
    Reap { reply: oneshot::Sender<bool> },
    /// Freeze the run's whole tree (or, with `resume`, thaw it).
    Pause {
        resume: bool,
        reply: oneshot::Sender<Result<crate::model::PauseReport>>,
    },
    /// Fail (panic) on purpose: how tests make sure a failed owner is replaced.
    #[cfg(test)]
    Fail,
}

/// One agent id in the registry.
pub(crate) struct Slot {
    /// The actor's command channel (closed once it has ended).
    tx: mpsc::UnboundedSender<Cmd>,
    /// What its actor last published.
    published: watch::Receiver<Published>,
    /// Its record is being deleted: the id is taken until that is done.
    removing: bool,
}

impl Slot {
    fn busy(&self) -> bool {
        self.removing || self.published.borrow().busy
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Variables of the daemon's environment that no agent (nor a probe, nor an
/// engine command) inherits:
///
/// - corral's own, which name *this* process as an agent (when the daemon
///   itself was started from inside one); each agent gets its own values;
/// - the service manager's messages to the daemon's own process. Through
///   `NOTIFY_SOCKET` an agent could tell systemd that the daemon is ready,
///   stopping or reloading, or hand it a main pid; the watchdog and socket
///   activation variables name the daemon's pid and fds, not the agent's.
///   The daemon keeps them in its own environment (it sends `STOPPING=1`
///   when it stops).
const NOT_INHERITED: &[&str] = &[
    "CORRAL_AGENT_ID",
    "CORRAL_SOCKET",
    "CORRAL_RUN_ID",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// State shared by the registry, every actor, the sampler and the reaper.
pub(crate) struct Shared {
    pub config: Config,
    pub store: Store,
    pub boot_id: String,
    pub ticks_per_second: f64,
    pub page_size: u64,
    /// corral's cgroup subtree, or why there is none.
    pub cgroup: std::result::Result<CgroupRoot, String>,
    pub base_env: Vec<(OsString, OsString)>,
    /// Ordered by id: the members of a team (`TEAM.…`) are one range of it.
    pub registry: Mutex<BTreeMap<AgentId, Slot>>,
    /// Agents being stopped, with how many stops of each are under way: no
    /// agent is spawned below them meanwhile (see [`team_stop`]).
    pub teams_stopping: Mutex<HashMap<AgentId, usize>>,
    /// Spawns hold it shared from process creation until the new pid is in
    /// `owned`; the orphan sweep holds it exclusively, so it never takes an
    /// agent's exit status.
    pub spawn_gate: RwLock<()>,
    /// Pids of agents that are this process's children and not yet reaped.
    pub owned: Mutex<HashSet<i32>>,
    /// Bumped after every orphan sweep that reaped something.
    pub reaps: watch::Sender<u64>,
    /// Bumped whenever a failed owner is replaced (a stop waiting on it asks again).
    pub owners: watch::Sender<u64>,
    pub tables: execution::tree::TableCache,
    /// Reads and kills of cgroup leaves, for stops (see [`lane`]).
    pub cgroup_lane: lane::Lane,
    /// Removals of empty cgroup leaves.
    pub release_lane: lane::Lane,
    /// Bounds process creations running at once on blocking threads.
    pub spawn_permits: tokio::sync::Semaphore,
    /// Flips to true when the supervisor shuts down: actors leave their agents running.
    pub shutdown: watch::Sender<bool>,
    pub started: Instant,
    /// Counters since this supervisor opened (for `/metrics`).
    pub counters: Counters,
    /// When a write last reached the disk (health checks write only when this is old).
    pub last_write_ok: Mutex<Option<Instant>>,
    /// The Slurm engine, once an agent is placed there.
    pub slurm: std::sync::OnceLock<Arc<execution::slurm::Slurm>>,
    /// The process-events connector, opened with the first tree without a
    /// cgroup (none where the kernel refuses it or it is configured off).
    pub proc_events: std::sync::OnceLock<Option<Arc<platform::connector::ProcEvents>>>,
    /// The one timer of every run's probes, started with the first.
    pub probes: std::sync::OnceLock<probes::Scheduler>,
    /// How often the sampler passes: readers tell it when figures are wanted.
    pub pace: Arc<sampler::Pace>,
    /// Team budgets by team id, as committed (`teams.rs`). Taken after the
    /// registry's lock where both are held (a spawn's admission).
    pub teams: Mutex<BTreeMap<String, crate::model::TeamBudget>>,
    /// Changes of team budgets, one at a time (record, then map).
    pub team_writes: tokio::sync::Mutex<()>,
    /// Each agent's recent figures, written by the sampler (see [`history`]).
    pub history: Mutex<history::History>,
}

/// Counters since the supervisor opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Runs started (spawns and restarts).
    pub spawns: std::sync::atomic::AtomicU64,
    /// Stop stages begun, by stage: TERM, second TERM, KILL.
    pub stop_stages: [std::sync::atomic::AtomicU64; 3],
}

/// What `/metrics` reports beyond the agents' statuses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DaemonCounters {
    /// Runs started since the supervisor opened (spawns and restarts).
    pub spawns: u64,
    /// Stop stages begun since then: first SIGTERM, second SIGTERM, SIGKILL.
    pub stop_stages: [u64; 3],
    /// Full sampling passes since then (each a scan of the process table).
    pub sampler_passes: u64,
}

/// Owns the agents of one state dir. Cheap to clone; all clones share state.
/// When the last clone is dropped, supervision stops and the agents keep
/// running (as after [`Supervisor::shutdown`]).
///
/// Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct Supervisor {
    sh: Arc<Shared>,
    _last: Arc<LastHandle>,
}

/// Shuts supervision down when the last [`Supervisor`] handle goes (owners
/// hold the shared state too, so its own drop would never come), and removes
/// the cgroups of runs that have ended: their removal is queued to a blocking
/// thread as each run ends, and a process that exits right after a stop would
/// otherwise leave them behind (populated ones — agents that keep running —
/// stay, for the next supervisor).
struct LastHandle {
    shutdown: watch::Sender<bool>,
    sh: std::sync::Weak<Shared>,
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(sh) = self.sh.upgrade() {
            reaper::sweep_empty_leaves(&sh, false);
        }
    }
}

/// A short, stable tag for a state dir (FNV-1a of its path): names its cgroup subtree.
fn state_tag(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    format!("{:016x}", crate::model::fnv1a(dir.as_os_str().as_bytes()))
}

type Opened = (
    Store,
    String,
    std::result::Result<CgroupRoot, String>,
    BTreeMap<String, crate::model::TeamBudget>,
);

/// Opens what a supervisor keeps in its state dir (blocking): the private
/// dirs, the store and its team budgets, the boot id, and its cgroup subtree
/// (or why there is none).
fn open_state(config: &Config) -> Result<Opened> {
    let dir = &config.state_dir;
    platform::files::ensure_private_dir(dir).map_err(|source| Error::StateDir {
        path: dir.clone(),
        action: "use as the state dir",
        source,
    })?;
    platform::files::ensure_private_dir(&dir.join("agents")).map_err(|source| Error::StateDir {
        path: dir.join("agents"),
        action: "use as the agents dir",
        source,
    })?;
    #[cfg(test)]
    let store = if config.fake.is_some() {
        Store::open_inline(&dir.join("corral.db"))?
    } else {
        Store::open(&dir.join("corral.db"))?
    };
    #[cfg(not(test))]
    let store = Store::open(&dir.join("corral.db"))?;
    let boot_id = platform::boot_id().map_err(|source| Error::StateDir {
        path: "/proc/sys/kernel/random/boot_id".into(),
        action: "read the boot id",
        source,
    })?;
    let cgroup = if config.cgroups {
        CgroupRoot::discover(&state_tag(dir))
    } else {
        Err("disabled by configuration".to_owned())
    };
    let teams = store.teams()?.into_iter().collect();
    Ok((store, boot_id, cgroup, teams))
}

/// The cgroup leaf name of one run.
pub(crate) fn leaf_name(agent_id: &str, run: u32) -> String {
    format!("{agent_id}.{run}")
}

impl Supervisor {
    /// Opens the state dir (creating it private, refusing one others could write),
    /// loads the store and resolves every run the store still holds as live:
    /// re-adopted when the same process still runs (same pid, start time and
    /// boot), recorded as ended otherwise. Returns once every agent's first
    /// state is known.
    pub async fn open(config: Config) -> Result<Self> {
        let dir = config.state_dir.clone();
        let config_interval = config.sample_interval;
        let state_err = |action: &'static str| {
            let path = dir.clone();
            move |source| Error::StateDir {
                path,
                action,
                source,
            }
        };
        let (store, boot_id, cgroup, teams) = tokio::task::spawn_blocking({
            let config = config.clone();
            move || open_state(&config)
        })
        .await
        .map_err(|e| state_err("open")(std::io::Error::other(e)))??;
        match &cgroup {
            Ok(root) => {
                tracing::info!(cgroup = %root.dir().display(), "agents are contained in cgroups")
            }
            Err(why) => {
                tracing::info!(reason = %why, "no cgroup containment; using process groups and subreaping")
            }
        }
        let nofile = platform::raise_nofile_limit();
        tracing::debug!(nofile, "open-file limit");
        let sh = Arc::new(Shared {
            base_env: std::env::vars_os()
                .filter(|(k, _)| !k.to_str().is_some_and(|k| NOT_INHERITED.contains(&k)))
                .collect(),
            ticks_per_second: platform::clock_ticks_per_second() as f64,
            page_size: platform::page_size(),
            config,
            store,
            boot_id,
            cgroup,
            registry: Mutex::new(BTreeMap::new()),
            teams_stopping: Mutex::new(HashMap::new()),
            spawn_gate: RwLock::new(()),
            owned: Mutex::new(HashSet::new()),
            reaps: watch::Sender::new(0),
            owners: watch::Sender::new(0),
            tables: execution::tree::TableCache::new(),
            cgroup_lane: lane::Lane::new("corral-cgroups"),
            release_lane: lane::Lane::new("corral-rmdir"),
            spawn_permits: tokio::sync::Semaphore::new(8),
            shutdown: watch::Sender::new(false),
            started: Instant::now(),
            counters: Counters::default(),
            last_write_ok: Mutex::new(None),
            slurm: std::sync::OnceLock::new(),
            proc_events: std::sync::OnceLock::new(),
            probes: std::sync::OnceLock::new(),
            pace: Arc::new(sampler::Pace::new(config_interval)),
            teams: Mutex::new(teams),
            team_writes: tokio::sync::Mutex::new(()),
            history: Mutex::new(history::History::new()),
        });
        let sup = Self {
            _last: Arc::new(LastHandle {
                shutdown: sh.shutdown.clone(),
                sh: Arc::downgrade(&sh),
            }),
            sh,
        };
        if sup.sh.config.subreaper {
            platform::become_subreaper().map_err(state_err("become a child subreaper"))?;
            reaper::start_orphan_reaper(&sup.sh).map_err(state_err("listen for SIGCHLD"))?;
        }
        recover::load(&sup.sh).await?;
        sampler::start(&sup.sh).map_err(state_err("start the sampler thread"))?;
        Ok(sup)
    }

    /// Stops supervising without touching the agents (they keep running, as after
    /// a crash; the next supervisor on this state dir re-adopts them).
    pub fn shutdown(&self) {
        self.sh.shutdown.send_replace(true);
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.sh.config.state_dir
    }

    /// corral's cgroup subtree for this state dir, when agents are contained in cgroups.
    pub fn cgroup_subtree(&self) -> Option<&Path> {
        self.sh.cgroup.as_ref().ok().map(CgroupRoot::dir)
    }

    /// Counters since this supervisor opened.
    pub fn counters(&self) -> DaemonCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.sh.counters;
        DaemonCounters {
            spawns: c.spawns.load(Relaxed),
            stop_stages: [0, 1, 2].map(|i| c.stop_stages[i].load(Relaxed)),
            sampler_passes: self.sh.pace.passes(),
        }
    }

    /// How many sampling passes have completed: the agents' CPU and memory
    /// figures change only when this does, so a reader may keep what it
    /// derived from them until then (`/metrics` does).
    pub fn sample_generation(&self) -> u64 {
        self.sh.pace.passes()
    }

    /// How many agent ids the supervisor holds (without building a status).
    pub fn agent_count(&self) -> usize {
        lock(&self.sh.registry).len()
    }

    /// Seconds since this supervisor opened.
    pub fn uptime_s(&self) -> f64 {
        self.sh.started.elapsed().as_secs_f64()
    }

    /// Why changes are refused now (the store cannot take writes), if they are.
    pub fn store_failing(&self) -> Option<String> {
        self.sh.store.failing().borrow().clone()
    }

    /// Readiness: the store takes writes. Writes a heartbeat when nothing has
    /// reached the disk for a few seconds (a full disk fails it).
    pub async fn check_store(&self) -> Result<()> {
        if let Some(reason) = self.store_failing() {
            return Err(Error::Unavailable { reason });
        }
        let fresh =
            lock(&self.sh.last_write_ok).is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        if !fresh {
            self.sh.store.heartbeat().await?;
            *lock(&self.sh.last_write_ok) = Some(Instant::now());
        }
        Ok(())
    }

    pub(super) fn refuse_if_failing(&self) -> Result<()> {
        match self.store_failing() {
            Some(reason) => Err(Error::Unavailable { reason }),
            None => Ok(()),
        }
    }
}

/// Takes the id for a new owner and starts it; refused while an owner is at
/// work (unless `replace`: a failed owner's successor), and — for a new
/// agent (`admit`) — when it would put a team over `max_agents`. Returns what
/// the owner publishes.
pub(crate) fn launch(
    sh: &Arc<Shared>,
    spec: spec::Spec,
    start: owner::Start,
    replace: bool,
    admit: bool,
) -> Result<watch::Receiver<Published>> {
    let id = spec.id.clone();
    let mut reg = lock(&sh.registry);
    let previous = match reg.get(&id) {
        Some(slot) if slot.busy() && !replace => {
            let p = slot.published.borrow();
            let (status, pid) = match (&p.view, slot.removing) {
                (_, true) => ("being removed".to_owned(), None),
                (Some(v), _) => (v.state.to_string(), v.pid),
                _ => ("starting".to_owned(), None),
            };
            return Err(Error::Conflict {
                agent_id: id.to_string(),
                status,
                pid,
            });
        }
        Some(slot) => slot.published.borrow().view.clone(),
        None => None,
    };
    if !replace && matches!(start, owner::Start::Fresh(_)) {
        team_stop::refuse_spawn(sh, &id)?;
    }
    if admit {
        teams::admit(sh, &reg, &id)?;
    }
    let (publish, published) = watch::channel(Published {
        view: previous.clone(),
        busy: true,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    reg.insert(
        id.clone(),
        Slot {
            tx: tx.clone(),
            published: published.clone(),
            removing: false,
        },
    );
    drop(reg);
    let owner = owner::Owner::new(sh.clone(), Arc::new(spec), (tx, rx), publish, previous);
    let weak = Arc::downgrade(sh);
    tokio::spawn(async move {
        use futures_util::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(owner.run(start))
            .catch_unwind()
            .await;
        if let Err(panic) = outcome {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!(agent_id = %id, reason, "the agent's owner failed; a new owner takes it over from its record");
            if let Some(sh) = weak.upgrade() {
                relaunch(&sh, &id).await;
            }
        }
    });
    Ok(published)
}

/// Gives an agent whose owner failed a new one, from its newest stored run.
async fn relaunch(sh: &Arc<Shared>, id: &AgentId) {
    if *sh.shutdown.borrow() {
        return;
    }
    let shared = sh.clone();
    let key = id.clone();
    let found = blocking(move || {
        let record = shared.store.latest_run(key.as_str())?;
        Ok(record.map(|r| {
            let spec = recover::spec_of(&shared, &r, key.clone());
            (r, spec)
        }))
    })
    .await;
    match found {
        Ok(Some((record, spec))) => {
            match launch(
                sh,
                spec,
                owner::Start::Recover(Box::new(record)),
                true,
                false,
            ) {
                Ok(_) => {
                    sh.owners.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::error!(agent_id = %id, error = %e, "cannot give the agent a new owner");
                }
            }
        }
        Ok(None) => {
            lock(&sh.registry).remove(id);
        }
        Err(e) => {
            tracing::error!(agent_id = %id, error = %e, "cannot read the agent's record for a new owner");
        }
    }
}

/// The report of a stop that found nothing to stop.
pub(crate) fn already_ended(view: &View) -> StopReport {
    let status = view.status();
    StopReport {
        agent_id: view.id.to_string(),
        pid: view.pid,
        stage: StopStage::AlreadyEnded,
        duration_ms: 0.0,
        exit_code: status.exit_code,
        exit_signal: status.exit_signal,
        descendants_killed: None,
        persistent_status: view.status,
        complete: None,
        incomplete_reason: None,
    }
}

/// Now, on the runtime's clock: the real one — or, in tests that pause
/// tokio's clock, the paused one, so an owner's deadlines and its timers agree.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs blocking work (file system, `/proc`, SQLite reads) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::os(
            &"-",
            "a blocking task",
            std::io::Error::other(e.to_string()),
        ))
    })
}

#[cfg(test)]
mod tests;

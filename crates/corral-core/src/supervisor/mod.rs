//! The supervisor: a registry of agents, each owned by one actor.
//!
//! Theory of operation:
//! - **One owner per agent.** Every agent id being supervised has an actor
//!   (`actor.rs`): one task that owns its state as one enum (`state.rs`),
//!   takes commands over a channel (stop, progress, limit hits), runs its stop
//!   stages as timers in its own loop, commits each transition to the store and
//!   only then publishes it. Nothing else writes an agent's rows.
//! - **Readers never wait.** Status, listings and summaries read each agent's
//!   last published [`view::View`] plus a live pidfd check, in microseconds.
//! - **The registry** maps ids to their actor's command channel and published
//!   view; spawning takes an id under its lock, so a live id cannot be taken
//!   twice. Requests whose client goes away do not cancel anything: the work
//!   belongs to the actor, which finishes it.
//! - **Blocking work off the async workers.** Process creation and file
//!   creation run on blocking threads (`run.rs`), `/proc` scans too, SQLite in
//!   its writer thread; one sampler thread reads `/proc` once per interval for
//!   every agent and its tree (`sampler.rs`).
//! - **Reaping.** An agent's exit is read without reaping it; the process
//!   stays a zombie until its end is committed, then its owner reaps it through
//!   its pidfd. As a subreaper (the daemon), a SIGCHLD-driven sweep reaps
//!   orphans by pid, never an agent (`exit.rs`).
//! - **Recovery.** On open, every run the store holds as live gets an actor
//!   that re-adopts it (same pid, start time and boot) or records its end, and
//!   planned restarts are resumed (`recover.rs`); `open` returns once every
//!   agent's first state is published, so the first answer is already true.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::id::{AgentId, Selector};
use crate::model::{
    AgentStatus, CleanupOptions, HealthReport, KillResponse, PersistentStatus, ProcessSummary,
    ProgressUpdate, Removal, RunInfo, SpawnRequest, SpawnResponse, StopReport, StopStage,
};
use crate::platform::{self, cgroup::CgroupRoot};
use crate::store::{self, Store};

mod actor;
mod exit;
mod helper;
mod limits;
mod placement;
mod policy;
mod probes;
mod recover;
mod rotate;
mod run;
mod sampler;
pub(crate) mod spec;
pub(crate) mod state;
mod stop;
mod view;

pub use spec::{
    DEFAULT_STOP_TIMEOUTS, DEFAULT_VERIFY_MS, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS,
    MAX_LOG_KEEP, MAX_PROGRESS_MESSAGE, MAX_STOP_WAIT_S, MAX_VERIFY_MS, MIN_LOG_MAX_MB,
};
use view::{Published, View};

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
    /// Where agents whose request names no placement run (`None`: this host).
    pub default_placement: Option<crate::model::Placement>,
    /// Exported to agents placed on a cluster engine, besides their own
    /// environment (the daemon's TCP address and token file, so an agent on
    /// another host can report progress).
    pub job_env: BTreeMap<String, String>,
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
            default_placement: None,
            job_env: BTreeMap::new(),
        }
    }
}

/// What an agent's actor is asked to do.
pub(crate) enum Cmd {
    /// Stop the run's whole tree in stages (or at once with `force`).
    Stop {
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
    Probe { run: u32, outcome: probes::Outcome },
    /// The sampler saw run `run` over a limit it enforces.
    Limit {
        run: u32,
        reason: String,
        data: serde_json::Value,
    },
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
    pub registry: Mutex<HashMap<AgentId, Slot>>,
    /// Spawns hold it shared from process creation until the new pid is in
    /// `owned`; the orphan sweep holds it exclusively, so it never takes an
    /// agent's exit status.
    pub spawn_gate: RwLock<()>,
    /// Pids of agents that are this process's children and not yet reaped.
    pub owned: Mutex<HashSet<i32>>,
    /// Bumped after every orphan sweep that reaped something.
    pub reaps: watch::Sender<u64>,
    pub tables: stop::TableCache,
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
    pub slurm: std::sync::OnceLock<Arc<placement::slurm::Slurm>>,
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

/// Shuts supervision down when the last [`Supervisor`] handle goes (actors
/// hold the shared state too, so its own drop would never come).
struct LastHandle(watch::Sender<bool>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A short, stable tag for a state dir (FNV-1a of its path): names its cgroup subtree.
fn state_tag(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
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
        let state_err = |action: &'static str| {
            let path = dir.clone();
            move |source| Error::StateDir {
                path,
                action,
                source,
            }
        };
        let (store, boot_id, cgroup) = tokio::task::spawn_blocking({
            let config = config.clone();
            move || -> Result<_> {
                let dir = &config.state_dir;
                platform::files::ensure_private_dir(dir).map_err(|source| Error::StateDir {
                    path: dir.clone(),
                    action: "use as the state dir",
                    source,
                })?;
                platform::files::ensure_private_dir(&dir.join("agents")).map_err(|source| {
                    Error::StateDir {
                        path: dir.join("agents"),
                        action: "use as the agents dir",
                        source,
                    }
                })?;
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
                Ok((store, boot_id, cgroup))
            }
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
                .filter(|(k, _)| {
                    !matches!(
                        k.to_str(),
                        Some("CORRAL_AGENT_ID" | "CORRAL_SOCKET" | "CORRAL_RUN_ID")
                    )
                })
                .collect(),
            ticks_per_second: platform::clock_ticks_per_second() as f64,
            page_size: platform::page_size(),
            config,
            store,
            boot_id,
            cgroup,
            registry: Mutex::new(HashMap::new()),
            spawn_gate: RwLock::new(()),
            owned: Mutex::new(HashSet::new()),
            reaps: watch::Sender::new(0),
            tables: stop::TableCache::new(),
            spawn_permits: tokio::sync::Semaphore::new(8),
            shutdown: watch::Sender::new(false),
            started: Instant::now(),
            counters: Counters::default(),
            last_write_ok: Mutex::new(None),
            slurm: std::sync::OnceLock::new(),
        });
        let sup = Self {
            _last: Arc::new(LastHandle(sh.shutdown.clone())),
            sh,
        };
        if sup.sh.config.subreaper {
            platform::become_subreaper().map_err(state_err("become a child subreaper"))?;
            exit::start_orphan_reaper(&sup.sh).map_err(state_err("listen for SIGCHLD"))?;
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
        }
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

    fn refuse_if_failing(&self) -> Result<()> {
        match self.store_failing() {
            Some(reason) => Err(Error::Unavailable { reason }),
            None => Ok(()),
        }
    }

    /// Stored events after `seq` (oldest first, at most `limit`).
    pub async fn events_since(&self, seq: i64, limit: usize) -> Result<Vec<crate::model::Event>> {
        let store = self.sh.store.clone();
        blocking(move || store.events_since(seq, limit)).await
    }

    /// Watches the newest event's sequence number (changes after each commit that adds events).
    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.sh.store.subscribe_events()
    }

    fn published(&self, id: &AgentId) -> Result<(Published, mpsc::UnboundedSender<Cmd>)> {
        let reg = lock(&self.sh.registry);
        match reg.get(id) {
            Some(slot) if slot.published.borrow().view.is_some() => {
                Ok((slot.published.borrow().clone(), slot.tx.clone()))
            }
            _ => Err(Error::NotFound {
                agent_id: id.to_string(),
            }),
        }
    }

    fn view(&self, id: &AgentId) -> Result<Arc<View>> {
        self.published(id)?.0.view.ok_or_else(|| Error::NotFound {
            agent_id: id.to_string(),
        })
    }

    /// Every agent's latest view, by id.
    fn views(&self) -> Vec<Arc<View>> {
        lock(&self.sh.registry)
            .values()
            .filter_map(|slot| slot.published.borrow().view.clone())
            .collect()
    }

    /// One agent's status: the seed's `get_agent_status`. Answers from the
    /// agent's last committed state and a live check of its process.
    pub fn get_agent_status(&self, id: &AgentId) -> Result<AgentStatus> {
        Ok(self.view(id)?.status())
    }

    /// Every agent's status, by id: the seed's `monitor_all_agents`.
    pub fn monitor_all_agents(&self) -> BTreeMap<String, AgentStatus> {
        self.views()
            .iter()
            .map(|v| (v.id.to_string(), v.status()))
            .collect()
    }

    /// Counts by state and summed resources: the seed's `get_process_summary`.
    pub fn get_process_summary(&self) -> ProcessSummary {
        let mut sum = ProcessSummary::default();
        for status in self.views().iter().map(|v| v.status()) {
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
            healthy: status.health == crate::model::Health::Healthy,
            health: status.health,
        })
    }

    /// Starts an agent and verifies it: the seed's `spawn_agent`.
    ///
    /// Returns an error, with the OS reason, when the program cannot be started
    /// (the run is then recorded as failed). Otherwise answers at the end of the
    /// verification window (`verify_ms`; at once after a successful exec with 0),
    /// or as soon as the agent exits inside it: it is then reported `completed`
    /// or `failed` with its exit code and the tail of its stderr. The work goes
    /// on if the caller stops waiting.
    ///
    /// An agent placed on a cluster engine (`placement`, or the supervisor's
    /// [`Config::default_placement`]) answers once its job ran through the
    /// window, or ended, or after 5 s in the engine's queue (`spawning`, with
    /// the engine's pending reason in `placement`).
    pub async fn spawn_agent(&self, mut req: SpawnRequest) -> Result<SpawnResponse> {
        self.refuse_if_failing()?;
        if req.placement.is_none() {
            req.placement = self.sh.config.default_placement.clone();
        }
        let user = self.resolve_user(&req).await?;
        let spec = spec::check(req, &self.sh.config.state_dir, user)?;
        let (reply, answer) = oneshot::channel();
        self.launch(spec, actor::Start::Fresh(Some(reply)))?;
        answer.await.unwrap_or(Err(Error::StoreClosed))
    }

    /// Spawns many agents at once: every verification window runs at the same
    /// time, and one bad request fails alone. Results are in request order.
    pub async fn spawn_batch(&self, reqs: Vec<SpawnRequest>) -> Vec<Result<SpawnResponse>> {
        let spawns = reqs.into_iter().map(|req| {
            let sup = self.clone();
            async move { sup.spawn_agent(req).await }
        });
        let results = futures_util::future::join_all(spawns).await;
        // A burst of spawns leaves the allocator holding the peak of all their
        // work at once; give what is free back to the system (a few ms).
        let _ = tokio::task::spawn_blocking(platform::release_free_memory).await;
        results
    }

    async fn resolve_user(&self, req: &SpawnRequest) -> Result<Option<platform::files::User>> {
        let Some(name) = req.user.clone() else {
            return Ok(None);
        };
        let id = crate::model::elide(&req.agent_id, 100);
        if !rustix::process::geteuid().is_root() {
            return Err(Error::invalid(
                &id,
                format!(
                    "user {name:?}: agents can run as another user only when the daemon runs as root (it runs as uid {})",
                    rustix::process::geteuid().as_raw()
                ),
            ));
        }
        let looked_up = {
            let name = name.clone();
            blocking(move || Ok(platform::files::lookup_user(&name))).await?
        };
        match looked_up {
            Ok(Some(user)) => Ok(Some(user)),
            Ok(None) => Err(Error::invalid(&id, format!("user {name:?} does not exist"))),
            Err(e) => Err(Error::invalid(
                &id,
                format!("user {name:?}: cannot look it up: {e}"),
            )),
        }
    }

    fn launch(&self, spec: spec::Spec, start: actor::Start) -> Result<()> {
        launch(&self.sh, spec, start).map(drop)
    }

    /// Records progress reported by (or for) a live agent: 0–100 and an optional
    /// message. `caller` is the pid of the process that sent it, when known (a
    /// Unix-socket peer): a process inside another agent is refused.
    pub async fn set_progress(
        &self,
        id: &AgentId,
        update: ProgressUpdate,
        caller: Option<i32>,
    ) -> Result<AgentStatus> {
        self.refuse_if_failing()?;
        let progress = u8::try_from(update.progress)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| {
                Error::invalid(
                    id,
                    format!("progress must be 0–100; got {}", update.progress),
                )
            })?;
        if update
            .message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_PROGRESS_MESSAGE)
        {
            return Err(Error::invalid(
                id,
                format!("progress message must be at most {MAX_PROGRESS_MESSAGE} bytes"),
            ));
        }
        if let Some(pid) = caller
            && let Some(sender) = self.agent_of_process(pid).await
            && &sender != id
        {
            return Err(Error::Forbidden {
                agent_id: id.to_string(),
                reason: format!(
                    "progress for {id} was sent from inside agent {sender} (pid {pid}); an agent reports only for itself"
                ),
            });
        }
        let (published, tx) = self.published(id)?;
        let (reply, answer) = oneshot::channel();
        let sent = tx.send(Cmd::Progress {
            progress,
            message: update.message,
            reply,
        });
        let not_live = || {
            let status = published
                .view
                .as_ref()
                .map_or("unknown".into(), |v| v.status.to_string());
            Error::invalid(
                id,
                format!("progress is only taken from a live agent; this run is {status}"),
            )
        };
        if sent.is_err() {
            return Err(not_live());
        }
        answer.await.unwrap_or_else(|_| Err(not_live()))?;
        self.get_agent_status(id)
    }

    /// The agent a process belongs to: by its cgroup leaf, else by its session or
    /// an ancestor being an agent, else by the `CORRAL_AGENT_ID` it inherited.
    pub async fn agent_of_process(&self, pid: i32) -> Option<AgentId> {
        let live: HashMap<i32, AgentId> = self
            .views()
            .iter()
            .filter_map(|v| v.proc_.as_ref().map(|p| (p.handle.pid(), v.id.clone())))
            .collect();
        let root = self.sh.cgroup.as_ref().ok().map(|r| r.dir().to_owned());
        blocking(move || Ok(exit::agent_of_process(pid, &live, root.as_deref())))
            .await
            .ok()
            .flatten()
    }

    /// Stops the agents `selector` picks, all at once, each through its stages
    /// (SIGTERM, wait, SIGTERM, wait, SIGKILL, wait; straight to SIGKILL with
    /// `force`): the seed's `cleanup`. `None` stops every agent. An agent waiting
    /// to restart is not restarted.
    pub async fn cleanup(
        &self,
        selector: Option<&Selector>,
        opts: CleanupOptions,
    ) -> Result<Vec<StopReport>> {
        self.stop_selected(selector, opts, false).await
    }

    /// [`Self::cleanup`], leaving out agents that had already ended when `live_only`.
    pub async fn stop_selected(
        &self,
        selector: Option<&Selector>,
        opts: CleanupOptions,
        live_only: bool,
    ) -> Result<Vec<StopReport>> {
        self.refuse_if_failing()?;
        let timeouts = match &opts.stop_timeouts {
            Some(t) => Some(spec::stop_timeouts("-", t)?),
            None => None,
        };
        let mut targets: Vec<(Arc<View>, bool, mpsc::UnboundedSender<Cmd>)> =
            lock(&self.sh.registry)
                .iter()
                .filter(|(id, _)| selector.is_none_or(|s| s.matches(id)))
                .filter_map(|(_, slot)| {
                    let p = slot.published.borrow();
                    p.view.clone().map(|v| (v, p.busy, slot.tx.clone()))
                })
                .filter(|(_, busy, _)| *busy || !live_only)
                .collect();
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
            && !live_only
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        targets.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let stops = targets.into_iter().map(|(view, busy, tx)| {
            let timeouts = timeouts.unwrap_or(view.spec.stop_timeouts);
            let force = opts.force;
            async move {
                if busy {
                    let (reply, answer) = oneshot::channel();
                    if tx
                        .send(Cmd::Stop {
                            timeouts,
                            force,
                            reply,
                        })
                        .is_ok()
                        && let Ok(report) = answer.await
                    {
                        return report;
                    }
                }
                already_ended(&view)
            }
        });
        Ok(futures_util::future::join_all(stops).await)
    }

    /// Stops one agent: the seed's `kill_agent` (the staged stop, or SIGKILL at
    /// once with `force`). True when this call ended it.
    pub async fn kill_agent(&self, id: &AgentId, force: bool) -> Result<bool> {
        Ok(self.kill(id, force).await?.killed)
    }

    /// [`Self::kill_agent`] with the stop's report.
    pub async fn kill(&self, id: &AgentId, force: bool) -> Result<KillResponse> {
        let mut reports = self
            .cleanup(
                Some(&Selector::One(id.clone())),
                CleanupOptions {
                    force,
                    stop_timeouts: None,
                },
            )
            .await?;
        let report = reports.pop().ok_or_else(|| Error::NotFound {
            agent_id: id.to_string(),
        })?;
        Ok(KillResponse {
            agent_id: id.to_string(),
            killed: !matches!(
                report.stage,
                StopStage::AlreadyEnded | StopStage::Unkillable
            ),
            report,
        })
    }

    /// Sweeps for anything not yet reaped: orphans of agents. Returns the ids of
    /// agents this sweep had to reap itself — normally none, since every agent's
    /// exit is reaped by its owner the moment its end is recorded.
    pub async fn reap_zombies(&self) -> Vec<String> {
        let sh = self.sh.clone();
        let orphans = blocking(move || Ok(exit::reap_orphans(&sh)))
            .await
            .unwrap_or(0);
        tracing::info!(orphans, "reap sweep");
        Vec::new()
    }

    /// Waits until the agent's current run has ended and will not be restarted;
    /// its status then. [`Error::Timeout`] after `timeout`.
    pub async fn wait(&self, id: &AgentId, timeout: Duration) -> Result<AgentStatus> {
        let mut published = {
            let reg = lock(&self.sh.registry);
            match reg.get(id) {
                Some(slot) if slot.published.borrow().view.is_some() => slot.published.clone(),
                _ => {
                    return Err(Error::NotFound {
                        agent_id: id.to_string(),
                    });
                }
            }
        };
        let done = published.wait_for(|p| !p.busy);
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(p)) => p
                .view
                .as_ref()
                .map(|v| v.status())
                .ok_or_else(|| Error::NotFound {
                    agent_id: id.to_string(),
                }),
            // The owner was replaced (a new spawn of the id): report its current state.
            Ok(Err(_)) => self.get_agent_status(id),
            Err(_) => Err(Error::Timeout {
                agent_id: id.to_string(),
                waited_s: timeout.as_secs_f64(),
            }),
        }
    }

    /// Every stored run of an agent, oldest first.
    pub async fn runs(&self, id: &AgentId) -> Result<Vec<RunInfo>> {
        let store = self.sh.store.clone();
        let key = id.to_string();
        let runs = blocking(move || store.runs(&key)).await?;
        if runs.is_empty() {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        Ok(runs.iter().map(run_info).collect())
    }

    /// The log file of run `run` (the current run when `None`) and stream
    /// (`stdout` or `stderr`), and whether that run is still going.
    pub async fn log_file(
        &self,
        id: &AgentId,
        run: Option<u32>,
        stderr: bool,
    ) -> Result<(PathBuf, bool)> {
        let current = self.view(id)?;
        let name = if stderr { "stderr.log" } else { "stdout.log" };
        match run {
            None => Ok((current.log_dir.join(name), current.status.is_live())),
            Some(n) if n == current.run => {
                Ok((current.log_dir.join(name), current.status.is_live()))
            }
            Some(n) => {
                let store = self.sh.store.clone();
                let key = id.to_string();
                let rec = blocking(move || store.run(&key, n)).await?;
                let rec = rec.ok_or_else(|| Error::RunNotFound {
                    agent_id: id.to_string(),
                    run: n,
                    last: current.run,
                })?;
                Ok((rec.log_dir.join(name), rec.status.is_live()))
            }
        }
    }

    /// Forgets an agent whose current run has ended: every stored run of it, and
    /// its logs when they are in the default place (`<state dir>/agents/<id>`).
    /// A supervised agent is refused (stop it first).
    pub async fn remove_agent(&self, id: &AgentId) -> Result<Removal> {
        self.refuse_if_failing()?;
        let view = {
            let mut reg = lock(&self.sh.registry);
            let slot = reg.get_mut(id).ok_or_else(|| Error::NotFound {
                agent_id: id.to_string(),
            })?;
            let view = slot.published.borrow().view.clone();
            let Some(view) = view else {
                return Err(Error::NotFound {
                    agent_id: id.to_string(),
                });
            };
            if slot.busy() {
                return Err(Error::Conflict {
                    agent_id: id.to_string(),
                    status: view.status.to_string(),
                    pid: view.pid,
                });
            }
            slot.removing = true;
            view
        };
        // Finished by a task of its own: a client that goes away does not leave
        // the registry and the store disagreeing.
        let sh = self.sh.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let removed = sh
                .store
                .commit(store::delete_agent(id.as_str(), view.run_id))
                .await;
            {
                let mut reg = lock(&sh.registry);
                match &removed {
                    Ok(_) => {
                        reg.remove(&id);
                    }
                    Err(_) => {
                        if let Some(slot) = reg.get_mut(&id) {
                            slot.removing = false;
                        }
                    }
                }
            }
            let n = removed?;
            remove_default_logs(&sh, &id).await;
            tracing::info!(agent_id = %id, runs_removed = n, "agent removed");
            Ok(Removal {
                removed: vec![id.to_string()],
                runs_removed: n as u64,
            })
        })
        .await
        .unwrap_or(Err(Error::StoreClosed))
    }

    /// Removes every ended run from the store: agents whose current run has
    /// ended are forgotten (with their default logs); supervised agents keep
    /// their current run.
    pub async fn prune(&self) -> Result<Removal> {
        self.refuse_if_failing()?;
        let (forget, keep): (Vec<AgentId>, Vec<i64>) = {
            let mut reg = lock(&self.sh.registry);
            let mut forget = Vec::new();
            let mut keep = Vec::new();
            for (id, slot) in reg.iter_mut() {
                let view = slot.published.borrow().view.clone();
                if slot.busy() {
                    keep.extend(view.map(|v| v.run_id));
                } else {
                    slot.removing = true;
                    forget.push(id.clone());
                }
            }
            (forget, keep)
        };
        let sh = self.sh.clone();
        tokio::spawn(async move {
            let rows = Arc::new(Mutex::new(Vec::new()));
            let pruned = sh.store.commit(store::prune(keep, rows.clone())).await;
            {
                let mut reg = lock(&sh.registry);
                for id in &forget {
                    match pruned {
                        Ok(_) => reg.remove(id),
                        Err(_) => {
                            if let Some(slot) = reg.get_mut(id) {
                                slot.removing = false;
                            }
                            None
                        }
                    };
                }
            }
            let runs_removed = pruned? as u64;
            for id in &forget {
                remove_default_logs(&sh, id).await;
            }
            // Earlier runs' logs of agents still supervised, in the default place.
            let default_root = sh.config.state_dir.join("agents");
            let dirs: Vec<PathBuf> = lock(&rows)
                .iter()
                .filter(|(id, dir)| {
                    dir.starts_with(&default_root) && !forget.iter().any(|f| f.as_str() == id)
                })
                .map(|(_, dir)| dir.clone())
                .collect();
            let _ = blocking(move || {
                for dir in dirs {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Ok(())
            })
            .await;
            let mut removed: Vec<String> = forget.iter().map(ToString::to_string).collect();
            removed.sort();
            tracing::info!(agents = removed.len(), runs_removed, "pruned ended runs");
            Ok(Removal {
                removed,
                runs_removed,
            })
        })
        .await
        .unwrap_or(Err(Error::StoreClosed))
    }
}

/// Takes the id for a new owner and starts it; refused while an owner is at
/// work. Returns what the owner publishes.
pub(crate) fn launch(
    sh: &Arc<Shared>,
    spec: spec::Spec,
    start: actor::Start,
) -> Result<watch::Receiver<Published>> {
    let id = spec.id.clone();
    let mut reg = lock(&sh.registry);
    let previous = match reg.get(&id) {
        Some(slot) if slot.busy() => {
            let p = slot.published.borrow();
            let (status, pid) = match (&p.view, slot.removing) {
                (_, true) => ("being removed".to_owned(), None),
                (Some(v), _) if v.tag == state::Tag::Backoff => {
                    ("waiting to restart".to_owned(), None)
                }
                (Some(v), _) if v.status.is_live() => (v.status.to_string(), v.pid),
                _ => ("spawning".to_owned(), None),
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
    let (publish, published) = watch::channel(Published {
        view: previous.clone(),
        busy: true,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    reg.insert(
        id,
        Slot {
            tx: tx.clone(),
            published: published.clone(),
            removing: false,
        },
    );
    drop(reg);
    let actor = actor::Actor::new(
        sh.clone(),
        Arc::new(spec),
        (tx.clone(), rx),
        publish,
        previous,
    );
    tokio::spawn(actor.run(start));
    Ok(published)
}

fn run_info(rec: &store::RunRecord) -> RunInfo {
    RunInfo {
        run: rec.run,
        pid: rec.pid,
        started_at: rec.started_at.clone(),
        ended_at: rec.ended_at.clone(),
        persistent_status: rec.status,
        exit_code: rec.exit_code,
        exit_signal: rec.exit_signal,
        end_reason: rec.end_reason.clone(),
        stdout_log: rec.log_dir.join("stdout.log"),
        stderr_log: rec.log_dir.join("stderr.log"),
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
    }
}

async fn remove_default_logs(sh: &Shared, id: &AgentId) {
    let dir = sh.config.state_dir.join("agents").join(id.as_str());
    let id = id.clone();
    let _ = blocking(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(agent_id = %id, error = %e, "cannot remove the agent's logs");
        }
        Ok(())
    })
    .await;
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

//! The supervisor's public methods for spawning agents and reading them:
//! spawns (one or a batch), statuses, listings, the summary, health,
//! progress, waiting, runs and log files, events. Every read answers from the
//! owners' published views (and the store for history), never from an owner
//! itself: a read never waits for an agent's work.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::id::AgentId;
use crate::model::{
    AgentHistory, AgentStatus, HealthReport, PersistentStatus, ProcessSummary, ProgressUpdate,
    RunInfo, SpawnRequest, SpawnResponse,
};
use crate::platform;

use super::view::{Published, View};
use super::{Cmd, MAX_PROGRESS_MESSAGE, Supervisor, blocking, lock, owner, reaper, spec};
use crate::store;

/// What a listing's filter sees of an agent, before any status is built
/// (see [`Supervisor::monitor_agents`]).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// The agent's id.
    pub id: &'a AgentId,
    /// Its lifecycle state.
    pub state: crate::model::AgentState,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The node its run was placed on (its status's `placement.node`): none
    /// for an agent on this host, or a job the engine has not placed yet.
    pub node: Option<&'a str>,
}

impl Supervisor {
    /// Stored events after `seq` (oldest first, at most `limit`).
    pub async fn events_since(&self, seq: i64, limit: usize) -> Result<Vec<crate::model::Event>> {
        let store = self.sh.store.clone();
        blocking(move || store.events_since(seq, limit)).await
    }

    /// Watches the newest event's sequence number (changes after each commit that adds events).
    pub fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.sh.store.subscribe_events()
    }

    pub(super) fn published(
        &self,
        id: &AgentId,
    ) -> Result<(Published, mpsc::UnboundedSender<Cmd>)> {
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

    pub(super) fn view(&self, id: &AgentId) -> Result<Arc<View>> {
        self.published(id)?.0.view.ok_or_else(|| Error::NotFound {
            agent_id: id.to_string(),
        })
    }

    /// Every agent's latest view, by id.
    pub(super) fn views(&self) -> Vec<Arc<View>> {
        lock(&self.sh.registry)
            .values()
            .filter_map(|slot| slot.published.borrow().view.clone())
            .collect()
    }

    /// One agent's status: the seed's `get_agent_status`. Answers from the
    /// agent's last committed state and a live check of its process.
    /// Keeps the sampler at full pace; [`Supervisor::agent_status`] is the
    /// read that costs only this agent.
    pub fn get_agent_status(&self, id: &AgentId) -> Result<AgentStatus> {
        self.sh.pace.want();
        Ok(self.view(id)?.status())
    }

    /// One agent's status with figures at most about two sampling intervals
    /// old, at the cost of that agent alone: a live agent in a cgroup whose
    /// figures are older is sampled on its own (its leaf's processes, on a
    /// blocking thread), and the sampler's pass over every process is left
    /// at rest; any other agent waits for a full pass as
    /// [`Supervisor::fresh_figures`] does. The API's `GET /v1/agents/{id}`.
    pub async fn agent_status(&self, id: &AgentId) -> Result<AgentStatus> {
        let view = self.view(id)?;
        match view.proc_.clone().filter(|_| view.state.is_busy()) {
            Some(proc_) if proc_.leaf.is_some() => {
                let old = 2.0 * self.sh.config.sample_interval.as_secs_f64();
                if !proc_.sampled_within(old) {
                    let sh = self.sh.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        super::sampler::sample_one(&sh, &proc_, old)
                    })
                    .await;
                }
                Ok(self.view(id)?.status())
            }
            // Ended: no figures to refresh.
            _ if !view.state.is_busy() => Ok(view.status()),
            _ => {
                self.fresh_figures().await;
                self.get_agent_status(id)
            }
        }
    }

    /// An agent's current run and lifecycle state, without its figures (a
    /// cheap poll that does not keep the sampler at full pace).
    pub fn run_state(&self, id: &AgentId) -> Result<(u32, crate::model::AgentState)> {
        let view = self.view(id)?;
        Ok((view.run, view.state))
    }

    /// Waits until the sampled figures (CPU, memory, threads, tree) are at most
    /// about one sampling interval old. The sampler slows down while nobody
    /// reads them (see the `sampler` module); the reading functions above
    /// keep it at full pace but answer at once with what it has, so a reader
    /// that comes after a quiet spell and needs fresh figures calls this first
    /// (the daemon's API does, for every read that reports figures).
    pub async fn fresh_figures(&self) {
        self.sh.pace.fresh().await;
    }

    /// An agent's recent figures (its tree's CPU and memory), oldest first,
    /// after `since` (Unix seconds): see the `history` module for what is
    /// kept. Keeps the sampler at full pace, as every reader of figures does.
    pub fn agent_history(&self, id: &AgentId, since: Option<f64>) -> Result<AgentHistory> {
        // Known agents only: an unknown id is a 404, not an empty history.
        self.published(id)?;
        self.sh.pace.want();
        let points = lock(&self.sh.history).points(id, since);
        Ok(AgentHistory {
            agent_id: id.to_string(),
            interval_s: self.sh.config.sample_interval.as_secs_f64(),
            points,
        })
    }

    /// Every agent's status, by id: the seed's `monitor_all_agents`.
    pub fn monitor_all_agents(&self) -> BTreeMap<String, AgentStatus> {
        self.sh.pace.want();
        self.views()
            .iter()
            .map(|v| (v.id.to_string(), v.status()))
            .collect()
    }

    /// The statuses of the agents `keep` picks by id, state, labels and
    /// node, sorted by id. `keep` sees the published view, so the agents it
    /// leaves out cost no status at all: a filtered listing of a large fleet
    /// pays only for what it answers.
    pub fn monitor_agents(&self, keep: impl Fn(&Listed<'_>) -> bool) -> Vec<AgentStatus> {
        self.monitor_agent_fields(keep, &|_| true)
    }

    /// [`Supervisor::monitor_agents`] with only the fields `want` names
    /// filled in; the others hold defaults that mean nothing (for a caller
    /// that writes only those fields). Fields that need no live check of the
    /// process (`agent_id`, `state`, `progress`, ...) cost no system call.
    pub fn monitor_agent_fields(
        &self,
        keep: impl Fn(&Listed<'_>) -> bool,
        want: &dyn Fn(&str) -> bool,
    ) -> Vec<AgentStatus> {
        self.sh.pace.want();
        let mut views = self.views();
        views.retain(|v| {
            keep(&Listed {
                id: &v.id,
                state: v.state,
                labels: &v.spec.request.labels,
                node: v.job.as_ref().and_then(|j| j.info.node.as_deref()),
            })
        });
        views.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        views.iter().map(|v| v.status_of(want)).collect()
    }

    /// Counts by state and summed resources: the seed's `get_process_summary`.
    pub fn get_process_summary(&self) -> ProcessSummary {
        self.sh.pace.want();
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
            sum.states.add(status.state);
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
    /// [`super::Config::default_placement`]) answers once its job ran through the
    /// window, or ended, or after 5 s in the engine's queue (`spawning`, with
    /// the engine's pending reason in `placement`).
    ///
    /// A spawn that would put one of the agent's teams over its `max_agents`
    /// budget is refused ([`Error::Budget`]) before anything is recorded.
    pub async fn spawn_agent(&self, mut req: SpawnRequest) -> Result<SpawnResponse> {
        self.refuse_if_failing()?;
        if req.placement.is_none() {
            req.placement = self.sh.config.default_placement.clone();
        }
        // The user database and the agent dir's real path are the file
        // system's: asked on a blocking thread.
        let state_dir = self.sh.config.state_dir.clone();
        let spec = blocking(move || {
            let user = resolve_user(&req)?;
            let mut spec = spec::check(req, &state_dir, user)?;
            spec.settle_paths()?;
            Ok(spec)
        })
        .await?;
        let (reply, answer) = oneshot::channel();
        super::launch(
            &self.sh,
            spec,
            owner::Start::Fresh(Some(reply)),
            false,
            true,
        )?;
        answer.await.unwrap_or(Err(Error::StoreClosed))
    }

    /// Spawns many agents at once: every verification window runs at the same
    /// time, and one bad request fails alone. Results are in request order.
    /// An id given twice is tried in request order: the later entry waits for
    /// the earlier one's answer (and is then a conflict if it runs).
    pub async fn spawn_batch(&self, reqs: Vec<SpawnRequest>) -> Vec<Result<SpawnResponse>> {
        let mut times: HashMap<&str, usize> = HashMap::new();
        for r in &reqs {
            *times.entry(r.agent_id.as_str()).or_default() += 1;
        }
        let turns: HashMap<String, Arc<tokio::sync::Mutex<()>>> = times
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| (id.to_owned(), Arc::default()))
            .collect();
        let spawns = reqs.into_iter().map(|req| {
            let sup = self.clone();
            let turn = turns.get(&req.agent_id).cloned();
            async move {
                // tokio's mutex is fair, and join_all first polls in order:
                // the turns are taken in request order.
                let _turn = match &turn {
                    Some(t) => Some(t.lock().await),
                    None => None,
                };
                sup.spawn_agent(req).await
            }
        });
        let results = futures_util::future::join_all(spawns).await;
        // A burst of spawns leaves the allocator holding the peak of all their
        // work at once; give what is free back to the system (a few ms).
        let _ = tokio::task::spawn_blocking(platform::release_free_memory).await;
        results
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
        self.find_agent_of(pid, true, true).await
    }

    /// The agent a process is inside, by what the process cannot forge: its
    /// cgroup leaf, or its session, group or an ancestor being an agent —
    /// never its environment. For callers nobody vouches for (the agent
    /// socket).
    pub async fn agent_containing(&self, pid: i32) -> Option<AgentId> {
        self.find_agent_of(pid, false, true).await
    }

    /// The agent a caller on the daemon's own socket works inside, if any:
    /// its cgroup leaf, else — only when it carries `CORRAL_AGENT_ID`, so a
    /// caller outside every agent costs one or two small `/proc` reads, never
    /// a walk of the process table — its ancestry, as
    /// [`Supervisor::agent_containing`]. A caller of the daemon's own user
    /// could drop the variable: on that socket this scopes what an agent does
    /// by mistake, not what it could do on purpose (it can read the state dir
    /// itself); the agent socket, for other users, is checked unforgeably.
    pub async fn agent_of_caller(&self, pid: i32) -> Option<AgentId> {
        let root = self.sh.cgroup.as_ref().ok().cloned();
        let (by_cgroup, marked) = blocking(move || {
            Ok((
                root.as_ref().and_then(|r| reaper::agent_by_cgroup(pid, r)),
                crate::platform::environ_agent_id(pid).is_some(),
            ))
        })
        .await
        .ok()?;
        match (by_cgroup, marked) {
            (Some(id), _) => Some(id),
            // Its cgroup was read already: only its ancestry is left to look at.
            (None, true) => self.find_agent_of(pid, false, false).await,
            (None, false) => None,
        }
    }

    /// `by_cgroup`: look at the process's cgroup leaf first.
    async fn find_agent_of(
        &self,
        pid: i32,
        by_environment: bool,
        by_cgroup: bool,
    ) -> Option<AgentId> {
        let live: HashMap<i32, AgentId> = self
            .views()
            .iter()
            .filter_map(|v| v.proc_.as_ref().map(|p| (p.handle.pid(), v.id.clone())))
            .collect();
        let root = self.sh.cgroup.as_ref().ok().filter(|_| by_cgroup).cloned();
        blocking(move || {
            Ok(reaper::agent_of_process(
                pid,
                &live,
                root.as_ref(),
                by_environment,
            ))
        })
        .await
        .ok()
        .flatten()
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
}

/// The request's user, looked up (blocking): refused when the daemon cannot
/// switch users or the user does not exist.
fn resolve_user(req: &SpawnRequest) -> Result<spec::RunAs> {
    let Some(name) = req.user.as_deref() else {
        return Ok(spec::RunAs::Daemon);
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
    match spec::RunAs::lookup(Some(name)) {
        spec::RunAs::Unresolved { why, .. } if why == "no such user" => {
            Err(Error::invalid(&id, format!("user {name:?} does not exist")))
        }
        spec::RunAs::Unresolved { why, .. } => {
            Err(Error::invalid(&id, format!("user {name:?}: {why}")))
        }
        found => Ok(found),
    }
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

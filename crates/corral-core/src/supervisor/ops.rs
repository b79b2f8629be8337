//! The supervisor's public methods that end things: stops (one agent, a
//! selector, every agent), kills, pauses and resumes, reaping on request,
//! forgetting agents and pruning history. A stop goes to the agent's owner and is answered by it
//! once nothing of the agent is left; an agent is forgotten only when its
//! owner has nothing left to do — never while a process of it is alive.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::id::{AgentId, Selector};
use crate::model::{
    CleanupOptions, KillResponse, PauseOutcome, PauseReport, Removal, StopCause, StopReport,
    StopStage,
};
use crate::platform;

use super::{Cmd, Shared, Supervisor, already_ended, blocking, lock, reaper, spec, team_stop};
use crate::store;

impl Supervisor {
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

    /// Restarts agents (pm2's and compose's `restart`): a staged stop of each
    /// that is live (as [`Self::cleanup`], with `opts`' waits), then a new run
    /// with the request it was last spawned with. `None` restarts every agent;
    /// an ended agent just starts again. One that fails fails alone; the
    /// results are in natural id order.
    pub async fn restart(
        &self,
        selector: Option<&Selector>,
        opts: CleanupOptions,
    ) -> Result<Vec<(AgentId, Result<crate::model::SpawnResponse>)>> {
        self.refuse_if_failing()?;
        let mut targets: Vec<Arc<super::view::View>> = self
            .views()
            .into_iter()
            .filter(|v| selector.is_none_or(|s| s.matches(&v.id)))
            .collect();
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        targets.sort_by(|a, b| crate::model::natural_cmp(a.id.as_str(), b.id.as_str()));
        // Every stop first, then every spawn: a parent and the agents below
        // it restarted together would otherwise meet, its stop refusing their
        // new runs while it is under way (see `team_stop.rs`).
        let stops = targets.iter().map(|view| {
            let (sup, opts) = (self.clone(), opts.clone());
            async move {
                let one = Selector::One(view.id.clone());
                sup.stop_selected(Some(&one), opts, true).await.map(drop)
            }
        });
        let stopped = futures_util::future::join_all(stops).await;
        let restarts = targets.into_iter().zip(stopped).map(|(view, stopped)| {
            let sup = self.clone();
            async move {
                // The new run is counted against the teams' `max_agents` like
                // any spawn: the place the stopped run left may have been
                // taken meanwhile, and a restart must not take a team past it.
                let result = match stopped {
                    Ok(()) => sup.spawn_agent(view.spec.request.clone()).await,
                    Err(e) => Err(e),
                };
                (view.id.clone(), result)
            }
        });
        Ok(futures_util::future::join_all(restarts).await)
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
        let mut targets: Vec<AgentId> = lock(&self.sh.registry)
            .iter()
            .filter(|(id, _)| selector.is_none_or(|s| s.matches(id)))
            .filter(|(_, slot)| {
                let p = slot.published.borrow();
                p.view.is_some() && (p.busy || !live_only)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
            && !live_only
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        targets.sort_by(|a, b| crate::model::natural_cmp(a.as_str(), b.as_str()));
        let stops = targets.into_iter().map(|id| {
            let sh = self.sh.clone();
            async move { stop_one(&sh, &id, timeouts, opts.force).await }
        });
        Ok(futures_util::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect())
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

    /// Pauses one agent: its whole tree is frozen (its cgroup leaf's
    /// `cgroup.freeze`, or SIGSTOP to every member without one) and it is
    /// `paused` until resumed — across daemon restarts too. Its
    /// `max_runtime_s` and `progress_stale_s` clocks stop, its probes do not
    /// run, and a stop thaws it first. Pausing a paused agent does nothing
    /// (`already_paused`); one that is not running (starting, stopping,
    /// waiting to restart, ended) or that runs on a cluster engine is refused
    /// with [`Error::State`] (409 `conflict`) naming its state.
    pub async fn pause_agent(&self, id: &AgentId) -> Result<PauseReport> {
        self.refuse_if_failing()?;
        pause_one(&self.sh, id, false).await
    }

    /// Resumes one paused agent: its tree is thawed and it is `running`
    /// again. Resuming a running agent does nothing (`not_paused`); one in
    /// another state is refused with [`Error::State`].
    pub async fn resume_agent(&self, id: &AgentId) -> Result<PauseReport> {
        self.refuse_if_failing()?;
        pause_one(&self.sh, id, true).await
    }

    /// Pauses the agents `selector` picks (`None`: every agent), all at once:
    /// one report each, in natural id order. Agents that have ended are left
    /// out (unless the selector names one id); one that cannot be paused now
    /// is `skipped`, with the reason.
    pub async fn pause_selected(&self, selector: Option<&Selector>) -> Result<Vec<PauseReport>> {
        self.pause_many(selector, false).await
    }

    /// Resumes the agents `selector` picks (`None`: every agent), as
    /// [`Self::pause_selected`] pauses them.
    pub async fn resume_selected(&self, selector: Option<&Selector>) -> Result<Vec<PauseReport>> {
        self.pause_many(selector, true).await
    }

    async fn pause_many(
        &self,
        selector: Option<&Selector>,
        resume: bool,
    ) -> Result<Vec<PauseReport>> {
        self.refuse_if_failing()?;
        let one = matches!(selector, Some(Selector::One(_)));
        let mut targets: Vec<AgentId> = lock(&self.sh.registry)
            .iter()
            .filter(|(id, _)| selector.is_none_or(|s| s.matches(id)))
            .filter(|(_, slot)| {
                let p = slot.published.borrow();
                p.view.is_some() && (p.busy || one)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        targets.sort_by(|a, b| crate::model::natural_cmp(a.as_str(), b.as_str()));
        let calls = targets.into_iter().map(|id| {
            let sh = self.sh.clone();
            async move {
                match pause_one(&sh, &id, resume).await {
                    Ok(report) => Some(report),
                    Err(Error::NotFound { .. }) => None,
                    Err(e) => Some(skipped(&sh, &id, e)),
                }
            }
        });
        Ok(futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect())
    }

    /// The seed's `reap_zombies`: records and reaps whatever has died and is
    /// not yet: every owner whose main process has exited without its end on
    /// record records it now (and reaps it), and every zombie child of this
    /// process that is no agent's own (an orphan of an agent's tree) is
    /// reaped. Returns the ids of the agents whose end this call recorded or
    /// whose zombies it reaped, sorted — normally none, since ends are
    /// recorded the moment they happen and orphans reaped on every SIGCHLD.
    pub async fn reap_zombies(&self) -> Vec<String> {
        let owners: Vec<(AgentId, mpsc::UnboundedSender<Cmd>)> = lock(&self.sh.registry)
            .iter()
            .filter(|(_, slot)| slot.published.borrow().busy)
            .map(|(id, slot)| (id.clone(), slot.tx.clone()))
            .collect();
        let asks = owners.into_iter().map(|(id, tx)| async move {
            let (reply, answer) = oneshot::channel();
            let asked = tx.send(Cmd::Reap { reply }).is_ok();
            (asked && answer.await.unwrap_or(false)).then_some(id)
        });
        let mut ids: Vec<String> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .map(|id| id.to_string())
            .collect();
        let leaders: std::collections::HashMap<i32, AgentId> = self
            .views()
            .iter()
            .filter_map(|v| v.pid.map(|p| (p, v.id.clone())))
            .collect();
        let sh = self.sh.clone();
        let orphans = blocking(move || Ok(reaper::reap_attributed(&sh, &leaders)))
            .await
            .unwrap_or_default();
        tracing::info!(ends = ids.len(), orphans = orphans.len(), "reap sweep");
        ids.extend(orphans.into_iter().flatten().map(|id| id.to_string()));
        ids.sort();
        ids.dedup();
        ids
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
                    status: view.state.to_string(),
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
                .filter(|(id, _)| !forget.iter().any(|f| f.as_str() == id))
                .map(|(_, dir)| dir.clone())
                .collect();
            let _ = blocking(move || {
                remove_below(&default_root, dirs);
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

async fn remove_default_logs(sh: &Shared, id: &AgentId) {
    let dir = sh.config.state_dir.join("agents").join(id.as_str());
    let id = id.clone();
    let _ = blocking(move || {
        if let Err(e) = platform::agent_dir::remove_tree(&dir) {
            tracing::warn!(agent_id = %id, error = %e, "cannot remove the agent's logs");
        }
        Ok(())
    })
    .await;
}

/// Removes the run log dirs among `dirs` that really lie below `root` (the
/// default agent dirs), by their real paths: a stored path with a `..` part,
/// or one that resolves elsewhere, is left alone (blocking).
fn remove_below(root: &Path, dirs: Vec<PathBuf>) {
    let Ok(root) = std::fs::canonicalize(root) else {
        return;
    };
    for dir in dirs {
        if platform::agent_dir::check_plain(&dir).is_err() {
            tracing::warn!(dir = %dir.display(), "not removing a stored log dir with a `..` or `.` part");
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&dir) else {
            continue;
        };
        if real != dir || !real.starts_with(&root) || real == root {
            tracing::warn!(dir = %dir.display(), real = %real.display(), "not removing a log dir that is not where it was recorded, below the state dir");
            continue;
        }
        if let Err(e) = platform::agent_dir::remove_tree(&real) {
            tracing::warn!(dir = %real.display(), error = %e, "cannot remove an earlier run's logs");
        }
    }
}

/// Stops one agent asked for by a user: first the agents of its team (the
/// ids below it, see [`team_stop`]), then the agent itself.
async fn stop_one(
    sh: &Arc<Shared>,
    id: &AgentId,
    timeouts: Option<[f64; 3]>,
    force: bool,
) -> Option<StopReport> {
    // Until this stop is answered, nothing is spawned below the agent: not
    // while its team is stopped, nor while it is (a coordinator in its grace
    // period starting one more helper).
    let _mark = team_stop::Mark::new(sh, id);
    // A parent with no run (waiting to restart) is told first: its planned
    // restart is called off at once, not after its team is gone.
    let waiting = lock(&sh.registry).get(id).is_some_and(|slot| {
        slot.published
            .borrow()
            .view
            .as_ref()
            .is_some_and(|v| v.state == crate::model::AgentState::Backoff)
    });
    let early = if waiting {
        stop_alone(sh, id, timeouts, force, StopCause::User).await
    } else {
        None
    };
    if !team_stop::live_below(sh, id).is_empty() {
        team_stop::stop_team(sh, id, timeouts, force).await;
    }
    let report = match early {
        Some(r) => Some(r),
        None => stop_alone(sh, id, timeouts, force, StopCause::User).await,
    };
    // A helper that slipped in between the team's stop and the parent's
    // (spawned before the mark) is stopped before the answer.
    if !team_stop::live_below(sh, id).is_empty() {
        team_stop::stop_team(sh, id, timeouts, force).await;
    }
    report
}

/// Stops one agent through its owner and waits for the report. An owner that
/// fails meanwhile is replaced from the record (`launch`); the stop is asked
/// of its successor, which finds it on record if it was begun.
pub(crate) async fn stop_alone(
    sh: &Arc<Shared>,
    id: &AgentId,
    timeouts: Option<[f64; 3]>,
    force: bool,
    cause: StopCause,
) -> Option<StopReport> {
    let mut owners = sh.owners.subscribe();
    for _ in 0..3 {
        owners.borrow_and_update();
        let (view, busy, tx) = {
            let reg = lock(&sh.registry);
            let slot = reg.get(id)?;
            let p = slot.published.borrow();
            (p.view.clone()?, p.busy, slot.tx.clone())
        };
        if !busy {
            return Some(already_ended(&view));
        }
        let (reply, answer) = oneshot::channel();
        let timeouts = timeouts.unwrap_or(view.spec.stop_timeouts);
        if tx
            .send(Cmd::Stop {
                cause,
                timeouts,
                force,
                reply,
            })
            .is_ok()
            && let Ok(report) = answer.await
        {
            return Some(report);
        }
        // The owner went away without answering: the agent ended meanwhile,
        // or the supervisor is shutting down, or the owner failed and a new
        // one is on its way.
        let ended = {
            let reg = lock(&sh.registry);
            let slot = reg.get(id)?;
            let p = slot.published.borrow();
            (!p.busy).then(|| p.view.clone()).flatten()
        };
        if let Some(view) = ended {
            return Some(already_ended(&view));
        }
        if *sh.shutdown.borrow() {
            return Some(already_ended(&view));
        }
        let replaced =
            tokio::time::timeout(std::time::Duration::from_secs(10), owners.changed()).await;
        if !matches!(replaced, Ok(Ok(()))) {
            return Some(already_ended(&view));
        }
    }
    let view = lock(&sh.registry)
        .get(id)?
        .published
        .borrow()
        .view
        .clone()?;
    Some(already_ended(&view))
}

/// Pauses (or resumes) one agent through its owner and waits for its
/// answer. An owner that fails meanwhile is replaced from the record; the
/// call is made again of its successor.
async fn pause_one(sh: &Arc<Shared>, id: &AgentId, resume: bool) -> Result<PauseReport> {
    let not_found = || Error::NotFound {
        agent_id: id.to_string(),
    };
    let mut owners = sh.owners.subscribe();
    for _ in 0..3 {
        owners.borrow_and_update();
        let (view, busy, tx) = {
            let reg = lock(&sh.registry);
            let slot = reg.get(id).ok_or_else(not_found)?;
            let p = slot.published.borrow();
            (
                p.view.clone().ok_or_else(not_found)?,
                p.busy,
                slot.tx.clone(),
            )
        };
        if !busy {
            return Err(ended_refusal(&view, resume));
        }
        let (reply, answer) = oneshot::channel();
        if tx.send(Cmd::Pause { resume, reply }).is_ok()
            && let Ok(answer) = answer.await
        {
            return answer;
        }
        // The owner went away without answering: the agent ended meanwhile,
        // or the supervisor is shutting down, or the owner failed and a new
        // one is on its way.
        let ended = {
            let reg = lock(&sh.registry);
            let slot = reg.get(id).ok_or_else(not_found)?;
            let p = slot.published.borrow();
            (!p.busy).then(|| p.view.clone()).flatten()
        };
        if let Some(view) = ended {
            return Err(ended_refusal(&view, resume));
        }
        if *sh.shutdown.borrow() {
            return Err(Error::StoreClosed);
        }
        let replaced =
            tokio::time::timeout(std::time::Duration::from_secs(10), owners.changed()).await;
        if !matches!(replaced, Ok(Ok(()))) {
            break;
        }
    }
    Err(Error::OwnerFailed {
        agent_id: id.to_string(),
        reason: "its owner went away while pausing or resuming it".into(),
    })
}

/// The refusal of a pause or resume of an agent that has ended.
fn ended_refusal(view: &super::view::View, resume: bool) -> Error {
    Error::State {
        agent_id: view.id.to_string(),
        state: view.state.to_string(),
        reason: if resume {
            "only a paused agent can be resumed; this one has ended".into()
        } else {
            "only a running agent can be paused; this one has ended".into()
        },
    }
}

/// The report of an agent a selector's pause or resume could not act on.
fn skipped(sh: &Shared, id: &AgentId, e: Error) -> PauseReport {
    let view = lock(&sh.registry)
        .get(id)
        .and_then(|slot| slot.published.borrow().view.clone());
    let reason = match e {
        Error::State { reason, .. } => reason,
        other => other.to_string(),
    };
    PauseReport {
        agent_id: id.to_string(),
        pid: view.as_ref().and_then(|v| v.pid),
        outcome: PauseOutcome::Skipped,
        state: view.map_or(crate::model::AgentState::Ended, |v| v.state),
        method: None,
        processes: None,
        reason: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_real_dirs_below_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("state/agents");
        let outside = base.join("out");
        for d in [root.join("a/runs/1"), outside.join("runs/1")] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stdout.log"), "x").unwrap();
        }
        // A link below the root that leads outside it.
        std::os::unix::fs::symlink(&outside, root.join("b")).unwrap();
        remove_below(
            &root,
            vec![
                // Passes a prefix check on its components, lands outside.
                root.join("../../out/runs/1"),
                root.join("b/runs/1"),
                root.join("a/runs/1"),
            ],
        );
        assert!(outside.join("runs/1/stdout.log").exists());
        assert!(!root.join("a/runs/1").exists());
        assert!(root.join("a").exists());
    }
}

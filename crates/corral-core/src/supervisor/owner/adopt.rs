//! Taking over what an earlier daemon (or an earlier owner of the same agent)
//! left on record.
//!
//! - A live run: its process is re-adopted when the same one still runs
//!   (same pid, start time and boot), or found by its `CORRAL_RUN_ID` when its
//!   pid was never recorded; a job is followed by its id or tag.
//! - A stop on record is finished: the owner continues at its stored stage
//!   (the stage's signal goes out again), a deadline that passed meanwhile is
//!   due at once, and its end is that stop's — a user's stop ends `cancelled`
//!   and is never followed by a restart.
//! - A main process that ended while no daemon ran is recorded so (its exit
//!   status read if the kernel still has it, else said to be lost); whatever
//!   it left behind (its cgroup leaf, or processes carrying its run's
//!   `CORRAL_RUN_ID`) is stopped as leftovers before the run ends.
//! - A planned restart is resumed — after the old run's leftovers, if any,
//!   are stopped: a new run never starts beside an old tree.

use std::sync::Arc;
use std::time::SystemTime;

use crate::model::{AgentState, PersistentStatus, StopCause, StopStage};
use crate::store::{self, Process, RunRecord, StopRecord, Transition};

use super::super::execution::local::{self, probe_state, sample_now};
use super::super::execution::{self as placement, Execution, LocalRun, Remnant};
use super::super::lifecycle::{self, Happening, Lifecycle};
use super::super::view::{Proc, View};
use super::super::{blocking, leaf_name, lock};
use super::{MainEnd, Owner};

impl Owner {
    /// Takes over the newest run of the agent as the store has it.
    pub(crate) async fn recover(&mut self, record: RunRecord) {
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        self.history.attempt = record.restart_attempt;
        let (now, wall) = (super::super::now(), SystemTime::now());
        let paused_at = record
            .paused_at
            .as_deref()
            .filter(|_| record.state == Some(AgentState::Paused));
        self.pause = super::pause::PauseClock::recover(paused_at, record.paused_s, now, wall);
        let planned = record.next_restart_at.is_some()
            && matches!(
                record.state,
                None | Some(AgentState::Ended | AgentState::Backoff)
            );
        let main_on_record = !record.status.is_live();
        let mut stop = record.stop.clone();
        if stop.is_none() && main_on_record {
            // Ended (or waiting to restart) on record; left processes behind
            // in its cgroup (an older corral recorded such runs as ended).
            let leaf = self.leaf_of(&record);
            let populated =
                super::super::blocking(move || Ok(leaf.as_ref().is_some_and(|l| l.populated())))
                    .await
                    .unwrap_or(false);
            if populated {
                stop = Some(self.leftovers_record(wall));
            } else if planned {
                return self.resume_backoff(record).await;
            } else {
                // Nothing to do: the agent is shown as on record.
                self.begin_at(Lifecycle::ended());
                self.publish(|_| {});
                return;
            }
        }
        // Rows written before states were recorded say only `spawning`/`running`.
        let state = record.state.or_else(|| {
            (record.status == PersistentStatus::Spawning).then_some(AgentState::Starting)
        });
        self.begin_at(Lifecycle::recover(state, stop.as_ref(), now, wall));
        #[cfg(test)]
        if let Some(world) = self.sh.config.fake.clone() {
            return self.adopt_fake(world, record, main_on_record).await;
        }
        if main_on_record {
            return self.recover_remnant(record, stop).await;
        }
        if record.job.is_some() || placement::slurm_of(record.spec.placement.as_ref()).is_some() {
            return Box::pin(self.adopt_job(record)).await;
        }
        self.adopt_local(record).await
    }

    /// Takes over a run of the fake platform (tests), as `adopt_local` and
    /// `recover_remnant` do a process's.
    #[cfg(test)]
    async fn adopt_fake(
        &mut self,
        world: Arc<super::super::execution::fake::FakeWorld>,
        record: RunRecord,
        main_on_record: bool,
    ) {
        let mut run = super::super::execution::fake::FakeRun::new(world, record.run_id);
        if main_on_record {
            run.exited = true;
            run.recorded = true;
            self.main_end = Some(MainEnd {
                status: record.status,
                reason: record.end_reason.clone().unwrap_or_default(),
                ran_s: self.current().runtime_at_end.unwrap_or(0.0),
            });
        }
        let dead = run.main_dead();
        self.exec = Some(Execution::Fake(Box::new(run)));
        if self.life().wire() == AgentState::Starting && !dead {
            self.apply(Happening::Started { verify_until: None });
        }
        self.publish(|_| {});
        if !main_on_record && dead {
            return self.on_main_exit().await;
        }
        if self.life().wire() == AgentState::Stopping {
            self.resume_stop().await;
        }
        if self.paused() {
            self.refreeze().await;
        }
    }

    /// A stop of leftovers, as it would have been recorded.
    fn leftovers_record(&self, wall: SystemTime) -> StopRecord {
        let t = self.spec.stop_timeouts;
        let deadline = lifecycle::later_wall(wall, lifecycle::secs_saturating(t[0]));
        StopRecord {
            cause: StopCause::Leftovers,
            asked: false,
            reason: None,
            timeouts: t,
            force: false,
            stage: StopStage::Term,
            began_at: store::now_rfc3339(),
            stage_deadline_at: humantime::format_rfc3339_millis(deadline).to_string(),
            main_exited: true,
            unkillable: false,
        }
    }

    /// The run's cgroup leaf, if corral has cgroups and the leaf exists.
    fn leaf_of(&self, record: &RunRecord) -> Option<crate::platform::cgroup::Leaf> {
        let root = self.sh.cgroup.as_ref().ok()?;
        Some(root.leaf(&leaf_name(&record.agent_id, record.run))).filter(|l| l.exists())
    }

    /// A run whose main process's end is on record while something of it may
    /// still run: its stop is finished on what is left.
    async fn recover_remnant(&mut self, record: RunRecord, stop: Option<StopRecord>) {
        let ran_s = self.current().runtime_at_end.unwrap_or(0.0);
        self.main_end = Some(MainEnd {
            status: record.status,
            reason: record.end_reason.clone().unwrap_or_default(),
            ran_s,
        });
        let leaf = self.leaf_of(&record);
        let remnant = Remnant::find(&self.sh, &record.agent_id, record.run_id, leaf).await;
        self.exec = remnant.map(|r| Execution::Remnant(Box::new(r)));
        if record.stop.is_none()
            && let Some(s) = &stop
        {
            // Found now: on record before its first signal.
            let write = store::transition(
                record.run_id,
                Transition {
                    state: Some(AgentState::Stopping),
                    stop: Some(Some(s.clone())),
                    stop_info: self.life().stop().map(|s| s.info()),
                    ..Transition::default()
                },
            );
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a stop");
            }
        }
        tracing::warn!(agent_id = %self.spec.id, run = record.run, "finishing the stop of what an earlier daemon left of this run");
        self.publish(|_| {});
        if self.exec.is_none() {
            return self.tree_gone_unseen().await;
        }
        self.resume_stop().await;
    }

    /// Nothing is left of a stopping run whose main process is gone: it ends.
    async fn tree_gone_unseen(&mut self) {
        self.exec = Some(Execution::Remnant(Box::new(Remnant::empty())));
        self.tree_gone().await;
    }

    /// Re-adopts the process of a live local run, or records how it ended.
    async fn adopt_local(&mut self, record: RunRecord) {
        let Some((started, recovered)) = local::find(&self.sh, &record).await else {
            let reason = if record.pid.is_none() {
                "the daemon stopped before the process was recorded; the start did not complete"
            } else {
                "exit status lost: the process ended while no corral daemon was running"
            };
            tracing::warn!(agent_id = %record.agent_id, pid = record.pid, "{reason}");
            let leaf = self.leaf_of(&record);
            if let Some(r) = Remnant::find(&self.sh, &record.agent_id, record.run_id, leaf).await {
                self.exec = Some(Execution::Remnant(Box::new(r)));
            }
            return self.lost(reason.to_owned()).await;
        };
        let containment = if started.leaf.is_some() {
            "cgroup"
        } else {
            "process-group"
        };
        let limits = started.limits.clone();
        let Some(proc_) = self.watch_readopted(started).await else {
            return;
        };
        let pid = proc_.handle.pid();
        let stopping = self.life().wire() == AgentState::Stopping;
        if !stopping && !self.paused() && (recovered || record.status == PersistentStatus::Spawning)
        {
            self.record_readoption(&record, &proc_).await;
        }
        if self.life().wire() == AgentState::Starting {
            self.apply(Happening::Started { verify_until: None });
        }
        let status = if stopping {
            record.status
        } else {
            PersistentStatus::Running
        };
        let change = |v: &mut View| {
            v.status = status;
            v.pid = Some(pid);
            v.proc_ = Some(proc_.clone());
            v.containment = containment;
            v.limits = limits;
            (v.ready, v.probes) = probe_state(&v.spec);
        };
        if proc_.handle.has_exited() {
            // Ended while no daemon ran, but its exit status is still there to
            // read: resolve it before anyone is shown a running agent.
            let mut view = (*self.current()).clone();
            change(&mut view);
            self.view = Some(Arc::new(view));
            return self.on_main_exit().await;
        }
        self.publish(change);
        if stopping {
            tracing::info!(agent_id = %record.agent_id, pid, "re-adopted an agent being stopped; finishing its stop");
            return self.resume_stop().await;
        }
        if self.paused() {
            // The pause was on record before its freeze: freeze again, in
            // case the previous daemon died in between. No probe runs.
            return self.refreeze().await;
        }
        tracing::info!(agent_id = %record.agent_id, pid, "re-adopted a running agent");
        self.start_probes();
    }

    /// Watches a re-adopted process (still ours to reap when this process
    /// started it: a library user reopening its state dir); none — and the
    /// run recorded as lost — when it cannot be watched.
    async fn watch_readopted(&mut self, started: local::Started) -> Option<Arc<Proc>> {
        let handle = started.handle;
        let pid = handle.pid();
        let ours = handle
            .sample()
            .is_ok_and(|s| s.ppid == std::process::id() as i32);
        if ours {
            lock(&self.sh.owned).insert(pid);
        }
        let proc_ = Arc::new(Proc::new(handle, started.leaf, self.sh.ticks_per_second));
        match LocalRun::new(proc_.clone(), ours) {
            Ok(run) => {
                sample_now(&proc_, self.sh.page_size);
                self.exec = Some(Execution::Local(run));
                Some(proc_)
            }
            Err(e) => {
                tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot watch a re-adopted process");
                self.lost(format!("cannot watch the re-adopted process: {e}"))
                    .await;
                None
            }
        }
    }

    /// Records a re-adopted process as the run's, running (a start the
    /// previous daemon could not finish recording).
    async fn record_readoption(&self, record: &RunRecord, proc_: &Proc) {
        let write = store::transition(
            record.run_id,
            Transition {
                state: Some(AgentState::Running),
                status: Some(PersistentStatus::Running),
                process: Some(Process {
                    pid: proc_.handle.pid(),
                    start_ticks: proc_.handle.start_ticks(),
                    boot_id: self.sh.boot_id.clone(),
                }),
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %record.agent_id, error = %e, "cannot record a re-adopted process");
        }
    }

    /// The run's main process is gone and how it ended is not known: `reason`
    /// says why. Whatever it left (in `exec`) is stopped before the run ends.
    pub(crate) async fn lost(&mut self, reason: String) {
        let ran_s = self.current().runtime_at_end.unwrap_or(0.0);
        if matches!(self.life().wire(), AgentState::Starting) && self.exec.is_none() {
            // Never got going: nothing ran.
            return self.record_failed_start(reason).await;
        }
        self.main_ended(None, ran_s, Some(reason)).await;
    }

    /// Continues the stop on record: the stage's signal goes out again (it may
    /// not have before the daemon died) and the tree is looked at.
    pub(crate) async fn resume_stop(&mut self) {
        let Some(stage) = self.life().stop().map(|s| s.stage) else {
            return;
        };
        if let Some(exec) = self.exec.as_mut() {
            exec.open_stage(&self.sh, stage);
        }
        self.look().await;
    }

    /// Resumes a restart planned by a previous daemon: waits out what is left of
    /// the delay (nothing was started for it yet, or its run would be the latest).
    async fn resume_backoff(&mut self, record: RunRecord) {
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
            .map(super::super::policy::epoch_s)
            .collect();
        self.history.attempt = record.restart_attempt + 1;
        let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.begin_at(Lifecycle::ended());
        self.apply(Happening::RestartPlanned {
            until: lifecycle::later(super::super::now(), delay),
        });
        tracing::info!(agent_id = %record.agent_id, at = record.next_restart_at.as_deref().unwrap_or("now"), "resuming a planned restart");
        self.publish(|_| {});
    }
}

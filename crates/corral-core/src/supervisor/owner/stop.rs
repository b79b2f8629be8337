//! Stops, as the owner carries them out: asked (by a user, a limit, a probe,
//! the runtime limit), committed before their first signal, walked through
//! their stages as the lifecycle's deadlines come, and answered once nothing
//! of the tree is left — or once it has survived SIGKILL's wait, which is
//! reported and then watched until it is gone.
//!
//! The first stage of a stop looks at the tree before it signals (so its
//! report counts every member); later stages, above all SIGKILL, go out the
//! moment they begin.

use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::model::{
    AgentState, EventBody, LimitEvent, ReasonEvent, StopCause, StopReport, StopStage,
    StopStageEvent,
};
use crate::store::{self, Transition};

use super::super::execution::{Execution, Look};
use super::super::lifecycle::{Happening, State, StopRequest};
use super::Owner;

impl Owner {
    /// A stop asked for with `cause` (and `reason` in words), the agent's own
    /// timeouts unless given.
    pub(crate) fn stop_request(
        &self,
        cause: StopCause,
        reason: Option<String>,
        timeouts: Option<[f64; 3]>,
        force: bool,
    ) -> StopRequest {
        StopRequest {
            cause,
            reason,
            timeouts: timeouts.unwrap_or(self.spec.stop_timeouts),
            force,
            now: super::super::now(),
            wall: SystemTime::now(),
            no_restart: false,
        }
    }

    /// Begins a stop, or joins the one under way (a user's stop takes it over
    /// and `force` escalates it to SIGKILL at once), or calls off a planned
    /// restart. `waiter` gets the report once the tree is gone.
    pub(crate) async fn request_stop(
        &mut self,
        req: StopRequest,
        waiter: Option<oneshot::Sender<StopReport>>,
    ) {
        match self.life().state() {
            State::Backoff { .. } => return self.cancel_restart(req, waiter).await,
            State::Ended => {
                if let Some(w) = waiter {
                    let _ = w.send(super::super::already_ended(&self.current()));
                }
                return;
            }
            State::Starting { verify_until: None } if self.exec.is_none() => {
                // Not created yet (cannot happen between steps): nothing to stop.
                if let Some(w) = waiter {
                    let _ = w.send(super::super::already_ended(&self.current()));
                }
                return;
            }
            _ => {}
        }
        let first = !matches!(self.life().state(), State::Stopping(_));
        let before = self.life().stop().cloned();
        // A paused tree is thawed first: its signals are then delivered.
        let left_pause = self.leave_pause().await;
        let Some(change) = self.apply(Happening::Stop(req)) else {
            return;
        };
        self.stop_waiters.extend(waiter);
        let stop = self.life().stop().cloned();
        if stop != before
            && let Some(s) = &stop
        {
            // On record before its first signal: a daemon that dies now
            // finishes this stop when it starts again.
            let write = store::transition(
                self.current().run_id,
                Transition {
                    state: Some(AgentState::Stopping),
                    stop: Some(Some(s.record())),
                    stop_info: Some(s.info()),
                    paused: left_pause,
                    ..Transition::default()
                },
            );
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a stop");
            }
            if first {
                tracing::info!(agent_id = %self.spec.id, cause = %s.cause, "stop begins");
            }
            self.publish(|_| {});
        }
        match (change.stage, stop) {
            (Some(stage), _) => self.stage_began(stage, first).await,
            (None, Some(s)) if s.unkillable => self.answer_stop(StopStage::Unkillable, s.began_at),
            _ => {}
        }
    }

    /// A planned restart called off: the agent ends where it is.
    async fn cancel_restart(
        &mut self,
        req: StopRequest,
        waiter: Option<oneshot::Sender<StopReport>>,
    ) {
        let write = store::transition(
            self.current().run_id,
            Transition {
                state: Some(AgentState::Ended),
                next_restart_at: Some(None),
                events: vec![EventBody::RestartCancelled(ReasonEvent {
                    reason: "stopped on request".into(),
                })],
                ..Transition::default()
            },
        );
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a cancelled restart");
        }
        self.apply(Happening::Stop(req));
        self.publish(|v| v.next_restart_at = None);
        tracing::info!(agent_id = %self.spec.id, "planned restart cancelled on request");
        if let Some(w) = waiter {
            let _ = w.send(super::super::already_ended(&self.current()));
        }
    }

    /// A stage began: its event, its signal (at once, unless it is the first
    /// of its stop), then a look at the tree.
    pub(crate) async fn stage_began(&mut self, stage: StopStage, first: bool) {
        self.note_event(self.stage_event(stage));
        self.stage_signal(stage, first);
        self.look().await;
    }

    /// The event of a stage's signal.
    fn stage_event(&self, stage: StopStage) -> EventBody {
        let (pid, job_id) = match &self.exec {
            Some(Execution::Local(run)) => (Some(run.pid()), None),
            Some(Execution::Job(job)) => (None, Some(job.record.job_id.clone())),
            _ => (None, None),
        };
        EventBody::StopStage(StopStageEvent {
            stage,
            signal: signal_name(stage).into(),
            pid,
            job_id,
            cause: self.life().stop().map(|s| s.cause),
        })
    }

    /// A stage's count and — unless it is the first of its stop, which looks
    /// at the tree first — its signal.
    fn stage_signal(&mut self, stage: StopStage, first: bool) {
        let slot = match stage {
            StopStage::Term => 0,
            StopStage::SecondTerm => 1,
            _ => 2,
        };
        self.sh.counters.stop_stages[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (pid, job_id) = match &self.exec {
            Some(Execution::Local(run)) => (Some(run.pid()), None),
            Some(Execution::Job(job)) => (None, Some(job.record.job_id.as_str())),
            _ => (None, None),
        };
        tracing::info!(agent_id = %self.spec.id, pid, job_id, stage = %stage, "stop stage: sending {}", signal_name(stage));
        if !first && let Some(exec) = self.exec.as_mut() {
            exec.open_stage(&self.sh, stage);
        }
    }

    /// The stage's wait is over: the next stage, or — after SIGKILL's wait,
    /// with nothing left that may still be dying — the tree survived it.
    pub(crate) async fn stage_due(&mut self) {
        let deadline = self
            .life()
            .stop()
            .map_or(super::super::now(), |s| s.deadline);
        let settle_until = self.exec.as_ref().and_then(|e| e.settle_until(deadline));
        let Some(change) = self.apply(Happening::StageDue {
            now: super::super::now(),
            wall: SystemTime::now(),
            settle_until,
        }) else {
            return;
        };
        let Some(stop) = self.life().stop().cloned() else {
            return;
        };
        // The new stage's signal goes out at once (SIGKILL above all), with
        // its record queued; it is shown once on record. A daemon that dies
        // before the write lands resumes at the earlier stage, whose deadline
        // has passed, so it moves on at once.
        // The stage's event goes in the same write as the stage.
        let write = store::transition(
            self.current().run_id,
            Transition {
                stop: Some(Some(stop.record())),
                stop_info: Some(stop.info()),
                quiet: change.stage.is_none(),
                events: change
                    .stage
                    .map(|stage| self.stage_event(stage))
                    .into_iter()
                    .collect(),
                ..Transition::default()
            },
        );
        let commit = self.sh.store.submit(write);
        if let Some(stage) = change.stage {
            self.stage_signal(stage, false);
        }
        if let Err(e) = commit.await {
            tracing::warn!(agent_id = %self.spec.id, error = %e, "cannot record a stop stage");
        }
        self.publish(|_| {});
        if change.unkillable {
            tracing::error!(agent_id = %self.spec.id, pid = self.current().pid, "processes survived SIGKILL; watching them until they are gone");
            self.answer_stop(StopStage::Unkillable, stop.began_at);
        }
        if change.stage.is_some() {
            self.look().await;
        }
    }

    /// Looks at what is left of the tree being stopped.
    pub(crate) async fn look(&mut self) {
        let Some(stage) = self.life().stop().map(|s| s.stage) else {
            return;
        };
        let sh = self.sh.clone();
        let id = self.spec.id.clone();
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        match exec.look(&sh, id.as_str(), stage).await {
            // Boxed: the end of the main process may begin a stop of its leftovers.
            Look::MainExited => Box::pin(self.on_main_exit()).await,
            Look::Gone => self.tree_gone().await,
            Look::Left => {}
        }
    }

    /// Answers everyone waiting for the stop with how it went.
    pub(crate) fn answer_stop(&mut self, stage: StopStage, began_at: SystemTime) {
        let waiters = std::mem::take(&mut self.stop_waiters);
        if waiters.is_empty() {
            return;
        }
        let view = self.current();
        let status = view.status();
        let sight = self.exec.as_ref().and_then(Execution::sight);
        let report = StopReport {
            agent_id: self.spec.id.to_string(),
            pid: view.pid,
            stage,
            duration_ms: SystemTime::now()
                .duration_since(began_at)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
            exit_code: status.exit_code,
            exit_signal: status.exit_signal,
            descendants_killed: self.exec.as_ref().and_then(Execution::descendants),
            persistent_status: view.status,
            complete: sight.as_ref().map(|s| s.is_ok()),
            incomplete_reason: sight.and_then(Result::err),
        };
        for w in waiters {
            let _ = w.send(report.clone());
        }
    }

    /// The run outlived `max_runtime_s`.
    pub(crate) async fn runtime_exceeded(&mut self) {
        let limit = self.spec.request.max_runtime_s.unwrap_or(f64::INFINITY);
        tracing::warn!(agent_id = %self.spec.id, limit_s = limit, "run exceeded max_runtime_s; stopping it");
        self.note_event(EventBody::RuntimeExceeded(LimitEvent {
            limit: "max_runtime_s".into(),
            value: limit,
            usage: None,
        }));
        let req = self.stop_request(
            StopCause::MaxRuntime,
            Some(format!("max_runtime_s {limit} exceeded")),
            None,
            false,
        );
        self.request_stop(req, None).await;
    }
}

/// The signal a stage sends, by name.
fn signal_name(stage: StopStage) -> &'static str {
    if stage == StopStage::Kill {
        "SIGKILL"
    } else {
        "SIGTERM"
    }
}

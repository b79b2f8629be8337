//! The end of a run, in two steps that may be one: the main process's end,
//! and the end of everything it left behind.
//!
//! When the main process exits, its exit is read (not reaped), and what is
//! left of its tree is looked at. Nothing left: the run is `ended` (or, when
//! the restart policy says so, `backoff`) in one commit. Something left: the
//! run goes `stopping` with cause `leftovers`, and that stop is in the same
//! commit as the main's end — before its first signal. Either way the main
//! process is reaped only once its end is on record. The run ends when the
//! stop finds the tree gone; the restart decision is taken then, so a new run
//! never starts beside the old tree.

use std::time::SystemTime;

use crate::model::{
    AgentState, CrashLoopEvent, EventBody, PersistentStatus, RestartEvent, StopCause, StopStage,
};
use crate::platform::ExitKind;
use crate::store::{self, Transition};

use super::super::ending;
use super::super::execution::{Execution, Look};
use super::super::lifecycle::{self, Happening, StopRequest};
use super::super::policy::{self, Decision};
use super::Owner;

/// How the current run's main process ended.
#[derive(Debug, Clone)]
pub(crate) struct MainEnd {
    pub status: PersistentStatus,
    pub reason: String,
    /// Seconds it ran.
    pub ran_s: f64,
}

impl Owner {
    /// The main process exited (this host): read how, then record it.
    pub(crate) async fn on_main_exit(&mut self) {
        #[cfg(test)]
        if let Some(Execution::Fake(f)) = self.exec.as_mut() {
            if f.exited {
                return;
            }
            let exit = f.read_exit();
            let ran_s = f.started.elapsed().as_secs_f64();
            return self.main_ended(exit, ran_s, None).await;
        }
        let Some(Execution::Local(run)) = self.exec.as_mut() else {
            return;
        };
        if run.exited {
            return;
        }
        let exit = run.read_exit().await;
        let ran_s = run.ran_s();
        self.main_ended(exit, ran_s, None).await;
    }

    /// The main process ended (it exited, or its job ended) after `ran_s`
    /// seconds: look at what is left, decide what follows, commit, reap,
    /// publish, answer — in that order. `said`: what someone else said of the
    /// end (a cluster engine, a daemon that was down).
    pub(crate) async fn main_ended(
        &mut self,
        exit: Option<ExitKind>,
        ran_s: f64,
        said: Option<String>,
    ) {
        let stop = self.life().stop().cloned();
        let said = match &stop {
            None => self.oom_killed().or(said),
            Some(_) => said,
        };
        let (status, mut reason) = ending::of(exit, stop.as_ref(), said.as_deref());
        // Killed from outside while paused: what is left of its tree is
        // thawed, so it can be stopped; no restart follows a pause (the stop
        // of its leftovers says so on record).
        let paused = self.paused();
        let left_pause = self.leave_pause().await;
        if paused {
            reason.push_str(" while paused");
        }
        let gone = self.nothing_left().await;
        let leftovers = (!gone).then(|| StopRequest {
            no_restart: paused,
            ..self.stop_request(StopCause::Leftovers, None, None, false)
        });
        self.apply(Happening::MainExited { leftovers });
        if stop.is_some() && gone {
            self.apply(Happening::TreeGone);
        }
        self.main_end = Some(MainEnd {
            status,
            reason: reason.clone(),
            ran_s,
        });
        let (next_restart_at, events) = if self.life().wire() == AgentState::Ended {
            let asked = paused || stop.as_ref().is_some_and(|s| s.asked);
            self.plan_restart(status, asked, ran_s, &mut reason)
        } else {
            (None, Vec::new())
        };
        let ended_at = store::now_rfc3339();
        let write = Transition {
            state: Some(self.life().wire()),
            status: Some(status),
            exit: Some(split(exit)),
            ended_at: Some(ended_at.clone()),
            end_reason: Some(reason.clone()),
            stop: Some(self.life().stop().map(|s| s.record())),
            next_restart_at: Some(next_restart_at.clone()),
            stop_info: self.life().stop().map(|s| s.info()),
            paused: left_pause,
            events,
            ..Transition::default()
        };
        self.commit_end(write).await;
        let zombie = self.reap_main();
        self.log_main_end(status, &reason);
        self.publish(|v| {
            v.status = status;
            v.ended_at = Some(ended_at);
            v.exit = exit;
            v.end_reason = Some(reason);
            v.runtime_at_end = Some(ran_s);
            // A zombie of another parent stays visible as one until it is reaped.
            v.proc_ = zombie;
            v.ready = v.ready.map(|_| false);
            if let Some(j) = v.job.as_mut() {
                j.running = false;
                j.info.pending_reason = None;
            }
            v.next_restart_at = next_restart_at;
        });
        let error = self.failed_answer().await;
        let response = self.current().spawn_response(error);
        self.answer(Ok(response));
        self.stop_team();
        match (self.life().wire(), stop) {
            (AgentState::Stopping, None) => {
                // The stop of its leftovers begins (on record with the end above).
                tracing::info!(agent_id = %self.spec.id, "stopping what the main process left behind");
                self.stage_began(StopStage::Term, true).await;
            }
            (AgentState::Stopping, Some(_)) => {}
            (_, stop) => {
                if let Some(s) = stop {
                    self.answer_stop(s.stage, s.began_at);
                }
                self.after_run();
            }
        }
    }

    /// Whether nothing of the run is left but its main process (asked once
    /// its exit is read, before it is reaped): a stop under way looks (and
    /// signals what is new), otherwise the run is checked for leftovers.
    async fn nothing_left(&mut self) -> bool {
        let stage = self.life().stop().map(|s| s.stage);
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        match (self.exec.as_mut(), stage) {
            (Some(exec), Some(stage)) => exec.look(&sh, id.as_str(), stage).await == Look::Gone,
            (Some(exec), None) => !exec.leftovers(&sh, id.as_str()).await,
            (None, _) => true,
        }
    }

    /// Commits how the run (or its main process) ended: an end that has
    /// happened waits for the store rather than go unrecorded.
    async fn commit_end(&self, t: Transition) {
        let write = store::transition(self.current().run_id, t);
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record the end of a run");
        }
    }

    fn log_main_end(&self, status: PersistentStatus, reason: &str) {
        let pid = self.exec.as_ref().and_then(Execution::pid);
        if self.life().wire() == AgentState::Stopping {
            tracing::info!(agent_id = %self.spec.id, pid, status = %status, reason, "agent's main process ended; its tree is being stopped");
        } else {
            tracing::info!(agent_id = %self.spec.id, pid, status = %status, reason, state = %self.life().wire(), "agent ended");
        }
    }

    /// Reaps the main process (our child) now that its end is on record;
    /// returns it when it stays a zombie of another parent.
    fn reap_main(&mut self) -> Option<std::sync::Arc<super::super::view::Proc>> {
        match self.exec.as_mut() {
            Some(Execution::Local(run)) => {
                run.reap(&self.sh, self.spec.id.as_str());
                (!run.our_child && run.proc_.is_zombie()).then(|| run.proc_.clone())
            }
            Some(Execution::Job(job)) => {
                job.recorded = true;
                None
            }
            #[cfg(test)]
            Some(Execution::Fake(f)) => {
                f.recorded = true;
                None
            }
            Some(Execution::Remnant(_)) | None => None,
        }
    }

    /// The stop's look found nothing of the tree left: the run ends.
    pub(crate) async fn tree_gone(&mut self) {
        let Some(stop) = self.life().stop().cloned() else {
            return;
        };
        if !self.exec.as_ref().is_some_and(Execution::main_recorded) {
            return;
        }
        self.apply(Happening::TreeGone);
        let Some(main) = self.main_end.clone() else {
            return;
        };
        let mut reason = main.reason.clone();
        if stop.cause == crate::model::StopCause::Leftovers {
            let count = self.exec.as_ref().and_then(Execution::descendants);
            reason.push_str(&ending::leftovers_words(count));
        }
        let (next_restart_at, events) =
            self.plan_restart(main.status, stop.asked, main.ran_s, &mut reason);
        self.commit_end(Transition {
            state: Some(self.life().wire()),
            end_reason: Some(reason.clone()),
            stop: Some(None),
            next_restart_at: Some(next_restart_at.clone()),
            events,
            ..Transition::default()
        })
        .await;
        tracing::info!(agent_id = %self.spec.id, reason = %reason, "nothing of the run is left");
        self.publish(|v| {
            v.end_reason = Some(reason);
            v.next_restart_at = next_restart_at;
        });
        self.answer_stop(stop.stage, stop.began_at);
        self.after_run();
    }

    /// Decides whether another run follows and moves to `backoff` if so;
    /// the next run's start (RFC 3339) and the events that go with it.
    fn plan_restart(
        &mut self,
        status: PersistentStatus,
        asked: bool,
        ran_s: f64,
        reason: &mut String,
    ) -> (Option<String>, Vec<EventBody>) {
        let now = SystemTime::now();
        let decision = policy::decide(
            &self.spec.restart,
            status,
            asked,
            ran_s,
            &self.history,
            policy::epoch_s(now),
            policy::jitter(),
        );
        match decision {
            Decision::Stay => (None, Vec::new()),
            Decision::Restart { delay, attempt } => {
                tracing::info!(agent_id = %self.spec.id, delay_s = delay.as_secs_f64(), attempt, "restart planned");
                self.apply(Happening::RestartPlanned {
                    until: lifecycle::later(super::super::now(), delay),
                });
                self.history.attempt = attempt;
                let at = lifecycle::later_wall(now, delay);
                let event = EventBody::Restart(RestartEvent {
                    delay_s: delay.as_secs_f64(),
                    attempt,
                });
                (
                    Some(humantime::format_rfc3339_millis(at).to_string()),
                    vec![event],
                )
            }
            Decision::CrashLoop { restarts } => {
                let window = self.spec.restart.window_s;
                reason.push_str(&format!(
                    "; crash loop: {restarts} restarts within {window} s (max_restarts {}), not restarting",
                    self.spec.restart.max_restarts
                ));
                tracing::warn!(agent_id = %self.spec.id, restarts, window_s = window, "crash loop: not restarting");
                let event = EventBody::CrashLoop(CrashLoopEvent {
                    restarts,
                    window_s: window,
                });
                (None, vec![event])
            }
        }
    }

    /// The kernel's OOM killer ended the run (its cgroup enforced the memory limit).
    fn oom_killed(&self) -> Option<String> {
        let Some(Execution::Local(run)) = &self.exec else {
            return None;
        };
        let leaf = run.leaf()?;
        let limit = self
            .current()
            .limits
            .get("memory_mb")
            .filter(|l| l.enforced_by == "cgroup")?
            .value;
        (leaf.oom_kills() > 0)
            .then(|| format!("memory limit {limit} MB exceeded (the kernel's OOM killer ended it)"))
    }

    /// The run is over and nothing of it is left: its cgroup goes, and the
    /// owner waits for a planned restart or ends.
    pub(crate) fn after_run(&mut self) {
        if let Some(exec) = &self.exec {
            self.release_leaf(exec.leaf());
        }
        self.exec = None;
    }

    /// The spawn answer for a run that ended inside its window: the tail of its stderr.
    pub(crate) async fn failed_answer(&self) -> Option<String> {
        const STDERR_TAIL_LINES: usize = 10;
        let view = self.current();
        if view.status != PersistentStatus::Failed || self.spawn_reply.is_none() {
            return None;
        }
        let path = view.stderr_log();
        let tail = super::super::blocking(move || {
            Ok(crate::logs::tail(&path, STDERR_TAIL_LINES).unwrap_or_default())
        })
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
}

fn split(exit: Option<ExitKind>) -> (Option<i32>, Option<i32>) {
    match exit {
        Some(ExitKind::Code(c)) => (Some(c), None),
        Some(ExitKind::Signal(s)) => (None, Some(s)),
        None => (None, None),
    }
}

//! What an owner is asked to do besides living its agent's life: stop it,
//! record its progress, take a probe's result or a limit's breach, record a
//! log the sampler had to truncate without a copy, look for an exit on
//! request (`reap_zombies`).

use crate::error::{Error, Result};
use crate::model::{EventBody, ProbeEvent, StopCause};
use crate::store;

use super::super::Cmd;
use super::super::execution::Execution;
use super::super::lifecycle::State;
use super::super::probes::{Report, Which};
use super::Owner;

/// The most a stop for a team's budget waits at each stage (after SIGTERM,
/// the second SIGTERM, SIGKILL), whatever the agent's own `stop_timeouts`.
const BUDGET_STOP_TIMEOUTS: [f64; 3] = [5.0, 2.0, 2.0];

impl Owner {
    pub(crate) async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Stop {
                cause,
                timeouts,
                force,
                reply,
            } => {
                let req = self.stop_request(cause, None, Some(timeouts), force);
                self.request_stop(req, Some(reply)).await;
            }
            Cmd::Progress {
                progress,
                message,
                reply,
            } => {
                let _ = reply.send(self.record_progress(progress, message).await);
            }
            Cmd::Probe { run, report } => self.on_probe(run, report).await,
            Cmd::Limit { run, reason, event } => {
                if self.live_run(run) {
                    tracing::warn!(agent_id = %self.spec.id, reason = %reason, "limit exceeded; stopping the run");
                    // A team's budget is its owner's, not the agent's: the
                    // waits the agent was spawned with (perhaps by a parent
                    // inside the team) cannot hold it off. They are capped,
                    // and a stop already under way for another reason (with
                    // its own waits) goes to SIGKILL.
                    let (timeouts, force) = if matches!(event, EventBody::Budget(_)) {
                        let own = self.spec.stop_timeouts;
                        let capped = std::array::from_fn(|i| own[i].min(BUDGET_STOP_TIMEOUTS[i]));
                        let stopping = self.life().wire() == crate::model::AgentState::Stopping;
                        (Some(capped), stopping)
                    } else {
                        (None, false)
                    };
                    self.note_event(event);
                    let req = self.stop_request(StopCause::Limit, Some(reason), timeouts, force);
                    self.request_stop(req, None).await;
                }
            }
            Cmd::Note { run, event } => {
                // Still this run's: what it says is of this run.
                if self.view.as_ref().is_some_and(|v| v.run == run) {
                    self.note_event(event);
                }
            }
            Cmd::Reap { reply } => {
                let _ = reply.send(self.reap_now().await);
            }
            Cmd::Pause { resume, reply } => {
                let _ = reply.send(self.on_pause(resume).await);
            }
            #[cfg(test)]
            Cmd::Fail => panic!("an owner failing on purpose (test)"),
        }
    }

    /// Run `run` is the current one and its main process runs (not stopping).
    fn live_run(&self, run: u32) -> bool {
        matches!(
            self.life().state(),
            State::Starting { .. } | State::Running | State::Paused
        ) && self.view.as_ref().is_some_and(|v| v.run == run)
            && self.exec.as_ref().is_some_and(|e| !e.main_exited())
    }

    /// Records the end of a main process that has exited and whose end is not
    /// on record yet; true when this call did.
    async fn reap_now(&mut self) -> bool {
        let exited = match &self.exec {
            Some(Execution::Local(run)) => !run.exited && run.proc_.handle.has_exited(),
            _ => false,
        };
        if exited {
            self.on_main_exit().await;
        }
        exited
    }

    async fn record_progress(&mut self, progress: u8, message: Option<String>) -> Result<()> {
        let view = self.current();
        let running = match &self.exec {
            Some(Execution::Local(run)) => !run.exited,
            Some(Execution::Job(job)) => !job.ended && job.running_since.is_some(),
            #[cfg(test)]
            Some(Execution::Fake(f)) => !f.exited,
            Some(Execution::Remnant(_)) | None => false,
        };
        if !running {
            return Err(Error::invalid(
                &self.spec.id,
                format!(
                    "progress is only taken from a live agent; this run is {} ({})",
                    view.status,
                    self.life().wire()
                ),
            ));
        }
        let at = store::now_rfc3339();
        let paused_s = self.pause.total.as_secs_f64();
        self.sh
            .store
            .commit(store::set_progress(
                view.run_id,
                progress,
                message.clone(),
                at.clone(),
            ))
            .await?;
        self.publish(|v| {
            v.progress = Some(progress);
            v.progress_message = message;
            v.progress_at = Some(at);
            v.progress_paused_s = paused_s;
        });
        Ok(())
    }

    /// A probe's result: counted, published, and — for `failures` liveness
    /// failures in a row — the end of the run.
    async fn on_probe(&mut self, run: u32, report: Report) {
        // A check that ended as the run was paused says nothing of it.
        if !self.live_run(run) || self.paused() {
            return;
        }
        let Report {
            outcome,
            failures,
            changed,
        } = report;
        let probes = self.spec.request.probes.as_ref();
        let threshold = probes.map_or(3, |p| p.failures);
        let Some(kind) = probes
            .and_then(|p| match outcome.which {
                Which::Liveness => p.liveness.as_ref(),
                Which::Readiness => p.readiness.as_ref(),
            })
            .map(|p| p.kind().to_owned())
        else {
            return;
        };
        let was_ready = self.current().ready;
        let ready = match outcome.which {
            Which::Readiness if outcome.passed => Some(true),
            Which::Readiness if failures >= threshold => Some(false),
            _ => was_ready,
        };
        if changed || ready != was_ready {
            let which = match outcome.which {
                Which::Liveness => "liveness",
                Which::Readiness => "readiness",
            };
            let result = if outcome.passed { "passed" } else { "failed" };
            tracing::info!(agent_id = %self.spec.id, probe = which, kind = %kind, result, output = %outcome.output, "probe result changed");
            self.note_event(EventBody::Probe(ProbeEvent {
                probe: which.into(),
                check: kind.clone(),
                result: result.into(),
                output: outcome.output.clone(),
                ready,
            }));
        }
        if ready != was_ready {
            self.publish(|v| v.ready = ready);
        }
        if outcome.which == Which::Liveness && failures >= threshold {
            let reason = format!(
                "liveness probe ({kind}) failed {failures} times in a row; last: {}",
                outcome.output
            );
            tracing::warn!(agent_id = %self.spec.id, reason = %reason, "liveness failed; stopping the run");
            let req = self.stop_request(StopCause::Liveness, Some(reason), None, false);
            self.request_stop(req, None).await;
        }
    }
}

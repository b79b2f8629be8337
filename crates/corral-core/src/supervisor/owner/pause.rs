//! Pauses, as the owner carries them out.
//!
//! - **Pause** (only from `running`): the move is committed first —
//!   `state` paused and `paused_at` — then the tree is frozen
//!   (`execution/pause.rs`), then the view is published. A daemon that dies
//!   between the commit and the freeze leaves a paused record, and the next
//!   one freezes the tree when it re-adopts the run. A freeze that fails is
//!   undone on record (back to `running`) and answered as an error.
//! - **Resume** (only from `paused`): the tree is thawed first, then
//!   `running` is committed and published. A daemon that dies in between
//!   leaves the record paused, and the next one freezes the tree again: a
//!   resume counts once it is answered.
//! - While paused nothing runs on the agent's clocks: the owner's timer has
//!   no `max_runtime_s` deadline (the time paused is added to it when the
//!   run resumes), the run's probes are off (started again on resume, with
//!   `progress_stale_s` leaving the time paused out), and the restart policy
//!   cannot fire (a frozen process does not exit by itself; one killed from
//!   outside while paused is not restarted).
//! - **Leaving a pause any other way** — a stop, or the main process killed
//!   from outside — thaws the tree first, so the stop's SIGTERM is delivered
//!   and what is left of the tree can be stopped; the pause is closed in the
//!   same commit as the move.
//!
//! Only a run on this host can be paused: a job on a cluster engine is
//! refused (see [`Execution::unpausable`](super::super::execution::Execution::unpausable)).

use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::model::{AgentState, PauseOutcome, PauseReport};
use crate::store::{self, PauseRecord, Transition};

use super::super::execution::pause::Frozen;
use super::super::lifecycle::{Happening, State};
use super::Owner;

/// The current run's pauses: the one under way, and what the earlier ones took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct PauseClock {
    /// When the pause under way began (monotonic, and on the wall clock for the record).
    pub since: Option<(Instant, SystemTime)>,
    /// What the finished pauses took.
    pub total: Duration,
}

impl PauseClock {
    /// As the store has it, taken over at `now` (`wall`).
    pub(crate) fn recover(
        paused_at: Option<&str>,
        paused_s: f64,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let since = paused_at
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(|at| {
                let ago = wall.duration_since(at).unwrap_or_default();
                (now.checked_sub(ago).unwrap_or(now), at)
            });
        Self {
            since,
            total: super::super::lifecycle::secs_saturating(paused_s),
        }
    }

    /// Ends the pause under way at `now`, adding what it took.
    pub(crate) fn close(&mut self, now: Instant) {
        if let Some((at, _)) = self.since.take() {
            self.total = self.total.saturating_add(now.saturating_duration_since(at));
        }
    }

    /// What the store keeps of it.
    pub(crate) fn record(&self) -> PauseRecord {
        PauseRecord {
            paused_at: self
                .since
                .map(|(_, wall)| humantime::format_rfc3339_millis(wall).to_string()),
            paused_s: self.total.as_secs_f64(),
        }
    }
}

impl Owner {
    /// Pauses the run (or, with `resume`, resumes it).
    pub(crate) async fn on_pause(&mut self, resume: bool) -> Result<PauseReport> {
        if resume {
            self.resume().await
        } else {
            self.pause().await
        }
    }

    /// An answer about this agent.
    fn pause_report(
        &self,
        outcome: PauseOutcome,
        frozen: Option<&Frozen>,
        reason: Option<String>,
    ) -> PauseReport {
        let view = self.current();
        PauseReport {
            agent_id: self.spec.id.to_string(),
            pid: view.pid,
            outcome,
            state: self.life().wire(),
            method: frozen.map(|f| f.method.to_owned()),
            processes: frozen.map(|f| f.processes),
            reason,
        }
    }

    /// The refusal of a pause or resume in the current state.
    fn refusal(&self, reason: impl Into<String>) -> Error {
        Error::State {
            agent_id: self.spec.id.to_string(),
            state: self.life().wire().to_string(),
            reason: reason.into(),
        }
    }

    async fn pause(&mut self) -> Result<PauseReport> {
        const ONLY: &str = "only a running agent can be paused";
        match self.life().state() {
            State::Paused => return Ok(self.pause_report(PauseOutcome::AlreadyPaused, None, None)),
            State::Running => {}
            State::Starting { .. } => {
                return Err(self.refusal(format!("{ONLY}; this one has not finished starting")));
            }
            State::Stopping(_) => {
                return Err(self.refusal(format!("{ONLY}; this one is being stopped")));
            }
            State::Backoff { .. } => {
                return Err(self.refusal(format!("{ONLY}; this one is waiting to restart")));
            }
            State::Ended => return Err(self.refusal(format!("{ONLY}; this one has ended"))),
        }
        match &self.exec {
            None => return Err(self.refusal(format!("{ONLY}; this one has no process"))),
            Some(exec) if exec.main_exited() => {
                return Err(self.refusal(format!("{ONLY}; its main process has exited")));
            }
            Some(exec) => {
                if let Some(why) = exec.unpausable() {
                    return Err(self.refusal(format!("it cannot be paused: {why}")));
                }
            }
        }
        let run_id = self.current().run_id;
        let clock = PauseClock {
            since: Some((super::super::now(), SystemTime::now())),
            total: self.pause.total,
        };
        // On record before the freeze: a daemon that dies now freezes the
        // tree when it re-adopts the run.
        let write = store::transition(
            run_id,
            Transition {
                state: Some(AgentState::Paused),
                paused: Some(clock.record()),
                ..Transition::default()
            },
        );
        self.sh.store.commit(write).await.map_err(unavailable)?;
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        let frozen = match self.exec.as_mut() {
            Some(exec) => exec.freeze(&sh, id.as_str()).await,
            None => Err("the run has no process".to_owned()),
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(why) => {
                tracing::error!(agent_id = %id, error = %why, "cannot freeze the agent's tree; it stays running");
                let write = store::transition(
                    run_id,
                    Transition {
                        state: Some(AgentState::Running),
                        paused: Some(self.pause.record()),
                        ..Transition::default()
                    },
                );
                if let Err(e) = self.sh.store.commit_retrying(write).await {
                    tracing::error!(agent_id = %id, error = %e, "cannot record a pause undone");
                }
                return Err(Error::os(
                    &id,
                    "freeze the agent's tree",
                    std::io::Error::other(why),
                ));
            }
        };
        self.pause = clock;
        self.apply(Happening::Pause);
        if let Some(exec) = self.exec.as_mut() {
            // No probe runs while paused: a frozen agent answers none.
            exec.set_probes(None);
        }
        self.publish(|_| {});
        tracing::info!(agent_id = %id, method = frozen.method, processes = frozen.processes, "agent paused");
        if let Some(note) = &frozen.note {
            tracing::warn!(agent_id = %id, "{note}");
        }
        Ok(self.pause_report(PauseOutcome::Paused, Some(&frozen), frozen.note.clone()))
    }

    async fn resume(&mut self) -> Result<PauseReport> {
        const ONLY: &str = "only a paused agent can be resumed";
        match self.life().state() {
            State::Running => return Ok(self.pause_report(PauseOutcome::NotPaused, None, None)),
            State::Paused => {}
            State::Starting { .. } => {
                return Err(self.refusal(format!("{ONLY}; this one is starting")));
            }
            State::Stopping(_) => {
                return Err(self.refusal(format!("{ONLY}; this one is being stopped")));
            }
            State::Backoff { .. } => {
                return Err(self.refusal(format!("{ONLY}; this one is waiting to restart")));
            }
            State::Ended => return Err(self.refusal(format!("{ONLY}; this one has ended"))),
        }
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        // Thawed before it is on record: a daemon that dies now finds the run
        // paused and freezes it again (the resume was never answered).
        let thawed = match self.exec.as_mut() {
            Some(exec) => exec.thaw(&sh, id.as_str()).await,
            None => Err("the run has no process".to_owned()),
        };
        let thawed = thawed.map_err(|why| {
            tracing::error!(agent_id = %id, error = %why, "cannot thaw the agent's tree; it stays paused");
            Error::os(&id, "thaw the agent's tree", std::io::Error::other(why))
        })?;
        self.pause.close(super::super::now());
        let write = store::transition(
            self.current().run_id,
            Transition {
                state: Some(AgentState::Running),
                paused: Some(self.pause.record()),
                ..Transition::default()
            },
        );
        // The thaw has happened: it is recorded, waiting for the store if need be.
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %id, error = %e, "cannot record a resume");
        }
        self.apply(Happening::Resume);
        self.publish(|_| {});
        self.start_probes();
        tracing::info!(agent_id = %id, method = thawed.method, processes = thawed.processes, paused_s = self.pause.total.as_secs_f64(), "agent resumed");
        Ok(self.pause_report(PauseOutcome::Resumed, Some(&thawed), None))
    }

    /// Leaves a pause for a stop or an end: thaws the tree (a stop's signals
    /// are then delivered, and what is left of it can be stopped) and closes
    /// the pause. Returns what to commit with the move (none when the run
    /// was not paused).
    pub(crate) async fn leave_pause(&mut self) -> Option<PauseRecord> {
        if !matches!(self.life().state(), State::Paused) {
            return None;
        }
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        if let Some(exec) = self.exec.as_mut() {
            match exec.thaw(&sh, id.as_str()).await {
                Ok(f) => {
                    tracing::info!(agent_id = %id, method = f.method, processes = f.processes, "thawed a paused agent to stop it");
                }
                Err(why) => {
                    tracing::warn!(agent_id = %id, error = %why, "cannot thaw a paused agent before stopping it");
                }
            }
        }
        self.pause.close(super::super::now());
        Some(self.pause.record())
    }

    /// Re-applies the pause of a run re-adopted as paused: freezes its tree
    /// again (harmless when it still is), since the previous daemon may have
    /// died between recording the pause and freezing.
    pub(crate) async fn refreeze(&mut self) {
        let (sh, id) = (self.sh.clone(), self.spec.id.clone());
        let Some(exec) = self.exec.as_mut() else {
            return;
        };
        match exec.freeze(&sh, id.as_str()).await {
            Ok(f) => {
                tracing::info!(agent_id = %id, method = f.method, processes = f.processes, "re-adopted a paused agent; it stays paused");
            }
            Err(why) => {
                tracing::error!(agent_id = %id, error = %why, "cannot freeze a re-adopted paused agent again");
            }
        }
    }

    /// Whether the current run is paused (its tree frozen).
    pub(crate) fn paused(&self) -> bool {
        matches!(self.life().state(), State::Paused)
    }
}

/// A store that refused a pause: nothing was done.
fn unavailable(e: Error) -> Error {
    match e {
        Error::Store { .. } | Error::StoreGone { .. } => Error::Unavailable {
            reason: e.to_string(),
        },
        other => other,
    }
}

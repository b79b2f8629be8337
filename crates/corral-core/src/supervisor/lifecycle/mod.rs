//! The one lifecycle of an agent: its state, with the data each state needs,
//! and the only function that changes it.
//!
//! An agent's owner (`owner/`) keeps one [`Lifecycle`] and changes it only
//! through [`Lifecycle::apply`]: a pure function of the state and what
//! happened that returns the move it made, or refuses. A refused move is a
//! bug — never a user's doing — and the tests here and in `sim.rs` make sure
//! no sequence of commands, exits, deadlines and daemon crashes reaches one.
//!
//! ```text
//!             Started(window) ─┐
//!   (new run)                  ▼          Verified / Started(no window)
//!  ──────────► Starting ───────────────────────────────► Running ◄──┐
//!                │ │ StartFailed               Pause │    │  │    │ Resume
//!                │ └────────────► Ended ◄──────┐     ▼    │  │    │
//!                │ MainExited     ▲  ▲  ▲      │   Paused ─┼──┼────┘
//!                │ (tree empty)───┘  │  │      │     │     │  │ MainExited (tree empty)
//!                │                   │  │      └─────┼─────┘  │
//!   Stop /       ▼                   │  │ TreeGone   │ Stop   │ Stop / MainExited (leftovers)
//!   leftovers ─► Stopping ───────────┘  │            ▼        ▼
//!                 ▲ StageDue ⟲         │ RestartCancelled   Stopping
//!                 │                     │
//!              Backoff ◄── RestartPlanned (from Ended) ── BackoffElapsed ──► Starting
//! ```
//!
//! The moves are the contract's (`DESIGN.md`, "The state on the wire"), plus
//! paused → ended for a frozen process killed from outside, and running (or
//! starting in its window) → starting for a cluster job the engine took off
//! its node and queued again (`Requeued`: the same run, waiting to run again). A stop carries
//! its cause, stage, timeouts and deadlines; it is durable ([`StopRecord`] is
//! what the store keeps) and resumed by the next daemon at its stored stage
//! ([`Lifecycle::recover`]), a deadline that passed meanwhile being due at
//! once. A tree that survives SIGKILL's wait stays `stopping` (stage `kill`,
//! `unkillable`); it never goes back to `running`.

#[cfg(test)]
mod sim;

use std::time::{Duration, Instant, SystemTime};

use crate::model::{AgentState, StopCause, StopInfo, StopStage};
use crate::store::StopRecord;

/// The stages of a staged stop, in order: SIGTERM, SIGTERM again, SIGKILL
/// (only SIGKILL with `force`).
pub(crate) fn stages(force: bool) -> &'static [StopStage] {
    if force {
        &[StopStage::Kill]
    } else {
        &[StopStage::Term, StopStage::SecondTerm, StopStage::Kill]
    }
}

/// The wait of `stage` from a stop's timeouts. A forced stop still waits at
/// least a second for the kill to land.
pub(crate) fn stage_wait(stage: StopStage, timeouts: [f64; 3], force: bool) -> Duration {
    let secs = match stage {
        StopStage::Term => timeouts[0],
        StopStage::SecondTerm => timeouts[1],
        _ if force => timeouts[2].max(1.0),
        _ => timeouts[2],
    };
    secs_saturating(secs)
}

/// `secs` as a duration: negative and NaN are zero, too large is saturated
/// (a far future, never a panic).
pub(crate) fn secs_saturating(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// `at + wait`, or a far future when that does not fit.
pub(crate) fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 86_400))
}

/// `at + wait` on the wall clock, saturated likewise.
pub(crate) fn later_wall(at: SystemTime, wait: Duration) -> SystemTime {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 86_400))
}

/// A stop under way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stop {
    /// Why it began (a user joining a stop of a live main process makes it `user`).
    pub cause: StopCause,
    /// Someone asked for it (or joined it): the run is never restarted.
    pub asked: bool,
    /// The cause in words: the limit and the usage, the probe's last output.
    pub reason: Option<String>,
    /// Waits after each stage, seconds.
    pub timeouts: [f64; 3],
    /// SIGKILL at once.
    pub force: bool,
    /// The stage under way.
    pub stage: StopStage,
    /// When it began.
    pub began_at: SystemTime,
    /// When the stage's wait ends (monotonic, and on the wall clock for the record).
    pub deadline: Instant,
    pub deadline_at: SystemTime,
    /// The main process has exited and its end is on record.
    pub main_exited: bool,
    /// Survived SIGKILL and its wait: reported, and watched until gone.
    pub unkillable: bool,
}

impl Stop {
    fn new(req: &StopRequest, main_exited: bool) -> Self {
        let stage = stages(req.force)[0];
        let wait = stage_wait(stage, req.timeouts, req.force);
        Self {
            cause: req.cause,
            asked: matches!(req.cause, StopCause::User | StopCause::Parent) || req.no_restart,
            reason: req.reason.clone(),
            timeouts: req.timeouts,
            force: req.force,
            stage,
            began_at: req.wall,
            deadline: later(req.now, wait),
            deadline_at: later_wall(req.wall, wait),
            main_exited,
            unkillable: false,
        }
    }

    fn enter(&mut self, stage: StopStage, now: Instant, wall: SystemTime) {
        let wait = stage_wait(stage, self.timeouts, self.force);
        self.stage = stage;
        self.deadline = later(now, wait);
        self.deadline_at = later_wall(wall, wait);
    }

    /// Another stop joins this one: a user (or a stopped parent) makes it
    /// theirs — unless the main process had already ended, and what is
    /// stopped are its leftovers — and `force` escalates to SIGKILL at once.
    /// Returns the stage that begins, if one does.
    fn join(&mut self, req: &StopRequest) -> Option<StopStage> {
        if matches!(req.cause, StopCause::User | StopCause::Parent) {
            self.asked = true;
            if !self.main_exited && self.cause != StopCause::User {
                self.cause = req.cause;
                self.reason = None;
            }
        }
        if req.force && !self.force && self.stage != StopStage::Kill {
            self.force = true;
            self.timeouts = req.timeouts;
            self.enter(StopStage::Kill, req.now, req.wall);
            return Some(StopStage::Kill);
        }
        None
    }

    /// The stage's wait is over: the next stage (returned), or after SIGKILL's
    /// wait, a little longer for something signalled moments ago, else the
    /// tree survived it (true).
    fn due(
        &mut self,
        now: Instant,
        wall: SystemTime,
        settle_until: Option<Instant>,
    ) -> (Option<StopStage>, bool) {
        if let Some(next) = self.next_stage() {
            self.enter(next, now, wall);
            return (Some(next), false);
        }
        match settle_until.filter(|t| *t > now && *t > self.deadline) {
            Some(t) => {
                self.deadline_at = later_wall(wall, t - now);
                self.deadline = t;
                (None, false)
            }
            None => {
                self.unkillable = true;
                (None, true)
            }
        }
    }

    /// The stage after the current one, if there is one.
    fn next_stage(&self) -> Option<StopStage> {
        let all = stages(self.force);
        let i = all.iter().position(|s| *s == self.stage)?;
        all.get(i + 1).copied()
    }

    /// What a status shows of it.
    pub(crate) fn info(&self) -> StopInfo {
        StopInfo {
            stage: self.stage,
            cause: self.cause,
            began_at: rfc3339(self.began_at),
            stage_deadline_at: (!self.unkillable).then(|| rfc3339(self.deadline_at)),
            unkillable: self.unkillable,
        }
    }

    /// What the store keeps of it.
    pub(crate) fn record(&self) -> StopRecord {
        StopRecord {
            cause: self.cause,
            asked: self.asked,
            reason: self.reason.clone(),
            timeouts: self.timeouts,
            force: self.force,
            stage: self.stage,
            began_at: rfc3339(self.began_at),
            stage_deadline_at: rfc3339(self.deadline_at),
            main_exited: self.main_exited,
            unkillable: self.unkillable,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A stop asked for: by a user, a limit, a probe, the runtime limit, a parent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StopRequest {
    pub cause: StopCause,
    pub reason: Option<String>,
    pub timeouts: [f64; 3],
    pub force: bool,
    pub now: Instant,
    pub wall: SystemTime,
    /// Never followed by a restart, whatever its cause: a stop of what is
    /// left of a run killed while it was paused.
    pub no_restart: bool,
}

/// The owner's state, with what each state needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum State {
    /// The run is on record; its process is being created (`verify_until`
    /// none), or is in its verification window until `verify_until`, or its
    /// job is queued.
    Starting { verify_until: Option<Instant> },
    /// Verified and running.
    Running,
    /// Frozen with its tree.
    Paused,
    /// A staged stop is under way.
    Stopping(Stop),
    /// The next run starts at `until`.
    Backoff { until: Instant },
    /// Nothing of the run is left and nothing more is planned.
    Ended,
}

impl State {
    /// The word on the wire.
    pub(crate) fn wire(&self) -> AgentState {
        match self {
            Self::Starting { .. } => AgentState::Starting,
            Self::Running => AgentState::Running,
            Self::Paused => AgentState::Paused,
            Self::Stopping(_) => AgentState::Stopping,
            Self::Backoff { .. } => AgentState::Backoff,
            Self::Ended => AgentState::Ended,
        }
    }
}

/// What can happen to an agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Happening {
    /// The process was created (or the job began running), with a
    /// verification window until `verify_until`, or none.
    Started { verify_until: Option<Instant> },
    /// The window closed with the process alive.
    Verified,
    /// The process could not be created, or its start not recorded.
    StartFailed,
    /// The main process exited and its end is on record; with a stop of
    /// its `leftovers` (cause `leftovers`) when something of its tree still runs.
    MainExited { leftovers: Option<StopRequest> },
    /// A stop is asked for (or joins the one under way, escalating with `force`).
    Stop(StopRequest),
    /// The stage's wait is over. `settle_until`: a member signalled moments
    /// ago may still be dying; the kill stage waits for it that long.
    StageDue {
        now: Instant,
        wall: SystemTime,
        settle_until: Option<Instant>,
    },
    /// Nothing of the run's tree is left.
    TreeGone,
    /// The restart policy planned the next run.
    RestartPlanned { until: Instant },
    /// The planned restart's time came.
    BackoffElapsed,
    /// A new run of the id (a spawn of an ended agent).
    NewRun,
    /// The tree is frozen (`pause`): committed before the freeze.
    Pause,
    /// The tree is thawed (`resume`): committed after the thaw.
    Resume,
    /// The engine queued the run's job again after it had started
    /// (`scontrol requeue`, preemption, a failed node): the same run waits
    /// to start again.
    Requeued,
}

impl Happening {
    fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Verified => "verified",
            Self::StartFailed => "start failed",
            Self::MainExited { .. } => "main exited",
            Self::Stop(_) => "stop",
            Self::StageDue { .. } => "stage due",
            Self::TreeGone => "tree gone",
            Self::RestartPlanned { .. } => "restart planned",
            Self::BackoffElapsed => "backoff elapsed",
            Self::NewRun => "new run",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Requeued => "requeued",
        }
    }
}

/// A move the lifecycle refused: a bug in the owner.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("illegal move: {what} in state {from}")]
pub(crate) struct Illegal {
    pub from: AgentState,
    pub what: &'static str,
}

/// What a move did, for the owner to carry out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Change {
    pub from: AgentState,
    pub to: AgentState,
    /// A stop stage began with this move: its signal goes out now.
    pub stage: Option<StopStage>,
    /// The tree has just survived SIGKILL's wait.
    pub unkillable: bool,
}

/// An agent's state, changed only by [`Lifecycle::apply`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lifecycle {
    state: State,
}

impl Lifecycle {
    /// A new run on record, its process not yet created.
    #[cfg(test)]
    pub(crate) fn starting() -> Self {
        Self {
            state: State::Starting { verify_until: None },
        }
    }

    /// The state of an agent whose owner has nothing to do.
    pub(crate) fn ended() -> Self {
        Self {
            state: State::Ended,
        }
    }

    /// The state a previous daemon left on record (`state`, `stop`), as a new
    /// owner takes it over at `now`: a stop continues at its stage (a deadline
    /// that passed meanwhile is due at once); a run still starting stays so
    /// until its process is found; a paused run stays paused (its owner
    /// freezes its tree again: the pause was on record before the freeze);
    /// any other live run is `running`, and what it really is the owner
    /// finds out next.
    pub(crate) fn recover(
        state: Option<AgentState>,
        stop: Option<&StopRecord>,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let Some(rec) = stop else {
            let state = match state {
                Some(AgentState::Starting) => State::Starting { verify_until: None },
                Some(AgentState::Paused) => State::Paused,
                _ => State::Running,
            };
            return Self { state };
        };
        let parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
        let deadline_at = parse(&rec.stage_deadline_at).unwrap_or(wall);
        let left = deadline_at.duration_since(wall).unwrap_or_default();
        let stage = if stages(rec.force).contains(&rec.stage) {
            rec.stage
        } else {
            StopStage::Kill
        };
        Self {
            state: State::Stopping(Stop {
                cause: rec.cause,
                asked: rec.asked,
                reason: rec.reason.clone(),
                timeouts: rec.timeouts,
                force: rec.force,
                stage,
                began_at: parse(&rec.began_at).unwrap_or(wall),
                deadline: later(now, left),
                deadline_at,
                main_exited: rec.main_exited,
                // Watched again from the start: it may die this time.
                unkillable: false,
            }),
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn wire(&self) -> AgentState {
        self.state.wire()
    }

    /// The stop under way, if any.
    pub(crate) fn stop(&self) -> Option<&Stop> {
        match &self.state {
            State::Stopping(s) => Some(s),
            _ => None,
        }
    }

    /// When the lifecycle itself needs the owner next: the end of the
    /// verification window, of the stop stage, of the backoff.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Starting { verify_until } => *verify_until,
            State::Stopping(s) if !s.unkillable => Some(s.deadline),
            State::Backoff { until } => Some(*until),
            _ => None,
        }
    }

    /// Moves on `what`, or refuses (and stays).
    pub(crate) fn apply(&mut self, what: Happening) -> Result<Change, Illegal> {
        use Happening as H;
        use State as S;
        let from = self.state.wire();
        let name = what.name();
        let stay = |stage, unkillable| Change {
            from,
            to: from,
            stage,
            unkillable,
        };
        let next = match (&mut self.state, what) {
            // Moves inside a stop: its main process's end, another stop
            // joining it, a stage's end.
            (S::Stopping(s), H::MainExited { .. }) if !s.main_exited => {
                s.main_exited = true;
                return Ok(stay(None, false));
            }
            (S::Stopping(s), H::Stop(req)) => return Ok(stay(s.join(&req), false)),
            (
                S::Stopping(s),
                H::StageDue {
                    now,
                    wall,
                    settle_until,
                },
            ) if !s.unkillable => {
                let (stage, unkillable) = s.due(now, wall, settle_until);
                return Ok(stay(stage, unkillable));
            }
            // Moves to another state.
            (
                S::Starting { verify_until: None },
                H::Started {
                    verify_until: Some(t),
                },
            ) => S::Starting {
                verify_until: Some(t),
            },
            (S::Starting { verify_until: None }, H::Started { verify_until: None })
            | (
                S::Starting {
                    verify_until: Some(_),
                },
                H::Verified,
            )
            | (S::Paused, H::Resume) => S::Running,
            (S::Starting { .. }, H::StartFailed)
            | (S::Starting { .. } | S::Running | S::Paused, H::MainExited { leftovers: None })
            | (
                S::Stopping(Stop {
                    main_exited: true, ..
                }),
                H::TreeGone,
            )
            | (S::Backoff { .. }, H::Stop(_)) => S::Ended,
            (
                S::Starting { .. } | S::Running | S::Paused,
                H::MainExited {
                    leftovers: Some(req),
                },
            ) => S::Stopping(Stop::new(&req, true)),
            (S::Starting { .. } | S::Running | S::Paused, H::Stop(req)) => {
                S::Stopping(Stop::new(&req, false))
            }
            (S::Ended, H::RestartPlanned { until }) => S::Backoff { until },
            (S::Backoff { .. }, H::BackoffElapsed)
            | (S::Ended, H::NewRun)
            | (S::Running | S::Starting { .. }, H::Requeued) => S::Starting { verify_until: None },
            (S::Running, H::Pause) => S::Paused,
            _ => return Err(Illegal { from, what: name }),
        };
        let stage = match &next {
            S::Stopping(s) => Some(s.stage),
            _ => None,
        };
        self.state = next;
        Ok(Change {
            from,
            to: self.state.wire(),
            stage,
            unkillable: false,
        })
    }
}

#[cfg(test)]
mod tests;

//! The life of an agent as one enum, and which moves between its states are legal.
//!
//! An agent's owner (its actor, see `actor.rs`) is the only code that changes
//! its state, and every change goes through [`next`]: a pure function of the
//! state and what happened, tested here on its own. The actor's richer state
//! (timers, the process, who waits for a reply) hangs off these tags.
//!
//! ```text
//!            started(verify)            verify elapsed
//! Starting ─────────────────► Verifying ───────────────► Running
//!    │ start failed               │ exited / stop            │ exited / stop
//!    │ (queued job: ended / stop) ▼                          ▼
//!  Ended ◄──── tree gone ──── Stopping ◄──── stop ────────────┘
//!    │  ▲                        ▲  (leftovers of a run that ended on its own)
//!    │  └──── cancelled ──┐      │
//!    └─ restart planned ─► Backoff ── elapsed ──► Starting
//! ```

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Tag {
    /// Its run is recorded; the process is being created.
    Starting,
    /// The process runs; its verification window is open.
    Verifying,
    /// Verified and running.
    Running,
    /// A staged stop is under way (on request, or a limit, or leftovers of an ended run).
    Stopping,
    /// The run ended; the restart policy starts the next one at a set time.
    Backoff,
    /// The run ended and nothing more is planned.
    Ended,
}

/// What can happen to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Happening {
    /// The process was created; `verify` when there is a verification window.
    Started { verify: bool },
    /// The process could not be created (or its start not recorded).
    StartFailed,
    /// The verification window ended with the process alive.
    VerifyElapsed,
    /// The agent's process exited.
    Exited,
    /// A stop began: on request, or by a limit, or to clear leftovers.
    StopBegun,
    /// Nothing of the tree is left.
    TreeGone,
    /// The restart policy planned another run.
    RestartPlanned,
    /// The planned restart's time came.
    BackoffElapsed,
    /// The planned restart was called off (the user stopped the agent).
    RestartCancelled,
}

/// The state after `what` happens in state `from`; `None` when that cannot happen there.
pub(crate) fn next(from: Tag, what: Happening) -> Option<Tag> {
    use Happening as H;
    use Tag as T;
    Some(match (from, what) {
        (T::Starting, H::Started { verify: true }) => T::Verifying,
        (T::Starting, H::Started { verify: false }) => T::Running,
        (T::Starting, H::StartFailed) => T::Ended,
        // A run queued on a cluster engine is `Starting` until the engine runs
        // it: it can be stopped (taken out of the queue) or end there.
        (T::Starting, H::StopBegun) => T::Stopping,
        (T::Starting, H::Exited) => T::Ended,
        (T::Verifying, H::VerifyElapsed) => T::Running,
        (T::Verifying | T::Running, H::Exited) => T::Ended,
        (T::Verifying | T::Running | T::Stopping, H::StopBegun) => T::Stopping,
        // The agent's own process may end before the rest of its tree.
        (T::Stopping, H::Exited) => T::Stopping,
        (T::Stopping, H::TreeGone) => T::Ended,
        // A run that ended on its own may have left processes behind.
        (T::Ended, H::StopBegun) => T::Stopping,
        (T::Ended, H::RestartPlanned) => T::Backoff,
        (T::Backoff, H::BackoffElapsed) => T::Starting,
        (T::Backoff, H::RestartCancelled) => T::Ended,
        _ => return None,
    })
}

impl Tag {
    /// An id in this state is taken: a new spawn of it is refused.
    pub(crate) fn is_busy(self) -> bool {
        self != Self::Ended
    }

    /// The word shown for it (`corral top`, logs).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Verifying => "verifying",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Backoff => "waiting to restart",
            Self::Ended => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Happening as H;
    use Tag as T;

    #[test]
    fn every_legal_move_and_no_other() {
        let legal = [
            (T::Starting, H::Started { verify: true }, T::Verifying),
            (T::Starting, H::Started { verify: false }, T::Running),
            (T::Starting, H::StartFailed, T::Ended),
            (T::Starting, H::StopBegun, T::Stopping),
            (T::Starting, H::Exited, T::Ended),
            (T::Verifying, H::VerifyElapsed, T::Running),
            (T::Verifying, H::Exited, T::Ended),
            (T::Verifying, H::StopBegun, T::Stopping),
            (T::Running, H::Exited, T::Ended),
            (T::Running, H::StopBegun, T::Stopping),
            (T::Stopping, H::StopBegun, T::Stopping),
            (T::Stopping, H::Exited, T::Stopping),
            (T::Stopping, H::TreeGone, T::Ended),
            (T::Ended, H::StopBegun, T::Stopping),
            (T::Ended, H::RestartPlanned, T::Backoff),
            (T::Backoff, H::BackoffElapsed, T::Starting),
            (T::Backoff, H::RestartCancelled, T::Ended),
        ];
        let tags = [
            T::Starting,
            T::Verifying,
            T::Running,
            T::Stopping,
            T::Backoff,
            T::Ended,
        ];
        let happenings = [
            H::Started { verify: true },
            H::Started { verify: false },
            H::StartFailed,
            H::VerifyElapsed,
            H::Exited,
            H::StopBegun,
            H::TreeGone,
            H::RestartPlanned,
            H::BackoffElapsed,
            H::RestartCancelled,
        ];
        for from in tags {
            for what in happenings {
                let want = legal
                    .iter()
                    .find(|(f, w, _)| *f == from && *w == what)
                    .map(|(_, _, to)| *to);
                assert_eq!(next(from, what), want, "{from:?} + {what:?}");
            }
        }
    }

    #[test]
    fn nothing_leaves_ended_but_a_stop_of_leftovers_or_a_planned_restart() {
        // A user stop of an ended agent is a no-op reported as already_ended: it
        // never goes through the state machine, and Ended never restarts by itself.
        assert_eq!(next(T::Ended, H::BackoffElapsed), None);
        assert_eq!(next(T::Ended, H::Started { verify: true }), None);
        assert!(!T::Ended.is_busy());
        assert!(T::Backoff.is_busy());
    }
}

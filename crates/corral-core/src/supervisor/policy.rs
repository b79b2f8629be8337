//! Restart decisions: pure functions of the policy, how the run ended, its
//! history and the time.
//!
//! - `never` (the default) never restarts; `on-failure` restarts runs that end
//!   `failed`; `always` also restarts `completed` ones. A run the user stopped
//!   (`cancelled`) is never restarted.
//! - Delays double from `backoff_s[0]` up to `backoff_s[1]`, each spread by up
//!   to ±20 % (jitter, so a fleet that failed together does not restart in
//!   lockstep), and start again from the bottom after a run that stayed up for
//!   `window_s`.
//! - More than `max_restarts` restarts within `window_s` is a crash loop:
//!   corral stops restarting and says so.

use std::time::Duration;

use crate::model::{PersistentStatus, RestartMode, RestartPolicy};

/// What happened to an agent's recent runs, as far as restarts go.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct History {
    /// Restarts in a row without a stable run (0: the current run was started by a user).
    pub attempt: u32,
    /// When recent automatic restarts happened, seconds since the epoch, oldest first.
    pub restarts_at: Vec<f64>,
}

/// What to do after a run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Nothing: the policy does not restart this ending.
    Stay,
    /// Start the run numbered `attempt` in a row after `delay`.
    Restart {
        /// How long to wait.
        delay: Duration,
        /// The next run's place in a row of restarts (1 = first restart).
        attempt: u32,
    },
    /// Too many restarts too fast: give up.
    CrashLoop {
        /// Restarts inside the window.
        restarts: u32,
    },
}

/// Decides what follows a run that ended with `status` after `ran_s` seconds,
/// at `now` (seconds since the epoch). `jitter` is a number in [0, 1) that
/// spreads the delay; `user_stopped` when a user asked for the stop.
pub(crate) fn decide(
    policy: &RestartPolicy,
    status: PersistentStatus,
    user_stopped: bool,
    ran_s: f64,
    history: &History,
    now: f64,
    jitter: f64,
) -> Decision {
    let restarts = match (policy.policy, status) {
        _ if user_stopped => false,
        (RestartMode::Never, _) => false,
        (RestartMode::OnFailure, PersistentStatus::Failed) => true,
        (RestartMode::Always, PersistentStatus::Failed | PersistentStatus::Completed) => true,
        _ => false,
    };
    if !restarts {
        return Decision::Stay;
    }
    let stable = ran_s >= policy.window_s;
    let in_window = history
        .restarts_at
        .iter()
        .filter(|t| now - **t < policy.window_s)
        .count() as u32;
    if !stable && in_window >= policy.max_restarts {
        return Decision::CrashLoop {
            restarts: in_window,
        };
    }
    let attempt = if stable { 1 } else { history.attempt + 1 };
    Decision::Restart {
        delay: backoff(policy.backoff_s, attempt, jitter),
        attempt,
    }
}

/// The delay before restart number `attempt` (1-based) in a row.
pub(crate) fn backoff(bounds: [f64; 2], attempt: u32, jitter: f64) -> Duration {
    let [low, high] = bounds;
    let doubled = low * 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
    let spread = doubled * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    Duration::from_secs_f64(spread.clamp(low, high.max(low)))
}

/// Checks a restart policy; the reason when it makes no sense.
pub(crate) fn validate(policy: &RestartPolicy) -> Result<(), String> {
    let [low, high] = policy.backoff_s;
    if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= low && high <= 86_400.0) {
        return Err(format!(
            "restart.backoff_s must be [min, max] seconds with 0 <= min <= max <= 86400; got [{}, {}]",
            crate::model::short_number(low),
            crate::model::short_number(high)
        ));
    }
    if !(policy.window_s.is_finite() && policy.window_s > 0.0 && policy.window_s <= 86_400.0) {
        return Err(format!(
            "restart.window_s must be more than 0 and at most 86400 (a day); got {}",
            crate::model::short_number(policy.window_s)
        ));
    }
    if policy.max_restarts > 1_000_000 {
        return Err("restart.max_restarts must be at most 1000000".into());
    }
    Ok(())
}

/// Seconds since the epoch.
pub(crate) fn epoch_s(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A number in [0, 1) that differs from call to call (for jitter; not for secrets).
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use PersistentStatus::{Cancelled, Completed, Failed};

    fn policy(mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            policy: mode,
            max_restarts: 3,
            window_s: 60.0,
            backoff_s: [1.0, 8.0],
        }
    }

    #[test]
    fn which_endings_restart_under_which_policy() {
        use RestartMode::*;
        let h = History::default();
        let table = [
            (Never, Failed, false, false),
            (Never, Completed, false, false),
            (OnFailure, Failed, false, true),
            (OnFailure, Completed, false, false),
            (OnFailure, Cancelled, false, false),
            (OnFailure, Failed, true, false),
            (Always, Completed, false, true),
            (Always, Failed, false, true),
            (Always, Cancelled, false, false),
            (Always, Completed, true, false),
        ];
        for (mode, status, user, restarts) in table {
            let d = decide(&policy(mode), status, user, 1.0, &h, 1000.0, 0.5);
            assert_eq!(
                matches!(d, Decision::Restart { .. }),
                restarts,
                "{mode:?} {status:?} user_stopped={user}: {d:?}"
            );
        }
    }

    #[test]
    fn delays_double_within_the_bounds_and_jitter_stays_inside() {
        let table = [
            (1, 0.5, 1.0),
            (2, 0.5, 2.0),
            (3, 0.5, 4.0),
            (4, 0.5, 8.0),
            (9, 0.5, 8.0),
            (1, 0.0, 1.0), // never under the floor
            (3, 0.0, 3.2),
            (3, 0.999, 4.8),
            (4, 0.999, 8.0), // never over the ceiling
        ];
        for (attempt, jitter, want) in table {
            let got = backoff([1.0, 8.0], attempt, jitter).as_secs_f64();
            assert!(
                (got - want).abs() < 0.01,
                "attempt {attempt} jitter {jitter}: {got}"
            );
        }
    }

    #[test]
    fn too_many_restarts_in_the_window_is_a_crash_loop_and_a_stable_run_resets() {
        let p = policy(RestartMode::OnFailure);
        let now = 1000.0;
        let busy = History {
            attempt: 3,
            restarts_at: vec![950.0, 960.0, 970.0],
        };
        assert_eq!(
            decide(&p, Failed, false, 1.0, &busy, now, 0.5),
            Decision::CrashLoop { restarts: 3 }
        );
        // Restarts older than the window do not count.
        let old = History {
            attempt: 3,
            restarts_at: vec![100.0, 200.0, 970.0],
        };
        assert_eq!(
            decide(&p, Failed, false, 1.0, &old, now, 0.5),
            Decision::Restart {
                delay: Duration::from_secs(8),
                attempt: 4
            }
        );
        // A run that stayed up for the window starts the backoff again.
        assert_eq!(
            decide(&p, Failed, false, 61.0, &busy, now, 0.5),
            Decision::Restart {
                delay: Duration::from_secs(1),
                attempt: 1
            }
        );
    }

    #[test]
    fn nonsense_policies_are_refused_with_the_field() {
        let mut p = policy(RestartMode::Always);
        p.backoff_s = [5.0, 1.0];
        assert!(validate(&p).unwrap_err().contains("restart.backoff_s"));
        p.backoff_s = [1.0, 5.0];
        p.window_s = 0.0;
        assert!(validate(&p).unwrap_err().contains("restart.window_s"));
        let j = jitter();
        assert!((0.0..1.0).contains(&j));
    }
}

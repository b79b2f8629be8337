//! How a run ended, in a status and words: a pure function of how its main
//! process exited, the stop under way when it did, and what someone else
//! (the kernel's OOM killer, a cluster engine, a daemon that was down) said
//! of it.
//!
//! - Stopped on request (a user, a stopped parent): `cancelled`, whatever
//!   signal ended it.
//! - Stopped by `max_runtime_s`, a limit or a failing liveness probe:
//!   `failed`, with the cause and the usage or probe output.
//! - Otherwise: `completed` for code 0, else `failed`.

use crate::model::{PersistentStatus, StopCause};
use crate::platform::ExitKind;

use super::lifecycle::Stop;

/// A signal's name and number, as people read it.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

fn exit_words(exit: Option<ExitKind>) -> String {
    match exit {
        Some(ExitKind::Code(c)) => format!("exited with code {c}"),
        Some(ExitKind::Signal(s)) => format!("killed by {}", signal_name(s)),
        None => "exit status lost: the agent was re-adopted after a daemon restart and the kernel did not report how it ended".to_owned(),
    }
}

/// The status and reason of a run whose main process ended with `exit` while
/// `stop` was under way (if one was). `said` is what someone else said of an
/// end: the OOM killer, a cluster engine, a daemon that was down.
pub(crate) fn of(
    exit: Option<ExitKind>,
    stop: Option<&Stop>,
    said: Option<&str>,
) -> (PersistentStatus, String) {
    let words = match (exit, said) {
        (None, Some(said)) => said.to_owned(),
        _ => exit_words(exit),
    };
    match stop.map(|s| (s.cause, s.reason.as_deref())) {
        Some((StopCause::User, _)) => (
            PersistentStatus::Cancelled,
            format!("stopped on request; {words}"),
        ),
        Some((StopCause::Parent, _)) => (
            PersistentStatus::Cancelled,
            format!("stopped with its parent agent; {words}"),
        ),
        Some((StopCause::MaxRuntime | StopCause::Limit | StopCause::Liveness, why)) => (
            PersistentStatus::Failed,
            format!("{}; stopped ({words})", why.unwrap_or("stopped by a limit")),
        ),
        // A stop of leftovers begins after the main process ended.
        Some((StopCause::Leftovers, _)) | None => match (exit, said) {
            (Some(ExitKind::Code(0)), None) => (PersistentStatus::Completed, words),
            (Some(_), Some(said)) => (PersistentStatus::Failed, format!("{said}; {words}")),
            _ => (PersistentStatus::Failed, words),
        },
    }
}

/// What the end reason adds once a stop of leftovers is over.
pub(crate) fn leftovers_words(count: Option<u32>) -> String {
    match count {
        Some(1) => "; 1 leftover process stopped".to_owned(),
        Some(n) => format!("; {n} leftover processes stopped"),
        None => "; its leftovers were stopped".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::model::StopStage;

    fn stop(cause: StopCause, reason: Option<&str>) -> Stop {
        Stop {
            cause,
            asked: cause == StopCause::User,
            reason: reason.map(str::to_owned),
            timeouts: [1.0, 1.0, 1.0],
            force: false,
            stage: StopStage::Term,
            began_at: SystemTime::now(),
            deadline: Instant::now(),
            deadline_at: SystemTime::now(),
            main_exited: false,
            unkillable: false,
        }
    }

    #[test]
    fn each_ending_gets_its_status_and_words() {
        use PersistentStatus::*;
        let term = Some(ExitKind::Signal(15));
        let cases = [
            (
                Some(ExitKind::Code(0)),
                None,
                None,
                Completed,
                "exited with code 0",
            ),
            (
                Some(ExitKind::Code(3)),
                None,
                None,
                Failed,
                "exited with code 3",
            ),
            (
                Some(ExitKind::Signal(9)),
                None,
                None,
                Failed,
                "killed by SIGKILL (9)",
            ),
            (
                Some(ExitKind::Code(0)),
                Some(stop(StopCause::User, None)),
                None,
                Cancelled,
                "stopped on request; exited with code 0",
            ),
            (
                term,
                Some(stop(
                    StopCause::MaxRuntime,
                    Some("max_runtime_s 5 exceeded"),
                )),
                None,
                Failed,
                "max_runtime_s 5 exceeded; stopped (killed by SIGTERM (15))",
            ),
            (
                term,
                Some(stop(
                    StopCause::Liveness,
                    Some("liveness probe (tcp) failed 3 times"),
                )),
                None,
                Failed,
                "liveness probe (tcp) failed 3 times; stopped",
            ),
            (
                None,
                None,
                Some("the job's node failed (NODE_FAIL)"),
                Failed,
                "the job's node failed (NODE_FAIL)",
            ),
            (
                Some(ExitKind::Code(1)),
                None,
                Some("Slurm cancelled the job (CANCELLED)"),
                Failed,
                "Slurm cancelled the job (CANCELLED); exited with code 1",
            ),
            (
                None,
                Some(stop(StopCause::User, None)),
                Some("exit status lost: it ended while no corral daemon was running"),
                Cancelled,
                "stopped on request; exit status lost",
            ),
        ];
        for (exit, stop, said, want, words) in cases {
            let (status, reason) = of(exit, stop.as_ref(), said);
            assert_eq!(status, want, "{reason}");
            assert!(
                reason.starts_with(words),
                "{reason:?} should start with {words:?}"
            );
        }
    }

    #[test]
    fn leftovers_are_counted_in_words() {
        assert_eq!(leftovers_words(Some(1)), "; 1 leftover process stopped");
        assert_eq!(leftovers_words(Some(3)), "; 3 leftover processes stopped");
    }
}

//! `pause` and `resume`: freeze and thaw whole process trees.

use std::process::ExitCode;

use anyhow::Result;
use corral_core::{PauseOutcome, PauseReport, PauseRequest, Selector};

use super::agents::checked_selector;
use super::{Ctx, print_json};
use crate::cli::PauseArgs;

/// What a request for `target` (none: `--all`) asks: one id is `agent_id`
/// (refused with a conflict when it cannot be paused), a subtree a selector
/// (whose agents that cannot be paused are skipped, saying why).
fn request(target: Option<&str>) -> Result<PauseRequest> {
    Ok(match target.map(checked_selector).transpose()? {
        Some(Selector::One(id)) => PauseRequest {
            agent_id: Some(id.to_string()),
            ..PauseRequest::default()
        },
        Some(_) => PauseRequest {
            selector: target.map(str::to_owned),
            ..PauseRequest::default()
        },
        None => PauseRequest {
            all: true,
            ..PauseRequest::default()
        },
    })
}

/// One agent's report in a line: `w.1 paused (cgroup, 3 processes)`,
/// `w.2 skipped (stopping): only a running agent can be paused; …`.
pub fn line(r: &PauseReport) -> String {
    let how = match (&r.method, r.processes) {
        (Some(m), Some(1)) => format!(" ({m}, 1 process)"),
        (Some(m), Some(n)) => format!(" ({m}, {n} processes)"),
        (Some(m), None) => format!(" ({m})"),
        _ => String::new(),
    };
    let outcome = match r.outcome {
        PauseOutcome::Paused => "paused".to_owned(),
        PauseOutcome::Resumed => "resumed".to_owned(),
        PauseOutcome::AlreadyPaused => "already paused".to_owned(),
        PauseOutcome::NotPaused => format!("not paused ({})", r.state),
        PauseOutcome::Skipped => format!("skipped ({})", r.state),
    };
    let why = r
        .reason
        .as_deref()
        .map(|w| format!(": {w}"))
        .unwrap_or_default();
    format!("{} {outcome}{how}{why}", r.agent_id)
}

pub async fn run(ctx: &Ctx, args: &PauseArgs, resume: bool) -> Result<ExitCode> {
    let body = request(args.target.as_deref())?;
    let client = ctx.client().await?;
    let reports = if resume {
        client.resume(&body).await?
    } else {
        client.pause(&body).await?
    };
    if ctx.json {
        print_json(&reports)?;
    } else if reports.is_empty() {
        println!("nothing to {}", if resume { "resume" } else { "pause" });
    } else {
        for r in &reports {
            println!("{}", line(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::AgentState;

    #[test]
    fn one_id_is_an_agent_id_a_subtree_a_selector_none_all() {
        let one = request(Some("w.1")).unwrap();
        assert_eq!(one.agent_id.as_deref(), Some("w.1"));
        assert_eq!((one.selector, one.all), (None, false));
        let team = request(Some("w.*")).unwrap();
        assert_eq!(team.selector.as_deref(), Some("w.*"));
        assert_eq!((team.agent_id, team.all), (None, false));
        assert!(request(None).unwrap().all);
        assert!(request(Some("bad id")).is_err());
    }

    #[test]
    fn a_report_is_one_line() {
        let mut r = PauseReport {
            agent_id: "w.1".into(),
            pid: Some(7),
            outcome: PauseOutcome::Paused,
            state: AgentState::Paused,
            method: Some("cgroup".into()),
            processes: Some(3),
            reason: None,
        };
        assert_eq!(line(&r), "w.1 paused (cgroup, 3 processes)");
        r.outcome = PauseOutcome::Skipped;
        r.state = AgentState::Stopping;
        (r.method, r.processes) = (None, None);
        r.reason = Some("only a running agent can be paused; this one is being stopped".into());
        assert_eq!(
            line(&r),
            "w.1 skipped (stopping): only a running agent can be paused; this one is being stopped"
        );
    }
}

//! `stop` and `kill`: staged stops of whole trees, and what they did.

use std::process::ExitCode;

use anyhow::Result;
use corral_core::{
    AgentStatus, CleanupOptions, KillRequest, KillResponse, Selector, StopManyRequest, StopReport,
    StopStage,
};

use super::agents::{checked_id, checked_selector, exit_words};
use super::spawn::parse_timeouts;
use super::{Ctx, print_json};
use crate::cli::StopArgs;
use crate::output::{Style, Table};

fn print_reports(ctx: &Ctx, reports: &[StopReport]) -> Result<()> {
    if ctx.json {
        return print_json(&reports);
    }
    if reports.is_empty() {
        println!("nothing to stop");
        return Ok(());
    }
    print!("{}", reports_table(reports).render(Style::stdout(false)));
    // A stop that cannot exclude an escaped process says so, never a quiet success.
    for r in reports {
        if let Some(why) = r.incomplete_reason.as_deref() {
            crate::say(&format!(
                "warning: {}: the tree may not be whole: {why}",
                r.agent_id
            ));
        }
    }
    Ok(())
}

/// The stop reports as a table: one row per agent, how far the stop went.
pub fn reports_table(reports: &[StopReport]) -> Table {
    let mut t =
        Table::new(vec!["ID", "PID", "STAGE", "TOOK", "EXIT", "STATUS", "TREE"]).id_column(0);
    for r in reports {
        t.push(vec![
            r.agent_id.as_str().into(),
            r.pid.map_or("-".into(), |p| p.to_string()).into(),
            r.stage.as_str().into(),
            format!("{:.0}ms", r.duration_ms).into(),
            exit_words(r.exit_code, r.exit_signal).into(),
            r.persistent_status.as_str().into(),
            r.descendants_killed
                .map_or("-".into(), |n| format!("+{n}"))
                .into(),
        ]);
    }
    t
}

/// Says on stderr what a staged stop will do, before its waits begin — for a
/// person at a terminal (scripts get the report).
fn announce(ctx: &Ctx, what: &str, timeouts: Option<&[f64]>, force: bool) {
    use std::io::IsTerminal;
    if ctx.json || !std::io::stderr().is_terminal() {
        return;
    }
    if force {
        crate::say(&format!("stopping {what}: SIGKILL"));
        return;
    }
    let plan = match timeouts {
        Some([a, b, _]) => format!("SIGTERM, SIGTERM again after {a} s, SIGKILL after {b} s more"),
        _ => "SIGTERM, then SIGTERM and SIGKILL after each agent's stop timeouts".into(),
    };
    crate::say(&format!("stopping {what}: {plan}"));
}

/// What `stop` and `restart` are given: the target (none: `--all`) and the
/// stop's waits, checked.
fn target_and_waits(
    target: Option<&str>,
    waits: Option<&str>,
) -> Result<(Option<Selector>, Option<Vec<f64>>)> {
    let waits = waits.map(parse_timeouts).transpose()?;
    Ok((target.map(checked_selector).transpose()?, waits))
}

pub async fn stop(ctx: &Ctx, args: &StopArgs) -> Result<ExitCode> {
    let (target, timeouts) =
        target_and_waits(args.target.as_deref(), args.stop_timeouts.as_deref())?;
    let client = ctx.client().await?;
    let reports: Vec<StopReport> = match &target {
        Some(Selector::One(id)) => {
            announce(ctx, id.as_str(), timeouts.as_deref(), args.force);
            let body = CleanupOptions {
                force: args.force,
                stop_timeouts: timeouts,
            };
            let one: StopReport = client.stop(id.as_str(), &body).await?;
            vec![one]
        }
        _ => {
            let what = args
                .target
                .clone()
                .unwrap_or_else(|| "every running agent".into());
            announce(ctx, &what, timeouts.as_deref(), args.force);
            let body = StopManyRequest {
                all: target.is_none(),
                selector: args.target.clone(),
                force: args.force,
                stop_timeouts: timeouts,
                // `--all` means what runs; a selector also reports the ended ones it names.
                live_only: target.is_none(),
            };
            client.stop_many(&body).await?
        }
    };
    print_reports(ctx, &reports)?;
    Ok(
        if reports.iter().any(|r| r.stage == StopStage::Unkillable) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// `corral restart`: each agent's staged stop (when it runs), then a new run
/// with the request it was last spawned with.
pub async fn restart(ctx: &Ctx, args: &crate::cli::RestartArgs) -> Result<ExitCode> {
    let (target, timeouts) =
        target_and_waits(args.target.as_deref(), args.stop_timeouts.as_deref())?;
    let client = ctx.client().await?;
    let what = args.target.clone().unwrap_or_else(|| "every agent".into());
    announce(ctx, &what, timeouts.as_deref(), args.force);
    let body = StopManyRequest {
        all: target.is_none(),
        selector: args.target.clone(),
        force: args.force,
        stop_timeouts: timeouts,
        live_only: false,
    };
    let answer: corral_core::BatchResponse = client.restart_many(&body).await?;
    if answer.results.is_empty() && !ctx.json {
        println!("nothing to restart");
        return Ok(ExitCode::SUCCESS);
    }
    super::spawn::print_batch(ctx, &answer, "restarted")
}

pub async fn kill(ctx: &Ctx, id: &str, force: bool) -> Result<ExitCode> {
    let id = checked_id(id)?;
    let client = ctx.client().await?;
    if !force && !ctx.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // The agent's own stop timeouts apply: say what they are.
        let s: AgentStatus = client.status(&id).await?;
        if s.persistent_status.is_live() {
            announce(ctx, &id, Some(&s.stop_timeouts), false);
        }
    }
    let answer: KillResponse = client.kill(&id, &KillRequest { force }).await?;
    if ctx.json {
        print_json(&answer)?;
    } else {
        print_reports(ctx, std::slice::from_ref(&answer.report))?;
    }
    Ok(if answer.report.stage == StopStage::Unkillable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

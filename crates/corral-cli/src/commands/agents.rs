//! Reading agents (`status`, `ps`, `summary`, `health`, `runs`, `wait`,
//! `events`), reporting progress, and forgetting (`rm`, `prune`, `reap`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use corral_api::Client;
use corral_core::{
    AgentId, AgentStatus, Event, Health, HealthReport, ListQuery, PersistentStatus, ProcessSummary,
    ProgressUpdate, Removal, RunInfo, Selector,
};

use super::{Ctx, print_json, usage};
use crate::cli::{ProgressArgs, PsArgs};
use crate::output::{self, Cell, Colour, Style, Table};

/// An id from the command line, checked here so a bad one is a clear usage error.
pub fn checked_id(id: &str) -> Result<String> {
    Ok(AgentId::new(id)?.to_string())
}

/// A selector from the command line (`ID` or `PREFIX.*`), with a hint for globs.
pub fn checked_selector(raw: &str) -> Result<Selector> {
    Ok(Selector::parse(raw)?)
}

pub async fn status(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let s: AgentStatus = ctx.client().await?.status(&checked_id(id)?).await?;
    if ctx.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", output::key_values(status_lines(&s)));
    Ok(ExitCode::SUCCESS)
}

/// `text` on one line: newlines, tabs and other control characters written
/// as escapes (a command line may hold a multi-line script).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn status_lines(s: &AgentStatus) -> Vec<(&'static str, String)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("agent_id", s.agent_id.clone()),
        ("pid", opt(s.pid.map(|p| p.to_string()))),
        ("state", s.state.to_string()),
        ("health", s.health.to_string()),
        ("persistent_status", s.persistent_status.to_string()),
        ("process_status", s.process_status.clone()),
        ("process_alive", s.process_alive.to_string()),
        ("ready", opt(s.ready.map(|r| r.to_string()))),
        ("cpu_percent", format!("{:.1}", s.cpu_percent)),
        ("memory", output::size_mb(s.memory_mb)),
        ("num_threads", s.num_threads.to_string()),
        ("runtime", output::duration(s.runtime_seconds)),
        ("progress", opt(s.progress.map(|p| format!("{p}%")))),
        ("progress_message", opt(s.progress_message.clone())),
        ("cmdline", one_line(&s.cmdline)),
        ("started_at", s.started_at.clone()),
        ("ended_at", opt(s.ended_at.clone())),
        ("exit", exit_words(s.exit_code, s.exit_signal)),
        ("end_reason", opt(s.end_reason.clone())),
        ("run", s.run.to_string()),
        ("restarts", s.restarts.to_string()),
        ("restart_policy", s.restart_policy.clone()),
        ("next_restart_at", opt(s.next_restart_at.clone())),
        ("containment", s.containment.clone()),
        ("stdout_log", s.stdout_log.display().to_string()),
        ("stderr_log", s.stderr_log.display().to_string()),
    ];
    if let Some(stop) = &s.stop {
        rows.insert(3, ("stop", stop_words(stop)));
    }
    if let Some(p) = &s.placement {
        rows.push(("placement", placement_words(p)));
    }
    if let Some(t) = &s.tree {
        rows.push((
            "tree",
            format!(
                "{} processes, {:.1}% CPU, {}",
                t.processes,
                t.cpu_percent,
                output::size_mb(t.memory_mb)
            ),
        ));
    }
    for (name, l) in &s.limits {
        rows.push(("limit", format!("{name} {} ({})", l.value, l.enforced_by)));
    }
    if let Some(p) = &s.probe {
        for (which, state) in [("liveness", &p.liveness), ("readiness", &p.readiness)] {
            if let Some(st) = state {
                let last = st.last_result.as_deref().unwrap_or("not checked yet");
                let out = st.last_output.as_deref().unwrap_or("");
                rows.push(("probe", format!("{which} {}: {last} {out}", st.kind)));
            }
        }
    }
    if let Some(u) = &s.user {
        rows.push(("user", u.clone()));
    }
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(("labels", labels.join(",")));
    }
    rows
}

/// A stop under way, in words: `user stop, stage term until 10:31:10Z`.
pub fn stop_words(stop: &corral_core::StopInfo) -> String {
    match (&stop.stage_deadline_at, stop.unkillable) {
        (_, true) => format!("{} stop; survived SIGKILL, still watched", stop.cause),
        (Some(at), false) => format!("{} stop, stage {} until {at}", stop.cause, stop.stage),
        (None, false) => format!("{} stop, stage {}", stop.cause, stop.stage),
    }
}

pub fn exit_words(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "-".into(),
    }
}

pub fn state_colour(state: corral_core::AgentState) -> Option<Colour> {
    use corral_core::AgentState as S;
    match state {
        S::Stopping | S::Paused | S::Backoff => Some(Colour::Yellow),
        S::Ended => Some(Colour::Dim),
        S::Starting | S::Running => None,
    }
}

pub fn health_colour(h: Health) -> Option<Colour> {
    Some(match h {
        Health::Healthy => Colour::Green,
        Health::Failed => Colour::Red,
        Health::Zombie | Health::Unknown | Health::Paused => Colour::Yellow,
        Health::Completed | Health::Cancelled => Colour::Dim,
    })
}

/// Where a job runs, in words: `slurm job 7 on node1`, `slurm job 8, queued: Priority`.
pub fn placement_words(p: &corral_core::PlacementInfo) -> String {
    match (&p.node, &p.pending_reason) {
        (_, Some(reason)) => format!("{} job {}, queued: {reason}", p.engine, p.job_id),
        (Some(node), None) => format!("{} job {} on {node}", p.engine, p.job_id),
        (None, None) => format!("{} job {}", p.engine, p.job_id),
    }
}

/// The `ps` table for a set of statuses. On a narrow terminal it leaves out
/// READY, ↺, STATUS, CPU%, MEM, PID, RUNTIME and STATE, in that order, before
/// it cuts INFO or the ids short; ID, HEALTH, EXIT and INFO always stay.
pub fn ps_table(all: &[&AgentStatus]) -> Table {
    let mut t = Table::new(vec![
        "ID", "PID", "STATE", "STATUS", "HEALTH", "READY", "CPU%", "MEM", "RUNTIME", "↺", "EXIT",
        "INFO",
    ])
    .shrinkable(&[11])
    .id_column(0)
    .droppable(&[5, 9, 3, 6, 7, 1, 8, 2]);
    for s in all {
        let info = match (&s.progress, &s.progress_message, &s.end_reason) {
            _ if s.stop.is_some() => s.stop.as_ref().map(stop_words).unwrap_or_default(),
            _ if s.persistent_status.is_live() => match (&s.progress, &s.progress_message) {
                (Some(p), Some(m)) => format!("{p}% {m}"),
                (Some(p), None) => format!("{p}%"),
                _ => s
                    .placement
                    .as_ref()
                    .map(placement_words)
                    .unwrap_or_default(),
            },
            (_, _, Some(reason)) => reason.clone(),
            _ => String::new(),
        };
        let info = match &s.next_restart_at {
            Some(at) => format!("restarts at {at}; {info}"),
            None => info,
        };
        t.push(vec![
            s.agent_id.as_str().into(),
            s.pid.map_or("-".into(), |p| p.to_string()).into(),
            Cell::coloured(s.state.as_str(), state_colour(s.state)),
            s.persistent_status.as_str().into(),
            Cell::coloured(s.health.as_str(), health_colour(s.health)),
            // Readiness is a live run's: an ended one shows none.
            match s.ready {
                _ if s.state == corral_core::AgentState::Ended => "-",
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
            .into(),
            format!("{:.1}", s.cpu_percent).into(),
            output::size_mb(s.memory_mb).into(),
            output::duration(s.runtime_seconds).into(),
            s.restarts.to_string().into(),
            exit_words(s.exit_code, s.exit_signal).into(),
            info.into(),
        ]);
    }
    t
}

/// Whether a status passes `ps`'s filters.
fn keep(
    s: &AgentStatus,
    sel: Option<&Selector>,
    labels: &BTreeMap<String, String>,
    states: &[String],
    nodes: &[String],
) -> bool {
    let id_ok =
        sel.is_none_or(|sel| AgentId::new(s.agent_id.as_str()).is_ok_and(|id| sel.matches(&id)));
    let labels_ok = labels.iter().all(|(k, v)| s.labels.get(k) == Some(v));
    let states_ok = states.is_empty()
        || states.iter().any(|w| {
            w == s.persistent_status.as_str() || w == s.health.as_str() || w == s.state.as_str()
        });
    let nodes_ok = nodes.is_empty()
        || s.placement
            .as_ref()
            .and_then(|p| p.node.as_ref())
            .is_some_and(|node| nodes.contains(node));
    id_ok && labels_ok && states_ok && nodes_ok
}

/// The fields the `ps` table shows (and `keep` reads).
const PS_FIELDS: &str = "pid,state,persistent_status,health,ready,cpu_percent,memory_mb,\
    runtime_seconds,restarts,exit_code,exit_signal,progress,progress_message,end_reason,stop,\
    placement,next_restart_at,labels";

/// What `ps` asks the daemon for: its filters, as far as the daemon's mean
/// the same, and only the fields its table shows (all of them for `--json`).
fn ps_query(args: &PsArgs, labels: &BTreeMap<String, String>, json: bool) -> ListQuery {
    // `running` is both a state and a stored status, and `ps --state` takes
    // either (and health words): only words that are nothing but a lifecycle
    // state can be left to the daemon.
    let only_states = ["starting", "stopping", "paused", "backoff", "ended"];
    let states = (!args.states.is_empty()
        && args
            .states
            .iter()
            .all(|w| only_states.contains(&w.as_str())))
    .then(|| args.states.join(","));
    // The daemon splits `label` on commas: a label with one is checked here only.
    let label = (!labels.is_empty()
        && labels
            .iter()
            .all(|(k, v)| !k.contains(',') && !v.contains(',')))
    .then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    ListQuery {
        selector: args.selector.clone(),
        state: states,
        label,
        node: (!args.nodes.is_empty()).then(|| args.nodes.join(",")),
        fields: (!json).then(|| PS_FIELDS.to_owned()),
    }
}

/// What `--state` takes: a state, a stored status or a health word.
const STATE_WORDS: [&str; 13] = [
    "starting",
    "running",
    "stopping",
    "paused",
    "backoff",
    "ended",
    "spawning",
    "completed",
    "failed",
    "cancelled",
    "healthy",
    "zombie",
    "unknown",
];

pub async fn ps(ctx: &Ctx, args: &PsArgs) -> Result<ExitCode> {
    let sel = args.selector.as_deref().map(checked_selector).transpose()?;
    let labels = super::spawn::key_values(&args.labels, "--label")?;
    if let Some(bad) = args
        .states
        .iter()
        .find(|s| !STATE_WORDS.contains(&s.as_str()))
    {
        return Err(usage(format!(
            "--state {bad:?}: use one of {}",
            STATE_WORDS.join(", ")
        )));
    }
    let client = ctx.client().await?;
    let query = ps_query(args, &labels, ctx.json);
    if let Some(bad) = args
        .nodes
        .iter()
        .find(|n| n.is_empty() || n.contains(',') || n.chars().any(char::is_whitespace))
    {
        return Err(usage(format!(
            "--node {bad:?}: give one node name per --node"
        )));
    }
    let filtered = args.selector.is_some()
        || !labels.is_empty()
        || !args.states.is_empty()
        || !args.nodes.is_empty();
    loop {
        let all = client.list_agents(&query).await?;
        // The daemon has applied what it could; `keep` applies the rest (a
        // stored status or health word, a label with a comma).
        let mut shown: Vec<&AgentStatus> = all
            .values()
            .filter(|s| keep(s, sel.as_ref(), &labels, &args.states, &args.nodes))
            .collect();
        shown.sort_by(|a, b| corral_core::natural_cmp(&a.agent_id, &b.agent_id));
        let text = if ctx.json {
            let shown: BTreeMap<&str, &AgentStatus> =
                shown.iter().map(|s| (s.agent_id.as_str(), *s)).collect();
            serde_json::to_string_pretty(&shown)? + "\n"
        } else if shown.is_empty() {
            if !filtered {
                "no agents\n"
            } else {
                "no agent matches\n"
            }
            .to_owned()
        } else {
            let mut text = ps_table(&shown).render(Style::stdout(args.wide));
            text.push_str(&teams_footer(&client, sel.as_ref()).await);
            text
        };
        let Some(every) = args.watch else {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        };
        // On a terminal, clear the screen and redraw, like `watch`; into a
        // pipe or a file, one table after another, no terminal codes.
        use std::io::{IsTerminal, Write};
        if std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H{text}");
        } else {
            println!("{text}");
        }
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs_f64(every.max(0.2))).await;
    }
}

/// Under `ps`'s table, when teams have budgets: a blank line, then the
/// teams' table (as `corral team ls` prints it) — those the selector's
/// agents belong to or that lie within it, or every one without a
/// selector. Nothing when no budget is set (or the daemon has no teams),
/// so the agents' table reads as it always did.
async fn teams_footer(client: &Client, sel: Option<&Selector>) -> String {
    let Ok(mut teams) = client.teams().await else {
        return String::new();
    };
    if let Some(Selector::One(id) | Selector::Subtree(id)) = sel {
        teams.retain(|t| {
            corral_core::AgentId::new(&t.team).is_ok_and(|t| t.is_within(id) || id.is_within(&t))
        });
    }
    if teams.is_empty() {
        return String::new();
    }
    format!(
        "\n{}",
        super::team::table(&teams).render(Style::stdout(false))
    )
}

pub async fn summary(ctx: &Ctx) -> Result<ExitCode> {
    let s: ProcessSummary = ctx.client().await?.summary().await?;
    if ctx.json {
        print_json(&s)?;
    } else {
        let rows = vec![
            ("total", s.total.to_string()),
            ("spawning", s.spawning.to_string()),
            ("running", s.running.to_string()),
            ("completed", s.completed.to_string()),
            ("failed", s.failed.to_string()),
            ("cancelled", s.cancelled.to_string()),
            ("zombie", s.zombie.to_string()),
            ("memory", output::size_mb(s.total_memory_mb)),
            ("cpu_percent", format!("{:.1}", s.total_cpu_percent)),
        ];
        print!("{}", output::key_values(rows));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn health(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let h: HealthReport = ctx.client().await?.agent_health(&checked_id(id)?).await?;
    if ctx.json {
        print_json(&h)?;
    } else {
        println!("{} {}", h.agent_id, h.health);
    }
    Ok(if h.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn progress(ctx: &Ctx, args: &ProgressArgs) -> Result<ExitCode> {
    let Some(id) = args
        .agent
        .clone()
        .or_else(|| std::env::var("CORRAL_AGENT_ID").ok())
    else {
        return Err(usage(
            "no agent to report for: run inside an agent (CORRAL_AGENT_ID) or pass --agent ID",
        ));
    };
    // Inside an agent the daemon's socket is given; it must already be running.
    let client = match std::env::var_os("CORRAL_SOCKET").filter(|s| !s.is_empty()) {
        Some(sock) if ctx.remote.is_none() => Client::new(sock),
        _ => ctx.client().await?,
    };
    let update = ProgressUpdate {
        progress: args.percent,
        message: args.message.clone(),
    };
    let s: AgentStatus = client.progress(&checked_id(&id)?, &update).await?;
    if ctx.json {
        print_json(&s)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reap(ctx: &Ctx) -> Result<ExitCode> {
    let ids: Vec<String> = ctx.client().await?.reap().await?;
    if ctx.json {
        print_json(&ids)?;
    } else if ids.is_empty() {
        println!("nothing to reap");
    } else {
        println!("reaped: {}", ids.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_removal(ctx: &Ctx, r: &Removal) -> Result<ExitCode> {
    if ctx.json {
        print_json(r)?;
    } else {
        println!(
            "removed {} agent(s) and {} run(s){}",
            r.removed.len(),
            r.runs_removed,
            if r.removed.is_empty() {
                String::new()
            } else {
                format!(": {}", r.removed.join(" "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let r: Removal = ctx.client().await?.remove(&checked_id(id)?).await?;
    print_removal(ctx, &r)
}

pub async fn prune(ctx: &Ctx) -> Result<ExitCode> {
    let r: Removal = ctx.client().await?.prune().await?;
    print_removal(ctx, &r)
}

pub async fn runs(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let runs: Vec<RunInfo> = ctx.client().await?.runs(&checked_id(id)?).await?;
    if ctx.json {
        print_json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(vec![
        "RUN", "PID", "STARTED", "ENDED", "STATUS", "EXIT", "REASON",
    ])
    .shrinkable(&[6]);
    for r in &runs {
        t.push(vec![
            r.run.to_string().into(),
            r.pid.map_or("-".into(), |p| p.to_string()).into(),
            r.started_at.as_str().into(),
            r.ended_at.clone().unwrap_or_else(|| "-".into()).into(),
            r.persistent_status.as_str().into(),
            exit_words(r.exit_code, r.exit_signal).into(),
            r.end_reason.clone().unwrap_or_else(|| "-".into()).into(),
        ]);
    }
    print!("{}", t.render(Style::stdout(false)));
    Ok(ExitCode::SUCCESS)
}

pub async fn wait(ctx: &Ctx, target: &str, timeout: Option<Duration>) -> Result<ExitCode> {
    let sel = checked_selector(target)?;
    let client = ctx.client().await?;
    let timeout_s = timeout.map_or(3600.0, |t| t.as_secs_f64());
    let ids: Vec<String> = match &sel {
        Selector::One(id) => vec![id.to_string()],
        _ => {
            let query = ListQuery {
                selector: Some(target.to_owned()),
                fields: Some("agent_id".to_owned()),
                ..ListQuery::default()
            };
            let mut ids: Vec<String> = client
                .list_agent_fields(&query)
                .await?
                .into_keys()
                .collect();
            ids.sort_by(|a, b| corral_core::natural_cmp(a, b));
            if ids.is_empty() {
                bail!("no agent matches {target}");
            }
            ids
        }
    };
    // At most WAITS_IN_FLIGHT waits hold a connection at once: a wait holds
    // one until its agent ends, and the daemon caps connections (a team of
    // thousands must not lock out every other client). Each wait asks for
    // what is left of the one deadline.
    const WAITS_IN_FLIGHT: usize = 32;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout_s);
    let waits = ids.iter().enumerate().map(|(i, id)| {
        let client = client.clone();
        async move {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let query = corral_core::WaitQuery {
                timeout_s: Some(left.as_secs_f64().max(0.001)),
            };
            (i, client.wait(id, &query).await)
        }
    });
    let mut done: Vec<_> =
        futures_util::StreamExt::collect(futures_util::StreamExt::buffer_unordered(
            futures_util::stream::iter(waits),
            WAITS_IN_FLIGHT,
        ))
        .await;
    done.sort_by_key(|(i, _)| *i);
    let statuses = done
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<Vec<_>, _>>()?;
    if ctx.json {
        print_json(&statuses)?;
    } else {
        for s in &statuses {
            let how = match (s.exit_code, s.exit_signal) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => s.end_reason.clone().unwrap_or_default(),
            };
            println!("{} {} ({how})", s.agent_id, s.persistent_status);
        }
    }
    if let [one] = statuses.as_slice() {
        let fallback = if one.persistent_status == PersistentStatus::Completed {
            0
        } else {
            1
        };
        let code = one.exit_code.unwrap_or(fallback);
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    let all_completed = statuses
        .iter()
        .all(|s| s.persistent_status == PersistentStatus::Completed);
    Ok(if all_completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One event as a line of text: when, agent and run, kind, the kind's fields.
pub fn event_line(ev: &Event) -> String {
    use corral_core::EventBody as B;
    let detail = match &ev.body {
        B::State(st) => {
            let mut parts: Vec<String> = Vec::new();
            parts.extend(st.state.map(|s| s.to_string()));
            parts.extend(st.status.map(|s| format!("({s})")));
            parts.extend(st.pid.map(|p| format!("pid {p}")));
            parts.extend(st.exit_code.map(|c| format!("exit code {c}")));
            parts.extend(st.exit_signal.map(|c| format!("signal {c}")));
            parts.extend(
                st.stop
                    .as_ref()
                    .map(|s| format!("{} stop, {}", s.cause, s.stage)),
            );
            parts.extend(st.reason.as_ref().map(|r| format!("— {r}")));
            parts.join(" ")
        }
        B::Progress(p) => format!(
            "{}%{}",
            p.progress,
            p.message
                .as_ref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        ),
        B::StopStage(s) => format!("{} ({})", s.stage, s.signal),
        B::Restart(r) => format!("in {} s (attempt {})", r.delay_s, r.attempt),
        B::CrashLoop(c) => format!("{} restarts within {} s", c.restarts, c.window_s),
        B::RestartCancelled(r) => r.reason.clone(),
        B::Limit(l) | B::RuntimeExceeded(l) => match l.usage {
            Some(u) => format!("{} {} (used {u:.0})", l.limit, l.value),
            None => format!("{} {}", l.limit, l.value),
        },
        B::Probe(p) => format!("{} ({}): {} — {}", p.probe, p.check, p.result, p.output),
        B::Job(j) => {
            let mut parts = vec![format!("{} job {}", j.engine, j.job_id)];
            parts.extend(j.node.as_ref().map(|n| format!("on {n}")));
            parts.join(" ")
        }
        B::JobRequeued(j) => {
            let from = j
                .node
                .as_ref()
                .map(|n| format!(" (was on {n})"))
                .unwrap_or_default();
            format!(
                "{} job {} queued again{from}: {}",
                j.engine, j.job_id, j.pending_reason
            )
        }
        B::LogDropped(d) => format!(
            "{}: {} bytes dropped, {} kept — {}",
            d.stream, d.dropped_bytes, d.kept_bytes, d.reason
        ),
        B::Budget(b) => format!(
            "team {} over {} {} (team used {:.0}, this agent {:.0}){}",
            b.team,
            b.budget,
            corral_core::short_number(b.limit),
            b.usage,
            b.agent_usage,
            if b.action == "stop" {
                " — stopped"
            } else {
                ""
            }
        ),
        B::Other => String::new(),
    };
    format!(
        "{}  {}  run {}  {}  {}",
        ev.at,
        ev.agent_id,
        ev.run,
        ev.kind(),
        detail
    )
}

pub async fn events(ctx: &Ctx, args: &crate::cli::EventsArgs) -> Result<ExitCode> {
    use std::io::Write;
    let sel = args.target.as_deref().map(checked_selector).transpose()?;
    let client = ctx.client().await?;
    // JSON lines, as the contract says, for scripts and pipes; one line of
    // text per event for a person at a terminal (`--json` forces JSON).
    let json = ctx.json || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    // An event's line, when the target picks it (its seq either way).
    let pick = |data: &str| -> (Option<i64>, Option<String>) {
        let Ok(ev) = serde_json::from_str::<Event>(data) else {
            return (None, sel.is_none().then(|| data.to_owned()));
        };
        let picked = sel
            .as_ref()
            .is_none_or(|s| corral_core::AgentId::new(&ev.agent_id).is_ok_and(|id| s.matches(&id)));
        let line = picked.then(|| {
            if json {
                data.to_owned()
            } else {
                event_line(&ev)
            }
        });
        (Some(ev.seq), line)
    };
    let mut since = args.since;
    let mut out = std::io::stdout().lock();
    if let Some(n) = args.tail {
        // The stored log read through once, the last n picked kept; then,
        // with -f, followed from where that read ended.
        let mut last = std::collections::VecDeque::with_capacity(n.min(4096));
        let backlog = corral_core::EventsQuery {
            since: Some(since),
            follow: Some(false),
        };
        let mut events = client.events(&backlog).await?;
        while let Some(data) = events.next_raw().await {
            let (seq, line) = pick(&data?);
            since = since.max(seq.unwrap_or(since));
            if let Some(line) = line.filter(|_| n > 0) {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(line);
            }
        }
        for line in last {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let query = corral_core::EventsQuery {
        since: Some(since),
        follow: Some(args.follow),
    };
    let mut events = client.events(&query).await?;
    while let Some(data) = events.next_raw().await {
        if let Some(line) = pick(&data?).1
            && writeln!(out, "{line}").and_then(|()| out.flush()).is_err()
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_of_text_each() {
        let ev = |kind: &str, data: serde_json::Value| -> Event {
            let mut map = data.as_object().unwrap().clone();
            map.extend([
                ("seq".to_owned(), 1.into()),
                ("at".to_owned(), "2026-11-27T10:30:00.000Z".into()),
                ("agent_id".to_owned(), "team.a".into()),
                ("run".to_owned(), 2.into()),
                ("kind".to_owned(), kind.into()),
            ]);
            serde_json::from_value(serde_json::Value::Object(map)).unwrap()
        };
        let state = ev(
            "state",
            serde_json::json!({"state": "ended", "status": "failed", "exit_code": 3, "reason": "exited with code 3"}),
        );
        assert_eq!(
            event_line(&state),
            "2026-11-27T10:30:00.000Z  team.a  run 2  state  ended (failed) exit code 3 — exited with code 3"
        );
        let stopping = ev(
            "state",
            serde_json::json!({"state": "stopping", "stop": {"stage": "term", "cause": "leftovers",
                "began_at": "2026-11-27T10:30:00.000Z", "stage_deadline_at": null}}),
        );
        assert!(
            event_line(&stopping).ends_with("state  stopping leftovers stop, term"),
            "{}",
            event_line(&stopping)
        );
        let stage = ev(
            "stop_stage",
            serde_json::json!({"stage": "kill", "signal": "SIGKILL"}),
        );
        assert!(event_line(&stage).ends_with("stop_stage  kill (SIGKILL)"));
        let job = ev(
            "job",
            serde_json::json!({"engine": "slurm", "job_id": "7", "node": "vm"}),
        );
        assert!(event_line(&job).ends_with("job  slurm job 7 on vm"));
    }

    fn status(id: &str, json: serde_json::Value) -> AgentStatus {
        let mut base = serde_json::json!({
            "agent_id": id, "pid": 4242, "process_alive": true, "process_status": "sleeping",
            "exit_code": null, "is_zombie": false, "cpu_percent": 5.2, "memory_mb": 45.3,
            "runtime_seconds": 123.0, "num_threads": 4, "cmdline": "python3 worker.py",
            "health": "healthy", "persistent_status": "running", "state": "running", "stop": null,
            "started_at": "2026-11-27T10:30:00.000Z", "progress": 50,
            "progress_message": "indexing", "progress_at": null, "exit_signal": null,
            "ended_at": null, "end_reason": null, "run": 1, "restarts": 0,
            "next_restart_at": null, "restart_policy": "never", "stop_timeouts": [10, 5, 5],
            "ready": null, "probe": null, "limits": {}, "labels": {},
            "stdout_log": "/s/agents/x/runs/1/stdout.log", "stderr_log": "/s/agents/x/runs/1/stderr.log",
            "containment": "cgroup", "user": null, "placement": null, "tree": null
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn fleet() -> Vec<AgentStatus> {
        vec![
            status("L2.1.1", serde_json::json!({"ready": true})),
            status(
                "team.flaky",
                serde_json::json!({
                    "pid": 77, "process_alive": false, "process_status": "dead", "exit_code": 3,
                    "health": "failed", "persistent_status": "failed", "cpu_percent": 0.0,
                    "state": "backoff",
                    "memory_mb": 0.0, "end_reason": "exited with code 3", "run": 3, "restarts": 2,
                    "next_restart_at": "2026-11-27T10:31:00.000Z", "progress": null
                }),
            ),
            status(
                "team.typo",
                serde_json::json!({
                    "pid": null, "process_alive": false, "health": "failed", "state": "ended",
                    "persistent_status": "failed", "memory_mb": 0.0, "cpu_percent": 0.0,
                    "runtime_seconds": 0.0, "progress": null,
                    "end_reason": "agent team.typo: cannot start \"/no/such/agent\": No such file or directory (os error 2)"
                }),
            ),
            status(
                &format!("a-very-long-agent-identifier-{}", "x".repeat(40)),
                serde_json::json!({
                    "progress_message": "a long progress message that goes on and on about what the agent is doing right now"
                }),
            ),
            status(
                "zed",
                serde_json::json!({"health": "zombie", "process_alive": false, "is_zombie": true}),
            ),
        ]
    }

    #[test]
    fn ps_node_asks_the_daemon_and_checks_the_answer() {
        let on = |id: &str, node: Option<&str>| {
            status(
                id,
                serde_json::json!({"pid": null, "placement": {"engine": "slurm", "job_id": "9",
                    "node": node}}),
            )
        };
        let (n1, n2, queued, local) = (
            on("a", Some("n1")),
            on("b", Some("n2")),
            on("c", None),
            status("d", serde_json::json!({})),
        );
        let nodes = ["n2".to_owned(), "n3".to_owned()];
        let keeps = |s: &AgentStatus| keep(s, None, &BTreeMap::new(), &[], &nodes);
        assert!(keeps(&n2));
        assert!(!keeps(&n1) && !keeps(&queued) && !keeps(&local));
        assert!(keep(&local, None, &BTreeMap::new(), &[], &[]));
        let args = PsArgs {
            selector: None,
            labels: vec![],
            states: vec![],
            nodes: nodes.to_vec(),
            wide: false,
            watch: None,
            conn: Default::default(),
            out: Default::default(),
        };
        assert_eq!(
            ps_query(&args, &BTreeMap::new(), true).node.as_deref(),
            Some("n2,n3")
        );
    }

    #[test]
    fn the_ps_table_fits_80_columns_and_wide_shows_all() {
        let all = fleet();
        let rows: Vec<&AgentStatus> = all.iter().collect();
        let narrow = ps_table(&rows).render(Style {
            width: Some(80),
            colour: false,
        });
        assert!(narrow.lines().all(|l| l.chars().count() <= 80), "{narrow}");
        insta::assert_snapshot!("ps_80_columns", narrow);
        let wide = ps_table(&rows).render(Style {
            width: None,
            colour: false,
        });
        insta::assert_snapshot!("ps_wide", wide);
        let coloured = ps_table(&rows).render(Style {
            width: None,
            colour: true,
        });
        assert!(coloured.contains("\x1b[32mhealthy\x1b[0m"));
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m"));
        assert!(coloured.contains("\x1b[33mzombie\x1b[0m"));
    }

    /// The header of `ps` at `width` columns, and the ids as shown.
    fn ps_at(rows: &[&AgentStatus], width: usize) -> (String, Vec<String>, Vec<String>) {
        let out = ps_table(rows).render(Style {
            width: Some(width),
            colour: false,
        });
        assert!(
            out.lines().all(|l| l.chars().count() <= width),
            "{width}:\n{out}"
        );
        let mut lines = out.lines();
        let header = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let ids = lines
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        (out, header, ids)
    }

    #[test]
    fn ps_leaves_out_low_value_columns_before_cutting_exit_and_info() {
        let mut all = fleet();
        for n in [1, 2, 10, 11] {
            all.push(status(
                &format!("research.crawler.worker.{n}"),
                serde_json::json!({"num_threads": 12, "ready": true}),
            ));
        }
        let rows: Vec<&AgentStatus> = all.iter().collect();
        let every = [
            "ID", "PID", "STATE", "STATUS", "HEALTH", "READY", "CPU%", "MEM", "RUNTIME", "↺",
            "EXIT", "INFO",
        ];
        let cases: [(usize, &[&str]); 4] = [
            (120, &every),
            (
                80,
                &["ID", "PID", "STATE", "HEALTH", "RUNTIME", "EXIT", "INFO"],
            ),
            (60, &["ID", "HEALTH", "EXIT", "INFO"]),
            (40, &["ID", "HEALTH", "EXIT", "INFO"]),
        ];
        for (width, want) in cases {
            let (out, header, ids) = ps_at(&rows, width);
            assert_eq!(header, want, "{width}:\n{out}");
            // Every row's id reads differently, and keeps its last segment.
            let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), all.len(), "{width}:\n{out}");
            for n in [1, 2, 10, 11] {
                let end = format!(".{n}");
                assert!(
                    ids.iter()
                        .any(|id| id.starts_with("res") && id.ends_with(&end)),
                    "{width}: {end}\n{out}"
                );
            }
            if width >= 60 {
                // The progress message is whole, not `50% i…`.
                assert!(out.contains("50% indexing"), "{width}:\n{out}");
            }
        }
        let (narrow, _, _) = ps_at(&rows[..5], 60);
        insta::assert_snapshot!("ps_60_columns", narrow);
    }

    #[test]
    fn status_lines_cover_every_field_people_ask_for() {
        let s = &fleet()[1];
        let text = output::key_values(status_lines(s));
        insta::assert_snapshot!("status_failed", text);
    }
}

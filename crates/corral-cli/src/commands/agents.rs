//! `spawn`, `status`, `ps`, `summary`, `health`, `stop`, `kill`, `progress`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use corral_api::Client;
use corral_api::client::Method;
use corral_core::{
    AgentStatus, BatchRequest, BatchResponse, BatchResult, CleanupOptions, HealthReport,
    KillRequest, KillResponse, Limits, PersistentStatus, Probe, Probes, ProcessSummary,
    ProgressUpdate, Removal, RestartPolicy, RunInfo, SpawnRequest, SpawnResponse, StopManyRequest,
    StopReport,
};

use super::{Ctx, print_json};
use crate::cli::{SpawnArgs, StopArgs};
use crate::output;

fn key_values(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(anyhow!("{what} {kv:?} must look like KEY=VALUE")),
        })
        .collect()
}

/// `10,5,5` → `[10.0, 5.0, 5.0]`.
pub fn parse_timeouts(raw: &str) -> Result<Vec<f64>> {
    parse_seconds_list(
        raw,
        3,
        "--stop-timeouts takes three waits in seconds, like 10,5,5",
    )
}

fn path_segment(id: &str) -> Result<String> {
    // Validate locally so a bad id is a clear error, not a 404 from a mangled URL.
    Ok(corral_core::AgentId::new(id)?.to_string())
}

/// The spawn request the flags describe (without the id).
fn request_from_args(args: &SpawnArgs) -> Result<SpawnRequest> {
    let cwd = match &args.cwd {
        Some(d) => Some(std::path::absolute(d).with_context(|| format!("--cwd {}", d.display()))?),
        None => Some(std::env::current_dir().context("cannot read the current directory")?),
    };
    let agent_dir = args
        .agent_dir
        .as_ref()
        .map(|d| std::path::absolute(d).with_context(|| format!("--agent-dir {}", d.display())))
        .transpose()?;
    let restart = if args.restart.is_some()
        || args.max_restarts.is_some()
        || args.backoff.is_some()
        || args.restart_window.is_some()
    {
        let mut policy = RestartPolicy::default();
        if let Some(mode) = &args.restart {
            policy.policy = serde_json::from_value(serde_json::Value::String(mode.clone()))?;
        }
        if let Some(n) = args.max_restarts {
            policy.max_restarts = n;
        }
        if let Some(w) = args.restart_window {
            policy.window_s = w.as_secs_f64();
        }
        if let Some(b) = &args.backoff {
            let v = parse_seconds_list(b, 2, "--backoff takes MIN,MAX seconds, like 1,60")?;
            policy.backoff_s = [v[0], v[1]];
        }
        Some(policy)
    } else {
        None
    };
    let limits = Limits {
        memory_mb: args.memory,
        pids: args.pids,
        nofile: args.nofile,
        cpu_percent: args.cpu,
    };
    Ok(SpawnRequest {
        agent_id: String::new(),
        command: args.command.clone(),
        limits: (!limits.is_empty()).then_some(limits),
        probes: probes_from_args(args),
        user: args.user.clone(),
        cwd,
        env: key_values(&args.env, "--env")?,
        agent_dir,
        labels: key_values(&args.labels, "--label")?,
        stop_timeouts: args
            .stop_timeouts
            .as_deref()
            .map(parse_timeouts)
            .transpose()?,
        verify_ms: args.verify_ms,
        restart,
        max_runtime_s: args.max_runtime.map(|d| d.as_secs_f64()),
        ..SpawnRequest::default()
    })
}

/// The probes the flags describe, if any.
fn probes_from_args(args: &SpawnArgs) -> Option<Probes> {
    let shell = |cmd: &String| Probe::Exec(vec!["sh".into(), "-c".into(), cmd.clone()]);
    let liveness = args
        .liveness_http
        .clone()
        .map(Probe::Http)
        .or_else(|| args.liveness_exec.as_ref().map(shell))
        .or_else(|| args.liveness_tcp.clone().map(Probe::Tcp))
        .or_else(|| {
            args.progress_stale
                .map(|d| Probe::ProgressStaleS(d.as_secs_f64()))
        });
    let readiness = args
        .readiness_http
        .clone()
        .map(Probe::Http)
        .or_else(|| args.readiness_exec.as_ref().map(shell))
        .or_else(|| args.readiness_tcp.clone().map(Probe::Tcp))
        .or_else(|| args.readiness_log.clone().map(Probe::Log));
    if liveness.is_none() && readiness.is_none() {
        return None;
    }
    let defaults = Probes::default();
    Some(Probes {
        liveness,
        readiness,
        interval_s: args
            .probe_interval
            .map_or(defaults.interval_s, |d| d.as_secs_f64()),
        timeout_s: args
            .probe_timeout
            .map_or(defaults.timeout_s, |d| d.as_secs_f64()),
        failures: args.probe_failures.unwrap_or(defaults.failures),
    })
}

fn parse_seconds_list(raw: &str, n: usize, usage: &str) -> Result<Vec<f64>> {
    let parsed: Result<Vec<f64>, _> = raw.split(',').map(|t| t.trim().parse::<f64>()).collect();
    match parsed {
        Ok(v) if v.len() == n => Ok(v),
        _ => bail!("{usage} (got {raw:?})"),
    }
}

/// True when a spawn answer means "it started and did not fail".
fn started_ok(resp: &SpawnResponse) -> bool {
    matches!(
        resp.status,
        PersistentStatus::Running | PersistentStatus::Completed
    ) && resp.exit_code.unwrap_or(0) == 0
}

pub async fn spawn(ctx: &Ctx, args: SpawnArgs) -> Result<ExitCode> {
    if args.from.is_some() || args.count.is_some() {
        return spawn_batch(ctx, args).await;
    }
    if args.command.is_empty() {
        bail!("say what to run after `--`, e.g. corral spawn ID -- sleep 60");
    }
    let mut req = request_from_args(&args)?;
    req.agent_id = args.id.clone().unwrap_or_default();
    let client = ctx.client().await?;
    let resp: SpawnResponse = client.call(Method::POST, "/v1/agents", Some(&req)).await?;
    let ok = started_ok(&resp);
    if ctx.json {
        print_json(&resp)?;
    } else if ok {
        println!(
            "{} {} (pid {}, run {})",
            resp.agent_id,
            resp.status,
            resp.pid.map_or("-".into(), |p| p.to_string()),
            resp.run
        );
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        if !ctx.json {
            eprintln!(
                "error: {}",
                resp.error
                    .as_deref()
                    .unwrap_or("the agent failed during verification")
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `spawn PREFIX --count N` and `spawn --from FILE`: one batch request.
async fn spawn_batch(ctx: &Ctx, args: SpawnArgs) -> Result<ExitCode> {
    let agents: Vec<SpawnRequest> = match (&args.from, args.count) {
        (Some(file), _) => read_requests(file)?,
        (None, Some(n)) => {
            if args.command.is_empty() {
                bail!(
                    "say what to run after `--`, e.g. corral spawn PREFIX --count 10 -- sleep 60"
                );
            }
            let prefix = args.id.clone().unwrap_or_default();
            let base = request_from_args(&args)?;
            (1..=n)
                .map(|i| SpawnRequest {
                    agent_id: format!("{prefix}.{i}"),
                    ..base.clone()
                })
                .collect()
        }
        (None, None) => unreachable!("spawn_batch is called with --from or --count"),
    };
    if agents.is_empty() {
        bail!("nothing to spawn: the batch is empty");
    }
    let client = ctx.client().await?;
    let answer: BatchResponse = client
        .call(
            Method::POST,
            "/v1/agents/batch",
            Some(&BatchRequest { agents }),
        )
        .await?;
    let failed = answer
        .results
        .iter()
        .filter(|r| !matches!(r, BatchResult::Spawned(s) if started_ok(s)))
        .count();
    if ctx.json {
        print_json(&answer)?;
    } else {
        for r in &answer.results {
            match r {
                BatchResult::Spawned(s) if started_ok(s) => println!(
                    "{} {} (pid {})",
                    s.agent_id,
                    s.status,
                    s.pid.map_or("-".into(), |p| p.to_string())
                ),
                BatchResult::Spawned(s) => eprintln!(
                    "{} {}: {}",
                    s.agent_id,
                    s.status,
                    s.error.as_deref().unwrap_or("failed during verification")
                ),
                BatchResult::Failed(f) => eprintln!("{} refused: {}", f.agent_id, f.error.message),
            }
        }
        println!("{} spawned, {failed} failed", answer.results.len() - failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// JSON lines of spawn requests from a file, or stdin for `-`.
fn read_requests(file: &std::path::Path) -> Result<Vec<SpawnRequest>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read spawn requests from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str::<SpawnRequest>(l)
                .with_context(|| format!("{}:{}: not a spawn request", file.display(), n + 1))
        })
        .collect()
}

pub async fn status(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let path = format!("/v1/agents/{}", path_segment(id)?);
    let s: AgentStatus = ctx.client().await?.get(&path).await?;
    if ctx.json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ("agent_id", s.agent_id.clone()),
        ("pid", opt(s.pid.map(|p| p.to_string()))),
        ("health", s.health.to_string()),
        ("persistent_status", s.persistent_status.to_string()),
        ("process_status", s.process_status.clone()),
        ("process_alive", s.process_alive.to_string()),
        ("cpu_percent", format!("{:.1}", s.cpu_percent)),
        ("memory_mb", format!("{:.1}", s.memory_mb)),
        ("num_threads", s.num_threads.to_string()),
        ("runtime", output::duration(s.runtime_seconds)),
        ("progress", opt(s.progress.map(|p| format!("{p}%")))),
        ("progress_message", opt(s.progress_message.clone())),
        ("cmdline", s.cmdline.clone()),
        ("started_at", s.started_at.clone()),
        ("ended_at", opt(s.ended_at.clone())),
        ("exit_code", opt(s.exit_code.map(|c| c.to_string()))),
        ("exit_signal", opt(s.exit_signal.map(|c| c.to_string()))),
        ("end_reason", opt(s.end_reason.clone())),
        ("run", s.run.to_string()),
        ("restarts", s.restarts.to_string()),
        ("restart_policy", s.restart_policy.clone()),
        ("next_restart_at", opt(s.next_restart_at.clone())),
        ("containment", s.containment.clone()),
        ("stdout_log", s.stdout_log.display().to_string()),
        ("stderr_log", s.stderr_log.display().to_string()),
    ];
    if !s.labels.is_empty() {
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        rows.push(("labels", labels));
    }
    print!("{}", output::key_values(rows));
    Ok(ExitCode::SUCCESS)
}

/// The `ps` table for a set of statuses.
pub fn ps_table(all: &BTreeMap<String, AgentStatus>) -> String {
    let mut rows = vec![
        [
            "ID", "PID", "HEALTH", "STATUS", "READY", "CPU%", "MEM(MB)", "THREADS", "RUNTIME",
            "RESTARTS", "PROGRESS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in all.values() {
        rows.push(vec![
            s.agent_id.clone(),
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.health.to_string(),
            s.persistent_status.to_string(),
            match s.ready {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            format!("{:.1}", s.cpu_percent),
            format!("{:.1}", s.memory_mb),
            s.num_threads.to_string(),
            output::duration(s.runtime_seconds),
            s.restarts.to_string(),
            match (&s.progress, &s.progress_message) {
                (Some(p), Some(m)) => format!("{p}% {m}"),
                (Some(p), None) => format!("{p}%"),
                _ => "-".into(),
            },
        ]);
    }
    output::table(&rows)
}

pub async fn ps(ctx: &Ctx) -> Result<ExitCode> {
    let all: BTreeMap<String, AgentStatus> = ctx.client().await?.get("/v1/agents").await?;
    if ctx.json {
        print_json(&all)?;
    } else if all.is_empty() {
        println!("no agents");
    } else {
        print!("{}", ps_table(&all));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn summary(ctx: &Ctx) -> Result<ExitCode> {
    let s: ProcessSummary = ctx.client().await?.get("/v1/summary").await?;
    if ctx.json {
        print_json(&s)?;
    } else {
        let rows = [
            ("total", s.total.to_string()),
            ("spawning", s.spawning.to_string()),
            ("running", s.running.to_string()),
            ("completed", s.completed.to_string()),
            ("failed", s.failed.to_string()),
            ("cancelled", s.cancelled.to_string()),
            ("zombie", s.zombie.to_string()),
            ("total_memory_mb", format!("{:.1}", s.total_memory_mb)),
            ("total_cpu_percent", format!("{:.1}", s.total_cpu_percent)),
        ];
        print!("{}", output::key_values(rows.to_vec()));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn health(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let path = format!("/v1/agents/{}/health", path_segment(id)?);
    let h: HealthReport = ctx.client().await?.get(&path).await?;
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

fn print_reports(ctx: &Ctx, reports: &[StopReport]) -> Result<()> {
    if ctx.json {
        return print_json(&reports);
    }
    if reports.is_empty() {
        println!("no agents matched");
        return Ok(());
    }
    let mut rows = vec![
        ["ID", "PID", "STAGE", "TOOK", "EXIT", "STATUS"]
            .map(String::from)
            .to_vec(),
    ];
    for r in reports {
        let exit = match (r.exit_code, r.exit_signal) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "-".into(),
        };
        rows.push(vec![
            r.agent_id.clone(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            serde_json::to_value(r.stage)?
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            format!("{:.0}ms", r.duration_ms),
            exit,
            r.persistent_status.to_string(),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(())
}

pub async fn stop(ctx: &Ctx, args: StopArgs) -> Result<ExitCode> {
    let timeouts = args
        .stop_timeouts
        .as_deref()
        .map(parse_timeouts)
        .transpose()?;
    let client = ctx.client().await?;
    let reports: Vec<StopReport> = match args.target.as_deref() {
        Some(target) if !target.ends_with(".*") => {
            let path = format!("/v1/agents/{}/stop", path_segment(target)?);
            let body = CleanupOptions {
                force: args.force,
                stop_timeouts: timeouts,
            };
            let one: StopReport = client.call(Method::POST, &path, Some(&body)).await?;
            vec![one]
        }
        target => {
            let body = StopManyRequest {
                all: target.is_none(),
                selector: target.map(str::to_owned),
                force: args.force,
                stop_timeouts: timeouts,
                live_only: false,
            };
            client.call(Method::POST, "/v1/stop", Some(&body)).await?
        }
    };
    print_reports(ctx, &reports)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn kill(ctx: &Ctx, id: &str, force: bool) -> Result<ExitCode> {
    let path = format!("/v1/agents/{}/kill", path_segment(id)?);
    let answer: KillResponse = ctx
        .client()
        .await?
        .call(Method::POST, &path, Some(&KillRequest { force }))
        .await?;
    if ctx.json {
        print_json(&answer)?;
    } else {
        print_reports(ctx, std::slice::from_ref(&answer.report))?;
    }
    Ok(
        if answer.report.stage == corral_core::StopStage::Unkillable {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

pub async fn progress(
    ctx: &Ctx,
    percent: i64,
    message: Option<String>,
    agent: Option<String>,
) -> Result<ExitCode> {
    let id = match agent.or_else(|| std::env::var("CORRAL_AGENT_ID").ok()) {
        Some(id) => id,
        None => bail!(
            "no agent to report for: run inside an agent (CORRAL_AGENT_ID) or pass --agent ID"
        ),
    };
    // Inside an agent the daemon's socket is given; it must already be running.
    let client = match std::env::var_os("CORRAL_SOCKET").filter(|s| !s.is_empty()) {
        Some(sock) => Client::new(sock),
        None => ctx.client().await?,
    };
    let path = format!("/v1/agents/{}/progress", path_segment(&id)?);
    let s: AgentStatus = client
        .call(
            Method::PUT,
            &path,
            Some(&ProgressUpdate {
                progress: percent,
                message,
            }),
        )
        .await?;
    if ctx.json {
        print_json(&s)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reap(ctx: &Ctx) -> Result<ExitCode> {
    let ids: Vec<String> = ctx
        .client()
        .await?
        .call(Method::POST, "/v1/reap", None::<&()>)
        .await?;
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
    let path = format!("/v1/agents/{}", path_segment(id)?);
    let r: Removal = ctx
        .client()
        .await?
        .call(Method::DELETE, &path, None::<&()>)
        .await?;
    print_removal(ctx, &r)
}

pub async fn prune(ctx: &Ctx) -> Result<ExitCode> {
    let r: Removal = ctx
        .client()
        .await?
        .call(Method::POST, "/v1/prune", None::<&()>)
        .await?;
    print_removal(ctx, &r)
}

/// Events are JSON lines with or without `--json`: one self-describing document per line.
pub async fn events(ctx: &Ctx, follow: bool, since: i64) -> Result<ExitCode> {
    use std::io::Write;
    let path = format!("/v1/events?since={since}&follow={follow}");
    let client = ctx.client().await?;
    let mut out = std::io::stdout().lock();
    client
        .sse(&path, |data| {
            writeln!(out, "{data}").and_then(|()| out.flush()).is_ok()
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn runs(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let path = format!("/v1/agents/{}/runs", path_segment(id)?);
    let runs: Vec<RunInfo> = ctx.client().await?.get(&path).await?;
    if ctx.json {
        print_json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        ["RUN", "PID", "STARTED", "ENDED", "STATUS", "EXIT", "REASON"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &runs {
        let exit = match (r.exit_code, r.exit_signal) {
            (Some(c), _) => format!("code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "-".into(),
        };
        rows.push(vec![
            r.run.to_string(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.started_at.clone(),
            r.ended_at.clone().unwrap_or_else(|| "-".into()),
            r.persistent_status.to_string(),
            exit,
            r.end_reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(ExitCode::SUCCESS)
}

pub async fn wait(
    ctx: &Ctx,
    target: &str,
    timeout: Option<std::time::Duration>,
) -> Result<ExitCode> {
    let client = ctx.client().await?;
    let timeout_s = timeout.map_or(3600.0, |t| t.as_secs_f64());
    let ids: Vec<String> = if let Some(prefix) = target.strip_suffix(".*") {
        let sel = corral_core::Selector::parse(target)?;
        let all: BTreeMap<String, AgentStatus> = client.get("/v1/agents").await?;
        let ids: Vec<String> = all
            .keys()
            .filter(|id| corral_core::AgentId::new(id.as_str()).is_ok_and(|a| sel.matches(&a)))
            .cloned()
            .collect();
        if ids.is_empty() {
            bail!("no agent matches {prefix}.*");
        }
        ids
    } else {
        vec![path_segment(target)?]
    };
    let waits = ids.iter().map(|id| {
        let client = client.clone();
        let path = format!("/v1/agents/{id}/wait?timeout_s={timeout_s}");
        async move { client.get::<AgentStatus>(&path).await }
    });
    let statuses = futures_util::future::join_all(waits)
        .await
        .into_iter()
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
        let code =
            one.exit_code
                .unwrap_or(if one.persistent_status == PersistentStatus::Completed {
                    0
                } else {
                    1
                });
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    Ok(
        if statuses
            .iter()
            .all(|s| s.persistent_status == PersistentStatus::Completed)
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

//! `spawn`: one agent, or many in one batch (`--count`, `--from`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use corral_core::{
    BatchRequest, BatchResponse, BatchResult, Limits, LogRotation, PersistentStatus, Placement,
    Probe, Probes, RestartPolicy, SlurmPlacement, SpawnRequest, SpawnResponse,
};

use super::{Ctx, print_json, usage};
use crate::cli::SpawnArgs;

pub fn key_values(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(usage(format!("{what} {kv:?} must look like KEY=VALUE"))),
        })
        .collect()
}

/// The variables of a dotenv file (`KEY=VALUE` lines, `#` comments, quotes
/// and `export ` as shells write them); `what` names where it was given.
pub fn env_file(path: &std::path::Path, what: &str) -> Result<BTreeMap<String, String>> {
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| usage(format!("{what} {}: {e}", path.display())))?;
    iter.map(|item| item.map_err(|e| usage(format!("{what} {}: {e}", path.display()))))
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

/// A path the API can carry (its paths are UTF-8 strings), or a usage error
/// saying which one is not.
fn utf8_path(what: &str, path: std::path::PathBuf) -> Result<std::path::PathBuf> {
    if path.to_str().is_some() {
        return Ok(path);
    }
    Err(super::usage(format!(
        "{what} {} is not valid UTF-8; corral's API takes paths as UTF-8 (give --cwd DIR with a UTF-8 path)",
        path.display()
    )))
}

/// `path` made absolute, with no `..` or `.` part (the daemon refuses
/// those): an existing directory is resolved by the file system, so
/// `--cwd ../x` means what the shell would mean.
pub(crate) fn plain_dir(what: &str, path: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path).with_context(|| format!("{what} {}", path.display()))?;
    if !abs
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Ok(abs);
    }
    std::fs::canonicalize(&abs).map_err(|e| {
        super::usage(format!(
            "{what} {}: cannot resolve its `..` ({e}); give the path without `..`",
            path.display()
        ))
    })
}

/// The spawn request the flags describe (without the id).
fn request_from_args(args: &SpawnArgs) -> Result<SpawnRequest> {
    let cwd = match &args.cwd {
        Some(d) => plain_dir("--cwd", d)?,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let what = if args.cwd.is_some() {
        "--cwd"
    } else {
        "the current directory (the agent's default --cwd)"
    };
    let cwd = Some(utf8_path(what, cwd)?);
    let agent_dir = args
        .agent_dir
        .as_ref()
        .map(|d| plain_dir("--agent-dir", d))
        .transpose()?
        .map(|d| utf8_path("--agent-dir", d))
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
        env: {
            // The files in order, then --env: a later value wins.
            let mut env = BTreeMap::new();
            for file in &args.env_files {
                env.extend(env_file(file, "--env-file")?);
            }
            env.extend(key_values(&args.env, "--env")?);
            env
        },
        inherit_env: args.no_inherit_env.then_some(false),
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
        logs: args.log_max_mb.map(|max_mb| LogRotation {
            max_mb,
            keep: args.log_keep.unwrap_or(LogRotation::DEFAULT_KEEP),
        }),
        placement: args.slurm.then(|| Placement {
            slurm: Some(SlurmPlacement {
                partition: args.partition.clone(),
                nodes: args.nodes.clone(),
                cpus: args.cpus,
                mem_mb: args.mem.map(|m| m.ceil() as u64),
                time_limit: args.time_limit.clone(),
                requeue: args.requeue.then_some(true),
            }),
        }),
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
        _ => Err(super::usage(format!("{usage} (got {raw:?})"))),
    }
}

/// True when a spawn answer means "it started and did not fail".
fn started_ok(resp: &SpawnResponse) -> bool {
    // A job still in the engine's queue was placed: that is all a spawn can prove then.
    let queued = resp.status == PersistentStatus::Spawning && resp.placement.is_some();
    (queued
        || matches!(
            resp.status,
            PersistentStatus::Running | PersistentStatus::Completed
        ))
        && resp.exit_code.unwrap_or(0) == 0
}

/// Where it runs, in words: `pid 42`, `slurm job 7 on node1`, `slurm job 8, queued: Priority`.
fn whereabouts(resp: &SpawnResponse) -> String {
    match (&resp.placement, resp.pid) {
        (Some(p), _) => super::agents::placement_words(p),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "pid -".into(),
    }
}

pub async fn spawn(ctx: &Ctx, args: SpawnArgs) -> Result<ExitCode> {
    if args.from.is_some() || args.count.is_some() {
        return spawn_batch(ctx, args).await;
    }
    if args.command.is_empty() {
        return Err(usage(
            "say what to run after `--`, e.g. corral spawn ID -- sleep 60",
        ));
    }
    let mut req = request_from_args(&args)?;
    req.agent_id = args.id.clone().unwrap_or_default();
    let client = ctx.client().await?;
    let resp: SpawnResponse = client.spawn(&req).await?;
    let ok = started_ok(&resp);
    if ctx.json {
        print_json(&resp)?;
    } else if ok {
        println!(
            "{} {} ({}, run {})",
            resp.agent_id,
            resp.status,
            whereabouts(&resp),
            resp.run
        );
    }
    let watch = ok
        && !ctx.json
        && resp.status == PersistentStatus::Running
        && resp.placement.is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if watch && let Some(failure) = fails_in_grace(&client, &resp).await {
        crate::say(&format!("error: {failure}"));
        return Ok(ExitCode::FAILURE);
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        if !ctx.json {
            crate::say(&format!(
                "error: {}",
                resp.error
                    .as_deref()
                    .unwrap_or("the agent failed during verification")
            ));
        }
        Ok(ExitCode::FAILURE)
    }
}

/// How long `spawn` on a terminal keeps watching a run it reported running.
const GRACE: Duration = Duration::from_millis(500);

/// A run that fails right after its verification window — an interpreter
/// that starts, then finds its script missing — was reported `running`; a
/// person at a terminal would look away. So `spawn` watches it a moment
/// longer there (never in a pipe or with `--json`, where the contract's
/// answer stands): what it has to say when the run fails within [`GRACE`],
/// with the reason and its stderr's last lines.
async fn fails_in_grace(client: &corral_api::Client, resp: &SpawnResponse) -> Option<String> {
    let query = corral_core::ListQuery {
        selector: Some(resp.agent_id.clone()),
        fields: Some("run,state,persistent_status,exit_code,end_reason,next_restart_at".into()),
        ..corral_core::ListQuery::default()
    };
    let end = tokio::time::Instant::now() + GRACE;
    let ended = loop {
        let listed = client.list_agents(&query).await.ok()?;
        let s = listed.get(&resp.agent_id)?;
        if s.run != resp.run {
            return None;
        }
        if s.state == corral_core::AgentState::Ended || s.next_restart_at.is_some() {
            break s.clone();
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // A clean exit is no failure, whether or not a policy starts it again.
    if ended.exit_code == Some(0) {
        return None;
    }
    let query = corral_core::LogsQuery {
        stream: Some("stderr".into()),
        tail: Some(10),
        follow: None,
        run: Some(resp.run),
    };
    let mut tail = Vec::new();
    if let Ok(mut log) = client.logs(&resp.agent_id, &query).await {
        while let Some(Ok(chunk)) = log.next_chunk().await {
            tail.extend_from_slice(&chunk);
        }
    }
    let tail = String::from_utf8_lossy(&tail);
    let mut msg = format!(
        "agent {} failed right after it started: {}",
        resp.agent_id,
        ended.end_reason.as_deref().unwrap_or("it ended")
    );
    if ended.next_restart_at.is_some() {
        msg.push_str(" (its restart policy will start it again)");
    }
    if !tail.trim().is_empty() {
        msg.push_str("; last stderr lines:\n");
        msg.push_str(tail.trim_end());
    }
    msg.push_str(
        "\n(with a wider verification window spawn refuses such a start itself: --verify-ms 1000)",
    );
    Some(msg)
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
    let answer: BatchResponse = client.spawn_batch(&BatchRequest { agents }).await?;
    print_batch(ctx, &answer, "spawned")
}

/// A batch's answer (a spawn batch, a restart of many): each agent's line,
/// a count, and success only when every agent started.
pub fn print_batch(ctx: &Ctx, answer: &BatchResponse, done: &str) -> Result<ExitCode> {
    let failed = answer
        .results
        .iter()
        .filter(|r| !matches!(r, BatchResult::Spawned(s) if started_ok(s)))
        .count();
    if ctx.json {
        print_json(answer)?;
    } else {
        for r in &answer.results {
            match r {
                BatchResult::Spawned(s) if started_ok(s) => {
                    println!("{} {} ({})", s.agent_id, s.status, whereabouts(s))
                }
                BatchResult::Spawned(s) => crate::say(&format!(
                    "{} {}: {}",
                    s.agent_id,
                    s.status,
                    s.error.as_deref().unwrap_or("failed during verification")
                )),
                BatchResult::Failed(f) => {
                    crate::say(&format!("{} refused: {}", f.agent_id, f.error.message))
                }
            }
        }
        println!("{} {done}, {failed} failed", answer.results.len() - failed);
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
            serde_json::from_str::<SpawnRequest>(l).map_err(|e| {
                usage(format!(
                    "{}:{}: not a spawn request: {e}",
                    file.display(),
                    n + 1
                ))
            })
        })
        .collect()
}

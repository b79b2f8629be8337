//! `corral bench`: corral measured on this machine, each figure against a bare
//! baseline taken in the same run where one exists.
//!
//! A private daemon runs in a temp state dir (a child of this process, which is
//! a subreaper for the run, so everything it starts is stopped and reaped here
//! at the end, also on error). Nothing is cached or estimated: every figure is
//! measured now.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_api::client::Method;
use corral_core::process as platform;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Ctx, print_json};
use crate::cli::BenchArgs;
use crate::output;

/// Spawn requests in flight at once: enough that verification windows overlap.
const IN_FLIGHT: usize = 256;

#[derive(Serialize)]
struct Figure {
    figure: String,
    corral: f64,
    baseline: Option<f64>,
    ratio: Option<f64>,
    unit: &'static str,
    note: String,
}

fn figure(
    figure: impl Into<String>,
    corral: f64,
    baseline: Option<f64>,
    unit: &'static str,
    note: impl Into<String>,
) -> Figure {
    Figure {
        figure: figure.into(),
        corral,
        ratio: baseline.filter(|b| *b > 0.0).map(|b| corral / b),
        baseline,
        unit,
        note: note.into(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The private daemon and everything it started; stopped and reaped on drop.
struct Private {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    client: Client,
}

impl Private {
    async fn start(no_cgroups: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("corral-bench-").tempdir()?;
        let state = dir.path().join("state");
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--state-dir")
            .arg(&state)
            .args(["daemon", "--sample-ms", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if no_cgroups {
            cmd.env("CORRAL_NO_CGROUPS", "1");
        } else {
            cmd.env_remove("CORRAL_NO_CGROUPS");
        }
        let daemon = cmd.spawn().context("start the private daemon")?;
        let client = Client::new(state.join(corral_api::daemon::SOCKET_NAME));
        let end = Instant::now() + Duration::from_secs(10);
        while client.get::<Value>("/v1/health").await.is_err() {
            if Instant::now() > end {
                bail!("the private daemon did not answer");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            dir,
            daemon,
            client,
        })
    }

    fn pid(&self) -> i32 {
        self.daemon.id() as i32
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // Agents first (the daemon reaps them), then the daemon, then anything
        // that was reparented to us: killed and reaped by pid.
        let state = self.dir.path().join("state");
        if let Ok(exe) = std::env::current_exe() {
            let _ = std::process::Command::new(exe)
                .arg("--state-dir")
                .arg(&state)
                .args(["--no-autostart", "stop", "--all", "--force"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid()).unwrap_or(rustix::process::Pid::INIT),
            rustix::process::Signal::TERM,
        );
        let _ = self.daemon.wait();
        for _ in 0..100 {
            let left = platform::children();
            if left.is_empty() {
                break;
            }
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    // Our own child: its pid cannot be reused before we reap it.
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
                }
            }
        }
    }
}

async fn spawn_all(
    client: &Client,
    prefix: &str,
    n: usize,
    command: &[&str],
    verify_ms: u64,
) -> Result<Vec<(String, i32)>> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let sem = sem.clone();
        let body =
            json!({"agent_id": format!("{prefix}{i}"), "command": command, "verify_ms": verify_ms});
        tasks.spawn(async move {
            let _permit = sem.acquire().await;
            client
                .call::<Value>(Method::POST, "/v1/agents", Some(&body))
                .await
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        let v = r??;
        if v["status"] != "running" {
            bail!("an agent did not start: {v}");
        }
        out.push((
            v["agent_id"].as_str().unwrap_or_default().to_owned(),
            v["pid"].as_i64().unwrap_or(0) as i32,
        ));
    }
    Ok(out)
}

async fn wait_gone(pids: &[i32]) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > end {
                bail!("pid {pid} is still there");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

async fn latency(client: &Client, path: &str, n: usize) -> Result<(f64, f64)> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ = client.raw(Method::GET, path, None).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

fn cpu_ticks(pid: i32) -> Result<u64> {
    Ok(platform::cpu_ticks(pid)?)
}

fn peak_rss_mb(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

pub async fn run(ctx: &Ctx, args: BenchArgs) -> Result<ExitCode> {
    let n = args.agents.max(1);
    platform::become_subreaper().context("become a child subreaper")?;
    platform::raise_nofile_limit();
    let private = Private::start(args.no_cgroups).await?;
    let client = private.client.clone();
    let mut figures = Vec::new();
    let say = |s: &str| {
        if !ctx.json {
            eprintln!("… {s}");
        }
    };

    // 1. Spawn N, verified running, against N bare posix_spawns of the same command.
    say(&format!("spawning {n} agents"));
    let t = Instant::now();
    let agents = spawn_all(&client, "a", n, &["sleep", "3600"], 100).await?;
    let spawn_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        bare.push(std::process::Command::new("sleep").arg("3600").spawn()?);
    }
    let bare_spawn_s = t.elapsed().as_secs_f64();
    // The bare stop loop: SIGTERM every one, then wait for each.
    let t = Instant::now();
    for c in &bare {
        if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    for c in &mut bare {
        c.wait()?;
    }
    let bare_stop_s = t.elapsed().as_secs_f64();
    figures.push(figure(
        format!("spawn {n} agents, verified running (verify_ms 100, up to {IN_FLIGHT} in flight)"),
        spawn_s,
        Some(bare_spawn_s),
        "s",
        "baseline: bare posix_spawn of the same command",
    ));

    // 2. Read latency with N agents.
    say("measuring read latency");
    let (one_p50, one_p99) = latency(
        &client,
        &format!("/v1/agents/{}", agents[n / 2].0),
        args.requests,
    )
    .await?;
    let (all_p50, all_p99) = latency(&client, "/v1/agents", args.requests).await?;
    let (rt_p50, _) = latency(&client, "/v1/no-such-route", args.requests).await?;
    figures.push(figure(
        "GET /v1/agents/{id} p50",
        one_p50,
        Some(rt_p50),
        "ms",
        "baseline: a request that does no work (404), same connection setup",
    ));
    figures.push(figure("GET /v1/agents/{id} p99", one_p99, None, "ms", ""));
    figures.push(figure(
        format!("GET /v1/agents ({n} with metrics) p50"),
        all_p50,
        None,
        "ms",
        "",
    ));
    figures.push(figure(
        format!("GET /v1/agents ({n} with metrics) p99"),
        all_p99,
        None,
        "ms",
        "",
    ));

    // 6. The daemon at rest with N agents, sampled at 1 Hz.
    say(&format!("daemon at rest for {} s", args.rest_seconds));
    let clk = platform::clock_ticks_per_second() as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(private.pid())?);
    tokio::time::sleep(Duration::from_secs(args.rest_seconds.max(1))).await;
    let rest_cpu =
        (cpu_ticks(private.pid())? - c0) as f64 / clk / t0.elapsed().as_secs_f64() * 100.0;
    figures.push(figure(
        format!("daemon CPU at rest, {n} agents, 1 Hz sampling"),
        rest_cpu,
        None,
        "% of a core",
        "",
    ));

    // 3. Exit detection: kill agents one at a time at a known instant; time until
    //    corral's event for that exit reaches a client.
    let k = args.exits.min(n);
    say(&format!("exit detection over {k} agents"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let sse_client = client.clone();
    let listener = tokio::spawn(async move {
        sse_client
            .sse("/v1/events", |data| {
                let ev: Value = serde_json::from_str(data).unwrap_or_default();
                if ev["kind"] == "state" && ev["status"] == "failed" {
                    return tx
                        .send((
                            ev["agent_id"].as_str().unwrap_or_default().to_owned(),
                            Instant::now(),
                        ))
                        .is_ok();
                }
                true
            })
            .await
    });
    let mut detect = Vec::with_capacity(k);
    for (id, pid) in agents.iter().take(k) {
        let Some(p) = rustix::process::Pid::from_raw(*pid) else {
            continue;
        };
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
        // Identity through the pidfd: the process must still be this agent.
        if platform::environ_agent_id(*pid).as_deref() != Some(id.as_str()) {
            bail!("pid {pid} is no longer agent {id}");
        }
        let t = Instant::now();
        rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?;
        loop {
            let Some((got, at)) = rx.recv().await else {
                bail!("the event stream ended")
            };
            if &got == id {
                detect.push(at.duration_since(t).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    listener.abort();
    detect.sort_by(f64::total_cmp);
    figures.push(figure(
        "exit noticed and recorded, event delivered: p50",
        percentile(&detect, 0.5),
        None,
        "ms",
        "kill → SSE event received",
    ));
    figures.push(figure(
        "exit noticed and recorded, event delivered: p99",
        percentile(&detect, 0.99),
        None,
        "ms",
        "",
    ));

    // 4. Stop every remaining cooperative agent until the OS holds none of them.
    let rest: Vec<i32> = agents.iter().skip(k).map(|a| a.1).collect();
    say(&format!("stopping {} cooperative agents", rest.len()));
    let t = Instant::now();
    let _: Value = client
        .call(Method::POST, "/v1/stop", Some(&json!({"all": true})))
        .await?;
    wait_gone(&rest).await?;
    let stop_s = t.elapsed().as_secs_f64();
    let scale = if rest.is_empty() {
        1.0
    } else {
        rest.len() as f64 / n as f64
    };
    figures.push(figure(
        format!("stop {} cooperative agents until none is left", rest.len()),
        stop_s,
        Some(bare_stop_s * scale),
        "s",
        format!(
            "baseline: bare SIGTERM + wait loop over {n} processes, scaled to {}",
            rest.len()
        ),
    ));
    let _: Value = client.call(Method::POST, "/v1/prune", None::<&()>).await?;

    // 5. N agents that ignore SIGTERM, stages 0.2/0.2/0.2 s.
    say(&format!("stopping {n} SIGTERM-ignoring agents"));
    // A verification window, so every shell has set its trap before the stop.
    let stubborn = spawn_all(
        &client,
        "s",
        n,
        &["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
        100,
    )
    .await?;
    let t = Instant::now();
    let reports: Vec<Value> = client
        .call(
            Method::POST,
            "/v1/stop",
            Some(&json!({"all": true, "stop_timeouts": [0.2, 0.2, 0.2]})),
        )
        .await?;
    let pids: Vec<i32> = stubborn.iter().map(|a| a.1).collect();
    wait_gone(&pids).await?;
    let stubborn_s = t.elapsed().as_secs_f64();
    let mut stages: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in &reports {
        *stages
            .entry(r["stage"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let stages = stages
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    figures.push(figure(
        format!("stop {n} SIGTERM-ignoring agents, stages 0.2/0.2/0.2 s"),
        stubborn_s,
        Some(0.4),
        "s",
        format!("baseline: one grace period (two 0.2 s TERM waits); stages reached: {stages}"),
    ));
    figures.push(figure(
        "daemon peak RSS",
        peak_rss_mb(private.pid())?,
        None,
        "MB",
        "",
    ));
    drop(private);

    if ctx.json {
        print_json(&figures)?;
    } else {
        let mut rows = vec![
            ["figure", "corral", "baseline", "ratio", "unit"]
                .map(String::from)
                .to_vec(),
        ];
        for f in &figures {
            rows.push(vec![
                f.figure.clone(),
                format!("{:.3}", f.corral),
                f.baseline.map_or("-".into(), |b| format!("{b:.3}")),
                f.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                f.unit.to_owned(),
            ]);
        }
        print!("{}", output::table(&rows));
        let notes: HashMap<&str, &str> = figures
            .iter()
            .filter(|f| !f.note.is_empty())
            .map(|f| (f.figure.as_str(), f.note.as_str()))
            .collect();
        for f in &figures {
            if let Some(n) = notes.get(f.figure.as_str()) {
                println!("  {}: {n}", f.figure);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

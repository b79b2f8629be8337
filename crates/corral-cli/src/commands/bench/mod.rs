//! `corral bench`: corral measured on this machine the way a coordinator uses
//! it, each figure against a bare baseline taken in the same run where one
//! exists.
//!
//! A private daemon runs in a temp state dir (see [`private`]). The figures, in
//! order: spawning N agents one request each from 8 clients (`verify_ms` 0)
//! against a bare loop doing the same work (two log files + posix_spawn each);
//! stopping those N cooperative agents against a bare SIGTERM-then-wait loop;
//! a batch of N (`verify_ms` 100) against the bare loop plus one window; read
//! latency, the daemon at rest, its memory, exit detection; stubborn stops.
//! Nothing is cached or estimated: every figure is measured now.

mod bare;
mod private;
mod slurm;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_api::client::Method;
use corral_core::process as platform;
use corral_core::{
    BatchRequest, BatchResponse, BatchResult, SpawnRequest, SpawnResponse, StopManyRequest,
    StopReport,
};
use serde::Serialize;

use super::{Ctx, print_json};
use crate::cli::BenchArgs;
use crate::output::{Cell, Colour, Style, Table};

/// Clients sending single spawn requests at once (a coordinator's thread pool).
const CLIENTS: usize = 8;

#[derive(Serialize)]
struct Figure {
    figure: String,
    corral: f64,
    baseline: Option<f64>,
    ratio: Option<f64>,
    unit: &'static str,
    /// The target, in words, when there is one.
    target: Option<String>,
    /// Whether the target is met.
    met: Option<bool>,
    note: String,
}

impl Figure {
    fn new(figure: impl Into<String>, corral: f64, unit: &'static str) -> Self {
        Self {
            figure: figure.into(),
            corral,
            baseline: None,
            ratio: None,
            unit,
            target: None,
            met: None,
            note: String::new(),
        }
    }

    fn baseline(mut self, b: f64) -> Self {
        self.baseline = Some(b);
        self.ratio = (b > 0.0).then(|| self.corral / b);
        self
    }

    fn target(mut self, words: impl Into<String>, met: bool) -> Self {
        self.target = Some(words.into());
        self.met = Some(met);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn request(id: String, argv: &[&str], verify_ms: u64) -> SpawnRequest {
    SpawnRequest {
        agent_id: id,
        command: argv.iter().map(|s| s.to_string()).collect(),
        verify_ms: Some(verify_ms),
        ..SpawnRequest::default()
    }
}

/// Spawns N agents one request each, from `CLIENTS` concurrent clients.
async fn spawn_singles(client: &Client, prefix: &str, n: usize, argv: &[&str]) -> Result<Vec<i32>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut pids = Vec::new();
            for i in (c..n).step_by(CLIENTS) {
                let req = request(format!("{prefix}.{i}"), &argv, 0);
                let r = client.spawn(&req).await?;
                if r.status != corral_core::PersistentStatus::Running {
                    bail!("an agent did not start: {r:?}");
                }
                pids.push(r.pid.unwrap_or(0));
            }
            Ok(pids)
        });
    }
    let mut pids = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        pids.extend(r??);
    }
    Ok(pids)
}

/// Spawns N agents in one batch request.
async fn spawn_batch(
    client: &Client,
    prefix: &str,
    n: usize,
    argv: &[&str],
    verify_ms: u64,
) -> Result<Vec<(String, i32)>> {
    let agents = (0..n)
        .map(|i| request(format!("{prefix}.{i}"), argv, verify_ms))
        .collect();
    batch(client, agents)
        .await?
        .into_iter()
        .map(|s| match s.status {
            corral_core::PersistentStatus::Running => Ok((s.agent_id, s.pid.unwrap_or(0))),
            _ => bail!("an agent did not start: {s:?}"),
        })
        .collect()
}

/// One batch request; its answers, or the first refusal as an error.
async fn batch(client: &Client, agents: Vec<SpawnRequest>) -> Result<Vec<SpawnResponse>> {
    let answer: BatchResponse = client.spawn_batch(&BatchRequest { agents }).await?;
    answer
        .results
        .into_iter()
        .map(|r| match r {
            BatchResult::Spawned(s) => Ok(s),
            BatchResult::Failed(f) => bail!("{} was refused: {}", f.agent_id, f.error.message),
        })
        .collect()
}

async fn wait_gone(pids: &[i32]) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
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

async fn stop_all(client: &Client, timeouts: Option<Vec<f64>>) -> Result<Vec<StopReport>> {
    let body = StopManyRequest {
        all: true,
        stop_timeouts: timeouts,
        live_only: true,
        ..StopManyRequest::default()
    };
    Ok(client.stop_many(&body).await?)
}

/// p50 and p99 of `n` GETs of `path`, body read, not decoded: what the
/// daemon takes to answer a route (the one place bench names paths itself —
/// it measures the routes, not the client's decoding).
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

fn status_mb(pid: i32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

pub async fn run(ctx: &Ctx, args: BenchArgs) -> Result<ExitCode> {
    let on_slurm = args.placement == "slurm";
    let n = args
        .agents
        .unwrap_or(if on_slurm { 100 } else { 1000 })
        .max(1);
    platform::become_subreaper().context("become a child subreaper")?;
    platform::raise_nofile_limit();
    let private = private::Private::start(args.no_cgroups).await?;
    let client = private.client.clone();
    let say = |s: &str| {
        if !ctx.json {
            crate::say(&format!("… {s}"));
        }
    };
    if on_slurm {
        say(&format!(
            "{n} agents on Slurm, and sbatch/squeue/scancel called bare"
        ));
        let mut figures = slurm::figures(&client, &private.scratch(), n).await?;
        figures.push(Figure::new(
            "daemon peak RSS",
            status_mb(private.pid(), "VmHWM:")?,
            "MB",
        ));
        drop(private);
        return report(ctx, &figures);
    }
    let mut figures = Vec::new();

    say(&format!(
        "{n} single spawn requests from {CLIENTS} clients, and the bare loop"
    ));
    let sleeper = ["sleep", "3600"];
    let t = Instant::now();
    let singles = spawn_singles(&client, "one", n, &sleeper).await?;
    let singles_s = t.elapsed().as_secs_f64();
    let (bare_children, bare_spawn_s) = bare::spawn_loop(&private.scratch(), n, &sleeper)?;
    figures.push(
        Figure::new(
            format!("spawn {n}, one request each from {CLIENTS} clients, verify_ms 0"),
            singles_s,
            "s",
        )
        .baseline(bare_spawn_s)
        .target("≤ 3× bare", singles_s <= 3.0 * bare_spawn_s)
        .note("baseline: a bare loop creating each agent's two log files and posix_spawning it"),
    );

    say(&format!(
        "stopping {n} cooperative agents, and the bare TERM+wait loop"
    ));
    let t = Instant::now();
    stop_all(&client, None).await?;
    wait_gone(&singles).await?;
    let stop_s = t.elapsed().as_secs_f64();
    let bare_stop_s = bare::term_wait(bare_children)?;
    bare::clean(&private.scratch());
    figures.push(
        Figure::new(
            format!("cooperative stop of {n}, until none is left"),
            stop_s,
            "s",
        )
        .baseline(bare_stop_s)
        .target("≤ 2× bare", stop_s <= 2.0 * bare_stop_s)
        .note("baseline: SIGTERM every process, then wait for each"),
    );
    client.prune().await?;

    say(&format!(
        "a batch of {n} (verify_ms 100), and the bare loop"
    ));
    let t = Instant::now();
    let agents = spawn_batch(&client, "a", n, &sleeper, 100).await?;
    let batch_s = t.elapsed().as_secs_f64();
    let (bare_children, bare_s) = bare::spawn_loop(&private.scratch(), n, &sleeper)?;
    let window = 0.1;
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    bare::term_wait(bare_children)?;
    bare::clean(&private.scratch());
    figures.push(
        Figure::new(
            format!("batch spawn of {n}, verified running (verify_ms 100)"),
            batch_s,
            "s",
        )
        .baseline(bare_s + window)
        .target("≤ window + 2× bare", batch_s <= window + 2.0 * bare_s)
        .note("baseline: the bare loop, then one 100 ms window"),
    );
    let rss = status_mb(private.pid(), "VmRSS:")?;

    say("measuring read latency");
    let (one_p50, one_p99) = latency(
        &client,
        &format!("/v1/agents/{}", agents[n / 2].0),
        args.requests,
    )
    .await?;
    let (all_p50, all_p99) = latency(&client, "/v1/agents", args.requests.clamp(5, 50)).await?;
    let (fields_p50, _) = latency(
        &client,
        "/v1/agents?fields=agent_id,state,progress",
        args.requests.clamp(5, 50),
    )
    .await?;
    let (metrics_p50, metrics_p99) = latency(&client, "/metrics", args.requests).await?;
    let (rt_p50, _) = latency(&client, "/v1/no-such-route", args.requests).await?;
    figures.push(
        Figure::new("GET /v1/agents/{id} p50", one_p50, "ms")
            .baseline(rt_p50)
            .target("≤ 1 ms", one_p50 <= 1.0)
            .note("baseline: a request that does no work (404), same connection setup"),
    );
    figures.push(Figure::new("GET /v1/agents/{id} p99", one_p99, "ms"));
    figures.push(
        Figure::new(
            format!("GET /v1/agents ({n} with metrics) p50"),
            all_p50,
            "ms",
        )
        .target("≤ 100 ms", all_p50 <= 100.0),
    );
    figures.push(Figure::new(
        format!("GET /v1/agents ({n} with metrics) p99"),
        all_p99,
        "ms",
    ));
    figures.push(
        Figure::new(
            format!("GET /v1/agents?fields=agent_id,state,progress ({n}) p50"),
            fields_p50,
            "ms",
        )
        .baseline(all_p50)
        .note("baseline: the whole listing, same run"),
    );
    figures.push(Figure::new(
        format!("GET /metrics ({n} agents) p50"),
        metrics_p50,
        "ms",
    ));
    figures.push(
        Figure::new(format!("GET /metrics ({n} agents) p99"), metrics_p99, "ms")
            .target("≤ 5 ms", metrics_p99 <= 5.0),
    );

    // The sampler keeps full pace for a few intervals after the last read
    // (see corral-core's sampler): let that pass before measuring rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    say(&format!(
        "the daemon at rest for {} s (nobody reading), then as long with one reader a second",
        args.rest_seconds
    ));
    let clk = platform::clock_ticks_per_second() as f64;
    let rest = Duration::from_secs(args.rest_seconds.max(1));
    let (t0, c0) = (Instant::now(), platform::cpu_ticks(private.pid())?);
    tokio::time::sleep(rest).await;
    let rest_cpu =
        (platform::cpu_ticks(private.pid())? - c0) as f64 / clk / t0.elapsed().as_secs_f64()
            * 100.0;
    figures.push(
        Figure::new(
            format!("daemon CPU at rest, {n} agents, nobody reading"),
            rest_cpu,
            "% of a core",
        )
        .target("≤ 3 %", rest_cpu <= 3.0)
        .note("sampled once every 10 s while nobody reads the figures"),
    );
    let watched = &agents[0].0;
    let (t0, c0) = (Instant::now(), platform::cpu_ticks(private.pid())?);
    while t0.elapsed() < rest {
        client.status(watched).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let watched_cpu =
        (platform::cpu_ticks(private.pid())? - c0) as f64 / clk / t0.elapsed().as_secs_f64()
            * 100.0;
    figures.push(
        Figure::new(
            format!("daemon CPU, {n} agents, one agent's status read a second"),
            watched_cpu,
            "% of a core",
        )
        .target("≤ 5 %", watched_cpu <= 5.0)
        .note("one agent in a cgroup is sampled alone for its reader; the full pass stays at rest"),
    );
    let rss_limit = if n <= 1000 {
        20.0
    } else {
        100.0 * n as f64 / 10_000.0
    };
    figures.push(
        Figure::new(format!("daemon RSS with {n} agents"), rss, "MB")
            .target(format!("≤ {rss_limit:.0} MB"), rss <= rss_limit),
    );

    let k = args.exits.min(n);
    say(&format!("exit detection over {k} agents"));
    let detect = exit_detection(&client, &agents[..k]).await?;
    figures.push(
        Figure::new(
            "exit noticed, recorded and delivered: p50",
            percentile(&detect, 0.5),
            "ms",
        )
        .note("kill → the SSE event reaches a client"),
    );
    figures.push(Figure::new(
        "exit noticed, recorded and delivered: p99",
        percentile(&detect, 0.99),
        "ms",
    ));
    let rest: Vec<i32> = agents.iter().skip(k).map(|a| a.1).collect();
    stop_all(&client, Some(vec![1.0, 1.0, 1.0])).await?;
    wait_gone(&rest).await?;
    client.prune().await?;

    let stubborn = ["sh", "-c", "trap '' TERM; exec sleep 3600"];
    let m = n.min(100);
    say(&format!(
        "stopping {m} SIGTERM-ignoring agents, stages 2/0/5 s"
    ));
    let figure = stubborn_stop(&client, "s", m, &stubborn, [2.0, 0.0, 5.0]).await?;
    figures.push(
        Figure::new(
            format!("stop {m} SIGTERM-ignoring, stages 2/0/5 s"),
            figure,
            "s",
        )
        .target("≤ 2.05 s", figure <= 2.05)
        .note("the kill stage begins at 2 s"),
    );
    say(&format!(
        "stopping {n} SIGTERM-ignoring agents, stages 0.2/0.2/0.2 s"
    ));
    let figure = stubborn_stop(&client, "t", n, &stubborn, [0.2, 0.2, 0.2]).await?;
    // The same stop by hand: the shells must have set their trap first.
    let (bare_children, _) = bare::spawn_loop(&private.scratch(), n, &stubborn)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bare_s = tokio::task::block_in_place(|| bare::staged_kill(bare_children, 0.4))?;
    bare::clean(&private.scratch());
    figures.push(
        Figure::new(
            format!("stop {n} SIGTERM-ignoring, stages 0.2/0.2/0.2 s"),
            figure,
            "s",
        )
        .baseline(bare_s)
        .target("≤ last deadline + 1 s", figure <= 1.4)
        .note("baseline: SIGTERM all, 0.4 s, SIGKILL all, wait for each (bare)"),
    );
    figures.push(Figure::new(
        "daemon peak RSS",
        status_mb(private.pid(), "VmHWM:")?,
        "MB",
    ));
    drop(private);
    report(ctx, &figures)
}

/// Spawns `n` agents that ignore SIGTERM and times their stop until none is left.
async fn stubborn_stop(
    client: &Client,
    prefix: &str,
    n: usize,
    argv: &[&str],
    stages: [f64; 3],
) -> Result<f64> {
    // The window lets every shell set its trap before the stop.
    let agents = spawn_batch(client, prefix, n, argv, 100).await?;
    let pids: Vec<i32> = agents.iter().map(|a| a.1).collect();
    let t = Instant::now();
    let reports = stop_all(client, Some(stages.to_vec())).await?;
    wait_gone(&pids).await?;
    let took = t.elapsed().as_secs_f64();
    if let Some(r) = reports
        .iter()
        .find(|r| r.stage != corral_core::StopStage::Kill)
    {
        bail!("a stubborn agent ended in stage {:?}: {r:?}", r.stage);
    }
    client.prune().await?;
    Ok(took)
}

/// Kills agents one at a time at a known instant; the time until corral's
/// event for each exit reaches a client, ms, sorted.
async fn exit_detection(client: &Client, agents: &[(String, i32)]) -> Result<Vec<f64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let sse_client = client.clone();
    let listener = tokio::spawn(async move {
        let mut events = sse_client
            .events(&corral_core::EventsQuery::default())
            .await?;
        while let Some(ev) = events.next().await {
            let ev = ev?;
            let failed = matches!(&ev.body, corral_core::EventBody::State(s)
                if s.status == Some(corral_core::PersistentStatus::Failed));
            if failed && tx.send((ev.agent_id, Instant::now())).is_err() {
                break;
            }
        }
        Ok::<_, corral_api::ClientError>(())
    });
    let mut detect = Vec::with_capacity(agents.len());
    for (id, pid) in agents {
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
    Ok(detect)
}

fn report(ctx: &Ctx, figures: &[Figure]) -> Result<ExitCode> {
    if ctx.json {
        print_json(&figures)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(vec![
        "figure", "corral", "baseline", "ratio", "unit", "target",
    ]);
    for f in figures {
        t.push(vec![
            f.figure.as_str().into(),
            format!("{:.3}", f.corral).into(),
            f.baseline.map_or("-".into(), |b| format!("{b:.3}")).into(),
            f.ratio.map_or("-".into(), |r| format!("{r:.2}x")).into(),
            f.unit.into(),
            match (&f.target, f.met) {
                (Some(t), Some(true)) => Cell::coloured(format!("{t} met"), Some(Colour::Green)),
                (Some(t), _) => Cell::coloured(format!("{t} NOT met"), Some(Colour::Red)),
                _ => "-".into(),
            },
        ]);
    }
    print!("{}", t.render(Style::stdout(true)));
    for f in figures.iter().filter(|f| !f.note.is_empty()) {
        println!("  {}: {}", f.figure, f.note);
    }
    Ok(ExitCode::SUCCESS)
}

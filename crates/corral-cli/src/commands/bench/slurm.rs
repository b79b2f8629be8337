//! `corral bench --placement slurm`: agents on the Slurm cluster this host
//! submits to, next to the engine's own commands called bare in the same run.
//!
//! Figures, for N agents (`sleep 3600`, which obeys SIGTERM):
//! - **spawn to running**: one batch request of N Slurm agents until every one
//!   is reported running, against a bare loop of N `sbatch` calls followed by
//!   `squeue` every 100 ms until all N are RUNNING (with how many jobs of each
//!   ran on each node: on a cluster of several nodes, both spread);
//! - **status listing**: `GET /v1/agents` (p50), against one `squeue` of the
//!   N jobs;
//! - **stop all**: `POST /v1/stop` for every agent until its answer (each job
//!   ended, nothing of it left on this host), against `scancel
//!   --signal=TERM --full` of the N jobs and `squeue` every 100 ms until none
//!   is left running or completing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_core::{Placement, SlurmPlacement, SpawnRequest};

use super::{Figure, latency, stop_all};

/// How long any one phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

pub(super) async fn figures(client: &Client, scratch: &Path, n: usize) -> Result<Vec<Figure>> {
    if Command::new("sbatch").arg("--version").output().is_err() {
        bail!(
            "sbatch is not on PATH: Slurm's client commands are needed (scripts/slurm-local.sh starts a single-node cluster)"
        );
    }
    std::fs::create_dir_all(scratch)?;
    let mut figures = Vec::new();

    let t = Instant::now();
    spawn(client, n).await?;
    wait_all_running(client, n).await?;
    let corral_spawn = t.elapsed().as_secs_f64();
    let corral_nodes = spread(placed_nodes(client).await?);
    let t = Instant::now();
    let jobs = bare_submit(scratch, n)?;
    bare_wait(&jobs, |state| state == "RUNNING", n).await?;
    let bare_spawn = t.elapsed().as_secs_f64();
    let bare_nodes = spread(squeue_nodes(&jobs)?);
    figures.push(
        Figure::new(
            format!("Slurm: spawn {n} until all are running"),
            corral_spawn,
            "s",
        )
        .baseline(bare_spawn)
        .note(format!(
            "baseline: sbatch N times, then squeue every 100 ms until all are RUNNING; \
             nodes: corral {corral_nodes}, bare {bare_nodes}"
        )),
    );

    let (p50, _) = latency(client, "/v1/agents", 50).await?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        squeue(&jobs)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    figures.push(
        Figure::new(format!("Slurm: list {n} agents, p50"), p50, "ms")
            .baseline(super::percentile(&times, 0.5))
            .note("baseline: one squeue of the N jobs (state, node, reason)"),
    );

    let t = Instant::now();
    let reports = stop_all(client, None).await?;
    let corral_stop = t.elapsed().as_secs_f64();
    if reports.len() != n {
        bail!("stopped {} agents, not {n}", reports.len());
    }
    let t = Instant::now();
    let mut argv = vec!["--signal=TERM".to_owned(), "--full".to_owned()];
    argv.extend(jobs.iter().cloned());
    let out = Command::new("scancel").args(&argv).output()?;
    if !out.status.success() {
        bail!("scancel: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    bare_wait(
        &jobs,
        |state| state != "RUNNING" && state != "COMPLETING",
        n,
    )
    .await?;
    let bare_stop = t.elapsed().as_secs_f64();
    figures.push(
        Figure::new(
            format!("Slurm: stop all {n}, until every job has ended"),
            corral_stop,
            "s",
        )
        .baseline(bare_stop)
        .note("baseline: scancel --signal=TERM --full of the N jobs, then squeue every 100 ms until none runs or completes"),
    );
    // Bare jobs that outlived the bench's patience are not left queued.
    let _ = Command::new("scancel").args(&jobs).output();
    Ok(figures)
}

async fn spawn(client: &Client, n: usize) -> Result<()> {
    let agents = (0..n)
        .map(|i| SpawnRequest {
            agent_id: format!("slurm.{i}"),
            command: vec!["sleep".into(), "3600".into()],
            verify_ms: Some(0),
            placement: Some(Placement {
                slurm: Some(SlurmPlacement::default()),
            }),
            ..SpawnRequest::default()
        })
        .collect();
    super::batch(client, agents).await.map(drop)
}

async fn wait_all_running(client: &Client, n: usize) -> Result<()> {
    let end = Instant::now() + PHASE_LIMIT;
    loop {
        let query = corral_core::ListQuery {
            fields: Some("process_alive".into()),
            ..corral_core::ListQuery::default()
        };
        let all = client.list(&query).await?;
        let running = all.values().filter(|s| s.process_alive).count();
        if running >= n {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("only {running} of {n} Slurm agents running after {PHASE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// N bare `sbatch` calls; the job ids.
fn bare_submit(scratch: &Path, n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|i| {
            let out = Command::new("sbatch")
                .arg("--parsable")
                .arg(format!("--job-name=bare.{i}"))
                .arg(format!("--output={}/bare.{i}.out", scratch.display()))
                .args(["--wrap", "exec sleep 3600"])
                .output()
                .context("sbatch")?;
            if !out.status.success() {
                bail!("sbatch: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.trim().split(';').next().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The node each running agent's job runs on, as corral says.
async fn placed_nodes(client: &Client) -> Result<Vec<String>> {
    let query = corral_core::ListQuery {
        fields: Some("placement".into()),
        ..corral_core::ListQuery::default()
    };
    Ok(client
        .list(&query)
        .await?
        .into_values()
        .filter_map(|s| s.placement.and_then(|p| p.node))
        .collect())
}

/// The node of each job, as `squeue` says.
fn squeue_nodes(jobs: &[String]) -> Result<Vec<String>> {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%N", "-j", &jobs.join(",")])
        .output()
        .context("squeue")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// `n1 100, n2 100, n3 100`: jobs per node.
fn spread(nodes: Vec<String>) -> String {
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for node in nodes {
        *count.entry(node).or_default() += 1;
    }
    count
        .iter()
        .map(|(node, k)| format!("{node} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `squeue` of the jobs: each one's state.
fn squeue(jobs: &[String]) -> Result<Vec<String>> {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%T|%N|%r", "-j", &jobs.join(",")])
        .output()
        .context("squeue")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').next().unwrap_or_default().to_owned())
        .collect())
}

/// Polls `squeue` every 100 ms until `n` jobs are in a state `done` accepts
/// (a job the controller has forgotten counts as ended).
async fn bare_wait(jobs: &[String], done: impl Fn(&str) -> bool, n: usize) -> Result<()> {
    let end = Instant::now() + PHASE_LIMIT;
    loop {
        let states = squeue(jobs)?;
        let forgotten = jobs.len().saturating_sub(states.len());
        let count = states.iter().filter(|s| done(s)).count() + forgotten;
        if count >= n {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("only {count} of {n} bare jobs reached the state after {PHASE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! `corral demo`: corral's main job on its embedded defaults, end to end.
//!
//! Runs a private daemon inside this process (temp state dir, its own socket),
//! spawns a small team of real agents through the HTTP API — some finish, one
//! fails, one cannot start, some keep running (one of them ignores SIGTERM) —
//! shows the table while they work and report progress, then stops them all in
//! stages and removes the state dir.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_api::Client;
use corral_core::{
    AgentStatus, Config, ListQuery, ProcessSummary, SpawnRequest, StopManyRequest, StopReport,
    Supervisor,
};

use crate::cli::DemoArgs;

fn agent(id: &str, script: &str, corral: &str) -> SpawnRequest {
    SpawnRequest {
        agent_id: id.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([("CORRAL_BIN".into(), corral.into())]),
        labels: BTreeMap::from([("team".into(), "demo".into())]),
        verify_ms: Some(200),
        ..Default::default()
    }
}

/// The demo's table: `corral ps`'s, fitted to 80 columns.
fn table(all: &BTreeMap<String, AgentStatus>) -> String {
    let rows: Vec<&AgentStatus> = all.values().collect();
    let style = crate::output::Style {
        width: Some(crate::output::terminal_width().unwrap_or(80).min(80)),
        ..crate::output::Style::stdout(false)
    };
    super::agents::ps_table(&rows).render(style)
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("corral-demo-")
        .tempdir()
        .context("create a temp state dir")?;
    let state = dir.path().join("state");
    let socket = state.join(corral_api::daemon::SOCKET_NAME);
    let mut config = Config::new(&state);
    config.socket_path = Some(socket.clone());
    config.sample_interval = Duration::from_millis(500);
    config.subreaper = true;
    let sup = Supervisor::open(config).await?;
    let listener = corral_api::daemon::bind_socket(&socket)?;
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(corral_api::serve::serve(
        listener,
        corral_api::router(sup),
        corral_api::serve::Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let client = Client::new(&socket);
    println!("corral demo: a private daemon on {}\n", socket.display());

    let exe = std::env::current_exe().context("find the corral executable")?;
    let corral = exe.to_string_lossy().into_owned();
    let worker = r#"for i in 1 2 3 4 5 6 7 8 9 10; do
        "$CORRAL_BIN" progress $((i * 10)) --message "step $i of 10"; echo "step $i"; sleep 0.4
    done"#;
    let team = [
        agent("team.planner", worker, &corral),
        agent("team.writer", &worker.replace("0.4", "0.6"), &corral),
        agent(
            "team.flaky",
            r#""$CORRAL_BIN" progress 5 --message connecting; sleep 1.5; echo "flaky: lost the queue connection" >&2; exit 3"#,
            &corral,
        ),
        agent(
            "team.cruncher",
            r#"trap '' TERM; "$CORRAL_BIN" progress 0 --message crunching; while :; do :; done"#,
            &corral,
        ),
        agent("team.watcher", "sleep 3600", &corral),
        SpawnRequest {
            agent_id: "team.typo".into(),
            command: vec!["/no/such/agent".into()],
            ..Default::default()
        },
    ];
    for req in &team {
        match client.spawn(req).await {
            Ok(r) => println!(
                "spawned {:<14} pid {:<7} {}",
                r.agent_id,
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.status
            ),
            Err(e) => println!("spawn {:<16} refused: {e}", req.agent_id),
        }
    }

    let tty = std::io::stdout().is_terminal();
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while began.elapsed() < Duration::from_secs(args.seconds) {
        tick.tick().await;
        let all: BTreeMap<String, AgentStatus> = client.list(&ListQuery::default()).await?;
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!("\n— t = {:.0}s —", began.elapsed().as_secs_f64());
        print!("{}", table(&all));
    }

    println!("\nstopping the team (SIGTERM, then SIGKILL for whatever ignores it)…");
    let stop = StopManyRequest {
        selector: Some("team.*".into()),
        stop_timeouts: Some(vec![2.0, 1.0, 1.0]),
        ..StopManyRequest::default()
    };
    let reports: Vec<StopReport> = client.stop_many(&stop).await?;
    for r in &reports {
        println!(
            "  {:<14} {:<14} {:>6.0} ms",
            r.agent_id,
            serde_json::to_value(r.stage)?.as_str().unwrap_or("?"),
            r.duration_ms
        );
    }
    let all: BTreeMap<String, AgentStatus> = client.list(&ListQuery::default()).await?;
    println!();
    print!("{}", table(&all));
    let summary: ProcessSummary = client.summary().await?;
    println!(
        "\n{} agents: {} completed, {} failed, {} cancelled, {} running",
        summary.total, summary.completed, summary.failed, summary.cancelled, summary.running
    );
    let _ = stop_server.send(());
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

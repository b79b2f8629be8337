//! `corral daemon`: run it in the foreground, or show or stop the running one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use corral_api::agent_socket::AgentSocket;
use corral_api::daemon::{DaemonError, DaemonOptions};
use corral_core::{DaemonHealth, DaemonStopRequest, DaemonStopResponse, Placement, SlurmPlacement};

use super::{EXIT_ALREADY_RUNNING, print_json};
use crate::cli::{Before, DaemonAction, DaemonArgs};
use crate::{connect, output};

pub async fn run(before: &Before, args: DaemonArgs) -> Result<ExitCode> {
    let dir = args.state_dir.clone().or_else(|| before.state_dir.clone());
    let state_dir = connect::state_dir(dir.as_deref())?;
    match args.action {
        None => serve(state_dir, before, args).await,
        Some(DaemonAction::Status { out }) => status(&state_dir, out.json || before.json).await,
        Some(DaemonAction::Stop { stop_agents }) => stop(&state_dir, stop_agents).await,
    }
}

async fn serve(
    state_dir: std::path::PathBuf,
    before: &Before,
    args: DaemonArgs,
) -> Result<ExitCode> {
    if args.detach {
        // Leave the terminal's session: its hangup must not reach the daemon.
        let _ = rustix::process::setsid();
    }
    let opts = DaemonOptions {
        state_dir,
        sample_interval: Duration::from_millis(args.sample_ms.max(10)),
        detach: args.detach,
        cgroups: !args.no_cgroups,
        listen: args.listen,
        token_file: args.token_file.or_else(|| before.token_file.clone()),
        strict: args.strict,
        max_connections: args.max_connections,
        header_timeout: args.header_timeout_ms.map(Duration::from_millis),
        placement: (args.placement.as_deref() == Some("slurm")).then(|| Placement {
            slurm: Some(SlurmPlacement::default()),
        }),
        agent_socket: match args.agent_socket {
            None => AgentSocket::Default,
            Some(p) if p.as_os_str() == "none" => AgentSocket::Off,
            Some(p) => AgentSocket::At(std::path::absolute(&p)?),
        },
    };
    match corral_api::daemon::run(opts).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ DaemonError::AlreadyRunning { .. }) => {
            crate::say_error(&e.to_string());
            Ok(ExitCode::from(EXIT_ALREADY_RUNNING))
        }
        Err(e) => Err(e.into()),
    }
}

async fn status(state_dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let client = connect::existing(state_dir).await?;
    let h: DaemonHealth = match client.health().await {
        Ok(h) => h,
        Err(corral_api::ClientError::Api { message, .. }) => bail!(
            "the daemon at {} answers but is not ready: {message}",
            state_dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&h)?;
    } else {
        let rows = vec![
            ("pid", h.pid.to_string()),
            ("version", h.version.clone()),
            ("state_dir", h.state_dir.clone()),
            ("uptime", output::duration(h.uptime_s)),
            ("agents", h.agents.to_string()),
        ];
        print!("{}", output::key_values(rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(state_dir: &std::path::Path, stop_agents: bool) -> Result<ExitCode> {
    let client = connect::existing(state_dir).await?;
    let answer: DaemonStopResponse = client
        .stop_daemon(&DaemonStopRequest { stop_agents })
        .await?;
    // Wait until the process is gone, so a following command finds no daemon.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{}", answer.pid)).exists()
        && std::fs::read_to_string(format!("/proc/{}/stat", answer.pid))
            .is_ok_and(|s| !s.contains(") Z "))
    {
        if std::time::Instant::now() > end {
            bail!(
                "the daemon (pid {}) is still running 10 s after it was asked to stop",
                answer.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agents = if stop_agents {
        format!("{} agent(s) stopped first", answer.stopped.len())
    } else {
        "its agents keep running".into()
    };
    println!("daemon {} stopped; {agents}", answer.pid);
    Ok(ExitCode::SUCCESS)
}

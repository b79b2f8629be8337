//! `corral logs`: the agent's log files, read directly (the daemon only says where they are).

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corral_core::AgentStatus;

use super::Ctx;
use crate::cli::LogsArgs;

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<ExitCode> {
    let id = corral_core::AgentId::new(args.id.as_str())?;
    let client = ctx.client().await?;
    let path = format!("/v1/agents/{id}");
    let status: AgentStatus = client.get(&path).await?;
    let log = if args.stderr {
        &status.stderr_log
    } else {
        &status.stdout_log
    };
    let text = corral_core::logs::tail(log, args.lines)
        .with_context(|| format!("read {}", log.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: print what is appended until the agent has ended and the file is quiet.
    let mut file = std::fs::File::open(log).with_context(|| format!("open {}", log.display()))?;
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut checked = Instant::now();
    let mut ended = !status.persistent_status.is_live();
    loop {
        let len = file.metadata()?.len();
        if len < pos {
            pos = 0; // truncated
        }
        if len > pos {
            file.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            (&mut file).take(len - pos).read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
            continue;
        }
        if ended {
            return Ok(ExitCode::SUCCESS);
        }
        if checked.elapsed() > Duration::from_secs(1) {
            checked = Instant::now();
            let s: AgentStatus = client.get(&path).await?;
            ended = !s.persistent_status.is_live();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! `corral logs`: an agent's output through the API (so it works over `--url` too).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::cli::LogsArgs;

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<ExitCode> {
    let id = corral_core::AgentId::new(args.id.as_str())?;
    let stream = if args.both {
        "both"
    } else if args.stderr {
        "stderr"
    } else {
        "stdout"
    };
    let mut path = format!(
        "/v1/agents/{id}/logs?stream={stream}&tail={}&follow={}",
        args.lines, args.follow
    );
    if let Some(run) = args.run {
        path.push_str(&format!("&run={run}"));
    }
    let client = ctx.client().await?;
    let mut out = std::io::stdout().lock();
    client
        .stream(&path, |chunk| {
            out.write_all(chunk).and_then(|()| out.flush()).is_ok()
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

//! `corral logs`: an agent's output through the API (so it works over `--url` too).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::Ctx;
use crate::cli::LogsArgs;

pub async fn run(ctx: &Ctx, args: &LogsArgs) -> Result<ExitCode> {
    let id = super::agents::checked_id(&args.id)?;
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
    if !ctx.json {
        client
            .stream(&path, |chunk| {
                out.write_all(chunk).and_then(|()| out.flush()).is_ok()
            })
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    // JSON: one document per line of output, as it comes.
    let mut partial = Vec::new();
    let emit = |line: &[u8], out: &mut std::io::StdoutLock<'_>| {
        let doc = serde_json::json!({
            "agent_id": id, "stream": stream, "run": args.run,
            "line": String::from_utf8_lossy(line),
        });
        writeln!(out, "{doc}").and_then(|()| out.flush()).is_ok()
    };
    client
        .stream(&path, |chunk| {
            partial.extend_from_slice(chunk);
            while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                if !emit(&line[..line.len() - 1], &mut out) {
                    return false;
                }
            }
            true
        })
        .await?;
    if !partial.is_empty() {
        emit(&partial, &mut out);
    }
    Ok(ExitCode::SUCCESS)
}

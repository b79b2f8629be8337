//! `corral daemon`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use corral_api::daemon::{DaemonError, DaemonOptions};

use super::{Ctx, EXIT_ALREADY_RUNNING};
use crate::cli::DaemonArgs;

pub async fn run(ctx: &Ctx, args: DaemonArgs) -> Result<ExitCode> {
    if args.detach {
        // Leave the terminal's session: its hangup must not reach the daemon.
        let _ = rustix::process::setsid();
    }
    let opts = DaemonOptions {
        state_dir: ctx.state_dir.clone(),
        sample_interval: Duration::from_millis(args.sample_ms.max(10)),
        detach: args.detach,
        cgroups: !args.no_cgroups,
        listen: args.listen,
        token_file: ctx.token_file.clone(),
        strict: args.strict,
        max_connections: args.max_connections,
        header_timeout: args.header_timeout_ms.map(Duration::from_millis),
    };
    match corral_api::daemon::run(opts).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ DaemonError::AlreadyRunning { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_ALREADY_RUNNING))
        }
        Err(e) => Err(e.into()),
    }
}

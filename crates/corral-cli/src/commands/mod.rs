//! One function per command; each is a thin client of the daemon's routes.

mod agents;
mod bench;
mod daemon;
mod demo;
mod logs;
mod top;

use std::process::ExitCode;

use anyhow::Result;
use corral_api::Client;

use crate::cli::{Cli, Command};
use crate::connect;

/// Exit code of a daemon that lost the lock race: another daemon serves the state dir.
pub const EXIT_ALREADY_RUNNING: u8 = 3;

/// Global options every command sees.
pub struct Ctx {
    pub state_dir: std::path::PathBuf,
    pub autostart: bool,
    pub json: bool,
    /// A TCP daemon to use instead of the socket: address and token.
    pub remote: Option<(std::net::SocketAddr, String)>,
    pub token_file: Option<std::path::PathBuf>,
}

impl Ctx {
    pub async fn client(&self) -> Result<Client> {
        match &self.remote {
            Some((addr, token)) => Ok(Client::tcp(*addr, token.clone())),
            None => connect::client(&self.state_dir, self.autostart).await,
        }
    }
}

/// Prints a value as one JSON document.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let remote = match &cli.url {
        Some(url) => Some(connect::remote(url, cli.token_file.as_deref())?),
        None => None,
    };
    let ctx = Ctx {
        state_dir: connect::state_dir(cli.state_dir.as_deref())?,
        autostart: !cli.no_autostart,
        json: cli.json,
        remote,
        token_file: cli.token_file,
    };
    match cli.command {
        Command::Daemon(args) => daemon::run(&ctx, args).await,
        Command::Spawn(args) => agents::spawn(&ctx, *args).await,
        Command::Status { id } => agents::status(&ctx, &id).await,
        Command::Ps => agents::ps(&ctx).await,
        Command::Summary => agents::summary(&ctx).await,
        Command::Health { id } => agents::health(&ctx, &id).await,
        Command::Stop(args) => agents::stop(&ctx, args).await,
        Command::Kill { id, force } => agents::kill(&ctx, &id, force).await,
        Command::Reap => agents::reap(&ctx).await,
        Command::Rm { id } => agents::remove(&ctx, &id).await,
        Command::Prune => agents::prune(&ctx).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Runs { id } => agents::runs(&ctx, &id).await,
        Command::Wait { target, timeout } => agents::wait(&ctx, &target, timeout).await,
        Command::Progress {
            percent,
            message,
            agent,
        } => agents::progress(&ctx, percent, message, agent).await,
        Command::Events { follow, since } => agents::events(&ctx, follow, since).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(&ctx, args).await,
        Command::Top(args) => top::run(&ctx, args).await,
    }
}

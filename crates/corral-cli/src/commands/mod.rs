//! One function per command; each is a thin client of the daemon's routes.
//!
//! Exit codes are decided here and in `main` only: 0 ok, 1 failure, 2 usage
//! error (a bad argument, or a request the daemon refused as invalid), 3
//! another daemon holds the state dir, 4 no such agent.

mod agents;
mod bench;
mod daemon;
mod demo;
mod logs;
mod man;
mod mcp;
mod pause;
mod project;
mod spawn;
mod startup;
mod stop;
pub(crate) mod team;
mod top;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use corral_api::Client;

use crate::cli::{Before, Cli, Command, Conn, Json};
use crate::connect;

/// Exit code of a daemon that lost the lock race: another daemon serves the state dir.
pub const EXIT_ALREADY_RUNNING: u8 = 3;
/// Exit code of a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the agent asked about does not exist.
pub const EXIT_NOT_FOUND: u8 = 4;

/// A mistake in how corral was called (exit 2, like clap's own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error with this message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The exit code for an error: usage, not found, or plain failure.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() || cause.is::<corral_core::InvalidId>() {
            return EXIT_USAGE;
        }
        if let Some(api) = cause.downcast_ref::<corral_api::ClientError>() {
            match api.code() {
                Some("not_found") => return EXIT_NOT_FOUND,
                Some("invalid") => return EXIT_USAGE,
                _ => {}
            }
        }
    }
    1
}

/// The options every client command sees, merged from before and after its name.
pub struct Ctx {
    pub state_dir: PathBuf,
    pub autostart: bool,
    pub json: bool,
    /// A TCP daemon to use instead of the socket: address and token.
    pub remote: Option<(std::net::SocketAddr, String)>,
    /// Inside an agent: the socket its daemon gave it (`CORRAL_SOCKET`),
    /// used unless `--url` or `--state-dir` names another daemon. That daemon
    /// runs already (it started this agent), so nothing is started for it.
    pub agent_socket: Option<PathBuf>,
}

impl Ctx {
    fn new(before: &Before, conn: &Conn, out: Json) -> Result<Self> {
        let url = conn.url.clone().or_else(|| before.url.clone());
        let token_file = conn
            .token_file
            .clone()
            .or_else(|| before.token_file.clone());
        let remote = match &url {
            Some(url) => Some(connect::remote(url, token_file.as_deref())?),
            None => None,
        };
        let state_dir = conn.state_dir.clone().or_else(|| before.state_dir.clone());
        let agent_socket = std::env::var_os("CORRAL_SOCKET")
            .filter(|s| !s.is_empty() && url.is_none() && state_dir.is_none())
            .map(PathBuf::from);
        Ok(Self {
            state_dir: connect::state_dir(state_dir.as_deref())?,
            autostart: !(conn.no_autostart || before.no_autostart),
            json: out.json || before.json,
            remote,
            agent_socket,
        })
    }

    pub async fn client(&self) -> Result<Client> {
        match (&self.remote, &self.agent_socket) {
            (Some((addr, token)), _) => Ok(Client::tcp(*addr, token.clone())),
            (None, Some(socket)) => Ok(Client::new(socket)),
            (None, None) => connect::client(&self.state_dir, self.autostart).await,
        }
    }
}

/// Prints a value as one JSON document.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let b = &cli.before;
    let ctx = |conn: &Conn, out: Json| Ctx::new(b, conn, out);
    match cli.command {
        Command::Daemon(args) => daemon::run(b, args).await,
        Command::Spawn(args) => {
            let ctx = ctx(&args.conn, args.out)?;
            spawn::spawn(&ctx, *args).await
        }
        Command::Status(a) => agents::status(&ctx(&a.conn, a.out)?, &a.id).await,
        Command::Ps(a) => agents::ps(&ctx(&a.conn, a.out)?, &a).await,
        Command::Summary(a) => agents::summary(&ctx(&a.conn, a.out)?).await,
        Command::Health(a) => agents::health(&ctx(&a.conn, a.out)?, &a.id).await,
        Command::Stop(a) => stop::stop(&ctx(&a.conn, a.out)?, &a).await,
        Command::Restart(a) => stop::restart(&ctx(&a.conn, a.out)?, &a).await,
        Command::Kill(a) => stop::kill(&ctx(&a.conn, a.out)?, &a.id, a.force).await,
        Command::Pause(a) => pause::run(&ctx(&a.conn, a.out)?, &a, false).await,
        Command::Resume(a) => pause::run(&ctx(&a.conn, a.out)?, &a, true).await,
        Command::Team(a) => {
            let (conn, out) = a.action.conn_out();
            team::run(&ctx(conn, out)?, &a).await
        }
        Command::Reap(a) => agents::reap(&ctx(&a.conn, a.out)?).await,
        Command::Rm(a) => agents::remove(&ctx(&a.conn, a.out)?, &a.id).await,
        Command::Prune(a) => agents::prune(&ctx(&a.conn, a.out)?).await,
        Command::Logs(a) => logs::run(&ctx(&a.conn, a.out)?, &a).await,
        Command::Runs(a) => agents::runs(&ctx(&a.conn, a.out)?, &a.id).await,
        Command::Wait(a) => agents::wait(&ctx(&a.conn, a.out)?, &a.target, a.timeout).await,
        Command::Progress(a) => agents::progress(&ctx(&a.conn, a.out)?, &a).await,
        Command::Events(a) => agents::events(&ctx(&a.conn, a.out)?, &a).await,
        Command::Up(a) => project::up(&ctx(&a.conn, a.out)?, &a).await,
        Command::Down(a) => project::down(&ctx(&a.conn, a.out)?, &a).await,
        Command::Startup(args) => {
            let before = b.clone();
            tokio::task::spawn_blocking(move || startup::run(&before, args)).await?
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => {
            let ctx = ctx(&Conn::default(), args.out)?;
            bench::run(&ctx, args).await
        }
        Command::Completions { shell } => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(&crate::complete::script(shell)?)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(a) => man::run(&a),
        Command::Openapi => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", corral_api::openapi_json())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mcp(a) => mcp::run(ctx(&a.conn, Json::default())?).await,
        Command::Top(a) => top::run(&ctx(&a.conn, Json::default())?, a).await,
        Command::Ui(a) => ui::run(&ctx(&a.conn, Json::default())?, a.no_open).await,
    }
}

//! Command-line grammar (clap derive). The commands and flags are the contract's.
//!
//! Every command takes exactly the options that mean something to it: the
//! connection options (`--state-dir`, `--url`, `--token-file`,
//! `--no-autostart`) on the commands that talk to a daemon, `--json` on the
//! commands that print data. For scripts written against earlier versions the
//! same options are still accepted before the command name (hidden there).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;

/// Completes an agent id from the daemon's agents (see `crate::complete`).
fn ids() -> ArgValueCompleter {
    ArgValueCompleter::new(crate::complete::agent_ids)
}

/// corral: spawn, watch and stop many long-running agents, and keep their record.
#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    about = "corral: spawn, watch and stop many long-running agents, and keep their record",
    propagate_version = true,
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 another daemon holds the state dir, 4 no such agent.\nSee `corral <command> --help` for a command's options."
)]
pub struct Cli {
    /// Options accepted before the command name (hidden: put them after it).
    #[command(flatten)]
    pub before: Before,
    #[command(subcommand)]
    pub command: Command,
}

/// The connection and output options, as accepted before the command name.
#[derive(Debug, Clone, Default, Args)]
pub struct Before {
    #[arg(long, hide = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub no_autostart: bool,
    #[arg(long, hide = true)]
    pub json: bool,
    #[arg(long, hide = true, value_name = "ADDR:PORT")]
    pub url: Option<String>,
    #[arg(long, hide = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Where the daemon is, and whether to start one.
#[derive(Debug, Clone, Default, Args)]
pub struct Conn {
    /// State dir (database, socket, agent logs) [default: $CORRAL_STATE_DIR,
    /// else $XDG_STATE_HOME/corral, else ~/.local/state/corral].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Fail instead of starting a daemon when none answers.
    #[arg(long)]
    pub no_autostart: bool,
    /// Talk to a daemon serving TCP (`corral daemon --listen`) instead of the
    /// state dir's socket; needs --token-file. No daemon is started.
    #[arg(
        long,
        env = "CORRAL_URL",
        hide_env_values = true,
        value_name = "ADDR:PORT"
    )]
    pub url: Option<String>,
    /// The file holding that daemon's bearer token.
    #[arg(
        long,
        env = "CORRAL_TOKEN_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
}

/// `--json`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an agent (or many): exit 0 once it runs (or completed with 0) after its verification window.
    Spawn(Box<SpawnArgs>),
    /// List agents: id, pid, status, health, readiness, CPU, memory, runtime, restarts, exit.
    Ps(PsArgs),
    /// A live dashboard of every agent: sort, filter, details and logs, stop and kill.
    Top(TopArgs),
    /// Open the web dashboard: prints a one-time login URL and opens a browser where there is one.
    Ui(UiArgs),
    /// Show one agent's status, every field.
    Status(IdArgs),
    /// Exit 0 when the agent is healthy (alive, not a zombie), 1 when not, 4 when there is no such agent.
    Health(IdArgs),
    /// Counts by state, and total CPU and memory.
    Summary(DataArgs),
    /// Stop agents gracefully: SIGTERM, wait, SIGTERM, wait, SIGKILL — their whole process trees.
    Stop(StopArgs),
    /// Stop one agent: the same staged stop (prints the plan), or SIGKILL at once with --force.
    Kill(KillArgs),
    /// Restart agents: the staged stop of each that runs, then a new run with the same request.
    Restart(RestartArgs),
    /// Pause agents: freeze their whole process trees (their runtime clocks stop) until resumed.
    Pause(PauseArgs),
    /// Resume paused agents: thaw their whole process trees.
    Resume(PauseArgs),
    /// Budgets per agent team (an id and every id under it): set, list, show, remove.
    Team(TeamArgs),
    /// Show an agent's output: the last lines, any run, following with -f.
    Logs(LogsArgs),
    /// List an agent's runs: number, pid, start, end, status, exit, reason.
    Runs(IdArgs),
    /// Wait until an agent (or every agent of PREFIX.*) has ended; exit with its exit code.
    Wait(WaitArgs),
    /// Report progress from inside an agent (it finds itself through CORRAL_AGENT_ID).
    Progress(ProgressArgs),
    /// Show state changes, progress reports, stop stages, restarts, limit and probe results.
    Events(EventsArgs),
    /// Start the agents of a corral.toml project that are not running, restart the ones that changed.
    Up(UpArgs),
    /// Stop the agents of a corral.toml project (dependents first).
    Down(DownArgs),
    /// Print (or --install) a systemd unit that starts the agents of a corral.toml project at boot.
    Startup(StartupArgs),
    /// Forget an ended agent: its runs, and its logs when they are in the default place.
    Rm(IdArgs),
    /// Forget every ended run (agents still running keep their current run).
    Prune(DataArgs),
    /// Reap what is left to reap (normally nothing: corral reaps at once); lists agents it had to reap.
    Reap(DataArgs),
    /// Run the daemon in the foreground, or show or stop the running one.
    Daemon(DaemonArgs),
    /// Start a small team of real agents, watch them work, then stop them all (a private daemon).
    Demo(DemoArgs),
    /// Measure corral on this machine against bare baselines (a private daemon).
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), a command's page, or write every page into a directory.
    Man(ManArgs),
    /// Print the HTTP API's OpenAPI document (what GET /v1/openapi.json serves; no daemon needed).
    Openapi,
    /// Serve the Model Context Protocol on stdin/stdout, so an AI agent can spawn,
    /// watch and stop agents (starts a daemon on the first tool call when none answers).
    Mcp(McpArgs),
}

impl Command {
    /// The daemon and the demo serve many agents: give them a multi-threaded runtime.
    pub fn needs_threads(&self) -> bool {
        matches!(self, Self::Daemon(_) | Self::Demo(_) | Self::Bench(_))
    }
}

/// `corral team`.
#[derive(Debug, Args)]
#[command(
    after_help = "A team is an agent id and every agent under it: team L2 is L2 itself and every L2.…. Its budgets cap the sum over its live agents. --memory (MiB of the trees' resident memory) and --pids (tasks): over them, the team's largest agent is stopped (cause limit; its restart policy applies). --cpu (percent of one CPU): over it for three samples in a row, a budget event is recorded. --max-agents: a spawn that would go over is refused (409 budget). The sampler enforces the first three (\"enforcement\": \"sampler\")."
)]
pub struct TeamArgs {
    #[command(subcommand)]
    pub action: TeamAction,
}

#[derive(Debug, Subcommand)]
pub enum TeamAction {
    /// Set a team's budgets (replacing those it had).
    Set(TeamSetArgs),
    /// List every team with budgets: budgets, usage, live agents, enforcement.
    Ls(TeamLsArgs),
    /// Show one team: its budgets, usage and members.
    Show(TeamIdArgs),
    /// Remove a team's budgets.
    Rm(TeamIdArgs),
}

impl TeamAction {
    /// The connection and output options of the action.
    pub fn conn_out(&self) -> (&Conn, Json) {
        match self {
            Self::Set(a) => (&a.conn, a.out),
            Self::Ls(a) => (&a.conn, a.out),
            Self::Show(a) | Self::Rm(a) => (&a.conn, a.out),
        }
    }
}

#[derive(Debug, Args)]
pub struct TeamSetArgs {
    /// Team id: the agent id whose subtree (it included) the budgets cap.
    #[arg(add = ids())]
    pub id: String,
    /// Most resident memory of the team's trees together, MiB.
    #[arg(long, value_name = "MB")]
    pub memory: Option<f64>,
    /// Most CPU of the team's trees together, percent of one CPU.
    #[arg(long, value_name = "PCT")]
    pub cpu: Option<f64>,
    /// Most tasks (processes and threads) of the team's trees together.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Most live agents in the team.
    #[arg(long, value_name = "N")]
    pub max_agents: Option<u32>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct TeamLsArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct TeamIdArgs {
    /// Team id.
    #[arg(add = ids())]
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

/// One agent.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Agent id.
    #[arg(add = ids())]
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

/// `corral man`: which page, or every page into a directory.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (`spawn`, `daemon stop`) [default: corral's own page].
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Write corral.1 and a page for every command (corral-spawn.1, …) into DIR,
    /// making it when missing; prints the paths written.
    #[arg(short = 'o', long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<PathBuf>,
}

/// `corral mcp`: where the daemon is (its answers go to the MCP host, never as text).
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Args)]
pub struct UiArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only print the URL; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
}

/// A command with data to print and nothing else to say.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only this agent or subtree (`ID` or `PREFIX.*`).
    #[arg(add = ids())]
    pub selector: Option<String>,
    /// Only agents with this label (repeatable: all must match).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Only agents in this state: spawning, running, completed, failed, cancelled,
    /// or a health word (healthy, zombie, unknown); repeatable.
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<String>,
    /// Only agents placed on this node (a Slurm node, as INFO names it); repeatable: any of them.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Never cut ids or messages to fit the terminal.
    #[arg(long)]
    pub wide: bool,
    /// Redraw every few seconds until interrupted (like `watch`).
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub action: Option<DaemonAction>,
    /// State dir it owns [default: $CORRAL_STATE_DIR, else $XDG_STATE_HOME/corral,
    /// else ~/.local/state/corral].
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Metrics sampling interval, milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub sample_ms: u64,
    /// Contain agents in process groups only, even where cgroup v2 is usable.
    #[arg(long, env = "CORRAL_NO_CGROUPS", hide_env_values = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cgroups: bool,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:7070); needs --token-file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token every TCP client must send (a file of at least 16 bytes).
    #[arg(
        long,
        env = "CORRAL_TOKEN_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// Refuse a token file that group or others can read (default: a warning).
    #[arg(long)]
    pub strict: bool,
    /// Open connections per listener [default: a quarter of the open-file limit, at most 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long request headers may take before the connection is closed (default 10000).
    #[arg(long, value_name = "MS", hide = true)]
    pub header_timeout_ms: Option<u64>,
    /// Where agents whose request names no placement run: this host (local) or
    /// the Slurm cluster this host submits to (slurm).
    #[arg(long, env = "CORRAL_PLACEMENT", hide_env_values = true, value_name = "WHERE", value_parser = ["local", "slurm"])]
    pub placement: Option<String>,
    /// The socket agents of other users reach the daemon on (only agent
    /// routes, each caller known by its process): `none` for no such socket
    /// [default as root: /run/corral/HASH.sock; else none].
    #[arg(
        long,
        env = "CORRAL_AGENT_SOCKET",
        hide_env_values = true,
        value_name = "PATH|none"
    )]
    pub agent_socket: Option<PathBuf>,
    /// Started in the background by the CLI: leave the terminal's session.
    #[arg(long, hide = true)]
    pub detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonAction {
    /// Whether a daemon serves the state dir: its pid, version, uptime and agents.
    Status {
        #[command(flatten)]
        out: Json,
    },
    /// Stop the daemon. Its agents keep running (the next daemon re-adopts them)
    /// unless --stop-agents.
    Stop {
        /// First stop every agent (staged), then the daemon.
        #[arg(long)]
        stop_agents: bool,
    },
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Agent id: 1–128 of A-Z a-z 0-9 . _ - (dots make a hierarchy); with
    /// --count, the prefix of PREFIX.1 … PREFIX.N.
    #[arg(required_unless_present = "from")]
    pub id: Option<String>,
    /// Start PREFIX.1 … PREFIX.N in one batch (all verification windows at once).
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// Start the requests in FILE (JSON lines of spawn requests; `-` for stdin) in one batch.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "count"])]
    pub from: Option<PathBuf>,
    /// Working directory [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Extra environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Environment variables from a dotenv file (KEY=VALUE lines; repeatable; --env wins).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Start from a clean environment (PATH, HOME, USER, LOGNAME, SHELL, LANG
    /// and --env) instead of the daemon's. Agents of another user always do.
    #[arg(long)]
    pub no_inherit_env: bool,
    /// Where the run logs go [default: STATE_DIR/agents/ID].
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
    /// Label kept with the agent (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Staged-stop waits in seconds: after the first SIGTERM, the second, the SIGKILL [default: 10,5,5].
    #[arg(long, value_name = "T1,T2,T3")]
    pub stop_timeouts: Option<String>,
    /// How long the agent must stay up to count as started, ms; 0 answers once exec succeeded [default: 100].
    #[arg(long, value_name = "MS")]
    pub verify_ms: Option<u64>,
    /// Restart policy: never, on-failure or always [default: never].
    #[arg(long, value_name = "POLICY", value_parser = ["never", "on-failure", "always"])]
    pub restart: Option<String>,
    /// More restarts than this within the window is a crash loop [default: 5].
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// The crash-loop window; a run that stays up this long resets the backoff [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_window: Option<std::time::Duration>,
    /// Backoff between restarts, first and most, in seconds [default: 1,60].
    #[arg(long, value_name = "MIN,MAX")]
    pub backoff: Option<String>,
    /// Stop a run older than this (e.g. 90s, 1h); it ends failed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<std::time::Duration>,
    /// Memory limit of the whole tree (512M, 2G; bare numbers are MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mb)]
    pub memory: Option<f64>,
    /// Most processes and threads in the tree.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Open-file limit of the agent (RLIMIT_NOFILE).
    #[arg(long, value_name = "N")]
    pub nofile: Option<u64>,
    /// CPU limit of the tree, percent of one CPU (150 = one and a half).
    #[arg(long, value_name = "PERCENT")]
    pub cpu: Option<f64>,
    /// Liveness: GET this http:// URL (2xx/3xx passes).
    #[arg(long, value_name = "URL", group = "liveness")]
    pub liveness_http: Option<String>,
    /// Liveness: run this shell command (exit 0 passes).
    #[arg(long, value_name = "CMD", group = "liveness")]
    pub liveness_exec: Option<String>,
    /// Liveness: connect to HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", group = "liveness")]
    pub liveness_tcp: Option<String>,
    /// Liveness: no progress report for this long (5m) fails — a stuck agent.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, group = "liveness")]
    pub progress_stale: Option<std::time::Duration>,
    /// Readiness: GET this http:// URL.
    #[arg(long, value_name = "URL", group = "readiness")]
    pub readiness_http: Option<String>,
    /// Readiness: run this shell command.
    #[arg(long, value_name = "CMD", group = "readiness")]
    pub readiness_exec: Option<String>,
    /// Readiness: connect to HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", group = "readiness")]
    pub readiness_tcp: Option<String>,
    /// Readiness: a line of stdout or stderr matching this regular expression.
    #[arg(long, value_name = "REGEX", group = "readiness")]
    pub readiness_log: Option<String>,
    /// Time between probe checks [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_interval: Option<std::time::Duration>,
    /// Longest one probe check may take [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_timeout: Option<std::time::Duration>,
    /// Failures in a row that count [default: 3].
    #[arg(long, value_name = "N")]
    pub probe_failures: Option<u32>,
    /// Run as this user (name or uid); only when the daemon runs as root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Rotate stdout.log and stderr.log once larger than this many MiB (copy, then truncate).
    #[arg(long, value_name = "MB")]
    pub log_max_mb: Option<f64>,
    /// Rotated copies kept, stdout.log.1 … stdout.log.N [default: 3].
    #[arg(long, value_name = "N", requires = "log_max_mb")]
    pub log_keep: Option<u32>,
    /// Run the agent as a job of the Slurm cluster (sbatch) instead of on this host.
    #[arg(long, help_heading = "Slurm")]
    pub slurm: bool,
    /// The job's partition.
    #[arg(long, value_name = "NAME", requires = "slurm", help_heading = "Slurm")]
    pub partition: Option<String>,
    /// Nodes the job may run on (a Slurm node list).
    #[arg(long, value_name = "LIST", requires = "slurm", help_heading = "Slurm")]
    pub nodes: Option<String>,
    /// CPUs for the job.
    #[arg(long, value_name = "N", requires = "slurm", help_heading = "Slurm")]
    pub cpus: Option<u32>,
    /// Memory for the job (512M, 2G; bare numbers are MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mb, requires = "slurm", help_heading = "Slurm")]
    pub mem: Option<f64>,
    /// The job's time limit, in Slurm's format (60, 1:00:00, 1-0).
    #[arg(
        long = "time",
        value_name = "LIMIT",
        requires = "slurm",
        help_heading = "Slurm"
    )]
    pub time_limit: Option<String>,
    /// Let Slurm requeue the job (scontrol requeue, preemption, a failed node): the same run
    /// waits to start again. Without it a failed node ends the run (NODE_FAIL) and --restart
    /// decides.
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    pub requeue: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
    /// The program and its arguments (no shell), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Agent id or subtree (`PREFIX.*`).
    #[arg(required_unless_present = "all", conflicts_with = "all", add = ids())]
    pub target: Option<String>,
    /// Stop every agent that is running.
    #[arg(long)]
    pub all: bool,
    /// SIGKILL at once.
    #[arg(long)]
    pub force: bool,
    /// Staged-stop waits in seconds for this call: after the first SIGTERM, the second, the SIGKILL.
    #[arg(long, value_name = "T1,T2,T3")]
    pub stop_timeouts: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Agents of a corral.toml project: `corral up --restart [NAME...]` restarts them from the file's current definition, in dependency order."
)]
pub struct RestartArgs {
    /// Agent id or subtree (`PREFIX.*`).
    #[arg(required_unless_present = "all", conflicts_with = "all", add = ids())]
    pub target: Option<String>,
    /// Restart every agent (an ended one just starts again).
    #[arg(long)]
    pub all: bool,
    /// SIGKILL at once instead of the staged stop.
    #[arg(long)]
    pub force: bool,
    /// Staged-stop waits in seconds for this call: after the first SIGTERM, the second, the SIGKILL.
    #[arg(long, value_name = "T1,T2,T3")]
    pub stop_timeouts: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
#[command(
    after_help = "A paused agent stays paused across daemon restarts; `max_runtime_s` and `progress_stale_s` do not count the time it is paused, and its probes do not run. Only a running agent can be paused (409 for one id otherwise; a selector skips it, saying why). Stopping a paused agent thaws it first."
)]
pub struct PauseArgs {
    /// Agent id or subtree (`PREFIX.*`).
    #[arg(required_unless_present = "all", conflicts_with = "all", add = ids())]
    pub target: Option<String>,
    /// Every agent that has not ended.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Agent id.
    #[arg(add = ids())]
    pub id: String,
    /// SIGKILL at once instead of the staged stop.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Agent id, or a team: `PREFIX.*` (every agent under PREFIX, each line prefixed with its id).
    #[arg(required_unless_present = "all", conflicts_with = "all", add = ids())]
    pub target: Option<String>,
    /// Every agent (each line prefixed with its id).
    #[arg(long)]
    pub all: bool,
    /// Show stderr instead of stdout.
    #[arg(long, conflicts_with = "both")]
    pub stderr: bool,
    /// Show stdout and stderr, each line labelled `out` or `err`.
    #[arg(long)]
    pub both: bool,
    /// An earlier run [default: the current one].
    #[arg(long, value_name = "N", conflicts_with_all = ["since", "all"])]
    pub run: Option<u32>,
    /// Keep printing new output: of one agent until its run ends; of a team until interrupted, following members as they start, restart and end.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many trailing lines of each log to show first [default: 20; every line with --since].
    #[arg(short = 'n', long, value_name = "LINES")]
    pub lines: Option<usize>,
    /// Only runs live since then: a duration ago (10m, 2h) or a time (2026-12-07T09:00:00Z); every such run's output, oldest first.
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<std::time::SystemTime>,
    /// Put before each line the time corral read it (UTC).
    #[arg(short = 't', long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

/// `--since`: a duration ago (`10m`) or an RFC 3339 time.
fn parse_since(raw: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(raw.trim()) {
        return Ok(at);
    }
    let ago = parse_duration(raw).map_err(|_| {
        format!("{raw:?} is neither a duration (10m, 2h) nor a time (2026-12-07T09:00:00Z)")
    })?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{raw:?} reaches back before 1970"))
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Agent id or subtree (`PREFIX.*`).
    #[arg(add = ids())]
    pub target: String,
    /// Give up after this long (30s, 5m): an error, exit 1 [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct ProgressArgs {
    /// 0–100.
    #[arg(allow_negative_numbers = true)]
    pub percent: i64,
    /// What the agent is doing.
    #[arg(long)]
    pub message: Option<String>,
    /// Report for this agent instead of $CORRAL_AGENT_ID.
    #[arg(long, value_name = "ID", add = ids())]
    pub agent: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this agent's events, or a subtree's (`PREFIX.*`).
    #[arg(add = ids())]
    pub target: Option<String>,
    /// Keep printing new events as they happen.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N events (of those the target picks); with -f, then follow.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only events after this sequence number (resume where you left off).
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub since: i64,
    #[command(flatten)]
    pub conn: Conn,
    /// One JSON document per line instead of a line of text.
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The project file [default: ./corral.toml].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only these agents (names in the file) and what they depend on.
    pub names: Vec<String>,
    /// Restart the named agents (every one when none is named) from the file even when unchanged.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The project file [default: ./corral.toml].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only these agents (names in the file) and what depends on them.
    pub names: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Json,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The project file [default: ./corral.toml].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Write the unit to /etc/systemd/system (~/.config/systemd/user with
    /// --user) and enable it where systemd runs, instead of printing it.
    #[arg(long)]
    pub install: bool,
    /// A unit of your user's service manager (systemctl --user): it starts at
    /// your login, or at boot once `loginctl enable-linger` allows it.
    #[arg(long)]
    pub user: bool,
    /// The state dir whose daemon runs the agents [default: $CORRAL_STATE_DIR;
    /// else, for a system unit, /var/lib/corral (contrib/corral.service's), and
    /// with --user $XDG_STATE_HOME/corral or ~/.local/state/corral].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where --install writes the unit instead of systemd's directory (nothing
    /// is enabled then).
    #[arg(long, value_name = "DIR", hide = true, requires = "install")]
    pub unit_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds to watch the team before stopping it.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many agents [default: 1000 on this host, 100 on Slurm].
    #[arg(long)]
    pub agents: Option<usize>,
    /// Where the agents run: this host (local), or the Slurm cluster this host
    /// submits to (slurm), measured against sbatch/squeue/scancel called bare.
    #[arg(long, default_value = "local", value_name = "WHERE", value_parser = ["local", "slurm"])]
    pub placement: String,
    /// Seconds of the at-rest measurement.
    #[arg(long, default_value_t = 10)]
    pub rest_seconds: u64,
    /// Requests per latency figure.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Agents killed one by one for the exit-detection figure (at most --agents).
    #[arg(long, default_value_t = 200)]
    pub exits: usize,
    /// Contain agents in process groups only (no cgroups).
    #[arg(long)]
    pub no_cgroups: bool,
    #[command(flatten)]
    pub out: Json,
}

/// `90`, `1.5`, `90s`, `5m`, `1h30m`: seconds when bare.
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = raw.trim().parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{raw:?} is not a duration"));
    }
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 30s, 5m or 1h: {e}"))
}

/// `512M`, `2G`, `300K`, `1.5g`; a bare number is MB. In MB.
pub fn parse_size_mb(raw: &str) -> Result<f64, String> {
    let t = raw.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, ""), |i| t.split_at(i));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a size like 512M or 2G"))?;
    let mb = match unit.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
        "" | "m" => n,
        "k" => n / 1024.0,
        "g" => n * 1024.0,
        "t" => n * 1024.0 * 1024.0,
        _ => return Err(format!("{raw:?} is not a size like 512M or 2G")),
    };
    Ok(mb)
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// How often every agent's figures are fetched again (state changes show at once).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub interval: std::time::Duration,
}

//! Command-line grammar (clap derive). The commands and flags are the contract's.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// corral: spawn, observe and stop many long-running agents.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about, propagate_version = true)]
pub struct Cli {
    /// State dir (database, socket, agent logs). Default: $CORRAL_STATE_DIR,
    /// else $XDG_STATE_HOME/corral, else ~/.local/state/corral.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Fail instead of starting a daemon when none answers.
    #[arg(long, global = true)]
    pub no_autostart: bool,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk to a daemon serving TCP (`corral daemon --listen`) at ADDR:PORT instead
    /// of the state dir's socket; needs --token-file. No daemon is started.
    #[arg(long, global = true, env = "CORRAL_URL", value_name = "ADDR:PORT")]
    pub url: Option<String>,
    /// The bearer token's file: sent to a TCP daemon (--url), or required of
    /// TCP clients by `corral daemon --listen` (at least 16 bytes).
    #[arg(long, global = true, env = "CORRAL_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (the CLI starts one in the background when needed).
    Daemon(DaemonArgs),
    /// Spawn an agent; exit 0 when it is running (or completed with 0) after its verification window.
    Spawn(Box<SpawnArgs>),
    /// One agent's status (get_agent_status).
    Status {
        /// Agent id.
        id: String,
    },
    /// Every agent's status (monitor_all_agents).
    Ps,
    /// Counts and totals (get_process_summary).
    Summary,
    /// Exit 0 when the agent is healthy, 1 when not (check_process_health).
    Health {
        /// Agent id.
        id: String,
    },
    /// Stop agents gracefully in stages (cleanup): an id, a selector such as `L2.1.*`, or --all.
    Stop(StopArgs),
    /// Stop one agent (kill_agent).
    Kill {
        /// Agent id.
        id: String,
        /// SIGKILL at once instead of the staged stop.
        #[arg(long)]
        force: bool,
    },
    /// Sweep for unreaped processes; prints the agents it had to reap (normally none).
    Reap,
    /// Forget an ended agent: its runs, and its logs when in the default place.
    Rm {
        /// Agent id.
        id: String,
    },
    /// Forget every ended run (agents that are still running keep their current run).
    Prune,
    /// Show an agent's output (any run; follows with -f).
    Logs(LogsArgs),
    /// An agent's runs: number, pid, start, end, status, exit, reason.
    Runs {
        /// Agent id.
        id: String,
    },
    /// Wait until an agent (or every agent of a selector) has ended; exits with
    /// the agent's exit code (one agent) or 0/1 (all completed or not).
    Wait {
        /// Agent id or selector (`L2.1.*`).
        target: String,
        /// Give up after this long (e.g. 30s, 5m); exit 1 with an error.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Report progress from inside an agent (uses CORRAL_AGENT_ID and CORRAL_SOCKET).
    Progress {
        /// 0–100.
        #[arg(allow_negative_numbers = true)]
        percent: i64,
        /// What the agent is doing.
        #[arg(long)]
        message: Option<String>,
        /// Report for this agent instead of $CORRAL_AGENT_ID.
        #[arg(long, value_name = "ID")]
        agent: Option<String>,
    },
    /// State transitions, progress and stop stages as JSON lines (one event per line).
    Events {
        /// Keep printing new events as they happen.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events after this sequence number (resume where you left off).
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        since: i64,
    },
    /// Spawn a small team of real agents, watch them work, then stop them all.
    Demo(DemoArgs),
    /// Measure corral on this machine against bare baselines, with a private daemon.
    Bench(BenchArgs),
    /// A live dashboard of every agent: sort, filter, details and logs, stop and kill.
    Top(TopArgs),
}

impl Command {
    /// The daemon and the demo serve many agents: give them a multi-threaded runtime.
    pub fn needs_threads(&self) -> bool {
        matches!(self, Self::Daemon(_) | Self::Demo(_) | Self::Bench(_))
    }
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Metrics sampling interval, milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub sample_ms: u64,
    /// Contain agents in process groups only, even where cgroup v2 is usable.
    #[arg(long, env = "CORRAL_NO_CGROUPS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cgroups: bool,
    /// Also serve the API on this TCP address (e.g. 127.0.0.1:7070); needs --token-file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Refuse a token file that group or others can read (default: a warning).
    #[arg(long)]
    pub strict: bool,
    /// Open connections per listener (default: a quarter of the open-file limit, at most 1024).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long request headers may take before the connection is closed (default 10000).
    #[arg(long, value_name = "MS", hide = true)]
    pub header_timeout_ms: Option<u64>,
    /// Started in the background by the CLI: leave the terminal's session.
    #[arg(long, hide = true)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Agent id: 1–128 of A-Z a-z 0-9 . _ - (dots make a hierarchy); with
    /// --count, the prefix of PREFIX.1 … PREFIX.N.
    #[arg(required_unless_present = "from")]
    pub id: Option<String>,
    /// Spawn PREFIX.1 … PREFIX.N in one batch (all verification windows at once).
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// Spawn the requests in FILE (JSON lines of spawn requests; `-` for stdin) in one batch.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "count"])]
    pub from: Option<PathBuf>,
    /// Working directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Extra environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Where stdout.log / stderr.log go (default: STATE_DIR/agents/ID).
    #[arg(long, value_name = "DIR")]
    pub agent_dir: Option<PathBuf>,
    /// Label kept with the run (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Staged-stop waits in seconds: TERM, TERM, KILL.
    #[arg(long, value_name = "T1,T2,T3")]
    pub stop_timeouts: Option<String>,
    /// Verification window in milliseconds (0 = answer once exec succeeded).
    #[arg(long, value_name = "MS")]
    pub verify_ms: Option<u64>,
    /// Restart policy: never, on-failure or always.
    #[arg(long, value_name = "POLICY", value_parser = ["never", "on-failure", "always"])]
    pub restart: Option<String>,
    /// More restarts than this within the window is a crash loop (default 5).
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// The crash-loop window; a run that stays up this long resets the backoff (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_window: Option<std::time::Duration>,
    /// Backoff between restarts, first and most, in seconds (default 1,60).
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
    /// Time between probe checks (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_interval: Option<std::time::Duration>,
    /// Longest one probe check may take (default 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_timeout: Option<std::time::Duration>,
    /// Failures in a row that count (default 3).
    #[arg(long, value_name = "N")]
    pub probe_failures: Option<u32>,
    /// Run as this user (name or uid); only when the daemon runs as root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The program and its arguments (no shell).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
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

/// `90`, `1.5`, `90s`, `5m`, `1h30m`: seconds when bare.
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = raw.trim().parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{raw:?} is not a duration"));
    }
    humantime::parse_duration(raw.trim())
        .map_err(|e| format!("{raw:?} is not a duration like 30s, 5m or 1h: {e}"))
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Agent id or selector (`L2.1.*`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub target: Option<String>,
    /// Stop every agent.
    #[arg(long)]
    pub all: bool,
    /// SIGKILL at once.
    #[arg(long)]
    pub force: bool,
    /// Staged-stop waits in seconds for this call: TERM, TERM, KILL.
    #[arg(long, value_name = "T1,T2,T3")]
    pub stop_timeouts: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Agent id.
    pub id: String,
    /// Show stderr instead of stdout.
    #[arg(long, conflicts_with = "both")]
    pub stderr: bool,
    /// Show stdout and stderr.
    #[arg(long)]
    pub both: bool,
    /// An earlier run (default: the current one).
    #[arg(long, value_name = "N")]
    pub run: Option<u32>,
    /// Keep printing new output until the agent ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many trailing lines to show first.
    #[arg(short = 'n', long, default_value_t = 20, value_name = "LINES")]
    pub lines: usize,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds to watch the team before stopping it.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
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
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// How often every agent's figures are fetched again (state changes show at once).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub interval: std::time::Duration,
}

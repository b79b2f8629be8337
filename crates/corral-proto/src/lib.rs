//! corral's wire types: every request and response body of the HTTP API.
//!
//! This crate is the one place the API's shapes are defined. The library
//! (`corral-core`) returns them, the daemon's router serialises them, the Rust
//! client and the CLI deserialise them, and the OpenAPI document is generated
//! from their [`utoipa::ToSchema`] derives — so a field cannot be added on one
//! side and forgotten on the other.
//!
//! Field names are the contract's (and the seed's: `agent_id`, `pid`,
//! `process_alive`, `process_status`, `exit_code`, `is_zombie`, `cpu_percent`,
//! `memory_mb`, `runtime_seconds`, `num_threads`, `cmdline`, `health`,
//! `persistent_status`, `started_at`, `progress`): scripts parse them, so a seed
//! field never changes name or meaning. New fields are additive, and new request
//! fields are optional.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod id;

pub use id::{AgentId, InvalidId, MAX_ID_LEN, Selector, natural_cmp};

/// `s` cut to its first `max_chars` characters, with `…` where it was cut.
pub fn elide(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// FNV-1a, 64 bits: a fingerprint that is stable across builds and runs
/// (unlike the std hasher), for names that must be the same tomorrow.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A number as an error message shows it: as given when short, else in
/// scientific notation — a refusal never echoes a 300-digit number.
pub fn short_number(v: f64) -> String {
    let plain = format!("{v}");
    if plain.len() <= 20 {
        plain
    } else {
        format!("{v:e}")
    }
}

/// Stored lifecycle state (`persistent_status`): `spawning → running → completed | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PersistentStatus {
    /// Being started: the record exists, the verification window has not ended.
    Spawning,
    /// Started and verified; not known to have ended.
    Running,
    /// Exited on its own with code 0.
    Completed,
    /// Exited non-zero, killed by a signal corral did not send, failed to start,
    /// or was stopped by a limit (runtime, memory, a failing liveness probe).
    Failed,
    /// Stopped on request (`cleanup` / `kill_agent`).
    Cancelled,
}

impl PersistentStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawning => "spawning",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True for `spawning` and `running`: the run has not ended.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Spawning | Self::Running)
    }
}

impl fmt::Display for PersistentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PersistentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "spawning" => Self::Spawning,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(format!("unknown persistent status {other:?}")),
        })
    }
}

/// Live health (`health`), derived from the process and the stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Alive and not a zombie.
    Healthy,
    /// Exited, not yet reaped.
    Zombie,
    /// Ended with code 0.
    Completed,
    /// Ended badly: non-zero, a signal corral did not send, a failed start, or
    /// stopped by a limit, a failing probe or `max_runtime_s`.
    Failed,
    /// Cannot be determined (e.g. ended while no daemon ran).
    Unknown,
    /// Ended because someone stopped it (`stop`, `kill`, `down`, a stopped
    /// parent), whatever signal ended it.
    Cancelled,
    /// Alive with its whole tree frozen by a pause (`state` is `paused`):
    /// its probes do not run until it is resumed.
    Paused,
}

impl Health {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Zombie => "zombie",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Cancelled => "cancelled",
            Self::Paused => "paused",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an agent is in its life (`state`): its owner's own state, published
/// only after it is committed to the store.
///
/// Legal moves: starting → running | stopping | ended; running → stopping |
/// paused | ended; paused → running | stopping | ended; stopping → ended;
/// ended → backoff | starting; backoff → starting | ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// The run is on record and its process is being created, or is in its
    /// verification window, or its job is queued on a cluster engine.
    Starting,
    /// Verified and running.
    Running,
    /// A staged stop is under way (see `stop`): on request, by a limit, or of
    /// the leftovers of a main process that has exited.
    Stopping,
    /// Frozen with its whole tree.
    Paused,
    /// The run ended and the restart policy starts the next one at `next_restart_at`.
    Backoff,
    /// The run ended and nothing of it is left; nothing more is planned.
    Ended,
}

impl AgentState {
    /// Every state, in the order of a life.
    pub const ALL: [Self; 6] = [
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Paused,
        Self::Backoff,
        Self::Ended,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Paused => "paused",
            Self::Backoff => "backoff",
            Self::Ended => "ended",
        }
    }

    /// True in every state but `ended`: an owner is at work and the id is taken.
    pub fn is_busy(self) -> bool {
        self != Self::Ended
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// Why a stop began (`stop.cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// Someone asked (`stop`, `kill`, `down`): the run ends `cancelled` and is never restarted.
    User,
    /// The run outlived `max_runtime_s`.
    MaxRuntime,
    /// A resource limit was exceeded.
    Limit,
    /// The liveness probe failed `failures` times in a row.
    Liveness,
    /// The main process exited; what it left behind is stopped before the run ends.
    Leftovers,
    /// The agent's parent agent is being stopped.
    Parent,
}

impl StopCause {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::MaxRuntime => "max_runtime",
            Self::Limit => "limit",
            Self::Liveness => "liveness",
            Self::Leftovers => "leftovers",
            Self::Parent => "parent",
        }
    }
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stop under way (`stop` in a status while `state` is `stopping`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopInfo {
    /// The stage under way: `term`, `second_term` or `kill`.
    pub stage: StopStage,
    /// Why the stop began.
    pub cause: StopCause,
    /// When it began (RFC 3339, UTC); it was on record before its first signal.
    pub began_at: String,
    /// When the stage's wait ends and the next stage begins (RFC 3339); null
    /// once the tree has survived SIGKILL.
    pub stage_deadline_at: Option<String>,
    /// Something of the tree survived SIGKILL and its wait: the stop report said
    /// `unkillable`, and corral keeps watching until it is gone.
    #[serde(default)]
    pub unkillable: bool,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Stable error codes, as the API reports them (`{"error": {"code": ...}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Bad input (400).
    Invalid,
    /// TCP without the bearer token (401).
    Unauthorized,
    /// The caller may not do this (403): an agent reporting for another.
    Forbidden,
    /// Unknown agent or route (404).
    NotFound,
    /// Method not allowed on the route (405).
    MethodNotAllowed,
    /// A long poll ran out of time (408).
    Timeout,
    /// The id is taken by a live agent (409).
    Conflict,
    /// Body over the size limit (413).
    PayloadTooLarge,
    /// URI over the size limit (414).
    UriTooLong,
    /// Too many or too large headers (431).
    HeadersTooLarge,
    /// The agent's program or files could not be set up (422).
    SpawnFailed,
    /// A spawn would put a team over its `max_agents` budget (409).
    Budget,
    /// corral cannot take changes now: its store is failing (503).
    Unavailable,
    /// corral itself failed (500).
    Internal,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Timeout => "timeout",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::SpawnFailed => "spawn_failed",
            Self::Budget => "budget",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Timeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::SpawnFailed => 422,
            Self::Budget => 409,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, as a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `unauthorized`, `forbidden`, `not_found`, `timeout`, `conflict`,
    /// `budget`, `payload_too_large`, `uri_too_long`, `headers_too_large`,
    /// `spawn_failed`, `unavailable`, `internal`.
    pub code: String,
    /// What is wrong, naming the field, agent or path concerned.
    pub message: String,
}

impl ErrorBody {
    /// An error body with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Supervision policies
// ---------------------------------------------------------------------------

/// When a run that ended on its own is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Never (the seed's behaviour).
    #[default]
    Never,
    /// Runs that end `failed` (not `completed`, not `cancelled`).
    OnFailure,
    /// Runs that end `failed` or `completed`.
    Always,
}

impl RestartMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

fn default_max_restarts() -> u32 {
    5
}
fn default_window_s() -> f64 {
    60.0
}
fn default_backoff_s() -> [f64; 2] {
    [1.0, 60.0]
}

/// `restart` in a spawn request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// `never` (default), `on-failure` or `always`.
    #[serde(default)]
    pub policy: RestartMode,
    /// More restarts than this inside `window_s` is a crash loop: corral gives up.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The crash-loop window, seconds; a run that stays up this long resets the backoff.
    #[serde(default = "default_window_s")]
    pub window_s: f64,
    /// Delay before the first restart and the most it grows to, seconds.
    #[serde(default = "default_backoff_s")]
    pub backoff_s: [f64; 2],
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            policy: RestartMode::Never,
            max_restarts: default_max_restarts(),
            window_s: default_window_s(),
            backoff_s: default_backoff_s(),
        }
    }
}

/// `limits` in a spawn request: each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most resident memory of the whole tree, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<f64>,
    /// Most processes and threads in the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// `RLIMIT_NOFILE` of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    /// Most CPU of the tree, percent of one CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
}

impl Limits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One probe: a single-key object naming its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// Run this argv; exit 0 passes.
    Exec(Vec<String>),
    /// GET this `http://` URL; a 2xx or 3xx answer passes.
    Http(String),
    /// Connect to this `HOST:PORT`; a connection passes.
    Tcp(String),
    /// No progress report for this many seconds fails (a stuck agent).
    ProgressStaleS(f64),
    /// (readiness only) this regular expression matched on the run's stdout or stderr passes.
    Log(String),
}

impl Probe {
    /// The kind's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Http(_) => "http",
            Self::Tcp(_) => "tcp",
            Self::ProgressStaleS(_) => "progress_stale_s",
            Self::Log(_) => "log",
        }
    }
}

fn default_interval_s() -> f64 {
    10.0
}
fn default_timeout_s() -> f64 {
    2.0
}
fn default_failures() -> u32 {
    3
}

/// `probes` in a spawn request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    /// Failing `failures` times in a row ends the run as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// Sets `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Seconds between checks.
    #[serde(default = "default_interval_s")]
    pub interval_s: f64,
    /// Seconds one check may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Consecutive failures that count.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            liveness: None,
            readiness: None,
            interval_s: default_interval_s(),
            timeout_s: default_timeout_s(),
            failures: default_failures(),
        }
    }
}

/// `logs` in a spawn request: copy-and-truncate rotation of each run's
/// `stdout.log` and `stderr.log`.
///
/// Once per sample interval, a log larger than `max_mb` is copied to
/// `stdout.log.1` (the older copies moving to `.2` … `.keep`, the oldest
/// dropped) and truncated; the agent goes on writing to the same file from
/// its start. `corral logs` and `GET /v1/agents/{id}/logs` show only the
/// current file: older text is in `stdout.log.1`, `stdout.log.2`, … (and
/// `stderr.log.N`) next to it. What the agent writes between the copy and the
/// truncation is lost, and a log can outgrow `max_mb` by one interval of
/// output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogRotation {
    /// Rotate a log once it is larger than this, MiB (at least 0.001).
    pub max_mb: f64,
    /// Rotated copies kept, 1–100; default 3.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

impl LogRotation {
    /// `keep` when none is given.
    pub const DEFAULT_KEEP: u32 = 3;
}

fn default_keep() -> u32 {
    LogRotation::DEFAULT_KEEP
}

/// `placement` in a spawn request: where the agent runs. Absent = this host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Run the agent as a job of a Slurm cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmPlacement>,
}

/// Where and with what a Slurm job runs; every field optional (the engine's defaults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmPlacement {
    /// `--partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--nodelist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--mem`, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<u64>,
    /// `--time`, in Slurm's format (`60`, `1:00:00`, `1-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// `--requeue` when true: the engine may requeue the job (`scontrol
    /// requeue`, preemption in REQUEUE mode, a failed node), and each requeue
    /// takes the same run back to `starting`. Otherwise (the default)
    /// `--no-requeue`: a failed node ends the run `failed` (NODE_FAIL) and the
    /// restart policy decides what follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<bool>,
}

// ---------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------

/// What `spawn_agent` needs. JSON body of `POST /v1/agents` (and each entry of a batch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The agent's id.
    pub agent_id: String,
    /// argv: program and arguments, run without a shell.
    pub command: Vec<String>,
    /// Working directory (absolute); defaults to the agent dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cwd: Option<PathBuf>,
    /// Variables added to the agent's environment: the daemon's own, for an
    /// agent of the daemon's user (unless `inherit_env` is false), or a clean
    /// one (`PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `LANG`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Whether an agent of the daemon's own user starts from the daemon's
    /// environment (default true). Agents of another user never do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit_env: Option<bool>,
    /// Directory holding the run logs (absolute); defaults to `<state dir>/agents/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub agent_dir: Option<PathBuf>,
    /// Free-form labels (at most 64; keys up to 128 bytes, values up to 1024).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Staged-stop waits in seconds (TERM, TERM, KILL); defaults to `[10, 5, 5]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeouts: Option<Vec<f64>>,
    /// Verification window in milliseconds; default 100, 0 = answer once exec succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_ms: Option<u64>,
    /// Restart policy; default `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// A run older than this gets the staged stop and ends `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runtime_s: Option<f64>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Liveness and readiness probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    /// Run as this user (name or uid); only when the daemon runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Log rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogRotation>,
    /// Where the agent runs (default: this host, or the daemon's default placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// What `spawn_agent` answers when the program started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SpawnResponse {
    /// The agent's id.
    pub agent_id: String,
    /// The run's number (1 for the first run of an id).
    pub run: u32,
    /// Its pid (null for an agent placed on a cluster engine).
    pub pid: Option<i32>,
    /// `running`, or `completed` / `failed` when it ended inside the verification window.
    pub status: PersistentStatus,
    /// When it was started (RFC 3339, UTC).
    pub started_at: String,
    /// Path of this run's stdout log.
    #[schema(value_type = String)]
    pub stdout_log: PathBuf,
    /// Path of this run's stderr log.
    #[schema(value_type = String)]
    pub stderr_log: PathBuf,
    /// Exit code, when it ended inside the window.
    pub exit_code: Option<i32>,
    /// Terminating signal, when it was killed inside the window.
    pub exit_signal: Option<i32>,
    /// Why it failed (with the tail of its stderr), when it did.
    pub error: Option<String>,
    /// Where it runs, when not on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementInfo>,
}

/// Body of `POST /v1/agents/batch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Spawn requests, answered in this order.
    pub agents: Vec<SpawnRequest>,
}

/// Answer of `POST /v1/agents/batch`: one result per request, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// A spawn response, or the agent id with the error that request got.
    pub results: Vec<BatchResult>,
}

/// One entry of a batch answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    /// The request failed alone (the others are unaffected).
    Failed(BatchFailure),
    /// The agent started (its status says whether it is still running).
    Spawned(SpawnResponse),
}

/// A batch entry that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchFailure {
    /// The id the request named (as given).
    pub agent_id: String,
    /// What went wrong, as it would have been answered to a single request.
    pub error: ErrorDetail,
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

/// Where an agent placed on a cluster engine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlacementInfo {
    /// `slurm`.
    pub engine: String,
    /// The engine's job id.
    pub job_id: String,
    /// The node it runs on, once it runs.
    pub node: Option<String>,
    /// Why the engine has not started it yet (Slurm's pending reason), while it has not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
}

/// Sums over an agent's whole process tree, from the same sample as the agent's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TreeSummary {
    /// Processes in the tree, the agent included.
    pub processes: u32,
    /// Summed CPU percent (of one CPU).
    pub cpu_percent: f64,
    /// Summed RSS in MiB.
    pub memory_mb: f64,
}

/// How one limit is enforced, and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitState {
    /// The limit as given.
    pub value: f64,
    /// `cgroup` (the kernel), `rlimit` (the kernel, per process) or `sampler`
    /// (corral checks the tree every sampling interval and stops the run).
    pub enforced_by: String,
}

/// The latest result of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProbeState {
    /// The probe's kind (`exec`, `http`, `tcp`, `progress_stale_s`, `log`).
    pub kind: String,
    /// `passed` or `failed`; null before the first check.
    pub last_result: Option<String>,
    /// What the last check said (exit status and output, HTTP status, error).
    pub last_output: Option<String>,
    /// When it ran (RFC 3339).
    pub last_at: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// `probe` in a status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProbesState {
    /// The liveness probe's latest result.
    pub liveness: Option<ProbeState>,
    /// The readiness probe's latest result.
    pub readiness: Option<ProbeState>,
}

/// One agent's status: the seed's fields with their exact names, plus extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentStatus {
    /// The agent's id.
    pub agent_id: String,
    /// Its pid (null when it never started, or when it runs on a cluster engine).
    pub pid: Option<i32>,
    /// The process exists and has not exited.
    pub process_alive: bool,
    /// psutil's word for the process state; `dead` once it is gone.
    pub process_status: String,
    /// Exit code once it ended by exiting.
    pub exit_code: Option<i32>,
    /// It has exited and is not yet reaped.
    pub is_zombie: bool,
    /// Percent of one CPU over the last sampling interval (psutil's meaning).
    pub cpu_percent: f64,
    /// Resident set size of the agent's own process in MiB.
    pub memory_mb: f64,
    /// Seconds since it started (until it ended, once it has), time spent
    /// paused included (`max_runtime_s` counts only the time not paused).
    pub runtime_seconds: f64,
    /// Thread count.
    pub num_threads: u32,
    /// The command line, quoted as a shell would need it.
    pub cmdline: String,
    /// Live health.
    pub health: Health,
    /// Stored lifecycle state of the current run.
    pub persistent_status: PersistentStatus,
    /// Where the agent is in its life: `starting`, `running`, `stopping`,
    /// `paused`, `backoff` or `ended` (the owner's committed state).
    pub state: AgentState,
    /// The stop under way while `state` is `stopping`; null otherwise.
    pub stop: Option<StopInfo>,
    /// Start time of the current run, RFC 3339 UTC.
    pub started_at: String,
    /// Self-reported progress, 0–100.
    pub progress: Option<u8>,
    /// Message sent with the last progress report.
    pub progress_message: Option<String>,
    /// When progress was last reported (RFC 3339).
    pub progress_at: Option<String>,
    /// Signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// End time, RFC 3339 UTC.
    pub ended_at: Option<String>,
    /// Why it ended, in words.
    pub end_reason: Option<String>,
    /// The current run's number (1, 2, …).
    pub run: u32,
    /// How many earlier runs this id has had (re-spawns and restarts).
    pub restarts: u32,
    /// When the restart policy will start the next run; null when none is planned.
    pub next_restart_at: Option<String>,
    /// The restart policy in force.
    pub restart_policy: String,
    /// Its staged-stop waits, seconds (after the first SIGTERM, the second, the SIGKILL).
    pub stop_timeouts: Vec<f64>,
    /// Readiness: null without a readiness probe, false until it first passes
    /// and once the run has ended.
    pub ready: Option<bool>,
    /// Latest probe results.
    pub probe: Option<ProbesState>,
    /// Limits in force and how each is enforced (empty without limits).
    #[serde(default)]
    pub limits: BTreeMap<String, LimitState>,
    /// Labels given at spawn.
    pub labels: BTreeMap<String, String>,
    /// Path of the current run's stdout log.
    #[schema(value_type = String)]
    pub stdout_log: PathBuf,
    /// Path of the current run's stderr log.
    #[schema(value_type = String)]
    pub stderr_log: PathBuf,
    /// How its process tree is contained (`process-group`, `cgroup`, or the engine's name).
    pub containment: String,
    /// The user it runs as, when not the daemon's.
    pub user: Option<String>,
    /// Where it runs, when on a cluster engine.
    pub placement: Option<PlacementInfo>,
    /// The agent's process tree (itself and every descendant), from the same sample.
    pub tree: Option<TreeSummary>,
}

impl AgentStatus {
    /// Every top-level field's wire name, in the order a status is written:
    /// what `GET /v1/agents?fields=` accepts.
    pub const FIELDS: [&'static str; 37] = [
        "agent_id",
        "pid",
        "process_alive",
        "process_status",
        "exit_code",
        "is_zombie",
        "cpu_percent",
        "memory_mb",
        "runtime_seconds",
        "num_threads",
        "cmdline",
        "health",
        "persistent_status",
        "state",
        "stop",
        "started_at",
        "progress",
        "progress_message",
        "progress_at",
        "exit_signal",
        "ended_at",
        "end_reason",
        "run",
        "restarts",
        "next_restart_at",
        "restart_policy",
        "stop_timeouts",
        "ready",
        "probe",
        "limits",
        "labels",
        "stdout_log",
        "stderr_log",
        "containment",
        "user",
        "placement",
        "tree",
    ];

    /// A status with nothing known but the id: every field empty, zero or
    /// null. A partial status (a listing with `fields=`) is laid over it to
    /// get a whole [`AgentStatus`] back.
    pub fn blank(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            pid: None,
            process_alive: false,
            process_status: String::new(),
            exit_code: None,
            is_zombie: false,
            cpu_percent: 0.0,
            memory_mb: 0.0,
            runtime_seconds: 0.0,
            num_threads: 0,
            cmdline: String::new(),
            health: Health::Unknown,
            persistent_status: PersistentStatus::Spawning,
            state: AgentState::Starting,
            stop: None,
            started_at: String::new(),
            progress: None,
            progress_message: None,
            progress_at: None,
            exit_signal: None,
            ended_at: None,
            end_reason: None,
            run: 0,
            restarts: 0,
            next_restart_at: None,
            restart_policy: String::new(),
            stop_timeouts: Vec::new(),
            ready: None,
            probe: None,
            limits: BTreeMap::new(),
            labels: BTreeMap::new(),
            stdout_log: PathBuf::new(),
            stderr_log: PathBuf::new(),
            containment: String::new(),
            user: None,
            placement: None,
            tree: None,
        }
    }

    /// Rebuilds a status from some of its fields (a listing with `fields=`):
    /// the fields given are taken, the others are [`AgentStatus::blank`]'s.
    pub fn from_partial(
        agent_id: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, serde_json::Error> {
        let mut whole = match serde_json::to_value(Self::blank(agent_id))? {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        whole.extend(fields);
        serde_json::from_value(serde_json::Value::Object(whole))
    }

    /// Writes one field by its wire name as an entry of `map` (nothing for a
    /// name that is not in [`AgentStatus::FIELDS`]), without writing the
    /// others: a listing of a few fields costs a few fields.
    pub fn serialize_field<M: serde::ser::SerializeMap>(
        &self,
        name: &str,
        map: &mut M,
    ) -> Result<(), M::Error> {
        match name {
            "agent_id" => map.serialize_entry(name, &self.agent_id),
            "pid" => map.serialize_entry(name, &self.pid),
            "process_alive" => map.serialize_entry(name, &self.process_alive),
            "process_status" => map.serialize_entry(name, &self.process_status),
            "exit_code" => map.serialize_entry(name, &self.exit_code),
            "is_zombie" => map.serialize_entry(name, &self.is_zombie),
            "cpu_percent" => map.serialize_entry(name, &self.cpu_percent),
            "memory_mb" => map.serialize_entry(name, &self.memory_mb),
            "runtime_seconds" => map.serialize_entry(name, &self.runtime_seconds),
            "num_threads" => map.serialize_entry(name, &self.num_threads),
            "cmdline" => map.serialize_entry(name, &self.cmdline),
            "health" => map.serialize_entry(name, &self.health),
            "persistent_status" => map.serialize_entry(name, &self.persistent_status),
            "state" => map.serialize_entry(name, &self.state),
            "stop" => map.serialize_entry(name, &self.stop),
            "started_at" => map.serialize_entry(name, &self.started_at),
            "progress" => map.serialize_entry(name, &self.progress),
            "progress_message" => map.serialize_entry(name, &self.progress_message),
            "progress_at" => map.serialize_entry(name, &self.progress_at),
            "exit_signal" => map.serialize_entry(name, &self.exit_signal),
            "ended_at" => map.serialize_entry(name, &self.ended_at),
            "end_reason" => map.serialize_entry(name, &self.end_reason),
            "run" => map.serialize_entry(name, &self.run),
            "restarts" => map.serialize_entry(name, &self.restarts),
            "next_restart_at" => map.serialize_entry(name, &self.next_restart_at),
            "restart_policy" => map.serialize_entry(name, &self.restart_policy),
            "stop_timeouts" => map.serialize_entry(name, &self.stop_timeouts),
            "ready" => map.serialize_entry(name, &self.ready),
            "probe" => map.serialize_entry(name, &self.probe),
            "limits" => map.serialize_entry(name, &self.limits),
            "labels" => map.serialize_entry(name, &self.labels),
            "stdout_log" => map.serialize_entry(name, &self.stdout_log),
            "stderr_log" => map.serialize_entry(name, &self.stderr_log),
            "containment" => map.serialize_entry(name, &self.containment),
            "user" => map.serialize_entry(name, &self.user),
            "placement" => map.serialize_entry(name, &self.placement),
            "tree" => map.serialize_entry(name, &self.tree),
            _ => Ok(()),
        }
    }
}

/// Some fields of a status, by their wire names (see
/// [`AgentStatus::serialize_field`]); `agent_id` is written first, always.
#[derive(Debug, Clone, Copy)]
pub struct StatusFields<'a> {
    /// The status.
    pub status: &'a AgentStatus,
    /// The fields to write besides `agent_id`, names from [`AgentStatus::FIELDS`].
    pub fields: &'a [&'static str],
}

impl Serialize for StatusFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let extra = self.fields.iter().filter(|f| **f != "agent_id");
        let mut map = serializer.serialize_map(Some(1 + extra.clone().count()))?;
        map.serialize_entry("agent_id", &self.status.agent_id)?;
        for name in extra {
            self.status.serialize_field(name, &mut map)?;
        }
        map.end()
    }
}

/// Fleet-wide counts and sums (`get_process_summary`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessSummary {
    /// Agents known (latest run of each id).
    pub total: u32,
    /// In `spawning`.
    pub spawning: u32,
    /// In `running`.
    pub running: u32,
    /// In `completed`.
    pub completed: u32,
    /// In `failed`.
    pub failed: u32,
    /// In `cancelled`.
    pub cancelled: u32,
    /// Exited but not yet reaped.
    pub zombie: u32,
    /// Summed RSS of live agents, MiB.
    pub total_memory_mb: f64,
    /// Summed CPU percent of live agents.
    pub total_cpu_percent: f64,
    /// Agents by `state`.
    #[serde(default)]
    pub states: StateCounts,
}

/// Agents by `state` (`states` in a summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateCounts {
    /// In `starting`.
    pub starting: u32,
    /// In `running`.
    pub running: u32,
    /// In `stopping`.
    pub stopping: u32,
    /// In `paused`.
    pub paused: u32,
    /// In `backoff`.
    pub backoff: u32,
    /// In `ended`.
    pub ended: u32,
}

impl StateCounts {
    /// Counts one more agent in `state`.
    pub fn add(&mut self, state: AgentState) {
        *self.get_mut(state) += 1;
    }

    /// The count of `state`.
    pub fn get(&self, state: AgentState) -> u32 {
        let mut copy = *self;
        *copy.get_mut(state)
    }

    fn get_mut(&mut self, state: AgentState) -> &mut u32 {
        match state {
            AgentState::Starting => &mut self.starting,
            AgentState::Running => &mut self.running,
            AgentState::Stopping => &mut self.stopping,
            AgentState::Paused => &mut self.paused,
            AgentState::Backoff => &mut self.backoff,
            AgentState::Ended => &mut self.ended,
        }
    }
}

/// Answer of `GET /v1/agents/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// The agent's id.
    pub agent_id: String,
    /// `health == healthy`.
    pub healthy: bool,
    /// Live health.
    pub health: Health,
}

/// Query of `GET /v1/agents/{id}/history`.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only points taken after this time (Unix seconds); all kept points when absent.
    pub since: Option<f64>,
}

/// One point of an agent's figures over time: its whole process tree's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    /// When it was taken (Unix seconds; a thinned point: the middle of what it sums up).
    pub t: f64,
    /// The tree's CPU, percent of one CPU (a thinned point: the mean).
    pub cpu_percent: f64,
    /// The tree's resident memory, MiB (a thinned point: the mean).
    pub memory_mb: f64,
}

/// Answer of `GET /v1/agents/{id}/history`: the agent's recent figures,
/// oldest first — every sample of the last minute or so, then one point per
/// minute back to an hour (see the README for the bounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentHistory {
    /// The agent's id.
    pub agent_id: String,
    /// The daemon's sampling interval, seconds (the spacing of recent points
    /// while figures are wanted; ten times it at rest).
    pub interval_s: f64,
    /// Points, oldest first.
    pub points: Vec<HistoryPoint>,
}

/// Answer of `POST /v1/ui/login`: a one-time login to the web dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UiLogin {
    /// The URL to open: the daemon's TCP listener (started on 127.0.0.1 when
    /// it had none), `path` on it.
    pub url: String,
    /// The login's path and one-time code (`/ui/login?code=…`), for a client
    /// that reaches the daemon at another address.
    pub path: String,
    /// Seconds the code stays valid; it is good for one use.
    pub expires_s: u32,
}

/// Body of `PUT /v1/agents/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressUpdate {
    /// 0–100.
    pub progress: i64,
    /// Optional words about what the agent is doing (at most 1 KiB).
    #[serde(default)]
    pub message: Option<String>,
}

// ---------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------

/// How `cleanup` should stop agents; body of `POST /v1/agents/{id}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupOptions {
    /// Skip the TERM stages: SIGKILL at once.
    #[serde(default)]
    pub force: bool,
    /// Override each agent's staged-stop waits (seconds: TERM, TERM, KILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeouts: Option<Vec<f64>>,
}

/// Body of `POST /v1/stop`: `{"all": true}` or `{"selector": "L2.1.*"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopManyRequest {
    /// Every agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// An id or a `PREFIX.*` subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// SIGKILL at once.
    #[serde(default)]
    pub force: bool,
    /// Override each agent's staged-stop waits (seconds: TERM, TERM, KILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeouts: Option<Vec<f64>>,
    /// Leave out agents whose run had already ended (they would report `already_ended`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live_only: bool,
}

/// Body of `POST /v1/agents/{id}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// SIGKILL at once; otherwise the agent's staged stop.
    #[serde(default)]
    pub force: bool,
}

/// How far a stop sequence went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopStage {
    /// The agent had already ended; nothing was sent.
    AlreadyEnded,
    /// Ended after the first SIGTERM.
    Term,
    /// Ended after the second SIGTERM.
    SecondTerm,
    /// Ended after SIGKILL.
    Kill,
    /// Still present after SIGKILL and its wait (should not happen; reported, never hidden).
    Unkillable,
}

impl StopStage {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyEnded => "already_ended",
            Self::Term => "term",
            Self::SecondTerm => "second_term",
            Self::Kill => "kill",
            Self::Unkillable => "unkillable",
        }
    }
}

impl fmt::Display for StopStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one agent's stop did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopReport {
    /// The agent.
    pub agent_id: String,
    /// Its pid (null when it never started or runs on a cluster engine).
    pub pid: Option<i32>,
    /// The stage that ended it.
    pub stage: StopStage,
    /// Time from the first signal until it was gone, ms.
    pub duration_ms: f64,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// Other processes of its tree that were present during the stop (null when
    /// nothing was sent).
    pub descendants_killed: Option<u32>,
    /// Final lifecycle state.
    pub persistent_status: PersistentStatus,
    /// Whether the stop could see every process of the tree: true with a
    /// cgroup, or when every fork was followed (the process-events connector,
    /// or a subreaping daemon that found no unattributed orphan); false when
    /// a process may have escaped the stop, with `incomplete_reason` saying
    /// why. Null when nothing was stopped or the engine stops the tree.
    #[serde(default)]
    pub complete: Option<bool>,
    /// Why an escaped process cannot be excluded (null unless `complete` is false).
    #[serde(default)]
    pub incomplete_reason: Option<String>,
}

/// Answer of `POST /v1/agents/{id}/kill`: the stop report, and whether the
/// agent was killed by this call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KillResponse {
    /// The agent.
    pub agent_id: String,
    /// True when this call ended it (false when it had already ended).
    pub killed: bool,
    /// The stop's report.
    pub report: StopReport,
}

// ---------------------------------------------------------------------------
// Pausing
// ---------------------------------------------------------------------------

/// Body of `POST /v1/pause` and `POST /v1/resume`: exactly one of
/// `{"agent_id": "L2.1"}` (one agent: an agent that cannot be paused or
/// resumed is a 409 `conflict` naming its state), `{"selector": "L2.1.*"}`
/// or `{"all": true}` (every agent picked that has not ended gets an entry;
/// one that cannot be paused or resumed is `skipped`, with the reason).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// One agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// An id or a `PREFIX.*` subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Every agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// What a pause or a resume did to one agent (`outcome` in a [`PauseReport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PauseOutcome {
    /// Its tree is frozen now, and it is `paused`.
    Paused,
    /// Its tree is thawed now, and it is `running` again.
    Resumed,
    /// A pause found it paused already: nothing was done.
    AlreadyPaused,
    /// A resume found it running (not paused): nothing was done.
    NotPaused,
    /// It cannot be paused or resumed in its state (`reason` says why);
    /// only in answers for a selector or `all`.
    Skipped,
}

impl PauseOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::AlreadyPaused => "already_paused",
            Self::NotPaused => "not_paused",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for PauseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent's entry in the answer of `POST /v1/pause` or `POST /v1/resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PauseReport {
    /// The agent.
    pub agent_id: String,
    /// Its pid (null when it has none).
    pub pid: Option<i32>,
    /// What was done.
    pub outcome: PauseOutcome,
    /// Its `state` after the call.
    pub state: AgentState,
    /// How its tree was frozen or thawed: `cgroup` (`cgroup.freeze` of its
    /// leaf) or `signals` (SIGSTOP / SIGCONT to every member found); null
    /// when nothing was done.
    pub method: Option<String>,
    /// Processes of its tree frozen or thawed (null when nothing was done).
    pub processes: Option<u32>,
    /// Why it was skipped, or what is worth knowing about how it went (a
    /// tree the kernel had not finished freezing when the answer was sent).
    pub reason: Option<String>,
}

/// What `remove_agent` / `prune` took out of the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Removal {
    /// Ids no longer known at all.
    pub removed: Vec<String>,
    /// Runs deleted from the store (current and history).
    pub runs_removed: u64,
}

// ---------------------------------------------------------------------------
// Teams
// ---------------------------------------------------------------------------

/// A team's budgets (`PUT /v1/teams/{id}`): caps on the sum over every agent
/// of the team — the agent whose id is the team's and every agent under it
/// (`L2` and `L2.*`). Each is optional; a `PUT` replaces the team's budgets
/// with the ones it gives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamBudget {
    /// Most resident memory of all the team's trees together, MiB; over it,
    /// the team's largest agent is stopped (cause `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<f64>,
    /// Most CPU of all the team's trees together, percent of one CPU; over it
    /// for three samples in a row, a `budget` event is recorded (once per crossing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Most tasks (processes and threads) of all the team's trees together;
    /// over it, the team's agent with the most tasks is stopped (cause `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Most live agents in the team: a spawn that would go over is refused
    /// (409 `budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<u32>,
}

impl TeamBudget {
    /// True when no budget is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a team uses now: the sums over its live agents' trees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamUsage {
    /// Resident memory of every live member's tree, MiB.
    pub memory_mb: f64,
    /// CPU of every live member's tree, percent of one CPU.
    pub cpu_percent: f64,
    /// Tasks (processes and threads) of every live member's tree.
    pub pids: u64,
    /// Live members (not ended).
    pub agents: u32,
}

/// One agent of a team, as `GET /v1/teams/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamMember {
    /// The agent.
    pub agent_id: String,
    /// Its lifecycle state.
    pub state: AgentState,
    /// Its tree's resident memory, MiB (0 once ended).
    pub memory_mb: f64,
    /// Its tree's CPU, percent of one CPU (0 once ended).
    pub cpu_percent: f64,
    /// Its tree's tasks (0 once ended).
    pub pids: u64,
}

/// A team: its budgets, what it uses, who is in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamStatus {
    /// The team's id: the team is this agent id and every id under it.
    pub team: String,
    /// Its budgets (none set: every field absent).
    pub budget: TeamBudget,
    /// How `memory_mb`, `cpu_percent` and `pids` are enforced: `sampler` (the
    /// sampler sums the members' trees every interval) or `cgroup` (the
    /// kernel). `max_agents` is always checked at spawn.
    pub enforcement: String,
    /// What it uses now.
    pub usage: TeamUsage,
    /// The budgets it is over now (`memory_mb`, `cpu_percent`, `pids`; and
    /// `max_agents` after it was lowered below the count).
    #[serde(default)]
    pub over: Vec<String>,
    /// Every supervised agent of the team (ended ones too), by id; absent in
    /// listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<TeamMember>>,
}

/// `DELETE /v1/teams/{id}`: the budgets that were removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamRemoval {
    /// The team.
    pub team: String,
    /// Its budgets before the removal.
    pub budget: TeamBudget,
}

// ---------------------------------------------------------------------------
// History, events, the daemon
// ---------------------------------------------------------------------------

/// One run of an agent (`GET /v1/agents/{id}/runs`, `corral runs ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    /// The run's number.
    pub run: u32,
    /// Its pid (null when it never started).
    pub pid: Option<i32>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once it ended.
    pub ended_at: Option<String>,
    /// Its lifecycle state.
    pub persistent_status: PersistentStatus,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Its stdout log.
    #[schema(value_type = String)]
    pub stdout_log: PathBuf,
    /// Its stderr log.
    #[schema(value_type = String)]
    pub stderr_log: PathBuf,
}

/// One entry of the event log, stored and numbered by `seq`. Its `kind` and
/// the fields that go with it are one of [`EventBody`]'s variants, flattened
/// into the entry: `{"seq", "at", "agent_id", "run", "kind", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the log; a client resumes after the last one it saw.
    pub seq: i64,
    /// When it was recorded, RFC 3339 UTC.
    pub at: String,
    /// The agent.
    pub agent_id: String,
    /// The run's number.
    pub run: u32,
    /// What happened: `kind` and its fields.
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// The event's kind (`state`, `progress`, `stop_stage`, ...).
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

/// What an event says, by `kind`: one documented shape per kind, the same in
/// the API, the CLI and every client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A committed transition: a new `state` and/or stored status.
    State(StateEvent),
    /// A progress report.
    Progress(ProgressEvent),
    /// A stop stage began (its signal went out).
    StopStage(StopStageEvent),
    /// The restart policy planned the next run.
    Restart(RestartEvent),
    /// Too many restarts too fast: the policy gave up.
    CrashLoop(CrashLoopEvent),
    /// A planned restart was called off.
    RestartCancelled(ReasonEvent),
    /// The sampler saw the run over a limit it enforces.
    Limit(LimitEvent),
    /// The run outlived `max_runtime_s`.
    RuntimeExceeded(LimitEvent),
    /// A probe's result changed (or readiness did).
    Probe(ProbeEvent),
    /// The run's cluster job was submitted, or placed on a node.
    Job(JobEvent),
    /// The engine took the run's job off its node and queued it again
    /// (`scontrol requeue`, preemption, a failed node): the same run is
    /// `starting` again.
    JobRequeued(JobRequeuedEvent),
    /// A log over `logs.max_mb` could not be copied whole and was truncated anyway.
    LogDropped(LogDroppedEvent),
    /// The agent's team went over one of its budgets (`PUT /v1/teams/{id}`).
    Budget(BudgetEvent),
    /// A kind this build does not know (written by a newer corral).
    #[serde(other)]
    Other,
}

impl EventBody {
    /// The kind's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::State(_) => "state",
            Self::Progress(_) => "progress",
            Self::StopStage(_) => "stop_stage",
            Self::Restart(_) => "restart",
            Self::CrashLoop(_) => "crash_loop",
            Self::RestartCancelled(_) => "restart_cancelled",
            Self::Limit(_) => "limit",
            Self::RuntimeExceeded(_) => "runtime_exceeded",
            Self::Probe(_) => "probe",
            Self::Job(_) => "job",
            Self::JobRequeued(_) => "job_requeued",
            Self::LogDropped(_) => "log_dropped",
            Self::Budget(_) => "budget",
            Self::Other => "other",
        }
    }
}

/// `kind: state` — a committed transition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateEvent {
    /// The agent's new `state` (absent in events recorded before states existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AgentState>,
    /// The run's stored status after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentStatus>,
    /// The run's pid, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// How the main process exited, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the main process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Why, in words (the end reason of an ended run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run's place in a row of restarts (0 for a run a user started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_attempt: Option<u32>,
    /// The stop under way, when the new state is `stopping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopInfo>,
}

/// `kind: progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressEvent {
    /// 0–100.
    pub progress: u8,
    /// The message sent with it.
    #[serde(default)]
    pub message: Option<String>,
}

/// `kind: stop_stage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopStageEvent {
    /// `term`, `second_term` or `kill`.
    pub stage: StopStage,
    /// `SIGTERM` or `SIGKILL`.
    pub signal: String,
    /// The agent's pid (null on a cluster engine).
    #[serde(default)]
    pub pid: Option<i32>,
    /// The job, on a cluster engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Why the stop began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<StopCause>,
}

/// `kind: restart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RestartEvent {
    /// Seconds until the next run starts.
    pub delay_s: f64,
    /// The next run's place in a row of restarts.
    pub attempt: u32,
}

/// `kind: crash_loop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CrashLoopEvent {
    /// Restarts inside the window.
    pub restarts: u32,
    /// The window, seconds.
    pub window_s: f64,
}

/// An event whose only field is a reason (`restart_cancelled`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReasonEvent {
    /// Why.
    pub reason: String,
}

/// `kind: limit` and `kind: runtime_exceeded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitEvent {
    /// The limit's name (`memory_mb`, `pids`, `cpu_percent`, `max_runtime_s`).
    pub limit: String,
    /// Its value.
    pub value: f64,
    /// What the run used, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<f64>,
}

/// `kind: probe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProbeEvent {
    /// `liveness` or `readiness`.
    pub probe: String,
    /// The probe's kind (`exec`, `http`, `tcp`, `progress_stale_s`, `log`).
    pub check: String,
    /// `passed` or `failed`.
    pub result: String,
    /// What the check said.
    pub output: String,
    /// Readiness after this result (null without a readiness probe).
    #[serde(default)]
    pub ready: Option<bool>,
}

/// `kind: job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    /// `slurm`.
    pub engine: String,
    /// The engine's job id.
    pub job_id: String,
    /// The node it runs on, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The stored status, when this placement was also a transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PersistentStatus>,
}

/// `kind: budget` — the agent's team went over one of its budgets. Recorded
/// on the agent that was stopped for it, or (when nothing is stopped: CPU)
/// on the team's member that used the most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetEvent {
    /// The team (an agent id: the team is it and every agent under it).
    pub team: String,
    /// The budget: `memory_mb`, `pids` or `cpu_percent`.
    pub budget: String,
    /// Its value.
    pub limit: f64,
    /// What the whole team used.
    pub usage: f64,
    /// `stop` (this agent was stopped, cause `limit`) or `none` (recorded only).
    pub action: String,
    /// What this agent used of it.
    pub agent_usage: f64,
}

/// `kind: job_requeued` — the engine queued the run's job again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobRequeuedEvent {
    /// `slurm`.
    pub engine: String,
    /// The engine's job id (the same job, queued again).
    pub job_id: String,
    /// The node it ran on until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it waits now, as the engine says (`BeginTime`, `Priority`, ...).
    pub pending_reason: String,
}

/// `kind: log_dropped` — a log over `logs.max_mb` could not be copied whole at
/// rotation (no room on its file system or in its quota, or another failure
/// to create or write the copy), so it was truncated all the same, keeping
/// only its newest bytes in `<stream>.log.1` when they fit: a log never grows
/// past what the rotation settings allow because a copy cannot be made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogDroppedEvent {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Bytes of the log that are now in no file.
    pub dropped_bytes: u64,
    /// Its newest bytes, kept in `<stream>.log.1` (0 when even they did not fit).
    pub kept_bytes: u64,
    /// Why the whole copy could not be made.
    pub reason: String,
}

/// Answer of `GET /v1/health`: the daemon answers and its store takes writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaemonHealth {
    /// Always true in a 200 answer.
    pub ok: bool,
    /// corral's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Agents known.
    pub agents: u32,
    /// The state dir it serves.
    pub state_dir: String,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
}

/// Body of `POST /v1/daemon/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DaemonStopRequest {
    /// First stop every agent (staged); otherwise they keep running and the next
    /// daemon re-adopts them.
    #[serde(default)]
    pub stop_agents: bool,
}

/// Answer of `POST /v1/daemon/stop`, sent just before the daemon stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaemonStopResponse {
    /// The daemon that is stopping.
    pub pid: u32,
    /// The stops it made first (empty without `stop_agents`).
    pub stopped: Vec<StopReport>,
}

/// Query of `GET /v1/agents`: filters the daemon applies before it writes
/// the listing, and the fields to write. Without any, every agent with
/// every field.
///
/// `label` may also be repeated (`?label=team=a&label=tier=1`); every
/// `k=v` given must match.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this agent (`ID`) or this subtree (`PREFIX.*`: PREFIX and every id below it).
    pub selector: Option<String>,
    /// Only agents in one of these lifecycle states, comma-separated
    /// (`running,paused`; from `starting`, `running`, `stopping`, `paused`, `backoff`, `ended`).
    pub state: Option<String>,
    /// Only agents with these labels: `k=v`, comma-separated or the parameter
    /// repeated; all must match (a piece without `=` continues the value
    /// before it: `team=a,b` is team = `a,b`).
    pub label: Option<String>,
    /// Only agents placed on one of these nodes, comma-separated (`n1,n2`):
    /// their status's `placement.node` (an agent on the daemon's host, or a
    /// job still queued, is on none).
    pub node: Option<String>,
    /// Only these top-level fields of each status, comma-separated (`agent_id`
    /// is always written); an unknown name is refused (400 naming it).
    pub fields: Option<String>,
}

impl ListQuery {
    /// The query string (without `?`; empty without parameters), percent-encoded.
    pub fn to_query_string(&self) -> String {
        let pairs = [
            ("selector", &self.selector),
            ("state", &self.state),
            ("label", &self.label),
            ("node", &self.node),
            ("fields", &self.fields),
        ];
        pairs
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", percent_encode(v))))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// `/v1/agents` with this query.
    pub fn path(&self) -> String {
        match self.to_query_string() {
            q if q.is_empty() => "/v1/agents".to_owned(),
            q => format!("/v1/agents?{q}"),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a
/// path segment or a query value).
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query of `GET /v1/agents/{id}/wait`.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Longest wait, seconds (default 30, at most 3600); 408 `timeout` after it.
    pub timeout_s: Option<f64>,
}

/// Query of `GET /v1/agents/{id}/logs`.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `stdout` (default), `stderr` or `both`.
    pub stream: Option<String>,
    /// Start with the last N lines (default: all).
    pub tail: Option<usize>,
    /// Keep the answer open and stream what is written until the run ends.
    pub follow: Option<bool>,
    /// The run (default: the current one).
    pub run: Option<u32>,
}

/// Query of `GET /v1/events`.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this sequence number (also taken from `Last-Event-ID`).
    pub since: Option<i64>,
    /// Keep the stream open for new events (default); `false` ends it after the backlog.
    pub follow: Option<bool>,
}

/// Shell-style quoting of an argv for display: `python3 -c 'print("hi"); import sys'`.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| quote_arg(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_arg(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b',' | b':' | b'=' | b'+' | b'@' | b'%'
                )
        });
    if plain {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_quoted_as_a_shell_needs_it() {
        let argv: Vec<String> = ["python3", "-c", "print(\"hi\"); import sys", "it's", ""]
            .map(String::from)
            .to_vec();
        assert_eq!(
            quote_argv(&argv),
            r#"python3 -c 'print("hi"); import sys' 'it'\''s' ''"#
        );
    }

    #[test]
    fn long_numbers_are_shown_short() {
        assert_eq!(short_number(5.0), "5");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(315360001.0), "315360001");
        assert_eq!(short_number(1e300), "1e300");
        assert_eq!(short_number(-9.5e18), "-9500000000000000000");
        assert_eq!(short_number(-9.5e20), "-9.5e20");
        assert!(short_number(f64::MIN_POSITIVE).len() < 30);
    }

    #[test]
    fn elide_cuts_on_characters() {
        assert_eq!(elide("abc", 5), "abc");
        assert_eq!(elide("ééééé", 2), "éé…");
    }

    #[test]
    fn batch_results_round_trip_both_shapes() {
        let failed = r#"{"agent_id": "x", "error": {"code": "conflict", "message": "m"}}"#;
        let r: BatchResult = serde_json::from_str(failed).unwrap();
        assert!(matches!(r, BatchResult::Failed(_)));
    }

    #[test]
    fn policies_take_the_contracts_json() {
        let req: SpawnRequest = serde_json::from_str(
            r#"{"agent_id": "a", "command": ["x"],
                "restart": {"policy": "on-failure", "max_restarts": 5, "window_s": 60, "backoff_s": [1, 60]},
                "max_runtime_s": 3600,
                "limits": {"memory_mb": 512, "pids": 256, "nofile": 1024, "cpu_percent": 150},
                "probes": {"liveness": {"http": "http://127.0.0.1:8080/healthz"},
                           "readiness": {"log": "ready"}, "interval_s": 10, "timeout_s": 2, "failures": 3},
                "user": "nobody", "logs": {"max_mb": 100, "keep": 3},
                "placement": {"slurm": {"partition": "debug", "cpus": 1}}}"#,
        )
        .unwrap();
        assert_eq!(req.restart.unwrap().policy, RestartMode::OnFailure);
        assert_eq!(
            req.probes.unwrap().liveness,
            Some(Probe::Http("http://127.0.0.1:8080/healthz".into()))
        );
        let p: Probe = serde_json::from_str(r#"{"progress_stale_s": 300}"#).unwrap();
        assert_eq!(p, Probe::ProgressStaleS(300.0));
        let p: Probe = serde_json::from_str(r#"{"exec": ["sh", "-c", "true"]}"#).unwrap();
        assert_eq!(p.kind(), "exec");
    }

    #[test]
    fn the_field_list_is_every_field_a_status_writes_in_order() {
        let mut s = AgentStatus::blank("a.b");
        s.labels.insert("k".into(), "v".into());
        s.progress = Some(40);
        let whole = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = whole
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = AgentStatus::FIELDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "serde_json's map is sorted");
        for name in AgentStatus::FIELDS {
            let one = serde_json::to_value(StatusFields {
                status: &s,
                fields: &[name],
            })
            .unwrap();
            assert_eq!(one[name], whole[name], "field {name}");
            assert_eq!(one["agent_id"], "a.b");
        }
        let picked = serde_json::to_string(&StatusFields {
            status: &s,
            fields: &["state", "agent_id", "progress"],
        })
        .unwrap();
        assert_eq!(
            picked,
            r#"{"agent_id":"a.b","state":"starting","progress":40}"#
        );
        let back =
            AgentStatus::from_partial("a.b", serde_json::from_str(&picked).unwrap()).unwrap();
        let mut expect = AgentStatus::blank("a.b");
        expect.progress = Some(40);
        assert_eq!(back, expect);
    }

    #[test]
    fn a_list_query_is_percent_encoded() {
        assert_eq!(ListQuery::default().path(), "/v1/agents");
        let q = ListQuery {
            selector: Some("L2.1.*".into()),
            label: Some("team=a b,x=y".into()),
            node: Some("n1,n2".into()),
            ..ListQuery::default()
        };
        assert_eq!(
            q.path(),
            "/v1/agents?selector=L2.1.%2A&label=team%3Da%20b%2Cx%3Dy&node=n1%2Cn2"
        );
    }
}

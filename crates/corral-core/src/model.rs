//! The data corral hands out and takes in: requests, statuses, summaries.
//!
//! Field names are the contract's (and the seed's): scripts parse them, so a
//! seed field never changes name or meaning. Extras are additive.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Stored lifecycle state (`persistent_status`): `spawning → running → completed | failed | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistentStatus {
    /// Being started: the record exists, the verification window has not ended.
    Spawning,
    /// Started and verified; not known to have ended.
    Running,
    /// Exited on its own with code 0.
    Completed,
    /// Exited non-zero, killed by a signal corral did not send, or failed to start.
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

    /// True for `spawning` and `running`: the id is taken.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Alive and not a zombie.
    Healthy,
    /// Exited, not yet reaped.
    Zombie,
    /// Ended with code 0.
    Completed,
    /// Ended badly (non-zero, signal, failed start) or was stopped.
    Failed,
    /// Cannot be determined (e.g. ended while no daemon ran).
    Unknown,
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
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `spawn_agent` needs. JSON body of `POST /v1/agents`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The agent's id (validated by `spawn_agent`).
    pub agent_id: String,
    /// argv: program and arguments, run without a shell.
    pub command: Vec<String>,
    /// Working directory; defaults to the agent dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Variables added to the daemon's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where `stdout.log` / `stderr.log` go; defaults to `<state dir>/agents/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_dir: Option<PathBuf>,
    /// Free-form labels, kept with the run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Staged-stop waits in seconds (TERM, TERM, KILL); defaults to `[10, 5, 5]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeouts: Option<Vec<f64>>,
    /// Verification window in milliseconds; default 100, 0 = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_ms: Option<u64>,
}

/// What `spawn_agent` answers when the program started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnResponse {
    /// The agent's id.
    pub agent_id: String,
    /// Its pid.
    pub pid: i32,
    /// `running`, or `completed` / `failed` when it ended inside the verification window.
    pub status: PersistentStatus,
    /// When it was started (RFC 3339, UTC).
    pub started_at: String,
    /// Path of its stdout log.
    pub stdout_log: PathBuf,
    /// Path of its stderr log.
    pub stderr_log: PathBuf,
    /// Exit code, when it ended inside the window.
    pub exit_code: Option<i32>,
    /// Terminating signal, when it was killed inside the window.
    pub exit_signal: Option<i32>,
    /// Why it failed (with the tail of its stderr), when it did.
    pub error: Option<String>,
}

/// One agent's status: the seed's fields with their exact names, plus extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's id.
    pub agent_id: String,
    /// Its pid (0 when it never started).
    pub pid: i32,
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
    /// Resident set size in MiB.
    pub memory_mb: f64,
    /// Seconds since it started (until it ended, once it has).
    pub runtime_seconds: f64,
    /// Thread count.
    pub num_threads: u32,
    /// The command line, space-joined.
    pub cmdline: String,
    /// Live health.
    pub health: Health,
    /// Stored lifecycle state.
    pub persistent_status: PersistentStatus,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// Self-reported progress, 0–100.
    pub progress: Option<u8>,
    /// Message sent with the last progress report.
    pub progress_message: Option<String>,
    /// Signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// End time, RFC 3339 UTC.
    pub ended_at: Option<String>,
    /// Why it ended, in words.
    pub end_reason: Option<String>,
    /// How many earlier runs this id has had.
    pub restarts: u32,
    /// Labels given at spawn.
    pub labels: BTreeMap<String, String>,
    /// Path of its stdout log.
    pub stdout_log: PathBuf,
    /// Path of its stderr log.
    pub stderr_log: PathBuf,
    /// How its process tree is contained (`process-group` or `cgroup`).
    pub containment: String,
    /// The agent's process tree (itself and every descendant), from the latest sample.
    pub tree: Option<TreeSummary>,
}

/// Sums over an agent's whole process tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// Processes in the tree, the agent included.
    pub processes: u32,
    /// Summed CPU percent.
    pub cpu_percent: f64,
    /// Summed RSS in MiB.
    pub memory_mb: f64,
}

/// Fleet-wide counts and sums (`get_process_summary`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Answer of `GET /v1/agents/{id}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The agent's id.
    pub agent_id: String,
    /// `health == healthy`.
    pub healthy: bool,
    /// Live health.
    pub health: Health,
}

/// Body of `PUT /v1/agents/{id}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressUpdate {
    /// 0–100.
    pub progress: i64,
    /// Optional words about what the agent is doing.
    #[serde(default)]
    pub message: Option<String>,
}

/// How `cleanup` / `kill_agent` should stop agents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupOptions {
    /// Skip the TERM stages: SIGKILL at once.
    #[serde(default)]
    pub force: bool,
    /// Override each agent's staged-stop waits (seconds: TERM, TERM, KILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeouts: Option<Vec<f64>>,
}

/// How far a stop sequence went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// What one agent's stop did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopReport {
    /// The agent.
    pub agent_id: String,
    /// Its pid.
    pub pid: i32,
    /// The stage that ended it.
    pub stage: StopStage,
    /// Time from the first signal until it was gone, ms.
    pub duration_ms: f64,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// Other processes of its tree that were still present when the stop began;
    /// `null` while corral does not yet count them (only the agent's process
    /// group is signalled today).
    pub descendants_killed: Option<u32>,
    /// Final lifecycle state.
    pub persistent_status: PersistentStatus,
}

/// What `remove_agent` / `prune` took out of the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// Ids no longer known at all.
    pub removed: Vec<String>,
    /// Runs deleted from the store (current and history).
    pub runs_removed: u64,
}

/// One entry of the event log: a lifecycle transition (`state`), a progress
/// report (`progress`) or a stop stage (`stop_stage`). Stored, numbered by `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log; a client resumes after the last one it saw.
    pub seq: i64,
    /// When it was recorded, RFC 3339 UTC.
    pub at: String,
    /// The agent.
    pub agent_id: String,
    /// The run (one agent id has one run per spawn).
    #[serde(rename = "run")]
    pub run_id: i64,
    /// `state`, `progress` or `stop_stage`.
    pub kind: String,
    /// The kind's fields (`status`, `pid`, `exit_code`, `reason`, `progress`, `message`, `stage`, `signal`).
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

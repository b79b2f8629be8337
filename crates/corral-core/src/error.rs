//! The library's one error type.
//!
//! Every variant names the agent it concerns (where there is one) and the cause,
//! so a message can be shown to a user as it is. [`Error::code`] maps each
//! variant to the stable code (and so the HTTP status) the API and CLI report;
//! that mapping lives here and nowhere else.

use std::io;
use std::path::PathBuf;

pub use corral_proto::ErrorCode;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in corral's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An agent id or selector broke the naming rules.
    #[error(transparent)]
    InvalidId(#[from] corral_proto::InvalidId),
    /// A request was malformed for a reason other than its id.
    #[error("invalid request for agent {agent_id}: {reason}")]
    Invalid {
        /// The agent the request was for.
        agent_id: String,
        /// What is wrong with it, naming the field.
        reason: String,
    },
    /// No agent has this id.
    #[error("agent {agent_id} not found")]
    NotFound {
        /// The id asked for.
        agent_id: String,
    },
    /// A team's budgets were malformed.
    #[error("invalid budget for team {team}: {reason}")]
    InvalidBudget {
        /// The team.
        team: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// No budget is set for this team, and it has no member.
    #[error("team {team} has no budget set and no agent")]
    TeamNotFound {
        /// The team asked for.
        team: String,
    },
    /// The agent has no run with this number on record.
    #[error("agent {agent_id} has no run {run} on record (its runs are 1–{last})")]
    RunNotFound {
        /// The agent.
        agent_id: String,
        /// The run asked for.
        run: u32,
        /// Its newest run.
        last: u32,
    },
    /// The id names an agent that is still supervised.
    #[error("agent {agent_id} is still {status}{}; stop it first", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Conflict {
        /// The id asked for.
        agent_id: String,
        /// Its current state, in words.
        status: String,
        /// Its pid, when it has one.
        pid: Option<i32>,
    },
    /// A spawn would put a team over its `max_agents` budget.
    #[error("agent {agent_id} cannot start: team {team} is at its budget of {max_agents} live agent{} ({count} live now)", if *max_agents == 1 { "" } else { "s" })]
    Budget {
        /// The agent that was to start.
        agent_id: String,
        /// The team whose budget it would break.
        team: String,
        /// The team's `max_agents`.
        max_agents: u32,
        /// Its live agents now.
        count: u32,
    },
    /// The agent cannot do this in its state (a pause of an agent that is
    /// not running, a resume of one that is not paused).
    #[error("agent {agent_id} is {state}: {reason}")]
    State {
        /// The agent.
        agent_id: String,
        /// Its state, in words.
        state: String,
        /// What cannot be done, and why.
        reason: String,
    },
    /// The caller may not do this.
    #[error("agent {agent_id}: {reason}")]
    Forbidden {
        /// The agent concerned.
        agent_id: String,
        /// Why not.
        reason: String,
    },
    /// A wait ran out of time.
    #[error("agent {agent_id} did not end within {waited_s} s")]
    Timeout {
        /// The agent waited for.
        agent_id: String,
        /// How long, seconds.
        waited_s: f64,
    },
    /// The agent's program could not be started (missing, not executable, bad cwd, ...).
    #[error("agent {agent_id}: cannot start {program:?}: {source}")]
    Spawn {
        /// The agent.
        agent_id: String,
        /// The program (argv\[0\]).
        program: String,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// The agent's user cannot be resolved when a run starts (deleted since
    /// the spawn, or the user database unreachable): the run does not start.
    #[error("agent {agent_id}: {reason}")]
    User {
        /// The agent.
        agent_id: String,
        /// Which user and why.
        reason: String,
    },
    /// The cluster engine refused or failed the agent's job submission.
    #[error("agent {agent_id}: cannot place the job on {engine}: {reason}")]
    Engine {
        /// The agent.
        agent_id: String,
        /// `slurm`.
        engine: &'static str,
        /// What the engine said.
        reason: String,
    },
    /// The agent's directory or log files could not be created.
    #[error("agent {agent_id}: {field} {}: {source}", path.display())]
    Files {
        /// The agent.
        agent_id: String,
        /// The request field the path came from (`agent_dir`).
        field: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// A file or OS operation on behalf of an agent failed.
    #[error("agent {agent_id}: {action}: {source}")]
    Os {
        /// The agent.
        agent_id: String,
        /// What corral was doing.
        action: String,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// An operation on the state dir failed.
    #[error("state dir {}: {action}: {source}", path.display())]
    StateDir {
        /// The path involved.
        path: PathBuf,
        /// What corral was doing.
        action: &'static str,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// The embedded store failed.
    #[error("store: {action}: {source}")]
    Store {
        /// What corral was doing.
        action: String,
        /// SQLite's reason (shared: one failed commit fails every write in its batch).
        #[source]
        source: std::sync::Arc<rusqlite::Error>,
    },
    /// The database file was deleted or replaced while the daemon ran.
    #[error("store: {action}: {} was deleted or replaced while the daemon ran; nothing more can be recorded (restart the daemon)", path.display())]
    StoreGone {
        /// What corral was doing.
        action: &'static str,
        /// The database's path.
        path: PathBuf,
    },
    /// corral takes no changes now: its store is failing.
    #[error("corral cannot record changes now: {reason}")]
    Unavailable {
        /// The store's failure.
        reason: String,
    },
    /// The database file is there but holds no record (emptied, or replaced
    /// by an empty database) while the state dir shows earlier use: opening
    /// it would forget every agent, some of which may still run.
    #[error(
        "store: {} {found}, yet the state dir has been used ({signs}); starting on an empty record would forget agents that may still be running. Restore {} from a backup, or move the state dir aside to start afresh (agents still running from it are left alone)",
        path.display(),
        path.display()
    )]
    StoreLost {
        /// The database's path.
        path: PathBuf,
        /// What was found (`is empty (0 bytes)`, `holds no corral schema`).
        found: &'static str,
        /// The signs of earlier use, in words.
        signs: String,
    },
    /// The store was written by a newer corral.
    #[error(
        "store: schema version {found} is newer than this corral supports ({supported}); upgrade corral"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: i32,
        /// Newest version this build knows.
        supported: i32,
    },
    /// The store's writer is gone (the supervisor is shutting down).
    #[error("store: the writer thread has stopped")]
    StoreClosed,
    /// The task that owned the agent failed while this request was with it;
    /// a new owner took the agent over from its record.
    #[error(
        "agent {agent_id}: its owner failed while handling this request ({reason}); a new owner took over from the record, ask again"
    )]
    OwnerFailed {
        /// The agent.
        agent_id: String,
        /// What the failure said.
        reason: String,
    },
}

impl Error {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidId(_) | Self::Invalid { .. } | Self::InvalidBudget { .. } => {
                ErrorCode::Invalid
            }
            Self::NotFound { .. } | Self::RunNotFound { .. } | Self::TeamNotFound { .. } => {
                ErrorCode::NotFound
            }
            Self::Conflict { .. } | Self::State { .. } => ErrorCode::Conflict,
            Self::Forbidden { .. } => ErrorCode::Forbidden,
            Self::Budget { .. } => ErrorCode::Budget,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::Spawn { .. } | Self::Files { .. } | Self::Engine { .. } | Self::User { .. } => {
                ErrorCode::SpawnFailed
            }
            Self::Store { .. }
            | Self::StoreGone { .. }
            | Self::Unavailable { .. }
            | Self::StoreClosed => ErrorCode::Unavailable,
            Self::Os { .. }
            | Self::StateDir { .. }
            | Self::SchemaTooNew { .. }
            | Self::StoreLost { .. }
            | Self::OwnerFailed { .. } => ErrorCode::Internal,
        }
    }

    pub(crate) fn store(action: impl Into<String>, source: rusqlite::Error) -> Self {
        Self::Store {
            action: action.into(),
            source: std::sync::Arc::new(source),
        }
    }

    pub(crate) fn os(
        agent_id: &impl ToString,
        action: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Self::Os {
            agent_id: agent_id.to_string(),
            action: action.into(),
            source,
        }
    }

    pub(crate) fn invalid(agent_id: &impl ToString, reason: impl Into<String>) -> Self {
        Self::Invalid {
            agent_id: agent_id.to_string(),
            reason: reason.into(),
        }
    }
}

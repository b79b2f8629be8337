//! The library's one error type.
//!
//! Every variant names the agent it concerns (where there is one) and the cause,
//! so a message can be shown to a user as it is. [`Error::code`] maps each
//! variant to the stable code the API and CLI report; that mapping lives here
//! and nowhere else.

use std::io;
use std::path::PathBuf;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in corral's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An agent id broke the naming rules.
    #[error("invalid agent id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A request was malformed for a reason other than its id.
    #[error("invalid request for agent {agent_id}: {reason}")]
    Invalid {
        /// The agent the request was for.
        agent_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No agent has this id.
    #[error("agent {agent_id} not found")]
    NotFound {
        /// The id asked for.
        agent_id: String,
    },
    /// The id names an agent that is still alive.
    #[error("agent {agent_id} is still {status} (pid {pid}); stop it first")]
    Conflict {
        /// The id asked for.
        agent_id: String,
        /// Its current lifecycle state.
        status: String,
        /// Its pid, 0 while not yet known.
        pid: i32,
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
}

/// Stable error codes, as reported by the API (`{"error": {"code": ...}}`) and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad input (HTTP 400).
    Invalid,
    /// Unknown agent (HTTP 404).
    NotFound,
    /// Id already in use by a live agent (HTTP 409).
    Conflict,
    /// The agent's program could not be started (HTTP 422).
    SpawnFailed,
    /// corral itself failed (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::SpawnFailed => "spawn_failed",
            Self::Internal => "internal",
        }
    }
}

impl Error {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidId { .. } | Self::Invalid { .. } => ErrorCode::Invalid,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::Conflict { .. } => ErrorCode::Conflict,
            Self::Spawn { .. } => ErrorCode::SpawnFailed,
            Self::Os { .. }
            | Self::StateDir { .. }
            | Self::Store { .. }
            | Self::SchemaTooNew { .. }
            | Self::StoreClosed => ErrorCode::Internal,
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
}

//! corral's HTTP/JSON API: the daemon's server, its client, and the daemon's
//! process-level duties (single-instance lock, socket, log file).
//!
//! Routes live under `/v1`; every error is `{"error": {"code", "message"}}`
//! with the matching HTTP status. The CLI is a client of these same routes.
#![warn(missing_docs)]

pub mod client;
pub mod daemon;
pub mod server;

pub use client::{Client, ClientError};

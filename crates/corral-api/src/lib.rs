//! corral's HTTP/JSON API: the daemon's server and the daemon's
//! process-level duties (single-instance lock, socket, log file). The client
//! is `corral-client` (re-exported here as [`client`]).
//!
//! Routes live under `/v1`; every error is `{"error": {"code", "message"}}`
//! with the matching HTTP status. Request and answer bodies are the wire types
//! of `corral-proto`; the OpenAPI document is generated from them. The CLI is a
//! client of these same routes, and so is the web dashboard ([`ui`]: its page,
//! embedded in the binary, and its one-time logins).
#![warn(missing_docs)]

pub mod agent_socket;
pub mod auth;
pub mod daemon;
mod delegation;
pub mod error;
mod events;
mod listing;
pub mod logging;
mod logs;
pub mod metrics;
pub mod notify;
pub mod routes;
pub mod serve;
mod teams;
pub mod ui;

pub use corral_client as client;
pub use corral_client::{Client, ClientError};
pub use routes::{openapi_json, router};

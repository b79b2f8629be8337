//! corral's library: everything that touches agent processes and their record.
//!
//! A [`Supervisor`] spawns agents (each in its own session, output to files,
//! verified before it is reported running), watches them by event, samples
//! their metrics from `/proc`, stops them in stages and keeps every run in an
//! embedded SQLite store. The daemon and the CLI are thin layers over it; a Rust
//! coordinator can use it in-process instead.
//!
//! Method names are the seed's: [`Supervisor::spawn_agent`],
//! [`Supervisor::get_agent_status`], [`Supervisor::cleanup`],
//! [`Supervisor::monitor_all_agents`], [`Supervisor::get_process_summary`],
//! [`Supervisor::check_process_health`], [`Supervisor::kill_agent`].
#![warn(missing_docs)]

pub mod error;
pub mod id;
pub mod logs;
pub mod model;
pub mod platform;
pub mod store;
pub mod supervisor;
pub mod tree;

pub use error::{Error, ErrorCode, Result};
pub use id::{AgentId, Selector};
pub use model::*;
pub use supervisor::{Config, Supervisor};

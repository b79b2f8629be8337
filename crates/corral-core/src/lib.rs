//! corral's library: everything that touches agent processes and their record.
//!
//! A [`Supervisor`] spawns agents (each in its own session and, where the
//! machine allows, its own cgroup; output to per-run files; verified before it
//! is reported running), watches them by event, samples their metrics and
//! their trees from `/proc`, stops whole trees in stages, restarts what its
//! policy says, and keeps every run in an embedded SQLite store. Each agent is
//! owned by one task; the daemon and the CLI are thin layers over this crate,
//! and a Rust coordinator can use it in-process instead.
//!
//! Method names are the seed's: [`Supervisor::spawn_agent`],
//! [`Supervisor::get_agent_status`], [`Supervisor::cleanup`],
//! [`Supervisor::monitor_all_agents`], [`Supervisor::get_process_summary`],
//! [`Supervisor::check_process_health`], [`Supervisor::kill_agent`],
//! [`Supervisor::reap_zombies`]. Requests and answers are the API's wire types
//! ([`corral_proto`], re-exported here).
#![warn(missing_docs)]

pub mod error;
pub mod logs;
mod platform;
mod store;
mod supervisor;
mod tree;

/// The wire types: requests, answers, statuses, events.
pub use corral_proto as model;
/// Agent ids and selectors.
pub use corral_proto::id;

pub use corral_proto::*;
pub use error::{Error, Result};
pub use supervisor::{
    Config, DEFAULT_STOP_TIMEOUTS, DEFAULT_VERIFY_MS, DaemonCounters, Listed, MAX_LABEL_KEY,
    MAX_LABEL_VALUE, MAX_LABELS, MAX_LOG_KEEP, MAX_PROGRESS_MESSAGE, MAX_RUNTIME_S,
    MAX_STOP_WAIT_S, MAX_TEAM_AGENTS, MAX_TEAM_CPU_PERCENT, MAX_TEAM_MEMORY_MB, MAX_TEAM_PIDS,
    MAX_VERIFY_MS, MIN_LOG_MAX_MB, Supervisor,
};

/// Process- and file-level helpers for programs built on corral (the daemon).
pub mod process {
    use std::path::Path;

    /// The uid owning the TCP socket at `peer` that is connected to `local`
    /// (a loopback peer: who is calling); `None` when it is not listed.
    /// Blocking: reads `/proc/net/tcp`.
    pub fn tcp_peer_uid(
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> std::io::Result<Option<u32>> {
        crate::platform::tcp_peer_uid(peer, local)
    }

    /// Raises the soft open-file limit to the hard one (corral holds one pidfd
    /// per live agent); returns the new soft limit.
    pub fn raise_nofile_limit() -> u64 {
        crate::platform::raise_nofile_limit()
    }

    /// Makes `dir` a private directory of this user: created 0700 when missing;
    /// an existing one must be a real directory owned by this user and not
    /// writable by group or others (else the error says which and what to do).
    pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
        crate::platform::files::ensure_private_dir(dir)
    }

    /// Opens (creating 0600) a file for appending, never through a symlink and
    /// never blocking on a FIFO; it must be a regular file.
    pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
        crate::platform::files::open_private_append(path)
    }

    /// Opens a file for reading, never through a symlink and never blocking.
    pub fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
        crate::platform::files::open_nofollow(path)
    }

    /// Opens an agent's file (a log) for reading: no symlink anywhere on its
    /// path, never blocking, regular files only.
    pub fn open_agent_file(path: &Path) -> std::io::Result<std::fs::File> {
        crate::platform::agent_dir::open_for_reading(path)
    }

    /// Makes the calling process a child subreaper (orphans of its descendants
    /// are reparented to it). For tools that measure or test corral.
    pub fn become_subreaper() -> std::io::Result<()> {
        crate::platform::become_subreaper()
    }

    /// Restores SIGPIPE's default action, for a command-line client: a reader
    /// that goes away (`corral ps | head -1`) ends it quietly, as it ends any
    /// Unix tool, instead of turning every write into an error.
    pub fn default_sigpipe() {
        crate::platform::default_sigpipe()
    }

    /// Pids of the calling process's children.
    pub fn children() -> Vec<i32> {
        crate::platform::own_children()
    }

    /// User + system CPU time of `pid`, in clock ticks.
    pub fn cpu_ticks(pid: i32) -> std::io::Result<u64> {
        let text = std::fs::read(format!("/proc/{pid}/stat"))?;
        Ok(crate::platform::parse_stat(&text)?.cpu_ticks)
    }

    /// Clock ticks per second (`_SC_CLK_TCK`).
    pub fn clock_ticks_per_second() -> u64 {
        crate::platform::clock_ticks_per_second()
    }

    /// A pidfd of the process at the other end of a Unix socket, as it was
    /// when it connected (`SO_PEERPIDFD`, Linux 6.5+); none on older kernels.
    /// Unlike the peer's pid, it cannot come to name another process.
    pub fn peer_pidfd(socket: std::os::fd::BorrowedFd<'_>) -> Option<std::os::fd::OwnedFd> {
        crate::platform::peer_pidfd(socket)
    }

    /// True while the process a pidfd refers to has not exited.
    pub fn pidfd_alive(pidfd: std::os::fd::BorrowedFd<'_>) -> bool {
        crate::platform::pidfd_alive(pidfd)
    }

    /// The `CORRAL_AGENT_ID` a process was started with.
    pub fn environ_agent_id(pid: i32) -> Option<String> {
        crate::platform::environ_agent_id(pid)
    }
}

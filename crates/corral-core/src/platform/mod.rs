//! The platform seam: everything that talks to the OS about processes and files.
//!
//! Business logic (the supervisor, the sampler) calls only what this module
//! exports; nothing above it carries `cfg(target_os)`. Linux is the one
//! implementation today. Another OS gets its own file with the same names
//! (spawn into a new session, a process handle that can be waited on without
//! polling and signalled without PID-reuse races, a stat sampler).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(target_os = "linux")]
pub mod agent_dir;
#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod connector;
#[cfg(target_os = "linux")]
pub mod files;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "corral runs on Linux only for now: the platform seam has no other implementation yet"
);

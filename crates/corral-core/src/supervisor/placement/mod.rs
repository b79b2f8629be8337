//! Where an agent's runs execute: this host, or a cluster engine.
//!
//! The seam. An agent's life — spawn → verify → observe → staged stop → end →
//! record, restarts included — is its actor's, whatever the placement: the
//! state machine (`state.rs`), the records, events, restart policy, spawn
//! answers and stop reports are shared. What differs is *how* a run does each
//! step, and the actor asks the run's placement at exactly these points:
//!
//! | step | this host (`LiveRun`, `run.rs`/`exit.rs`/`stop.rs`) | Slurm (`JobRun`, `job.rs`) |
//! |---|---|---|
//! | start | files, then `clone3` into a cgroup leaf | files and a batch script, then `sbatch` |
//! | started | the exec succeeded | the engine says RUNNING |
//! | verify | alive when the window closes (pidfd) | RUNNING in a poll begun after the window |
//! | observe | the sampler's `/proc` scan | the engine's batched poll and `sstat` |
//! | end | pidfd readable, exit read `WNOWAIT` | a final state, exit from the engine |
//! | stop stage | signal the group, members, `cgroup.kill` | `scancel --signal=TERM --full` ×2, then KILL |
//! | gone | no member left in `/proc` | ended, and nothing left in `/proc` when on this host |
//! | adopt | same pid, start time and boot | same job id, name and tag |
//!
//! A run is one or the other (`Actor::run` or `Actor::job`), never both.

pub(crate) mod job;
pub(crate) mod slurm;

use crate::model::{Placement, SlurmPlacement};

/// The Slurm placement of a request, if it has one.
pub(crate) fn slurm_of(placement: Option<&Placement>) -> Option<&SlurmPlacement> {
    placement.and_then(|p| p.slurm.as_ref())
}

/// A tag that names a run among every job of a cluster: this host, this
/// state dir, the run's row. Written into the job's comment at submission and
/// looked for again after a daemon restart, before the job id is on record.
pub(crate) fn job_tag(host: &str, state_dir: &std::path::Path, run_id: i64) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across builds and runs (unlike the std hasher).
    let hash = state_dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("corral:{host}:{hash:016x}:{run_id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tag_names_host_state_dir_and_run() {
        let a = super::job_tag("vm", std::path::Path::new("/s/one"), 7);
        assert_eq!(a, super::job_tag("vm", std::path::Path::new("/s/one"), 7));
        assert_ne!(a, super::job_tag("vm", std::path::Path::new("/s/two"), 7));
        assert_ne!(a, super::job_tag("vm", std::path::Path::new("/s/one"), 8));
        assert!(a.starts_with("corral:vm:") && a.ends_with(":7"), "{a}");
    }
}

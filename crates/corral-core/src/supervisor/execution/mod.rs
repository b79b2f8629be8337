//! Where an agent's runs execute: this host, or a cluster engine.
//!
//! The seam. An agent's life — spawn → verify → observe → staged stop → end →
//! record, restarts included — is its owner's, whatever the placement: the
//! lifecycle (`lifecycle/`), the records, events, restart policy, spawn
//! answers and stop reports are shared. What differs is *how* a run does each
//! step, and the owner asks the run's [`Execution`] at exactly these points:
//!
//! | step | this host ([`LocalRun`], `local.rs`, `tree.rs`) | Slurm ([`JobRun`], `job.rs`) |
//! |---|---|---|
//! | start | files, then `clone3` into a cgroup leaf | files and a batch script, then `sbatch` |
//! | started | the exec succeeded | the engine says RUNNING |
//! | verify | alive when the window closes (pidfd) | RUNNING in a poll begun after the window |
//! | observe | the sampler's `/proc` scan | the engine's batched poll and `sstat` |
//! | end | pidfd readable, exit read `WNOWAIT` | a final state, exit from the engine |
//! | leftovers | the cgroup leaf, or group, session, orphans and followed forks | the engine's (`scancel --full`) |
//! | stop stage | signal the group, members, `cgroup.kill` | `scancel --signal=TERM --full` ×2, then KILL |
//! | gone | no member left in `/proc` | ended, and nothing left in `/proc` when on this host |
//! | adopt | same pid, start time and boot | same job id, name and tag |
//! | pause | `cgroup.freeze` of the leaf, or SIGSTOP to every member (`pause.rs`) | refused |

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod job;
pub(crate) mod local;
pub(crate) mod pause;
pub(crate) mod slurm;
pub(crate) mod tree;

use std::time::Instant;

use crate::model::{Placement, SlurmPlacement, StopStage};

pub(crate) use job::JobRun;
pub(crate) use local::LocalRun;
pub(crate) use tree::{Look, Remnant};

use super::Shared;

/// Where the current run executes.
pub(crate) enum Execution {
    /// A process tree on this host.
    Local(LocalRun),
    /// A job on a cluster engine.
    Job(Box<JobRun>),
    /// What is left on this host of a run whose main process is gone (found
    /// by a new daemon): stopped like leftovers.
    Remnant(Box<Remnant>),
    /// A run of the fake platform (the owner's deterministic tests).
    #[cfg(test)]
    Fake(Box<fake::FakeRun>),
}

/// What woke an owner about its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The main process exited.
    MainExit,
    /// The tree being stopped may have changed: look again.
    Tree,
    /// The job's state changed.
    Job,
}

impl Execution {
    /// Resolves when something about the run changed (`stopping`: a stop
    /// watches the tree too).
    pub(crate) async fn event(&mut self, stopping: bool) -> Event {
        match self {
            Self::Local(run) => run.event(stopping).await,
            Self::Job(job) => job.event().await,
            Self::Remnant(r) => {
                r.changed().await;
                Event::Tree
            }
            #[cfg(test)]
            Self::Fake(f) => f.event(stopping).await,
        }
    }

    /// The main process's pid (none on an engine).
    pub(crate) fn pid(&self) -> Option<i32> {
        match self {
            Self::Local(run) => Some(run.pid()),
            Self::Job(_) | Self::Remnant(_) => None,
            #[cfg(test)]
            Self::Fake(_) => None,
        }
    }

    /// Since when it runs (monotonic), for the runtime limit; none while queued.
    pub(crate) fn running_since(&self) -> Option<Instant> {
        match self {
            Self::Local(run) => Some(run.started),
            Self::Job(job) => job.running_since,
            Self::Remnant(_) => None,
            #[cfg(test)]
            Self::Fake(f) => Some(f.started),
        }
    }

    /// The main process's end has been read (or the engine reported it).
    pub(crate) fn main_exited(&self) -> bool {
        match self {
            Self::Local(run) => run.exited,
            Self::Job(job) => job.ended,
            Self::Remnant(_) => true,
            #[cfg(test)]
            Self::Fake(f) => f.exited,
        }
    }

    /// The main process's end is on record (and ours is reaped).
    pub(crate) fn main_recorded(&self) -> bool {
        match self {
            Self::Local(run) => run.ended,
            Self::Job(job) => job.recorded,
            Self::Remnant(_) => true,
            #[cfg(test)]
            Self::Fake(f) => f.recorded,
        }
    }

    pub(crate) fn set_probes(&mut self, task: Option<super::probes::Registration>) {
        match self {
            Self::Local(run) => run.probes = task,
            Self::Job(job) => job.probes = task,
            Self::Remnant(_) => drop(task),
            #[cfg(test)]
            Self::Fake(_) => drop(task),
        }
    }

    /// Sends `stage`'s signal to the run (once per stage).
    pub(crate) fn open_stage(&mut self, sh: &Shared, stage: StopStage) {
        match self {
            Self::Local(run) => run.open_stage(sh, stage),
            Self::Job(job) => job.open_stage(stage),
            Self::Remnant(r) => r.open_stage(sh, stage),
            #[cfg(test)]
            Self::Fake(f) => f.open_stage(stage),
        }
    }

    /// One look at what is left of the run, signalling what is new.
    pub(crate) async fn look(
        &mut self,
        sh: &std::sync::Arc<Shared>,
        agent_id: &str,
        stage: StopStage,
    ) -> Look {
        match self {
            Self::Local(run) => run.look(sh, agent_id, stage).await,
            Self::Job(job) => job.look(agent_id, stage).await,
            Self::Remnant(r) => r.look(sh, agent_id, stage).await,
            #[cfg(test)]
            Self::Fake(f) => f.look(stage),
        }
    }

    /// Whether the main process left something of its tree running (asked
    /// once it has exited, before its end is recorded).
    pub(crate) async fn leftovers(&mut self, sh: &std::sync::Arc<Shared>, agent_id: &str) -> bool {
        match self {
            Self::Local(run) => run.leftovers(sh, agent_id).await,
            // The engine ends a job with its whole allocation.
            Self::Job(_) => false,
            Self::Remnant(r) => r.leftovers(sh, agent_id).await,
            #[cfg(test)]
            Self::Fake(f) => f.leftovers(),
        }
    }

    /// Until when something signalled moments ago may still be dying (the
    /// kill stage's wait ends at `deadline`).
    pub(crate) fn settle_until(&self, deadline: Instant) -> Option<Instant> {
        match self {
            Self::Local(run) => run.settle_until(),
            Self::Job(job) => job.settle_until(deadline),
            Self::Remnant(r) => r.settle_until(),
            #[cfg(test)]
            Self::Fake(f) => f.settle_until(),
        }
    }

    /// Members of the tree a stop has seen (none known on an engine).
    pub(crate) fn descendants(&self) -> Option<u32> {
        match self {
            Self::Local(run) => Some(run.descendants()),
            Self::Job(_) => None,
            Self::Remnant(r) => Some(r.descendants()),
            #[cfg(test)]
            Self::Fake(f) => Some(f.descendants()),
        }
    }

    /// Whether the stop could see the whole tree (`Err` says why a process
    /// may have escaped it); none on an engine, which stops the tree itself.
    pub(crate) fn sight(&self) -> Option<Result<(), String>> {
        match self {
            Self::Local(run) => run.sight(),
            Self::Job(_) => None,
            Self::Remnant(r) => r.sight(),
            #[cfg(test)]
            Self::Fake(_) => None,
        }
    }

    /// Why the run cannot be paused, when it cannot.
    pub(crate) fn unpausable(&self) -> Option<String> {
        match self {
            Self::Local(_) => None,
            Self::Job(job) => Some(format!(
                "it runs as {} job {}; pausing a job on a cluster engine is not supported \
                 (`scontrol suspend` needs the cluster's operator rights)",
                job.record.engine, job.record.job_id
            )),
            Self::Remnant(_) => Some("its main process has ended".to_owned()),
            #[cfg(test)]
            Self::Fake(_) => None,
        }
    }

    /// Freezes the run's whole tree (see `pause.rs`).
    pub(crate) async fn freeze(
        &mut self,
        sh: &std::sync::Arc<Shared>,
        agent_id: &str,
    ) -> Result<pause::Frozen, String> {
        match self {
            Self::Local(run) => run.freeze(sh, agent_id).await,
            #[cfg(test)]
            Self::Fake(f) => Ok(f.set_frozen(true)),
            _ => Err(self
                .unpausable()
                .unwrap_or_else(|| "it cannot be paused".to_owned())),
        }
    }

    /// Thaws the run's whole tree (see `pause.rs`).
    pub(crate) async fn thaw(
        &mut self,
        sh: &std::sync::Arc<Shared>,
        agent_id: &str,
    ) -> Result<pause::Frozen, String> {
        match self {
            Self::Local(run) => run.thaw(sh, agent_id).await,
            Self::Remnant(r) => r.thaw(sh).await,
            Self::Job(_) => Err(self
                .unpausable()
                .unwrap_or_else(|| "it cannot be thawed".to_owned())),
            #[cfg(test)]
            Self::Fake(f) => Ok(f.set_frozen(false)),
        }
    }

    /// The run's cgroup leaf, when it has one.
    pub(crate) fn leaf(&self) -> Option<&crate::platform::cgroup::Leaf> {
        match self {
            Self::Local(run) => run.leaf(),
            Self::Job(_) => None,
            Self::Remnant(r) => r.leaf(),
            #[cfg(test)]
            Self::Fake(_) => None,
        }
    }
}

/// The Slurm placement of a request, if it has one.
pub(crate) fn slurm_of(placement: Option<&Placement>) -> Option<&SlurmPlacement> {
    placement.and_then(|p| p.slurm.as_ref())
}

/// A tag that names a run among every job of a cluster: this host, this
/// state dir, the run's row. Written into the job's comment at submission and
/// looked for again after a daemon restart, before the job id is on record.
pub(crate) fn job_tag(host: &str, state_dir: &std::path::Path, run_id: i64) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = corral_proto::fnv1a(state_dir.as_os_str().as_bytes());
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

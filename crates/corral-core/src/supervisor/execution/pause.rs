//! Pausing a run on this host: freezing its whole tree, and thawing it.
//!
//! - **In a cgroup leaf** the kernel does it: `1` in the leaf's
//!   `cgroup.freeze` freezes every process in it — those forked while the
//!   freeze takes effect too — and `frozen 1` in its `cgroup.events` says when
//!   it is complete (a pause waits for that, up to [`FREEZE_WAIT`]: a process
//!   in uninterruptible sleep freezes only when it leaves it). `0` thaws them.
//!   A frozen process does not run and cannot fork; SIGKILL still ends it,
//!   other signals wait until it is thawed.
//! - **Without a cgroup**, SIGSTOP goes to every member of the tree: first to
//!   the agent's process group (one `kill(2)`, atomic for the group), then to
//!   every member a fresh scan of the process table finds as a stop finds
//!   them (the session, the orphans carrying the agent's id, what the
//!   process-events connector saw forked under the run, and descendants),
//!   each through a pidfd opened with its start time checked, so never a
//!   stranger. A stopped process cannot fork, but a member may fork in the
//!   instant before its SIGSTOP lands (a signalled process stops when it
//!   next runs), and its child may be missing from the scan that stopped
//!   it: scans repeat until one finds no member left running (for up to
//!   [`FREEZE_WAIT`]; one still running then, in uninterruptible sleep,
//!   stops when it leaves it). What is left uncovered is what a stop
//!   without a cgroup cannot see either: a descendant that left the session
//!   and cleared its environment while the connector was not following the
//!   tree. A thaw sends SIGCONT to the group, to every member the pause
//!   stopped, and to every member found now — one the agent had stopped
//!   itself before the pause is continued too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;

use crate::platform::ProcessHandle;
use crate::platform::cgroup::Leaf;

use super::super::Shared;
use super::local::LocalRun;
use super::tree::Remnant;

/// Longest a pause waits for the kernel to say the leaf is frozen.
pub(crate) const FREEZE_WAIT: Duration = Duration::from_secs(2);
/// How often it looks meanwhile.
const FREEZE_POLL: Duration = Duration::from_millis(10);

/// What a freeze or a thaw did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frozen {
    /// `cgroup` or `signals`.
    pub method: &'static str,
    /// Processes of the tree it reached.
    pub processes: u32,
    /// What is worth knowing about how it went, if anything.
    pub note: Option<String>,
}

/// Freezes (or thaws) `leaf` on the cgroup lane, then waits (bounded) until
/// the kernel says it is done.
async fn set_leaf(sh: &Shared, leaf: &Leaf, freeze: bool) -> Result<Frozen, String> {
    let l = leaf.clone();
    sh.cgroup_lane
        .run(
            move || l.set_frozen(freeze),
            Err(std::io::Error::other("the cgroup lane failed")),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot write {}: {e}",
                leaf.dir().join("cgroup.freeze").display()
            )
        })?;
    let end = super::super::now() + FREEZE_WAIT;
    loop {
        let l = leaf.clone();
        let (done, pids) = sh
            .cgroup_lane
            .run(move || (l.frozen() == freeze, l.pids().len()), (false, 0))
            .await;
        let processes = u32::try_from(pids).unwrap_or(u32::MAX);
        if done || !freeze {
            // A thaw takes effect at once: nothing to wait for.
            return Ok(Frozen {
                method: "cgroup",
                processes,
                note: None,
            });
        }
        if super::super::now() >= end {
            return Ok(Frozen {
                method: "cgroup",
                processes,
                note: Some(format!(
                    "the kernel had not finished freezing the tree after {} s (a process in \
                     uninterruptible sleep freezes when it leaves it); it stays paused",
                    FREEZE_WAIT.as_secs()
                )),
            });
        }
        tokio::time::sleep(FREEZE_POLL).await;
    }
}

/// A stopped (or traced) process, or one that is gone.
fn stopped_state(state: char) -> bool {
    matches!(state, 'T' | 't' | 'Z' | 'X')
}

/// Sends `sig` to the process `id` names, if it is still that process.
fn signal_member(id: (i32, u64), sig: Signal) -> bool {
    match ProcessHandle::open_member(id.0, id.1) {
        Ok(Some(h)) => h.signal(sig).is_ok(),
        _ => false,
    }
}

impl LocalRun {
    /// Freezes the run's whole tree: its cgroup leaf, or every member by
    /// SIGSTOP (see the module docs). Asking again is harmless.
    pub(crate) async fn freeze(
        &mut self,
        sh: &Arc<Shared>,
        agent_id: &str,
    ) -> Result<Frozen, String> {
        if let Some(leaf) = self.leaf().cloned() {
            return set_leaf(sh, &leaf, true).await;
        }
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        self.proc_
            .handle
            .signal_group(Signal::STOP)
            .map_err(|e| format!("cannot send SIGSTOP to the agent's process group: {e}"))?;
        self.stopped.insert(leader);
        let end = super::super::now() + FREEZE_WAIT;
        let running = loop {
            let members = self.members_now(sh, agent_id).await;
            let running: Vec<(i32, u64)> = members
                .iter()
                .filter(|m| !stopped_state(m.state))
                .map(|m| (m.pid, m.start_ticks))
                .collect();
            self.stopped.extend(
                members
                    .iter()
                    .filter(|m| m.state != 'Z')
                    .map(|m| (m.pid, m.start_ticks)),
            );
            // A process stops when it next runs: on a busy machine, a
            // moment after its SIGSTOP. Sent again, it is still one pending
            // stop; a member forked meanwhile gets its first.
            for id in &running {
                signal_member(*id, Signal::STOP);
            }
            if running.is_empty() || super::super::now() >= end {
                break running;
            }
            tokio::time::sleep(FREEZE_POLL).await;
        };
        let note = (!running.is_empty()).then(|| {
            format!(
                "{} of its processes had not stopped after {} s (a process in uninterruptible \
                 sleep stops when it leaves it); it stays paused",
                running.len(),
                FREEZE_WAIT.as_secs()
            )
        });
        Ok(Frozen {
            method: "signals",
            processes: u32::try_from(self.stopped.len()).unwrap_or(u32::MAX),
            note,
        })
    }

    /// Thaws the run's whole tree: its cgroup leaf, or SIGCONT to the group,
    /// to every member the pause stopped and to every member found now.
    pub(crate) async fn thaw(
        &mut self,
        sh: &Arc<Shared>,
        agent_id: &str,
    ) -> Result<Frozen, String> {
        if let Some(leaf) = self.leaf().cloned() {
            return set_leaf(sh, &leaf, false).await;
        }
        let _ = self.proc_.handle.signal_group(Signal::CONT);
        let members = self.members_now(sh, agent_id).await;
        let mut all: HashSet<(i32, u64)> = std::mem::take(&mut self.stopped);
        all.extend(
            members
                .iter()
                .filter(|m| m.state != 'Z')
                .map(|m| (m.pid, m.start_ticks)),
        );
        let reached = all
            .into_iter()
            .filter(|id| signal_member(*id, Signal::CONT))
            .count();
        Ok(Frozen {
            method: "signals",
            processes: u32::try_from(reached).unwrap_or(u32::MAX),
            note: None,
        })
    }
}

impl Remnant {
    /// Thaws what is left of a run whose main process ended while it was
    /// paused: its cgroup leaf, or SIGCONT to every member seen.
    pub(crate) async fn thaw(&mut self, sh: &Arc<Shared>) -> Result<Frozen, String> {
        if let Some(leaf) = self.leaf().cloned() {
            return set_leaf(sh, &leaf, false).await;
        }
        let reached = self
            .seen()
            .into_iter()
            .filter(|id| signal_member(*id, Signal::CONT))
            .count();
        Ok(Frozen {
            method: "signals",
            processes: u32::try_from(reached).unwrap_or(u32::MAX),
            note: None,
        })
    }
}

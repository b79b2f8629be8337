//! Reaping what is not an agent's own: orphans, and the empty cgroups of
//! ended runs.
//!
//! As a subreaper, the daemon is the parent of every descendant of an agent
//! whose own parent died. It reaps them on every SIGCHLD, by pid, never an
//! agent or a helper (their pids are in `owned`, entered under the spawn gate
//! before the sweep can look) and never with `waitpid(-1)`. An agent's own
//! exit is its owner's: read without reaping, reaped once its end is on
//! record.

use std::collections::HashMap;
use std::sync::Arc;

use crate::id::AgentId;
use crate::platform;

use super::{Shared, lock};

/// Reaps orphans on every SIGCHLD. Agents' own exits are left to their owners.
pub(crate) fn start_orphan_reaper(sh: &Arc<Shared>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = signal(SignalKind::child())?;
    let weak = Arc::downgrade(sh);
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            let Some(sh) = weak.upgrade() else { return };
            let _ = tokio::task::spawn_blocking(move || reap_orphans(&sh)).await;
        }
    });
    Ok(())
}

/// Reaps every exited child that is not an agent (descendants of agents that
/// were reparented to this subreaper). Returns how many it reaped.
pub(crate) fn reap_orphans(sh: &Shared) -> usize {
    // Read /proc first; then, with spawns held off, skip every agent: a new
    // agent's pid enters `owned` before its spawn lets go of the gate, so no
    // agent's exit status can be taken here.
    let children = platform::own_children();
    let mut reaped = 0;
    {
        let _gate = sh.spawn_gate.write().unwrap_or_else(|p| p.into_inner());
        let owned = lock(&sh.owned).clone();
        for pid in children.into_iter().filter(|pid| !owned.contains(pid)) {
            if let Some(exit) = platform::reap_child(pid) {
                reaped += 1;
                tracing::debug!(pid, ?exit, "reaped an orphan");
            }
        }
    }
    if reaped > 0 {
        // An orphan may have been the last process in an ended run's cgroup.
        sweep_empty_leaves(sh, false);
        sh.reaps.send_modify(|n| *n += 1);
    }
    reaped
}

/// Removes every empty cgroup leaf of this state dir's subtree (runs that
/// ended, whose orphans are gone). A live run's leaf is never empty: spawns
/// create their leaf and start their process in it while holding the spawn
/// gate, which this holds exclusively. With `warn`, says which ended runs
/// still have processes running.
pub(crate) fn sweep_empty_leaves(sh: &Shared, warn: bool) {
    let Ok(root) = &sh.cgroup else { return };
    let _gate = sh.spawn_gate.write().unwrap_or_else(|p| p.into_inner());
    let Ok(entries) = std::fs::read_dir(root.dir()) else {
        return;
    };
    let live: std::collections::HashSet<String> = if warn {
        lock(&sh.registry)
            .values()
            .filter_map(|slot| slot.published.borrow().view.clone())
            .filter(|v| v.state.is_busy())
            .map(|v| super::leaf_name(v.id.as_str(), v.run))
            .collect()
    } else {
        Default::default()
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let leaf = root.leaf(&name);
        if !leaf.populated() {
            if let Err(e) = root.remove_leaf(&leaf) {
                tracing::warn!(cgroup = %leaf.dir().display(), error = %e, "cannot remove an empty cgroup");
            }
        } else if warn && !live.contains(&name) {
            tracing::warn!(cgroup = %leaf.dir().display(), "processes of an ended run are still running in its cgroup");
        }
    }
    // An idle subtree is not left behind (it fails while a leaf remains).
    let _ = std::fs::remove_dir(root.dir());
}

/// Which agent process `pid` belongs to (blocking: reads `/proc`): its cgroup
/// leaf under corral's subtree; else its session leader or an ancestor being a
/// live agent; else the `CORRAL_AGENT_ID` it inherited.
pub(crate) fn agent_of_process(
    pid: i32,
    live: &HashMap<i32, AgentId>,
    cgroup_root: Option<&crate::platform::cgroup::CgroupRoot>,
    by_environment: bool,
) -> Option<AgentId> {
    if let Some(root) = cgroup_root
        && let Some(id) = agent_by_cgroup(pid, root)
    {
        return Some(id);
    }
    let table = platform::process_table();
    let by_pid: HashMap<i32, &platform::ProcEntry> = table.iter().map(|p| (p.pid, p)).collect();
    let mut cur = by_pid.get(&pid).copied();
    for _ in 0..64 {
        let Some(p) = cur else { break };
        for candidate in [p.pid, p.session, p.pgrp] {
            if let Some(id) = live.get(&candidate) {
                return Some(id.clone());
            }
        }
        cur = by_pid.get(&p.ppid).copied().filter(|q| q.pid > 1);
    }
    if !by_environment {
        return None;
    }
    platform::environ_agent_id(pid).and_then(|id| AgentId::new(id).ok())
}

/// The agent whose cgroup leaf holds `pid`, by the leaf's name.
pub(crate) fn agent_by_cgroup(
    pid: i32,
    root: &crate::platform::cgroup::CgroupRoot,
) -> Option<AgentId> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let leaf = root.leaf_named_in(&text)?;
    // Leaves are `<id>.<run>`.
    let (id, run) = leaf.rsplit_once('.')?;
    run.parse::<u32>().ok()?;
    AgentId::new(id).ok()
}

/// Reaps every zombie child of this process that is no agent's own (an
/// orphan of an agent's tree), attributing each to the agent whose session
/// or process group it was in (`leaders`: agent pids). Returns, per zombie
/// reaped, its agent when known.
pub(crate) fn reap_attributed(
    sh: &Shared,
    leaders: &HashMap<i32, AgentId>,
) -> Vec<Option<AgentId>> {
    let children = platform::own_children();
    let mut reaped = Vec::new();
    {
        let _gate = sh.spawn_gate.write().unwrap_or_else(|p| p.into_inner());
        let owned = lock(&sh.owned).clone();
        for pid in children.into_iter().filter(|pid| !owned.contains(pid)) {
            let Ok(text) = std::fs::read(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Ok(stat) = platform::parse_stat(&text) else {
                continue;
            };
            if stat.state != 'Z' {
                continue;
            }
            // Our unreaped child: its pid cannot have been reused since the read.
            if platform::reap_child(pid).is_some() {
                let agent = leaders
                    .get(&stat.session)
                    .or_else(|| leaders.get(&stat.pgrp))
                    .cloned();
                tracing::debug!(pid, agent = ?agent, "reaped an orphan on request");
                reaped.push(agent);
            }
        }
    }
    if !reaped.is_empty() {
        sweep_empty_leaves(sh, false);
        sh.reaps.send_modify(|n| *n += 1);
    }
    reaped
}

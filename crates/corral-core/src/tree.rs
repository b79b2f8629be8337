//! Which processes belong to an agent: its process tree, found in a snapshot of
//! the process table.
//!
//! An agent's members are, starting from the agent itself:
//! - every process in its process group or session — only while the agent's own
//!   process is not yet reaped (its pid, and so the group and session ids,
//!   cannot be reused before corral reaps it);
//! - every process already known as a member, if the same (pid, start time)
//!   still exists;
//! - orphans reparented to the daemon (a subreaper) that were started under this
//!   agent, recognised by the `CORRAL_AGENT_ID` they inherited;
//! - every process in the agent's cgroup, when it has one;
//! - and every descendant of those, through parent links.
//!
//! A descendant that calls `setsid` and whose parent then dies before anything
//! sees it can only be found through its environment; cgroup containment (where
//! the machine allows it) does not have that gap.

use std::collections::{HashMap, HashSet};

use crate::platform::ProcEntry;

/// What is known about one agent when its tree is looked up.
pub struct Lookup<'a> {
    /// The agent's pid.
    pub leader: i32,
    /// The agent's start time: a pid that was reused is not the agent.
    pub leader_start: u64,
    /// The agent's own process is not yet reaped.
    pub leader_unreaped: bool,
    /// The daemon's pid (orphans are reparented to it).
    pub daemon: i32,
    /// Members seen before: (pid, start ticks).
    pub known: &'a HashSet<(i32, u64)>,
    /// Pids the daemon watches itself (agents): never orphans of another agent.
    pub owned: &'a HashSet<i32>,
    /// Whether an orphan of the daemon was started under this agent.
    pub started_under: &'a dyn Fn(i32) -> bool,
    /// Pids in the agent's cgroup, when it has one.
    pub contained: &'a HashSet<i32>,
}

/// The agent's members in `table`, the agent itself included when present.
pub fn members(table: &[ProcEntry], q: &Lookup<'_>) -> Vec<ProcEntry> {
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in table.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    let mut picked: HashSet<usize> = HashSet::new();
    let mut stack: Vec<usize> = Vec::new();
    for (i, p) in table.iter().enumerate() {
        if p.pid == q.daemon || p.pid <= 1 {
            continue;
        }
        let root = (p.pid == q.leader && p.start_ticks == q.leader_start)
            || (q.leader_unreaped && (p.pgrp == q.leader || p.session == q.leader))
            || q.known.contains(&(p.pid, p.start_ticks))
            || q.contained.contains(&p.pid)
            || (p.ppid == q.daemon && !q.owned.contains(&p.pid) && (q.started_under)(p.pid));
        if root && picked.insert(i) {
            stack.push(i);
        }
    }
    while let Some(i) = stack.pop() {
        if let Some(kids) = children.get(&table[i].pid) {
            for &k in kids {
                if table[k].pid != q.daemon && picked.insert(k) {
                    stack.push(k);
                }
            }
        }
    }
    let mut out: Vec<ProcEntry> = picked.into_iter().map(|i| table[i]).collect();
    out.sort_by_key(|p| p.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32, session: i32) -> ProcEntry {
        ProcEntry {
            pid,
            ppid,
            pgrp,
            session,
            start_ticks: pid as u64 * 10,
            state: 'S',
        }
    }

    fn pids(v: &[ProcEntry]) -> Vec<i32> {
        v.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn finds_group_session_descendants_and_attributed_orphans() {
        let daemon = 100;
        let table = vec![
            p(1, 0, 1, 1),
            p(daemon, 1, 100, 100),
            p(200, daemon, 200, 200), // the agent
            p(201, 200, 200, 200),    // background child
            p(202, 201, 202, 202),    // setsid grandchild, parent alive
            p(203, 202, 202, 202),    // its child
            p(300, daemon, 300, 300), // another agent
            p(301, 300, 300, 300),
            p(400, daemon, 400, 400), // an orphan that left agent 200 (setsid + parent died)
            p(500, daemon, 500, 500), // an orphan of agent 300
        ];
        let known = HashSet::new();
        let owned = HashSet::from([200, 300]);
        let started_under = |pid: i32| pid == 400;
        let q = Lookup {
            leader: 200,
            leader_start: 2000,
            leader_unreaped: true,
            daemon,
            known: &known,
            owned: &owned,
            started_under: &started_under,
            contained: &HashSet::new(),
        };
        assert_eq!(pids(&members(&table, &q)), [200, 201, 202, 203, 400]);
    }

    #[test]
    fn after_the_leader_is_reaped_only_known_identities_count() {
        let daemon = 100;
        // 200 was reaped and its number reused by a stranger that leads its own session.
        let stranger = ProcEntry {
            start_ticks: 99_999,
            ..p(200, 1, 200, 200)
        };
        let table = vec![p(daemon, 1, 100, 100), stranger, p(201, daemon, 200, 200)];
        let known = HashSet::from([(201, 2010)]);
        let owned = HashSet::new();
        let never = |_: i32| false;
        let q = Lookup {
            leader: 200,
            leader_start: 2000,
            leader_unreaped: false,
            daemon,
            known: &known,
            owned: &owned,
            started_under: &never,
            contained: &HashSet::new(),
        };
        assert_eq!(pids(&members(&table, &q)), [201]);
    }
}

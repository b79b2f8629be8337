//! Which processes belong to an agent: its process tree, found in an indexed
//! snapshot of the process table.
//!
//! An agent's members are, starting from the agent itself (matched by pid *and*
//! start time, so a reused pid is never taken for it):
//! - every process in its process group or session — only while the agent's own
//!   process is not yet reaped (its pid, and so the group and session ids,
//!   cannot be reused before corral reaps it);
//! - every process already known as a member, if the same (pid, start time)
//!   still exists;
//! - every process in the agent's cgroup, when it has one;
//! - orphans reparented to the daemon (a subreaper) that were started under this
//!   agent, recognised by the `CORRAL_AGENT_ID` they inherited;
//! - and every descendant of those, through parent links.
//!
//! Without a cgroup, a descendant that calls `setsid`, clears its environment
//! and loses its parent before any stop looks has nothing left in `/proc`
//! that ties it to its agent: only the forks followed as they happen
//! (`platform::connector`, handed in as `known`) still name it. What this
//! module can say about such processes is that they exist: the daemon's
//! children that are neither agents nor carry an agent id are *unattributed*
//! (with a subreaping daemon, every orphan of every tree is its child), and a
//! stop that cannot exclude one of them being its own says so.
//!
//! A snapshot is indexed once (by pid, parent, group and session), so looking up
//! one agent costs the size of its tree, not of the whole table: a thousand
//! concurrent stops share each scan.

use std::collections::{HashMap, HashSet};

use crate::platform::ProcEntry;

/// The process table at one instant, indexed.
pub(crate) struct Snapshot {
    entries: Vec<ProcEntry>,
    by_pid: HashMap<i32, usize>,
    children: HashMap<i32, Vec<usize>>,
    by_pgrp: HashMap<i32, Vec<usize>>,
    by_session: HashMap<i32, Vec<usize>>,
    /// Orphans of the daemon by the agent they were started under.
    orphans: HashMap<String, Vec<usize>>,
    /// Live children of the daemon that are not agents and carry no agent id.
    unattributed: Vec<usize>,
}

impl Snapshot {
    /// Indexes a scan of the process table.
    pub fn new(entries: Vec<ProcEntry>) -> Self {
        let mut s = Self {
            by_pid: HashMap::with_capacity(entries.len()),
            children: HashMap::new(),
            by_pgrp: HashMap::new(),
            by_session: HashMap::new(),
            orphans: HashMap::new(),
            unattributed: Vec::new(),
            entries,
        };
        for (i, p) in s.entries.iter().enumerate() {
            s.by_pid.insert(p.pid, i);
            s.children.entry(p.ppid).or_default().push(i);
            s.by_pgrp.entry(p.pgrp).or_default().push(i);
            s.by_session.entry(p.session).or_default().push(i);
        }
        s
    }

    /// Attributes the daemon's children that are not agents (orphans reparented
    /// to it) to the agents they were started under, and keeps the live ones
    /// that name none as unattributed. Done once per snapshot, so each
    /// orphan's environment is read once however many agents are looked up.
    pub fn attribute_orphans(
        &mut self,
        daemon: i32,
        owned: &HashSet<i32>,
        agent_of: impl Fn(i32) -> Option<String>,
    ) {
        for &i in self.children.get(&daemon).into_iter().flatten() {
            let pid = self.entries[i].pid;
            if owned.contains(&pid) {
                continue;
            }
            match agent_of(pid) {
                Some(agent) => self.orphans.entry(agent).or_default().push(i),
                None if self.entries[i].state != 'Z' => self.unattributed.push(i),
                None => {}
            }
        }
    }

    /// The daemon's live children that are neither agents nor carry an agent
    /// id: orphans that may belong to any agent's tree.
    pub fn unattributed(&self) -> impl Iterator<Item = &ProcEntry> {
        self.unattributed.iter().map(|&i| &self.entries[i])
    }

    /// The entry of `pid` if it has start time `start`.
    fn identity(&self, pid: i32, start: u64) -> Option<usize> {
        self.by_pid
            .get(&pid)
            .copied()
            .filter(|i| self.entries[*i].start_ticks == start)
    }
}

/// What is known about one agent when its tree is looked up.
pub(crate) struct Lookup<'a> {
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
    /// The agent's id (orphans are attributed by it).
    pub agent_id: &'a str,
    /// Pids in the agent's cgroup, when it has one.
    pub contained: &'a [i32],
}

/// The agent's members in `snap`, the agent itself included when present.
pub(crate) fn members(snap: &Snapshot, q: &Lookup<'_>) -> Vec<ProcEntry> {
    let mut picked: HashSet<usize> = HashSet::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut root = |i: usize| {
        let p = &snap.entries[i];
        if p.pid != q.daemon && p.pid > 1 && picked.insert(i) {
            stack.push(i);
        }
    };
    if let Some(i) = snap.identity(q.leader, q.leader_start) {
        root(i);
    }
    if q.leader_unreaped {
        for i in [&snap.by_pgrp, &snap.by_session]
            .into_iter()
            .filter_map(|index| index.get(&q.leader))
            .flatten()
        {
            root(*i);
        }
    }
    for &(pid, start) in q.known {
        if let Some(i) = snap.identity(pid, start) {
            root(i);
        }
    }
    for pid in q.contained {
        if let Some(&i) = snap.by_pid.get(pid) {
            root(i);
        }
    }
    for &i in snap.orphans.get(q.agent_id).into_iter().flatten() {
        root(i);
    }
    while let Some(i) = stack.pop() {
        for &k in snap
            .children
            .get(&snap.entries[i].pid)
            .into_iter()
            .flatten()
        {
            if snap.entries[k].pid != q.daemon && picked.insert(k) {
                stack.push(k);
            }
        }
    }
    let mut out: Vec<ProcEntry> = picked.into_iter().map(|i| snap.entries[i]).collect();
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
            cpu_ticks: 0,
            rss_pages: 0,
            num_threads: 1,
        }
    }

    fn pids(v: &[ProcEntry]) -> Vec<i32> {
        v.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn finds_group_session_descendants_and_attributed_orphans() {
        let daemon = 100;
        let mut snap = Snapshot::new(vec![
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
        ]);
        let known = HashSet::new();
        let owned = HashSet::from([200, 300]);
        snap.attribute_orphans(daemon, &owned, |pid| match pid {
            400 => Some("a".into()),
            500 => Some("b".into()),
            _ => None,
        });
        let q = Lookup {
            leader: 200,
            leader_start: 2000,
            leader_unreaped: true,
            daemon,
            known: &known,
            agent_id: "a",
            contained: &[],
        };
        assert_eq!(pids(&members(&snap, &q)), [200, 201, 202, 203, 400]);
        assert!(snap.unattributed().next().is_none());
    }

    #[test]
    fn orphans_without_an_agent_id_are_unattributed_unless_zombies() {
        let daemon = 100;
        let zombie = ProcEntry {
            state: 'Z',
            ..p(402, daemon, 402, 402)
        };
        let mut snap = Snapshot::new(vec![
            p(daemon, 1, 100, 100),
            p(200, daemon, 200, 200), // an agent
            p(400, daemon, 400, 400), // env -i setsid, parent gone
            p(401, daemon, 401, 401), // an orphan that kept its agent id
            zombie,
            p(403, 400, 400, 400), // a child of the unattributed one
        ]);
        snap.attribute_orphans(daemon, &HashSet::from([200]), |pid| {
            (pid == 401).then(|| "a".to_owned())
        });
        let left: Vec<i32> = snap.unattributed().map(|p| p.pid).collect();
        assert_eq!(left, [400]);
    }

    #[test]
    fn a_reused_pid_is_never_a_member() {
        let daemon = 100;
        // 200 was reaped and its number reused by a stranger that leads its own session.
        let stranger = ProcEntry {
            start_ticks: 99_999,
            ..p(200, 1, 200, 200)
        };
        let snap = Snapshot::new(vec![
            p(daemon, 1, 100, 100),
            stranger,
            p(201, daemon, 200, 200),
        ]);
        let known = HashSet::from([(201, 2010)]);
        let q = Lookup {
            leader: 200,
            leader_start: 2000,
            leader_unreaped: false,
            daemon,
            known: &known,
            agent_id: "a",
            contained: &[],
        };
        assert_eq!(pids(&members(&snap, &q)), [201]);
    }

    #[test]
    fn cgroup_members_count_with_their_descendants() {
        let daemon = 100;
        let snap = Snapshot::new(vec![
            p(daemon, 1, 100, 100),
            p(600, 1, 600, 600),
            p(601, 600, 600, 600),
        ]);
        let no_known = HashSet::new();
        let q = Lookup {
            leader: 200,
            leader_start: 2000,
            leader_unreaped: false,
            daemon,
            known: &no_known,
            agent_id: "a",
            contained: &[600],
        };
        assert_eq!(pids(&members(&snap, &q)), [600, 601]);
    }
}

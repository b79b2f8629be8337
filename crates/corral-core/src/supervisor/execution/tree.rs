//! Stopping a local run's whole process tree: what each stage signals, and
//! when nothing of the tree is left.
//!
//! The stage and its deadline belong to the lifecycle; this module does the
//! work on the tree. Opening a stage signals the agent's group through its
//! still-unreaped pid (and, in the kill stage, writes `cgroup.kill`). Each look
//! finds the members — in a cgroup, the leaf's `cgroup.procs` and their
//! `stat` files (the leaf is the tree, as in systemd's control-group kill
//! mode: a stop of ten thousand costs small reads, not scans); without one,
//! the whole process table (shared by concurrent stops, [`TableCache`]) —
//! signals every member not yet signalled in the stage through a pidfd opened
//! with its start time checked, and watches those pidfds, so a member's exit,
//! an orphan sweep or a short recheck wakes the owner to look again. The
//! leaf reads and `cgroup.kill` writes of those looks go through one lane
//! thread ([`super::super::lane`]), not a blocking-pool thread each (a run's
//! leftovers check at its main's exit and a recovered remnant's look still
//! use the pool: one each per run, not one per stage).
//!
//! The tree is gone when the main process's end is on record (and, ours, it is
//! reaped), no member is alive, the cgroup leaf is empty, and every zombie
//! member that is this process's child is reaped: a member leaves
//! `cgroup.procs` when it exits, not when it is reaped, so an empty leaf alone
//! does not mean nothing is left in `/proc`. Zombies of other parents (a
//! re-adopted agent whose old parent does not reap) cannot be reaped here and
//! count as gone; their status says `zombie`.
//!
//! Without a cgroup, the members are the group, the session, the orphans
//! carrying the agent's id and their descendants (`crate::tree`) — and every
//! process the kernel's process-events connector saw forked under the run
//! (`platform::connector`, opened with the first such run; it needs root). A
//! look reads the connector only once it has caught up with every fork made
//! before the look, after the table's scan began, so a process forked and
//! orphaned just before a look is known to it.
//!
//! Each look also judges what it could see, for the stop report's `complete`.
//! With a cgroup, or a tree the connector followed from its birth without
//! losing an event, nothing can have escaped. Otherwise the daemon's
//! subreaping is the proof: every orphan of a tree this daemon started is
//! this daemon's child, so when no child of the daemon is left unattributed
//! (neither an agent, nor carrying an agent id, nor followed under another
//! run), nothing escaped. When that proof is not there — the connector
//! unavailable and an unattributed orphan alive, the daemon not a subreaper,
//! or the run adopted from an earlier daemon (its orphans went elsewhere) —
//! the report says the tree may be incomplete and why, instead of claiming
//! success.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::model::StopStage;
use crate::platform::connector::{Identity, ProcEvents};
use crate::platform::{self, ProcEntry, ProcessHandle, cgroup::Leaf};
use crate::tree;

use super::super::{Shared, lock};
use super::local::LocalRun;

/// How long a process SIGKILLed at the last moment gets to die before the
/// tree counts as having survived.
pub(crate) const KILL_SETTLE: Duration = Duration::from_millis(250);
/// How often a stop looks again when no event can wake it (a populated cgroup
/// whose members are not all known, zombies waiting for their parents).
const RECHECK: Duration = Duration::from_millis(10);

/// What a stop has seen and done to a tree.
pub(crate) struct Tracker {
    /// Every member seen: (pid, start ticks).
    seen: HashSet<(i32, u64)>,
    /// Members signalled in the current stage.
    signalled: HashSet<(i32, u64)>,
    /// The stage whose signal has gone to the agent's group.
    opened: Option<StopStage>,
    /// Pidfds of signalled members, to wake when one exits.
    watch: Vec<AsyncFd<Arc<ProcessHandle>>>,
    /// Orphan sweeps (a zombie member may be reaped by one).
    reaps: watch::Receiver<u64>,
    /// Look again then when nothing else can wake the stop.
    recheck: Option<Instant>,
    /// When a member was last signalled.
    last_signal: Option<Instant>,
    /// What the last look could see of the tree.
    sight: Option<Sight>,
}

impl Tracker {
    fn new(sh: &Shared) -> Self {
        Self {
            seen: HashSet::new(),
            signalled: HashSet::new(),
            opened: None,
            watch: Vec::new(),
            reaps: sh.reaps.subscribe(),
            recheck: None,
            last_signal: None,
            sight: None,
        }
    }
}

/// The members of a tree whose main process is gone: those `known`, those
/// `contained` in its cgroup, its orphans, and their descendants.
fn remnant_members(
    table: &tree::Snapshot,
    known: &HashSet<Identity>,
    agent_id: &str,
    contained: &[i32],
) -> Vec<ProcEntry> {
    tree::members(
        table,
        &tree::Lookup {
            leader: 0,
            leader_start: 0,
            leader_unreaped: false,
            daemon: std::process::id() as i32,
            known,
            agent_id,
            contained,
        },
    )
}

/// What one look at a tree found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Nothing of the run is left but the main process, whose exit has been
    /// read (its owner records its end, then reaps it).
    Gone,
    /// The main process has exited and its exit has not been read: do that first.
    MainExited,
    /// Members are left; they have the stage's signal.
    Left,
}

fn signal_of(stage: StopStage) -> Signal {
    if stage == StopStage::Kill {
        Signal::KILL
    } else {
        Signal::TERM
    }
}

impl LocalRun {
    fn tracker(&mut self, sh: &Shared) -> &mut Tracker {
        self.track.get_or_insert_with(|| Box::new(Tracker::new(sh)))
    }

    /// Sends `stage`'s signal to the agent's group (and, in the kill stage,
    /// `cgroup.kill`) once per stage: the stage's wait counts from its start,
    /// however long the scan for the rest of the tree takes.
    pub(crate) fn open_stage(&mut self, sh: &Shared, stage: StopStage) {
        if self.track.as_ref().is_some_and(|t| t.opened == Some(stage)) {
            return;
        }
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        if stage == StopStage::Kill
            && let Some(leaf) = self.leaf()
        {
            kill_leaf(sh, leaf.clone());
        }
        let sent = (!self.exited).then(|| self.proc_.handle.signal_group(signal_of(stage)));
        let t = self.tracker(sh);
        if t.opened.is_some() {
            t.signalled.clear();
        }
        t.opened = Some(stage);
        if let Some(sent) = sent {
            if let Err(e) = sent {
                tracing::warn!(pid = leader.0, error = %e, "signal failed");
            }
            t.signalled.insert(leader);
        }
        t.last_signal = Some(Instant::now());
    }

    /// Looks at the tree once: finishes when nothing is left, else signals
    /// what is new with `stage`'s signal (opening the stage if it is not).
    pub(crate) async fn look(
        &mut self,
        sh: &Arc<Shared>,
        agent_id: &str,
        stage: StopStage,
    ) -> Look {
        if !self.exited && self.proc_.handle.has_exited() {
            return Look::MainExited;
        }
        if let Some(leaf) = self.leaf().cloned() {
            return self.look_in_leaf(sh, leaf, stage).await;
        }
        let table = sh.tables.fresh(Instant::now(), sh).await;
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        let (exited, unreaped) = (self.exited, !self.ended);
        // Read after the scan began: every fork before it is known.
        let follow = Follow::read(sh, leader, false).await;
        let our_child = self.our_child;
        let t = self.tracker(sh);
        t.reaps.borrow_and_update();
        let known = follow.known(&t.seen);
        let members = tree::members(
            &table,
            &tree::Lookup {
                leader: leader.0,
                leader_start: leader.1,
                leader_unreaped: unreaped,
                daemon: std::process::id() as i32,
                known: &known,
                agent_id,
                contained: &[],
            },
        );
        t.seen
            .extend(members.iter().map(|m| (m.pid, m.start_ticks)));
        t.sight = Some(follow.judge(sh, &table, &members, leader, our_child).0);
        // Born after the scan began: alive, and in the next look's table.
        let unscanned = follow.unscanned(&members, leader).await;
        let me = std::process::id() as i32;
        let others: Vec<&ProcEntry> = members
            .iter()
            .filter(|m| (m.pid, m.start_ticks) != leader)
            .collect();
        let alive = unscanned || others.iter().any(|m| m.state != 'Z');
        let our_zombies: Vec<(i32, u64)> = others
            .iter()
            .filter(|m| m.state == 'Z' && m.ppid == me)
            .map(|m| (m.pid, m.start_ticks))
            .collect();
        if !alive && exited {
            return self.settle(sh, our_zombies).await;
        }
        // Processes the scan missed: look again soon.
        self.signal_rest(sh, stage, &members, leader, unscanned)
    }

    /// [`LocalRun::look`] for a run in a cgroup leaf: the leaf is the tree
    /// (as systemd's control-group kill mode has it), so a look reads the
    /// leaf and its members' `/proc/<pid>/stat`, never the whole process
    /// table — a stop of thousands costs thousands of small reads, not
    /// thousands of scans. Members that have exited left the leaf but may
    /// still be zombies: every member ever seen is checked, and ours reaped,
    /// before the tree counts as gone.
    async fn look_in_leaf(&mut self, sh: &Arc<Shared>, leaf: Leaf, stage: StopStage) -> Look {
        if !self.exited
            && stage == StopStage::Kill
            && let Some(t) = self.track.as_mut().filter(|t| t.opened == Some(stage))
        {
            // What woke the stop is taken in: an orphan sweep seen, members
            // that exited watched no more (either would wake it again at once).
            t.reaps.borrow_and_update();
            t.watch.retain(|h| !h.get_ref().has_exited());
            if t.watch.is_empty() {
                // cgroup.kill has taken the whole leaf, and no member but
                // the main is known to be left: its exit (or the kill's
                // settle deadline) is what comes next.
                t.recheck = None;
                return Look::Left;
            }
            // Members are known to be left: look, and SIGKILL them one by
            // one too, in case cgroup.kill could not be written.
        }
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        let exited = self.exited;
        let skip = (!exited).then_some(leader.0);
        let (members, populated) = sh
            .cgroup_lane
            .run(move || leaf_members(&leaf, skip), (Vec::new(), true))
            .await;
        let t = self.tracker(sh);
        t.reaps.borrow_and_update();
        if !exited {
            t.seen.insert(leader);
        }
        t.seen
            .extend(members.iter().map(|m| (m.pid, m.start_ticks)));
        if exited && !populated {
            // The main process is reaped with its end on record; any other
            // member may be a zombie of ours — or alive outside the leaf (a
            // root agent can move a process to another cgroup): that one is
            // still the agent's, and gets the stage's signal like the rest.
            let seen: Vec<(i32, u64)> = t.seen.iter().copied().filter(|m| *m != leader).collect();
            if seen.is_empty() {
                return Look::Gone;
            }
            let ids = seen.clone();
            let escaped: Vec<ProcEntry> = sh
                .cgroup_lane
                .run(
                    move || {
                        ids.iter()
                            .filter_map(|&(pid, start)| {
                                platform::process_entry(pid)
                                    .ok()
                                    .filter(|e| e.start_ticks == start && e.state != 'Z')
                            })
                            .collect()
                    },
                    Vec::new(),
                )
                .await;
            if !escaped.is_empty() {
                return self.signal_rest(sh, stage, &escaped, leader, false);
            }
            return self.settle(sh, seen).await;
        }
        self.signal_rest(sh, stage, &members, leader, false)
    }

    /// Nothing but zombies can be left of the tree: reaps those of `zombies`
    /// that are ours; gone when none is left, else looks again soon.
    async fn settle(&mut self, sh: &Arc<Shared>, zombies: Vec<(i32, u64)>) -> Look {
        if zombies.is_empty() || settle_zombies(sh, zombies).await {
            return Look::Gone;
        }
        self.tracker(sh).recheck = Some(Instant::now() + RECHECK);
        Look::Left
    }

    /// Members are left: opens the stage if it is not, signals every member
    /// not yet signalled in it, and watches them. When no event can wake the
    /// stop — nothing watched while only the main's end (read elsewhere), a
    /// populated cgroup (members in nested cgroups are not in the leaf's
    /// `cgroup.procs`) or zombies are left, or the look may have missed a
    /// process (`missed`) — it looks again soon.
    fn signal_rest(
        &mut self,
        sh: &Shared,
        stage: StopStage,
        members: &[ProcEntry],
        leader: (i32, u64),
        missed: bool,
    ) -> Look {
        if self.track.as_ref().is_none_or(|t| t.opened != Some(stage)) {
            self.open_stage(sh, stage);
        }
        let exited = self.exited;
        let t = self.tracker(sh);
        signal_members(t, members, leader, stage);
        t.watch.retain(|h| !h.get_ref().has_exited());
        t.recheck = ((t.watch.is_empty() && exited) || missed).then(|| Instant::now() + RECHECK);
        Look::Left
    }

    /// Whether something of the tree still runs besides the main process,
    /// which has exited (its exit read, not yet reaped: its group and session
    /// ids cannot have been reused).
    pub(crate) async fn leftovers(&mut self, sh: &Arc<Shared>, agent_id: &str) -> bool {
        if let Some(leaf) = self.leaf().cloned() {
            // An exited member leaves cgroup.procs at once, zombie or not.
            return tokio::task::spawn_blocking(move || leaf.populated())
                .await
                .unwrap_or(true);
        }
        let table = sh.tables.fresh(Instant::now(), sh).await;
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        let follow = Follow::read(sh, leader, false).await;
        let our_child = self.our_child;
        let me = std::process::id() as i32;
        let t = self.tracker(sh);
        let known = follow.known(&t.seen);
        let members = tree::members(
            &table,
            &tree::Lookup {
                leader: leader.0,
                leader_start: leader.1,
                // Its exit is read, it is not reaped: its group and session
                // ids cannot have been reused.
                leader_unreaped: true,
                daemon: me,
                known: &known,
                agent_id,
                contained: &[],
            },
        );
        // Known from now on by identity: the stop that follows finds them
        // after the main process is reaped and its ids are free.
        t.seen
            .extend(members.iter().map(|m| (m.pid, m.start_ticks)));
        let (sight, orphans) = follow.judge(sh, &table, &members, leader, our_child);
        // Said when there is something to see: an orphan that may be the
        // run's outlives it.
        if let Err(why) = &sight
            && orphans > 0
        {
            tracing::warn!(
                agent_id,
                pid = leader.0,
                "the main process exited; its tree may not be whole: {why}"
            );
        }
        t.sight = Some(sight);
        let others: Vec<&ProcEntry> = members
            .iter()
            .filter(|m| (m.pid, m.start_ticks) != leader)
            .collect();
        if follow.unscanned(&members, leader).await || others.iter().any(|m| m.state != 'Z') {
            return true;
        }
        // Only zombies: those that are ours are reaped now, so nothing of
        // the run is in /proc when its end is recorded.
        let ours: Vec<(i32, u64)> = others
            .iter()
            .filter(|m| m.ppid == me)
            .map(|m| (m.pid, m.start_ticks))
            .collect();
        !(ours.is_empty() || settle_zombies(sh, ours).await)
    }

    /// Every member of the tree in a process table whose scan begins now, the
    /// main process included, found as a stop finds them without a cgroup
    /// (the group, the session, the orphans carrying the agent's id, what the
    /// connector saw forked under the run, and their descendants); signals
    /// nothing. Zombies are among them.
    pub(crate) async fn members_now(&mut self, sh: &Arc<Shared>, agent_id: &str) -> Vec<ProcEntry> {
        let table = sh.tables.fresh(Instant::now(), sh).await;
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        let follow = Follow::read(sh, leader, self.leaf().is_some()).await;
        let seen = self
            .track
            .as_ref()
            .map(|t| t.seen.clone())
            .unwrap_or_default();
        let known = follow.known(&seen);
        let contained: Vec<i32> = match self.leaf().cloned() {
            Some(leaf) => sh.cgroup_lane.run(move || leaf.pids(), Vec::new()).await,
            None => Vec::new(),
        };
        tree::members(
            &table,
            &tree::Lookup {
                leader: leader.0,
                leader_start: leader.1,
                leader_unreaped: !self.ended,
                daemon: std::process::id() as i32,
                known: &known,
                agent_id,
                contained: &contained,
            },
        )
    }

    /// Members of the tree seen by the stop, the main process left out.
    pub(crate) fn descendants(&self) -> u32 {
        let leader = (self.pid(), self.proc_.handle.start_ticks());
        self.track.as_ref().map_or(0, |t| {
            t.seen.iter().filter(|m| **m != leader).count() as u32
        })
    }

    /// Until when a member signalled moments ago may still be dying.
    pub(crate) fn settle_until(&self) -> Option<Instant> {
        self.track
            .as_ref()
            .and_then(|t| t.last_signal)
            .map(|t| t + KILL_SETTLE)
    }

    /// Whether the stop could see the whole tree (none before any look
    /// without a cgroup).
    pub(crate) fn sight(&self) -> Option<Sight> {
        if self.leaf().is_some() {
            return Some(Ok(()));
        }
        self.track.as_ref().and_then(|t| t.sight.clone())
    }
}

/// What a look could see of a tree: `Err` says why a process of it may have
/// escaped.
pub(crate) type Sight = Result<(), String>;

/// Why the connector cannot vouch for a whole tree.
const NO_CONNECTOR: &str = "process-group containment without the process-events connector \
     cannot see descendants that left the session and cleared their environment";
const LOST_EVENTS: &str = "the process-events connector lost events, so descendants that \
     left the session and cleared their environment may not have been seen";
const FELL_BEHIND: &str = "the process-events connector fell behind, so descendants that left \
     the session and cleared their environment may not have been seen";
const NOT_FROM_BIRTH: &str = "the process-events connector did not follow this tree from its \
     start, so descendants that left the session and cleared their environment before then \
     cannot be seen";

/// The process-events connector, opened on the first call when the
/// configuration allows it (blocking: call it on a blocking thread); none
/// where the kernel refuses it.
pub(crate) fn follow_forks(sh: &Shared) -> Option<&Arc<ProcEvents>> {
    sh.proc_events
        .get_or_init(|| {
            if !sh.config.proc_events {
                return None;
            }
            match ProcEvents::open() {
                Ok(ev) => {
                    tracing::info!("trees without a cgroup are followed through the process-events connector");
                    Some(Arc::new(ev))
                }
                Err(e) => {
                    tracing::info!(reason = %e, "no process-events connector: a descendant that leaves its session and clears its environment is found only as an unattributed orphan");
                    None
                }
            }
        })
        .as_ref()
}

/// [`follow_forks`] from async code: opened on a blocking thread if need be.
async fn connector(sh: &Arc<Shared>) -> Option<Arc<ProcEvents>> {
    if let Some(ev) = sh.proc_events.get() {
        return ev.clone();
    }
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || follow_forks(&sh).cloned())
        .await
        .ok()
        .flatten()
}

/// What the process-events connector knows of one run, read once it has
/// caught up.
struct Follow {
    ev: Option<Arc<ProcEvents>>,
    root: Identity,
    /// The live processes forked under the run.
    members: Vec<Identity>,
    /// Why it cannot vouch for the whole tree; none when it can.
    gap: Option<&'static str>,
}

impl Follow {
    /// Reads what is known under `root` (nothing with a cgroup: the leaf
    /// holds the tree).
    async fn read(sh: &Arc<Shared>, root: Identity, leaf: bool) -> Self {
        let mut f = Self {
            ev: None,
            root,
            members: Vec::new(),
            gap: None,
        };
        if leaf {
            return f;
        }
        let Some(ev) = connector(sh).await else {
            f.gap = Some(NO_CONNECTOR);
            return f;
        };
        let caught_up = ev.caught_up().await;
        f.gap = Some(NOT_FROM_BIRTH);
        if let Some(known) = ev.followed(root) {
            f.members = known.members;
            f.gap = match (caught_up, known.whole, known.adopted) {
                (false, _, _) => Some(FELL_BEHIND),
                (true, true, _) => None,
                (true, false, true) => Some(NOT_FROM_BIRTH),
                (true, false, false) => Some(LOST_EVENTS),
            };
        }
        f.ev = Some(ev);
        f
    }

    /// `seen` and the processes forked under the run.
    fn known(&self, seen: &HashSet<Identity>) -> HashSet<Identity> {
        let mut known = seen.clone();
        known.extend(self.members.iter().copied());
        known
    }

    /// Whether a live process forked under the run is missing from
    /// `members` (found in a table whose scan began before it was born).
    /// Checked in `/proc` on a blocking thread; one that is gone is dropped
    /// from the connector's table (an adopted member that exited before its
    /// adoption landed leaves no exit to read).
    async fn unscanned(&self, members: &[ProcEntry], leader: Identity) -> bool {
        let (Some(ev), missing) = (
            self.ev.clone(),
            self.members
                .iter()
                .copied()
                .filter(|k| *k != leader && !members.iter().any(|m| (m.pid, m.start_ticks) == *k))
                .collect::<Vec<Identity>>(),
        ) else {
            return false;
        };
        if missing.is_empty() {
            return false;
        }
        tokio::task::spawn_blocking(move || {
            let mut alive = false;
            for k in missing {
                match ProcessHandle::open_member(k.0, k.1) {
                    Ok(Some(h)) if h.sample().is_ok_and(|s| s.state != 'Z') => alive = true,
                    Ok(_) => ev.forget(k),
                    Err(_) => alive = true,
                }
            }
            alive
        })
        .await
        .unwrap_or(true)
    }

    /// Judges what the look could see, and hands what it found to the
    /// connector so forks under them are followed from now on (a tree it did
    /// not see being born: adopted by this daemon, or begun before it ran).
    /// Also says how many unattributed orphans make it doubt.
    fn judge(
        &self,
        sh: &Shared,
        table: &tree::Snapshot,
        members: &[ProcEntry],
        leader: Identity,
        our_child: bool,
    ) -> (Sight, usize) {
        let Some(gap) = self.gap else {
            return (Ok(()), 0);
        };
        if let Some(ev) = &self.ev {
            let found: Vec<Identity> = members
                .iter()
                .filter(|m| m.state != 'Z')
                .map(|m| (m.pid, m.start_ticks))
                .collect();
            ev.adopt(self.root, &found);
        }
        let orphans: Vec<i32> = table
            .unattributed()
            .filter(|p| (p.pid, p.start_ticks) != leader)
            .filter(|p| !members.iter().any(|m| m.pid == p.pid))
            .filter(|p| {
                self.ev
                    .as_ref()
                    .is_none_or(|ev| !ev.attributed((p.pid, p.start_ticks)))
            })
            .map(|p| p.pid)
            .collect();
        let subreaper = sh.config.subreaper;
        if our_child && subreaper && orphans.is_empty() {
            // Every orphan of this tree would be our child, and none is
            // unaccounted for.
            return (Ok(()), 0);
        }
        (
            Err(incomplete(gap, &orphans, our_child, subreaper)),
            orphans.len(),
        )
    }
}

/// Why a tree may be incomplete, in words.
fn incomplete(gap: &str, orphans: &[i32], our_child: bool, subreaper: bool) -> String {
    let mut why = gap.to_owned();
    if !our_child {
        why.push_str(
            "; the run was adopted from an earlier daemon, so its orphans are not this daemon's children",
        );
    } else if !subreaper {
        why.push_str("; the daemon is not a subreaper, so the tree's orphans are not its children");
    }
    if !orphans.is_empty() {
        const SHOWN: usize = 10;
        let list: Vec<String> = orphans.iter().take(SHOWN).map(i32::to_string).collect();
        let more = orphans
            .len()
            .checked_sub(SHOWN)
            .filter(|n| *n > 0)
            .map(|n| format!(" and {n} more"))
            .unwrap_or_default();
        why.push_str(&format!(
            "; the daemon's children {}{more} carry no agent id and may be this agent's",
            list.join(", ")
        ));
    }
    why
}

/// Resolves when a stop should look at the tree again: a watched member
/// exited, an orphan sweep reaped something, or the recheck time came.
pub(crate) async fn changed(track: &mut Option<Box<Tracker>>) {
    let Some(t) = track.as_mut() else {
        return std::future::pending().await;
    };
    let Tracker {
        watch,
        reaps,
        recheck,
        ..
    } = t.as_mut();
    tokio::select! {
        () = any_exited(watch) => {}
        r = reaps.changed() => if r.is_err() { std::future::pending::<()>().await },
        () = async {
            match recheck {
                Some(at) => tokio::time::sleep_until((*at).into()).await,
                None => std::future::pending().await,
            }
        } => {}
    }
}

/// The pids in a run's cgroup leaf and whether it is populated, read on a
/// blocking thread (none and false without a leaf).
async fn leaf_now(leaf: Option<Leaf>) -> (Vec<i32>, bool) {
    let Some(leaf) = leaf else {
        return (Vec::new(), false);
    };
    tokio::task::spawn_blocking(move || (leaf.pids(), leaf.populated()))
        .await
        .unwrap_or((Vec::new(), true))
}

/// The processes in `leaf` but `leader` (the main process while it runs,
/// unreaped and known by identity; none once its exit is read) and whether
/// the leaf is populated
/// (blocking). A pid is kept only if it is in `cgroup.procs` both before and
/// after its `stat` was read: had it been reused by a process outside the
/// leaf in between, the second read would not list it — and a member reused
/// into the leaf is a member. (Signals go through pidfds opened with the
/// start time read here.) The common cases — a leaf holding only its main
/// process, an empty leaf after the main's exit — cost one read.
pub(crate) fn leaf_members(leaf: &Leaf, leader: Option<i32>) -> (Vec<ProcEntry>, bool) {
    if leader.is_none() && !leaf.populated() {
        // The main process has exited: an empty leaf, the usual end, is one read.
        return (Vec::new(), false);
    }
    let before = leaf.pids();
    if before.is_empty() {
        // Members may be in nested cgroups, which cgroup.procs does not list.
        return (Vec::new(), leaf.populated());
    }
    if before.iter().all(|p| Some(*p) == leader) {
        return (Vec::new(), true);
    }
    let mut members: Vec<ProcEntry> = before
        .iter()
        .filter(|p| Some(**p) != leader)
        .filter_map(|pid| platform::process_entry(*pid).ok())
        .collect();
    if !members.is_empty() {
        let after: HashSet<i32> = leaf.pids().into_iter().collect();
        members.retain(|m| after.contains(&m.pid));
    }
    (members, true)
}

/// Writes `cgroup.kill` on the cgroup lane (it takes the kernel's cgroup
/// lock; a thousand kill stages at once would queue on the async workers).
/// Not waited for: the members' deaths are what the stop waits for.
fn kill_leaf(sh: &Shared, leaf: Leaf) {
    sh.cgroup_lane.send(move || {
        if let Err(e) = leaf.kill()
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %leaf.dir().display(), error = %e, "cgroup.kill failed");
        }
    });
}

/// Reaps the zombies among `members` that are this process's children (on a
/// blocking thread, under the spawn gate, never an agent or a helper); true
/// when none of `members` is left in `/proc` but zombies this process cannot
/// reap (their parent is someone else).
async fn settle_zombies(sh: &Arc<Shared>, members: Vec<(i32, u64)>) -> bool {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        let me = std::process::id() as i32;
        let mut left = false;
        let _gate = sh.spawn_gate.write().unwrap_or_else(|p| p.into_inner());
        let owned = lock(&sh.owned).clone();
        for (pid, start) in members {
            let Some(stat) = ProcessHandle::open_member(pid, start).ok().flatten() else {
                continue;
            };
            let Ok(s) = stat.sample() else { continue };
            if s.state != 'Z' {
                left = true;
            } else if s.ppid == me && !owned.contains(&pid) {
                // Our unreaped child: its pid cannot have been reused.
                if platform::reap_child(pid).is_none() && stat.sample().is_ok() {
                    left = true;
                }
            }
        }
        !left
    })
    .await
    .unwrap_or(false)
}

/// Signals every live member not yet signalled in this stage.
fn signal_members(t: &mut Tracker, members: &[ProcEntry], leader: (i32, u64), stage: StopStage) {
    let sig = signal_of(stage);
    for m in members.iter().filter(|m| m.state != 'Z') {
        let key = (m.pid, m.start_ticks);
        if key == leader || !t.signalled.insert(key) {
            // The leader had the stage's signal with its group.
            continue;
        }
        t.last_signal = Some(Instant::now());
        if let Ok(Some(h)) = ProcessHandle::open_member(m.pid, m.start_ticks) {
            // Identity checked through the pidfd: never a stranger.
            let _ = h.signal(sig);
            // SAFETY: the Arc keeps the ProcessHandle, and so its pidfd, alive and
            // unchanged for as long as the AsyncFd exists.
            if let Ok(afd) =
                unsafe { AsyncFd::register_with_interest(Arc::new(h), Interest::READABLE) }
            {
                t.watch.push(afd);
            }
        }
    }
}

/// Resolves once any watched member has exited.
async fn any_exited(watch: &[AsyncFd<Arc<ProcessHandle>>]) {
    if watch.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for afd in watch {
            if afd.poll_read_ready(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Snapshots of the process table shared by concurrent stops: a request for a
/// table taken after instant T is answered by the first scan that begins at or
/// after T, and every request waiting meanwhile shares that one scan — so a
/// thousand stops, each asking after its own instant, cost a few scans, not a
/// queue of them.
pub(crate) struct TableCache {
    latest: watch::Sender<Option<(Instant, Arc<tree::Snapshot>)>>,
    scanning: std::sync::atomic::AtomicBool,
}

/// Clears the "a scan is running" flag however the scanning request ends.
struct Scanning<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Scanning<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl TableCache {
    pub(crate) fn new() -> Self {
        Self {
            latest: watch::channel(None).0,
            scanning: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A snapshot taken at or after `after`, with orphans attributed to agents.
    pub(crate) async fn fresh(&self, after: Instant, sh: &Shared) -> Arc<tree::Snapshot> {
        use std::sync::atomic::Ordering;
        let mut rx = self.latest.subscribe();
        loop {
            if let Some((taken, table)) = rx.borrow_and_update().as_ref()
                && *taken >= after
            {
                return table.clone();
            }
            if !self.scanning.swap(true, Ordering::AcqRel) {
                let _flag = Scanning(&self.scanning);
                let taken = Instant::now();
                let owned = lock(&sh.owned).clone();
                let table = Arc::new(
                    tokio::task::spawn_blocking(move || scan(&owned))
                        .await
                        .unwrap_or_else(|_| tree::Snapshot::new(Vec::new())),
                );
                tracing::debug!(
                    took_us = taken.elapsed().as_micros() as u64,
                    "process table scanned"
                );
                self.latest.send_replace(Some((taken, table.clone())));
                return table;
            }
            // A scan is under way: wait for it, then look again (it may have
            // begun before `after`, and then the next one is needed).
            if tokio::time::timeout(Duration::from_millis(50), rx.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                return Arc::new(tree::Snapshot::new(Vec::new()));
            }
        }
    }
}

/// One scan of the process table, indexed, with the daemon's orphans attributed.
pub(crate) fn scan(owned: &HashSet<i32>) -> tree::Snapshot {
    let mut snap = tree::Snapshot::new(platform::process_table());
    snap.attribute_orphans(std::process::id() as i32, owned, platform::environ_agent_id);
    snap
}

/// What is left of a run whose main process is gone, as a new daemon finds
/// it: the members of the run's cgroup leaf, or — without one — the
/// processes carrying the run's `CORRAL_RUN_ID` and `CORRAL_AGENT_ID`, with
/// their descendants (and, from then on, what the connector sees them fork).
pub(crate) struct Remnant {
    leaf: Option<Leaf>,
    track: Option<Box<Tracker>>,
    /// The connector's root for it: no process, the run's row.
    root: Identity,
}

impl Remnant {
    /// Looks for what is left of run `run_id` of `agent_id` (in `leaf` when
    /// it has one); none when nothing is.
    pub(crate) async fn find(
        sh: &Arc<Shared>,
        agent_id: &str,
        run_id: i64,
        leaf: Option<Leaf>,
    ) -> Option<Self> {
        let (id, tag) = (agent_id.to_owned(), run_id.to_string());
        let seed_leaf = leaf.clone();
        let (seen, populated): (Vec<(i32, u64)>, bool) = tokio::task::spawn_blocking(move || {
            let table = platform::process_table();
            let in_leaf = seed_leaf.as_ref().map(Leaf::pids);
            let seen = table
                .into_iter()
                .filter(|p| p.state != 'Z' && p.pid > 1)
                .filter(|p| match &in_leaf {
                    Some(pids) => pids.contains(&p.pid),
                    None => {
                        platform::environ_var(p.pid, "CORRAL_RUN_ID").as_deref() == Some(&tag)
                            && platform::environ_agent_id(p.pid).as_deref() == Some(&id)
                    }
                })
                .map(|p| (p.pid, p.start_ticks))
                .collect();
            (seen, seed_leaf.as_ref().is_some_and(Leaf::populated))
        })
        .await
        .unwrap_or_default();
        if seen.is_empty() && !populated {
            return None;
        }
        let mut track = Tracker::new(sh);
        track.seen.extend(seen);
        Some(Self {
            leaf,
            track: Some(Box::new(track)),
            root: (0, run_id.unsigned_abs()),
        })
    }

    /// Nothing left at all.
    pub(crate) fn empty() -> Self {
        Self {
            leaf: None,
            track: None,
            root: (0, 0),
        }
    }

    fn tracker(&mut self, sh: &Shared) -> &mut Tracker {
        self.track.get_or_insert_with(|| Box::new(Tracker::new(sh)))
    }

    /// Opens `stage`: `cgroup.kill` in the kill stage; every member gets the
    /// stage's signal in the next look.
    pub(crate) fn open_stage(&mut self, sh: &Shared, stage: StopStage) {
        if stage == StopStage::Kill
            && let Some(leaf) = &self.leaf
        {
            kill_leaf(sh, leaf.clone());
        }
        let t = self.tracker(sh);
        if t.opened != Some(stage) {
            t.signalled.clear();
            t.opened = Some(stage);
            t.last_signal = Some(Instant::now());
        }
    }

    /// Looks at what is left, signalling every live member with the stage's signal.
    pub(crate) async fn look(
        &mut self,
        sh: &Arc<Shared>,
        agent_id: &str,
        stage: StopStage,
    ) -> Look {
        let table = sh.tables.fresh(Instant::now(), sh).await;
        let (contained, populated) = leaf_now(self.leaf.clone()).await;
        let follow = Follow::read(sh, self.root, self.leaf.is_some()).await;
        self.open_stage(sh, stage);
        let t = self.tracker(sh);
        t.reaps.borrow_and_update();
        let members = remnant_members(&table, &follow.known(&t.seen), agent_id, &contained);
        t.seen
            .extend(members.iter().map(|m| (m.pid, m.start_ticks)));
        t.sight = Some(follow.judge(sh, &table, &members, (0, 0), false).0);
        let unscanned = follow.unscanned(&members, (0, 0)).await;
        let alive = unscanned || members.iter().any(|m| m.state != 'Z');
        if !alive && !populated {
            let me = std::process::id() as i32;
            let zombies: Vec<(i32, u64)> = members
                .iter()
                .filter(|m| m.ppid == me)
                .map(|m| (m.pid, m.start_ticks))
                .collect();
            if zombies.is_empty() || settle_zombies(sh, zombies).await {
                return Look::Gone;
            }
        }
        signal_members(t, &members, (0, 0), stage);
        t.watch.retain(|h| !h.get_ref().has_exited());
        t.recheck = (t.watch.is_empty() || unscanned).then(|| Instant::now() + RECHECK);
        Look::Left
    }

    /// Whether anything of the run still runs.
    pub(crate) async fn leftovers(&mut self, sh: &Arc<Shared>, agent_id: &str) -> bool {
        if leaf_now(self.leaf.clone()).await.1 {
            return true;
        }
        let table = sh.tables.fresh(Instant::now(), sh).await;
        let follow = Follow::read(sh, self.root, self.leaf.is_some()).await;
        let t = self.tracker(sh);
        let members = remnant_members(&table, &follow.known(&t.seen), agent_id, &[]);
        t.sight = Some(follow.judge(sh, &table, &members, (0, 0), false).0);
        follow.unscanned(&members, (0, 0)).await || members.iter().any(|m| m.state != 'Z')
    }

    pub(crate) fn descendants(&self) -> u32 {
        self.track.as_ref().map_or(0, |t| t.seen.len() as u32)
    }

    /// Every member seen so far, by identity.
    pub(crate) fn seen(&self) -> Vec<(i32, u64)> {
        self.track
            .as_ref()
            .map(|t| t.seen.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn settle_until(&self) -> Option<Instant> {
        self.track
            .as_ref()
            .and_then(|t| t.last_signal)
            .map(|t| t + KILL_SETTLE)
    }

    pub(crate) fn leaf(&self) -> Option<&Leaf> {
        self.leaf.as_ref()
    }

    /// Whether the stop could see the whole tree.
    pub(crate) fn sight(&self) -> Option<Sight> {
        if self.leaf.is_some() {
            return Some(Ok(()));
        }
        self.track.as_ref().and_then(|t| t.sight.clone())
    }

    /// Resolves when a stop should look again.
    pub(crate) async fn changed(&mut self) {
        changed(&mut self.track).await
    }
}

//! Ends of runs, and reaping.
//!
//! - An agent's exit is read without reaping it (`waitid(WNOWAIT)`), so the
//!   process stays a zombie — its pid reserved, its status readable — until
//!   the end is committed; then its owner reaps it. A status in between says
//!   `zombie`, which is the truth.
//! - A re-adopted agent is not our child: its exit status comes from field 52
//!   of its `/proc/<pid>/stat` while it is a zombie (whoever its parent is), or
//!   from the kernel through its pidfd once its parent has reaped it
//!   (`PIDFD_INFO_EXIT`, Linux ≥ 6.15).
//! - As a subreaper, the daemon reaps orphans (descendants of agents that lost
//!   their parents) on every SIGCHLD, by pid, never an agent and never with
//!   `waitpid(-1)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::id::AgentId;
use crate::model::PersistentStatus;
use crate::platform::{self, ExitKind};
use crate::store::{self, Ending};

use super::actor::{Actor, Phase, Plan};
use super::policy::{self, Decision};
use super::run::epoch_s;
use super::state::{Happening, Tag};
use super::stop::StopCause;
use super::{Shared, lock};

pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

fn exit_words(exit: Option<ExitKind>) -> String {
    match exit {
        Some(ExitKind::Code(c)) => format!("exited with code {c}"),
        Some(ExitKind::Signal(s)) => format!("killed by {}", signal_name(s)),
        None => "exit status lost: the agent was re-adopted after a daemon restart and the kernel did not report how it ended".to_owned(),
    }
}

/// The status and reason of a run that ended with `exit`; `engine` says what a
/// cluster engine said of an end it caused (a time limit, a node failure...).
pub(crate) fn ending_of(
    exit: Option<ExitKind>,
    user_stop: bool,
    cause: Option<&StopCause>,
    engine: Option<&str>,
) -> (PersistentStatus, String) {
    let words = match (exit, engine) {
        (None, Some(said)) => said.to_owned(),
        _ => exit_words(exit),
    };
    match (user_stop, cause) {
        (true, _) => (
            PersistentStatus::Cancelled,
            format!("stopped on request; {words}"),
        ),
        (false, Some(StopCause::Runtime { limit_s })) => (
            PersistentStatus::Failed,
            format!("max_runtime_s {limit_s} exceeded; stopped ({words})"),
        ),
        (false, Some(StopCause::Limit(why))) => (
            PersistentStatus::Failed,
            format!("{why}; stopped ({words})"),
        ),
        _ => match (exit, engine) {
            (Some(ExitKind::Code(0)), None) => (PersistentStatus::Completed, words),
            (Some(_), Some(said)) => (PersistentStatus::Failed, format!("{said}; {words}")),
            _ => (PersistentStatus::Failed, words),
        },
    }
}

impl Actor {
    /// The agent's process exited: read how, decide what follows, commit, reap,
    /// publish, answer a waiting spawn — in that order.
    pub(crate) async fn on_exit(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        if run.exited {
            return;
        }
        run.exited = true;
        run.stop_probes();
        let exit = read_exit(run.our_child, &run.proc_).await;
        let ran_s = (platform::boottime_seconds() - run.proc_.started_s).max(0.0);
        self.record_end(exit, ran_s, None).await;
    }

    /// The run ended (its process exited, or its job ended), after `ran_s`
    /// seconds: decide what follows, commit, reap, publish, answer a waiting
    /// spawn — in that order. `engine` is what a cluster engine said of the end.
    pub(crate) async fn record_end(
        &mut self,
        exit: Option<ExitKind>,
        ran_s: f64,
        engine: Option<String>,
    ) {
        let (user_stop, pid) = match (&self.run, &mut self.job) {
            (Some(run), _) => (run.user_stop, Some(run.pid())),
            (None, Some(job)) => {
                job.stop_probes();
                (job.user_stop, None)
            }
            (None, None) => return,
        };
        let cause = match &self.phase {
            Phase::Stopping(s) => Some(s.cause.clone()),
            _ => self.oom_killed(),
        };
        // What the engine says of an end corral caused itself is no news.
        let engine = engine.filter(|_| cause.is_none() && !user_stop);
        let (status, mut reason) = ending_of(exit, user_stop, cause.as_ref(), engine.as_deref());
        let now = SystemTime::now();
        let decision = policy::decide(
            &self.spec.restart,
            status,
            user_stop,
            ran_s,
            &self.history,
            epoch_s(now),
            policy::jitter(),
        );
        let (plan, extra) = self.plan_after(&decision, now, &mut reason);
        let ending = Ending {
            status,
            ended_at: store::now_rfc3339(),
            exit_code: match exit {
                Some(ExitKind::Code(c)) => Some(c),
                _ => None,
            },
            exit_signal: match exit {
                Some(ExitKind::Signal(s)) => Some(s),
                _ => None,
            },
            end_reason: reason,
            next_restart_at: plan.map(|p| humantime::format_rfc3339_millis(p.at).to_string()),
        };
        let run_id = self.current().run_id;
        if let Err(e) = self
            .sh
            .store
            .commit_retrying(store::finish(run_id, ending.clone(), extra))
            .await
        {
            tracing::error!(agent_id = %self.spec.id, pid, error = %e, "cannot record the end of a run");
        }
        self.reap_after_commit();
        if let Some(job) = self.job.as_mut() {
            job.ended = true;
        }
        self.plan = plan;
        tracing::info!(agent_id = %self.spec.id, pid, status = %ending.status, reason = %ending.end_reason, "agent ended");
        let tag = self.move_to(Happening::Exited);
        self.publish(|v| {
            v.status = ending.status;
            v.ended_at = Some(ending.ended_at.clone());
            v.exit = exit;
            v.end_reason = Some(ending.end_reason.clone());
            v.runtime_at_end = Some(ran_s);
            v.proc_ = None;
            if let Some(j) = v.job.as_mut() {
                j.running = false;
                j.info.pending_reason = None;
            }
            v.next_restart_at = ending.next_restart_at.clone();
        });
        let error = self.failed_answer().await;
        let response = self.current().spawn_response(error);
        self.answer(Ok(response));
        if tag != Tag::Ended {
            // Stopping: the rest of the tree may still be there.
            return self.stop_step().await;
        }
        self.phase = Phase::Ended;
        // A job's leftovers are the engine's to clear.
        if self.plan.is_some() && self.run.is_some() {
            // Clear what the ended run left behind before a new one starts.
            let timeouts = self.spec.stop_timeouts;
            return self
                .begin_stop(StopCause::Leftovers, timeouts, false, None)
                .await;
        }
        self.after_run();
    }

    /// The kernel's OOM killer ended the run (its cgroup enforced the memory limit).
    fn oom_killed(&self) -> Option<StopCause> {
        let leaf = self.run.as_ref()?.leaf()?;
        let limit = self
            .current()
            .limits
            .get("memory_mb")
            .filter(|l| l.enforced_by == "cgroup")?
            .value;
        (leaf.oom_kills() > 0).then(|| {
            StopCause::Limit(format!(
                "memory limit {limit} MB exceeded (the kernel's OOM killer ended it)"
            ))
        })
    }

    /// Turns a restart decision into a plan (and the event that goes with it).
    fn plan_after(
        &self,
        decision: &Decision,
        now: SystemTime,
        reason: &mut String,
    ) -> (Option<Plan>, Option<(&'static str, serde_json::Value)>) {
        match decision {
            Decision::Stay => (None, None),
            Decision::Restart { delay, attempt } => {
                tracing::info!(agent_id = %self.spec.id, delay_s = delay.as_secs_f64(), attempt, "restart planned");
                let plan = Plan {
                    at: now + *delay,
                    attempt: *attempt,
                };
                let data = serde_json::json!({"delay_s": delay.as_secs_f64(), "attempt": attempt});
                (Some(plan), Some(("restart", data)))
            }
            Decision::CrashLoop { restarts } => {
                let window = self.spec.restart.window_s;
                reason.push_str(&format!(
                    "; crash loop: {restarts} restarts within {window} s (max_restarts {}), not restarting",
                    self.spec.restart.max_restarts
                ));
                tracing::warn!(agent_id = %self.spec.id, restarts, window_s = window, "crash loop: not restarting");
                let data = serde_json::json!({"restarts": restarts, "window_s": window});
                (None, Some(("crash_loop", data)))
            }
        }
    }

    /// Reaps the agent's process once its end is on record (our child only).
    fn reap_after_commit(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        if run.our_child {
            if let Err(e) = run.proc_.handle.reap() {
                tracing::warn!(agent_id = %self.spec.id, pid = run.pid(), error = %e, "cannot reap the agent");
            }
            lock(&self.sh.owned).remove(&run.pid());
        }
        run.ended = true;
    }
}

/// How the process ended, without reaping it.
async fn read_exit(our_child: bool, proc_: &super::view::Proc) -> Option<ExitKind> {
    if our_child {
        match proc_.handle.peek_exit() {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
            Err(e) => {
                tracing::warn!(pid = proc_.handle.pid(), error = %e, "cannot read an exit status");
                return None;
            }
        }
    }
    // Not ours: a zombie's status is in its stat; once its parent has reaped it,
    // the kernel keeps it for pidfd holders. Between the two there is no event:
    // ask again for a short, bounded time.
    for _ in 0..25 {
        if let Some(exit) = proc_.handle.zombie_exit() {
            return Some(exit);
        }
        match proc_.handle.exit_status_from_kernel() {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                tracing::debug!(pid = proc_.handle.pid(), error = %e, "the kernel gives no exit status (needs Linux 6.15)");
                return None;
            }
        }
    }
    None
}

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
            .filter(|v| v.proc_.is_some())
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
}

/// Which agent process `pid` belongs to (blocking: reads `/proc`): its cgroup
/// leaf under corral's subtree; else its session leader or an ancestor being a
/// live agent; else the `CORRAL_AGENT_ID` it inherited.
pub(crate) fn agent_of_process(
    pid: i32,
    live: &HashMap<i32, AgentId>,
    cgroup_root: Option<&Path>,
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
    platform::environ_agent_id(pid).and_then(|id| AgentId::new(id).ok())
}

fn agent_by_cgroup(pid: i32, root: &Path) -> Option<AgentId> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let subtree = root.file_name()?.to_str()?;
    let leaf = own.split('/').skip_while(|seg| *seg != subtree).nth(1)?;
    // Leaves are `<id>.<run>`.
    let (id, run) = leaf.rsplit_once('.')?;
    run.parse::<u32>().ok()?;
    AgentId::new(id).ok()
}

//! The sampler: one thread that reads `/proc` once per interval for every live
//! agent and its whole tree.
//!
//! One scan of the process table per interval (each `stat` opened, read and
//! closed: no descriptor kept) gives every agent's own figures and its tree's
//! sums from the same instant. CPU% is psutil's: CPU time used over the last
//! interval, as a percentage of one CPU; a process seen for the first time is
//! measured from its start. Readers take the latest sample; nothing on a read
//! path samples. The same pass rotates the logs of runs that ask for it
//! (`rotate.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::id::AgentId;
use crate::model::TreeSummary;
use crate::platform::{self, ProcEntry};
use crate::tree;

use super::execution::tree as stop;
use super::view::{Sample, View};
use super::{Cmd, Shared, limits, lock, rotate};

/// Starts the sampler thread; it ends when the supervisor is gone or shut down.
pub(crate) fn start(sh: &Arc<Shared>) -> std::io::Result<()> {
    let weak = Arc::downgrade(sh);
    let interval = sh.config.sample_interval;
    std::thread::Builder::new()
        .name("corral-sampler".into())
        .spawn(move || run(weak, interval))
        .map(drop)
}

/// What the sampler remembers from one pass to the next.
#[derive(Default)]
struct Memory {
    /// CPU ticks and time of every process seen last time.
    prev: HashMap<(i32, u64), (u64, f64)>,
    /// Samples in a row over the CPU limit, by agent and run.
    cpu_over: HashMap<(AgentId, u32), u32>,
    /// Log rotation failures already logged.
    rotate_warned: rotate::Warned,
}

fn run(weak: Weak<Shared>, interval: Duration) {
    let mut memory = Memory::default();
    loop {
        std::thread::sleep(interval);
        let Some(sh) = weak.upgrade() else { return };
        if *sh.shutdown.borrow() {
            return;
        }
        sample_all(&sh, &mut memory);
    }
}

/// Takes one sample of every live agent, and tells the owner of any run over
/// a limit the sampler enforces.
fn sample_all(sh: &Shared, memory: &mut Memory) {
    let live: Vec<(Arc<View>, mpsc::UnboundedSender<Cmd>)> = lock(&sh.registry)
        .values()
        .filter_map(|slot| {
            slot.published
                .borrow()
                .view
                .clone()
                .map(|v| (v, slot.tx.clone()))
        })
        // Local runs are sampled here; runs on a cluster engine only have their
        // logs rotated (the engine gives their figures). An ended run whose
        // process stays a zombie of another parent has nothing to sample.
        .filter(|(v, _)| {
            v.state.is_busy() && (v.proc_.is_some() || v.job.as_ref().is_some_and(|j| j.running))
        })
        .collect();
    if live.is_empty() {
        memory.prev.clear();
        memory.cpu_over.clear();
        memory.rotate_warned = rotate::Warned::default();
        return;
    }
    let owned = lock(&sh.owned).clone();
    let pass = Pass {
        sh,
        snap: stop::scan(&owned),
        now: platform::boottime_seconds(),
    };
    let mut seen = HashMap::with_capacity(memory.prev.len());
    let mut cpu_over = HashMap::new();
    for (view, tx) in &live {
        if let Some(proc_) = &view.proc_ {
            let (tree, tasks) = pass.sample(view, proc_, &memory.prev, &mut seen);
            if !view.limits.is_empty() {
                let key = (view.id.clone(), view.run);
                let mut over = memory.cpu_over.get(&key).copied().unwrap_or(0);
                let usage = limits::Usage {
                    memory_mb: tree.memory_mb,
                    tasks,
                    cpu_percent: tree.cpu_percent,
                };
                if let Some((reason, data)) = limits::check(&view.limits, usage, &mut over) {
                    let _ = tx.send(Cmd::Limit {
                        run: view.run,
                        reason,
                        data,
                    });
                }
                cpu_over.insert(key, over);
            }
        }
        for data in rotate::rotate(view, &mut memory.rotate_warned) {
            let _ = tx.send(Cmd::LogDropped {
                run: view.run,
                data,
            });
        }
    }
    memory.prev = seen;
    memory.cpu_over = cpu_over;
    let dirs = live.iter().map(|(v, _)| v.log_dir.as_path()).collect();
    memory.rotate_warned.retain_runs(&dirs);
    // After every figure of this pass is in place: a reader that sees the new
    // generation sees the new figures.
    sh.counters
        .samples
        .fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// One sampling pass: the process table at one instant.
struct Pass<'a> {
    sh: &'a Shared,
    snap: tree::Snapshot,
    now: f64,
}

impl Pass<'_> {
    fn mb(&self, pages: u64) -> f64 {
        (pages * self.sh.page_size) as f64 / (1024.0 * 1024.0)
    }

    /// Samples one agent and its tree (its own figures go to its `Proc`);
    /// the tree's sums and its task count. Every process seen goes to `seen`.
    fn sample(
        &self,
        view: &View,
        proc_: &super::view::Proc,
        prev: &HashMap<(i32, u64), (u64, f64)>,
        seen: &mut HashMap<(i32, u64), (u64, f64)>,
    ) -> (TreeSummary, u64) {
        let none = HashSet::new();
        let members = tree::members(
            &self.snap,
            &tree::Lookup {
                leader: proc_.handle.pid(),
                leader_start: proc_.handle.start_ticks(),
                leader_unreaped: true,
                daemon: std::process::id() as i32,
                known: &none,
                agent_id: view.id.as_str(),
                // The tree is found from the table alone (children, group,
                // session, orphans by their CORRAL_AGENT_ID): reading every
                // leaf's `cgroup.procs` each interval would cost one file per
                // agent per second. Stops, which must miss nothing, read it.
                contained: &[],
            },
        );
        let mut tree = TreeSummary {
            processes: 0,
            cpu_percent: 0.0,
            memory_mb: 0.0,
        };
        let mut own = None;
        let mut tasks = 0u64;
        for m in members.iter().filter(|m| m.state != 'Z') {
            let key = (m.pid, m.start_ticks);
            let cpu = cpu_percent(m, prev.get(&key), self.now, self.sh.ticks_per_second);
            seen.insert(key, (m.cpu_ticks, self.now));
            tree.processes += 1;
            tree.cpu_percent += cpu;
            tree.memory_mb += self.mb(m.rss_pages);
            tasks += u64::from(m.num_threads);
            if m.pid == proc_.handle.pid() && m.start_ticks == proc_.handle.start_ticks() {
                own = Some((m, cpu));
            }
        }
        if let Some((m, cpu)) = own {
            proc_.set_sample(Sample {
                state: m.state,
                cpu_percent: cpu,
                memory_mb: self.mb(m.rss_pages),
                num_threads: m.num_threads,
                tree,
            });
        }
        (tree, tasks)
    }
}

/// psutil's CPU%: ticks used since the last sample over the time since, as a
/// percentage of one CPU; from the process's start when it is new.
fn cpu_percent(m: &ProcEntry, prev: Option<&(u64, f64)>, now: f64, tps: f64) -> f64 {
    let (ticks, at) = match prev {
        Some(&(ticks, at)) => (ticks, at),
        None => (0, m.start_ticks as f64 / tps),
    };
    let elapsed = now - at;
    if elapsed <= 0.0 {
        return 0.0;
    }
    (m.cpu_ticks.saturating_sub(ticks) as f64 / tps) / elapsed * 100.0
}

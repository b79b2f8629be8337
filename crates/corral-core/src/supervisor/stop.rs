//! Staged stops of whole process trees, many at once.

use super::*;

impl Supervisor {
    /// Stops the agents `selector` picks, all at once, each through its stages
    /// (SIGTERM, wait, SIGTERM, wait, SIGKILL, wait; straight to SIGKILL with
    /// `force`): the seed's `cleanup`. `None` stops every agent.
    pub async fn cleanup(
        &self,
        selector: Option<&Selector>,
        opts: CleanupOptions,
    ) -> Result<Vec<StopReport>> {
        let targets: Vec<Arc<Agent>> = {
            let agents = lock(&self.inner.agents);
            let mut picked: Vec<_> = agents
                .values()
                .filter(|a| selector.is_none_or(|s| s.matches(&a.id)))
                .cloned()
                .collect();
            picked.sort_by(|a, b| a.id.cmp(&b.id));
            picked
        };
        if let Some(Selector::One(id)) = selector
            && targets.is_empty()
        {
            return Err(Error::NotFound {
                agent_id: id.to_string(),
            });
        }
        let override_timeouts = match &opts.stop_timeouts {
            Some(t) => Some(validate_timeouts("-", t)?),
            None => None,
        };
        let stops = targets.into_iter().map(|agent| {
            let sup = self.clone();
            let timeouts = override_timeouts.unwrap_or(agent.record.stop_timeouts);
            let force = opts.force;
            tokio::spawn(async move { sup.stop_one(&agent, timeouts, force).await })
        });
        let mut reports = Vec::new();
        for stop in stops.collect::<Vec<_>>() {
            match stop.await {
                Ok(report) => reports.push(report),
                Err(e) => tracing::error!(error = %e, "a stop task failed"),
            }
        }
        Ok(reports)
    }

    /// Stops one agent: the seed's `kill_agent`. True when it is gone afterwards.
    pub async fn kill_agent(&self, id: &AgentId, force: bool) -> Result<bool> {
        let agent = self.agent(id)?;
        let report = self
            .stop_one(&agent, agent.record.stop_timeouts, force)
            .await;
        Ok(report.stage != StopStage::Unkillable)
    }

    /// Runs one agent's stop sequence over its whole tree.
    ///
    /// Each stage signals every member (the agent's group through the agent's
    /// still-unreaped pid, every other member through a pidfd opened with its
    /// start time checked), then waits — on the members' pidfds, the agent's
    /// recorded end and the orphan reaper — until no member is left or the
    /// stage's time is up. Processes forked during the stop are found by
    /// re-reading the process table after every wake-up, and signalled too.
    pub(super) async fn stop_one(
        &self,
        agent: &Agent,
        timeouts: [f64; 3],
        force: bool,
    ) -> StopReport {
        let began = Instant::now();
        let mut ended = agent.ended.subscribe();
        let Some(leader) = agent.proc_.clone().filter(|_| !*ended.borrow()) else {
            return self.stop_report(agent, StopStage::AlreadyEnded, began, None);
        };
        lock(&agent.state).stop_requested = true;
        let stages: Vec<(StopStage, Signal, f64)> = if force {
            vec![(StopStage::Kill, Signal::KILL, timeouts[2].max(1.0))]
        } else {
            vec![
                (StopStage::Term, Signal::TERM, timeouts[0]),
                (StopStage::SecondTerm, Signal::TERM, timeouts[1]),
                (StopStage::Kill, Signal::KILL, timeouts[2]),
            ]
        };
        let leader_id = (leader.pid(), leader.start_ticks());
        let mut seen: HashSet<(i32, u64)> = HashSet::new();
        for (stage, sig, wait) in stages {
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
            let mut signalled: HashSet<(i32, u64)> = HashSet::new();
            let mut handles: HashMap<(i32, u64), Arc<ProcessHandle>> = HashMap::new();
            let signal = if sig == Signal::KILL {
                "SIGKILL"
            } else {
                "SIGTERM"
            };
            tracing::info!(agent_id = %agent.id, pid = leader.pid(), stage = ?stage, "stop stage: sending {signal}");
            let data = serde_json::json!({"stage": stage, "signal": signal, "pid": leader.pid()});
            // Queued now, ahead of the end it leads to; its commit is awaited off the
            // signalling path.
            let recorded = self
                .inner
                .store
                .record_event(agent.run_id, "stop_stage", data);
            let (agent_id, pid) = (agent.id.to_string(), leader.pid());
            tokio::spawn(async move {
                if let Err(e) = recorded.committed().await {
                    tracing::error!(agent_id, pid, error = %e, "cannot record a stop stage");
                }
            });
            loop {
                let table = self
                    .inner
                    .tables
                    .fresh(Instant::now(), &self.inner.owned)
                    .await;
                let members = self.members(agent, &leader, &table, &seen);
                seen.extend(members.iter().map(|m| (m.pid, m.start_ticks)));
                let live: Vec<ProcEntry> =
                    members.iter().filter(|m| m.state != 'Z').copied().collect();
                if live.len() < members.len() && self.reap_orphans() > 0 {
                    continue; // zombies reparented to us are gone now: look again
                }
                if tree_is_dead(&members)
                    && *ended.borrow()
                    && !agent.leaf.as_ref().is_some_and(Leaf::populated)
                {
                    self.release_leaf(agent);
                    let descendants = seen.iter().filter(|m| **m != leader_id).count() as u32;
                    return self.stop_report(agent, stage, began, Some(descendants));
                }
                if sig == Signal::KILL
                    && let Some(leaf) = &agent.leaf
                    && let Err(e) = leaf.kill()
                {
                    tracing::warn!(agent_id = %agent.id, error = %e, "cgroup.kill failed");
                }
                for m in &live {
                    let key = (m.pid, m.start_ticks);
                    if !signalled.insert(key) {
                        continue;
                    }
                    if key == leader_id {
                        if let Err(e) = leader.signal_group(sig) {
                            tracing::warn!(agent_id = %agent.id, pid = m.pid, error = %e, "signal failed");
                        }
                        handles.insert(key, leader.clone());
                    } else if let Ok(Some(h)) = ProcessHandle::open_member(m.pid, m.start_ticks) {
                        // Identity checked through the pidfd: never a stranger.
                        let _ = h.signal(sig);
                        handles.insert(key, Arc::new(h));
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                // The agent itself is covered by `ended` (its pidfd is its watcher's).
                let waiting: Vec<Arc<ProcessHandle>> = live
                    .iter()
                    .filter(|m| (m.pid, m.start_ticks) != leader_id)
                    .filter_map(|m| handles.get(&(m.pid, m.start_ticks)).cloned())
                    .collect();
                let nothing_to_wait_on = waiting.is_empty() && *ended.borrow();
                let all_exited = async {
                    if nothing_to_wait_on {
                        // Only a non-empty cgroup or zombies of others are left,
                        // and neither has an event here: look again shortly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        return;
                    }
                    for h in &waiting {
                        wait_exited(h).await;
                    }
                    let _ = ended.wait_for(|e| *e).await;
                };
                tokio::select! {
                    _ = all_exited => {}
                    _ = self.inner.reaped.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        let snapshot = self
            .inner
            .tables
            .fresh(Instant::now(), &self.inner.owned)
            .await;
        // Zombies are dead: the orphan reaper takes ours on their SIGCHLD.
        let left: Vec<ProcEntry> = self
            .members(agent, &leader, &snapshot, &seen)
            .into_iter()
            .filter(|m| m.state != 'Z')
            .collect();
        let descendants = seen.iter().filter(|m| **m != leader_id).count() as u32;
        if left.is_empty() && !*ended.borrow() {
            // Everything is dead; only the record of the agent's end is still on
            // its way (thousands of exits commit at once): wait for it, bounded.
            let _ = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(|e| *e)).await;
        }
        if left.is_empty() && *ended.borrow() && !agent.leaf.as_ref().is_some_and(Leaf::populated) {
            self.release_leaf(agent);
            self.stop_report(agent, StopStage::Kill, began, Some(descendants))
        } else {
            tracing::error!(agent_id = %agent.id, pid = leader.pid(), left = left.len(), "processes survived SIGKILL");
            self.stop_report(agent, StopStage::Unkillable, began, Some(descendants))
        }
    }

    /// The agent's tree in `table`.
    pub(super) fn members(
        &self,
        agent: &Agent,
        leader: &ProcessHandle,
        table: &tree::Snapshot,
        known: &HashSet<(i32, u64)>,
    ) -> Vec<ProcEntry> {
        let unreaped = !lock(&agent.state).reaped;
        let contained = agent.leaf.as_ref().map(Leaf::pids).unwrap_or_default();
        tree::members(
            table,
            &tree::Lookup {
                leader: leader.pid(),
                leader_start: leader.start_ticks(),
                leader_unreaped: unreaped,
                daemon: std::process::id() as i32,
                known,
                agent_id: agent.id.as_str(),
                contained: &contained,
            },
        )
    }

    pub(super) fn stop_report(
        &self,
        agent: &Agent,
        stage: StopStage,
        began: Instant,
        descendants: Option<u32>,
    ) -> StopReport {
        let st = lock(&agent.state);
        StopReport {
            agent_id: agent.id.to_string(),
            pid: agent.pid(),
            stage,
            duration_ms: began.elapsed().as_secs_f64() * 1000.0,
            exit_code: match st.exit {
                Some(ExitKind::Code(c)) => Some(c),
                _ => agent.record.exit_code,
            },
            exit_signal: match st.exit {
                Some(ExitKind::Signal(s)) => Some(s),
                _ => agent.record.exit_signal,
            },
            descendants_killed: descendants,
            persistent_status: st.status,
        }
    }
}

/// True when no member is alive: none at all, or only zombies whose parent is
/// not this daemon (a re-adopted agent's tree: reaping those is their parent's
/// job; zombies that are our children are reaped by us before this is asked).
pub(super) fn tree_is_dead(members: &[ProcEntry]) -> bool {
    let me = std::process::id() as i32;
    members.iter().all(|m| m.state == 'Z' && m.ppid != me)
}

/// Resolves once the process behind `h` has exited (its pidfd is readable).
pub(super) async fn wait_exited(h: &Arc<ProcessHandle>) {
    // SAFETY: the Arc keeps the ProcessHandle, and so its pidfd, alive and
    // unchanged for as long as the AsyncFd exists.
    let registered = unsafe { AsyncFd::register_with_interest(h.clone(), Interest::READABLE) };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Snapshots of the process table shared by concurrent stops: a request for a
/// table taken after instant T is answered by one scan however many ask.
pub(super) struct TableCache {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<tree::Snapshot>)>>,
}

impl TableCache {
    pub(super) fn new() -> Self {
        Self {
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// A snapshot taken at or after `after`; `owned` (the agents' own pids) tells
    /// orphans from agents.
    pub(super) async fn fresh(
        &self,
        after: Instant,
        owned: &Mutex<HashSet<i32>>,
    ) -> Arc<tree::Snapshot> {
        let mut latest = self.latest.lock().await;
        if let Some((taken, table)) = latest.as_ref()
            && *taken >= after
        {
            return table.clone();
        }
        let taken = Instant::now();
        let owned = lock(owned).clone();
        let scan = tokio::task::spawn_blocking(move || {
            let mut snap = tree::Snapshot::new(platform::process_table());
            snap.attribute_orphans(
                std::process::id() as i32,
                &owned,
                platform::environ_agent_id,
            );
            snap
        });
        let table = Arc::new(
            scan.await
                .unwrap_or_else(|_| tree::Snapshot::new(Vec::new())),
        );
        tracing::debug!(
            took_us = taken.elapsed().as_micros() as u64,
            "process table scanned"
        );
        *latest = Some((taken, table.clone()));
        table
    }
}

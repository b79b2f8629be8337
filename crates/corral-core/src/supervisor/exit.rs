//! Noticing and recording ends: one pidfd watcher per agent, the orphan reaper
//! (as subreaper), the reap sweep, and exit statuses of re-adopted agents read
//! from the kernel.

use super::*;

impl Supervisor {
    /// Reaps orphans on every SIGCHLD. Agents' own exits are left to their watchers.
    pub(super) fn start_orphan_reaper(&self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = signal(SignalKind::child()).map_err(|e| Error::StateDir {
            path: self.inner.config.state_dir.clone(),
            action: "listen for SIGCHLD",
            source: e,
        })?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let Some(inner) = weak.upgrade() else { return };
                Supervisor { inner }.reap_orphans();
            }
        });
        Ok(())
    }

    /// Reaps every exited child that is not an agent (descendants of agents that
    /// were reparented to this subreaper). Returns how many it reaped.
    pub fn reap_orphans(&self) -> usize {
        // Read /proc before taking the lock (spawns and watchers need it), then
        // hold it across the waitids: a new agent enters `owned` under this lock
        // together with its spawn, so no agent's exit status can be taken here.
        let children = platform::own_children();
        let mut reaped = 0;
        {
            let owned = lock(&self.inner.owned);
            for pid in children.into_iter().filter(|pid| !owned.contains(pid)) {
                // An agent reaped by its watcher since the read: waitid takes nothing.
                if let Some(exit) = platform::reap_child(pid) {
                    reaped += 1;
                    tracing::debug!(pid, ?exit, "reaped an orphan");
                }
            }
        }
        if reaped > 0 {
            // An orphan may have been the last process in an ended agent's cgroup.
            let ended: Vec<Arc<Agent>> = lock(&self.inner.agents)
                .values()
                .filter(|a| a.leaf.is_some() && !a.status_now().is_live())
                .cloned()
                .collect();
            for agent in ended {
                self.release_leaf(&agent);
            }
            self.inner.reaped.notify_waiters();
        }
        reaped
    }

    /// Sweeps for anything not yet reaped: orphans of agents, and agents whose
    /// exit their watcher has not collected. Returns the ids of agents this sweep
    /// had to reap itself (normally none: exits are reaped the moment they happen).
    pub async fn reap_zombies(&self) -> Vec<String> {
        let orphans = self.reap_orphans();
        let exited: Vec<Arc<Agent>> = lock(&self.inner.agents)
            .values()
            .filter(|a| {
                a.status_now().is_live() && a.proc_.as_ref().is_some_and(|p| p.has_exited())
            })
            .cloned()
            .collect();
        let mut reaped = Vec::new();
        for agent in exited {
            // Its watcher normally records the exit within microseconds; give it a moment.
            let mut ended = agent.ended.subscribe();
            if tokio::time::timeout(Duration::from_millis(100), ended.wait_for(|e| *e))
                .await
                .is_ok()
            {
                continue;
            }
            if let Some(proc_) = agent.proc_.clone()
                && let Some(exit) = self.reap_agent(&agent, &proc_)
            {
                self.record_exit(&agent, exit).await;
                tracing::warn!(agent_id = %agent.id, pid = proc_.pid(), "reap sweep collected an agent its watcher missed");
                reaped.push(agent.id.to_string());
            }
        }
        tracing::info!(orphans, agents = reaped.len(), "reap sweep");
        reaped
    }

    /// Starts the task that waits for the agent's exit.
    pub(super) fn watch(&self, agent: Arc<Agent>) {
        let sup = self.clone();
        tokio::spawn(async move {
            let exit = sup.wait_exit(&agent).await;
            sup.record_exit(&agent, exit).await;
        });
    }

    /// Waits, without polling, until the agent's process exits; reaps it.
    pub(super) async fn wait_exit(&self, agent: &Agent) -> Option<ExitKind> {
        let proc_ = agent.proc_.clone()?;
        // SAFETY: the pidfd is owned by the ProcessHandle, which the Arc keeps alive
        // (and never changes) for as long as the AsyncFd exists.
        let registered =
            unsafe { AsyncFd::register_with_interest(proc_.clone(), Interest::READABLE) };
        let afd = match registered {
            Ok(afd) => afd,
            Err(e) => {
                tracing::error!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "cannot watch the pidfd");
                return None;
            }
        };
        loop {
            let mut ready = match afd.readable().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "pidfd wait failed");
                    return None;
                }
            };
            match self.reap_agent(agent, &proc_) {
                Some(None) => return self.exit_from_kernel(agent, &proc_).await,
                Some(exit) => return exit,
                None => ready.clear_ready(),
            }
        }
    }

    /// The exit status of an agent that is not our child (re-adopted after a
    /// daemon restart), from the kernel through its pidfd. The kernel has it
    /// once the real parent has reaped the process; there is no event for that,
    /// so this asks again for a bounded time before giving up.
    pub(super) async fn exit_from_kernel(
        &self,
        agent: &Agent,
        proc_: &ProcessHandle,
    ) -> Option<ExitKind> {
        const TRIES: u32 = 40;
        for _ in 0..TRIES {
            match proc_.exit_status_from_kernel() {
                Ok(Some(exit)) => {
                    lock(&agent.state).exit = Some(exit);
                    return Some(exit);
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::debug!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "the kernel gives no exit status (needs Linux 6.15)");
                    return None;
                }
            }
        }
        None
    }

    /// Reaps the agent's process if it has exited: `None` while it runs, else how
    /// it ended (`Some(None)` when the status is not ours to read: an agent
    /// re-adopted after a daemon restart has another parent).
    pub(super) fn reap_agent(
        &self,
        agent: &Agent,
        proc_: &ProcessHandle,
    ) -> Option<Option<ExitKind>> {
        match proc_.try_reap() {
            Ok(Some(exit)) => {
                lock(&self.inner.owned).remove(&proc_.pid());
                let mut st = lock(&agent.state);
                st.exit = Some(exit);
                st.reaped = true;
                Some(Some(exit))
            }
            Ok(None) => None,
            Err(e) => {
                let mut st = lock(&agent.state);
                if !st.reaped {
                    tracing::debug!(agent_id = %agent.id, pid = proc_.pid(), error = %e, "exit status not available");
                    st.reaped = true;
                }
                Some(st.exit)
            }
        }
    }

    pub(super) async fn record_exit(&self, agent: &Agent, exit: Option<ExitKind>) {
        let _t = agent.transition.lock().await;
        if !agent.status_now().is_live() {
            return; // already recorded (by a reap sweep)
        }
        let runtime = agent.proc_.as_ref().map(|p| {
            platform::boottime_seconds()
                - p.start_ticks() as f64 / self.inner.clock.ticks_per_second
        });
        let stop_requested = lock(&agent.state).stop_requested;
        let (status, reason) = match exit {
            _ if stop_requested => (
                PersistentStatus::Cancelled,
                match exit {
                    Some(ExitKind::Code(c)) => format!("stopped on request; exited with code {c}"),
                    Some(ExitKind::Signal(s)) => {
                        format!("stopped on request; killed by {}", signal_name(s))
                    }
                    None => "stopped on request".to_owned(),
                },
            ),
            Some(ExitKind::Code(0)) => {
                (PersistentStatus::Completed, "exited with code 0".to_owned())
            }
            Some(ExitKind::Code(c)) => (PersistentStatus::Failed, format!("exited with code {c}")),
            Some(ExitKind::Signal(s)) => (
                PersistentStatus::Failed,
                format!("killed by {}", signal_name(s)),
            ),
            None => (
                PersistentStatus::Failed,
                "exit status lost: the agent was re-adopted after a daemon restart and the kernel did not report how it ended (needs Linux 6.15, and a parent that reaps it)".to_owned(),
            ),
        };
        let end = Ending {
            status,
            ended_at: now_rfc3339(),
            exit_code: match exit {
                Some(ExitKind::Code(c)) => Some(c),
                _ => None,
            },
            exit_signal: match exit {
                Some(ExitKind::Signal(s)) => Some(s),
                _ => None,
            },
            end_reason: reason,
        };
        if let Err(e) = self.inner.store.finish(agent.run_id, end.clone()).await {
            // The end is still shown (memory) and logged; the store keeps the run live,
            // and the next daemon start resolves it.
            tracing::error!(agent_id = %agent.id, pid = agent.pid(), error = %e, "cannot record the end of a run");
        }
        {
            let mut st = lock(&agent.state);
            st.status = end.status;
            st.ended_at = Some(end.ended_at);
            st.end_reason = Some(end.end_reason.clone());
            st.runtime_at_end = runtime;
            st.reaped = true;
        }
        self.release_leaf(agent);
        tracing::info!(agent_id = %agent.id, pid = agent.pid(), status = %end.status, reason = %end.end_reason, "agent ended");
        agent.ended.send_replace(true);
    }
}

//! What a daemon makes of the store when it starts: every run the store holds
//! as live is re-adopted (same pid, start time and boot id) or recorded as
//! ended with the reason; a spawn the previous daemon did not finish recording
//! is found by its `CORRAL_RUN_ID`.

use super::*;

impl Supervisor {
    pub(super) async fn load(&self) -> Result<()> {
        for (record, restarts) in self.inner.store.load_latest()? {
            let Ok(id) = AgentId::new(record.agent_id.clone()) else {
                tracing::warn!(agent_id = %record.agent_id, "skipping a stored run with an invalid id");
                continue;
            };
            let agent = if record.status.is_live() {
                self.reconcile(record, restarts).await?
            } else {
                Arc::new(Agent::new(record, restarts, None)?)
            };
            lock(&self.inner.agents).insert(id, agent);
        }
        Ok(())
    }

    /// Decides what a run stored as live is now: the same process (re-adopt) or gone.
    pub(super) async fn reconcile(&self, record: RunRecord, restarts: u32) -> Result<Arc<Agent>> {
        let same_boot = record.boot_id.as_deref() == Some(self.inner.boot_id.as_str());
        let mut handle = match (record.pid.and_then(Pid::from_raw), record.start_ticks) {
            (Some(pid), Some(ticks)) if same_boot => ProcessHandle::open(pid, Some(ticks))
                .map_err(|e| Error::os(&record.agent_id, "check a stored process", e))?,
            _ => None,
        };
        let mut record = record;
        if handle.is_none()
            && record.pid.is_none()
            && let Some(found) = self.find_unrecorded(&record)
        {
            // The daemon died between starting this process and recording it.
            tracing::warn!(agent_id = %record.agent_id, pid = found.pid(), "found the process of an unrecorded spawn");
            self.inner
                .store
                .set_process(
                    record.run_id,
                    found.pid(),
                    found.start_ticks(),
                    self.inner.boot_id.clone(),
                    PersistentStatus::Running,
                )
                .await?;
            record.pid = Some(found.pid());
            record.start_ticks = Some(found.start_ticks());
            record.boot_id = Some(self.inner.boot_id.clone());
            record.status = PersistentStatus::Running;
            handle = Some(found);
        }
        match handle {
            Some(handle) => {
                tracing::info!(agent_id = %record.agent_id, pid = handle.pid(), "re-adopted a running agent");
                if record.status == PersistentStatus::Spawning {
                    self.inner
                        .store
                        .set_status(record.run_id, PersistentStatus::Running)
                        .await?;
                    record.status = PersistentStatus::Running;
                }
                let pid = handle.pid();
                let name = leaf_name(&record.agent_id, record.run_id);
                let mut agent = Agent::new(record, restarts, Some(Arc::new(handle)))?;
                agent.leaf = self
                    .inner
                    .cgroup
                    .as_ref()
                    .ok()
                    .map(|root| root.leaf(&name))
                    .filter(|l| l.contains(pid));
                let agent = Arc::new(agent);
                agent.refresh_sample(&self.inner.clock);
                self.watch(agent.clone());
                Ok(agent)
            }
            None => {
                let reason = if record.pid.is_none() {
                    "the daemon stopped before the process was recorded; the start did not complete"
                } else {
                    "exit status lost: the process ended while no corral daemon was running"
                };
                let end = Ending {
                    status: PersistentStatus::Failed,
                    ended_at: now_rfc3339(),
                    exit_code: None,
                    exit_signal: None,
                    end_reason: reason.to_owned(),
                };
                self.inner.store.finish(record.run_id, end.clone()).await?;
                tracing::warn!(agent_id = %record.agent_id, pid = record.pid, "{reason}");
                let mut record = record;
                record.status = end.status;
                record.ended_at = Some(end.ended_at);
                record.end_reason = Some(end.end_reason);
                Ok(Arc::new(Agent::new(record, restarts, None)?))
            }
        }
    }

    /// The process of a run whose spawn was never recorded: it leads its own
    /// session and carries the run's `CORRAL_RUN_ID` and `CORRAL_AGENT_ID`
    /// (looked for in the run's cgroup when it has one, else in all of `/proc`).
    pub(super) fn find_unrecorded(&self, record: &RunRecord) -> Option<ProcessHandle> {
        let run = record.run_id.to_string();
        let in_leaf: Option<HashSet<i32>> = self
            .inner
            .cgroup
            .as_ref()
            .ok()
            .map(|root| root.leaf(&leaf_name(&record.agent_id, record.run_id)))
            .filter(Leaf::exists)
            .map(|leaf| leaf.pids().into_iter().collect());
        let mut candidates: Vec<ProcEntry> = platform::process_table()
            .into_iter()
            .filter(|p| p.session == p.pid && p.state != 'Z')
            .filter(|p| in_leaf.as_ref().is_none_or(|pids| pids.contains(&p.pid)))
            .filter(|p| {
                platform::environ_var(p.pid, "CORRAL_RUN_ID").as_deref() == Some(run.as_str())
                    && platform::environ_agent_id(p.pid).as_deref()
                        == Some(record.agent_id.as_str())
            })
            .collect();
        // The agent started before anything it started.
        candidates.sort_by_key(|p| p.start_ticks);
        let first = candidates.first()?;
        ProcessHandle::open_member(first.pid, first.start_ticks)
            .ok()
            .flatten()
    }
}

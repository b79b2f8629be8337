//! What a daemon makes of the store when it starts.
//!
//! Every agent id gets its newest run back: a run the store holds as not ended
//! (live, being stopped, waiting to restart, or with processes left in its
//! cgroup) gets an owner that takes it over (`owner/adopt.rs`); anything else
//! is an ended agent, shown as it was recorded. `load` returns once every
//! owner has published its first state, so nothing is ever shown as running
//! that is gone. Then empty cgroups left by ended runs are removed.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::id::AgentId;
use crate::store::RunRecord;

use super::owner::Start;
use super::spec::{self, Spec};
use super::view::{Published, View};
use super::{Shared, Slot, blocking, launch, lock};

/// The checked spec of a stored run (blocking: may look up a user). A stored
/// request that no longer passes the checks is kept as it was, with defaults.
/// A user that cannot be looked up now stays unresolved: its runs fail and
/// its probes do not run until it can be, never as another uid.
pub(crate) fn spec_of(sh: &Shared, record: &RunRecord, id: AgentId) -> Spec {
    let user = spec::RunAs::lookup(record.spec.user.as_deref());
    if let spec::RunAs::Unresolved { name, why } = &user {
        tracing::warn!(agent_id = %id, user = %name, reason = %why, "the agent's user cannot be resolved; its runs will fail until it can");
    }
    let mut request = record.spec.clone();
    request.agent_id = id.to_string();
    // The stored agent dir is the real path it had at spawn; it is not
    // resolved again (a symlink planted since must not become the agent dir).
    match spec::check(request.clone(), &sh.config.state_dir, user.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(agent_id = %id, error = %e, "a stored spawn request no longer passes the checks; using it as stored");
            let agent_dir = request
                .agent_dir
                .clone()
                .unwrap_or_else(|| sh.config.state_dir.join("agents").join(id.as_str()));
            Spec {
                cwd: request.cwd.clone().unwrap_or_else(|| agent_dir.clone()),
                stop_timeouts: spec::DEFAULT_STOP_TIMEOUTS,
                verify: std::time::Duration::from_millis(spec::DEFAULT_VERIFY_MS),
                restart: Default::default(),
                request,
                agent_dir,
                user,
                id,
            }
        }
    }
}

/// Whether a stored run still needs an owner (blocking: may read its cgroup):
/// it is live, or being stopped, or waiting to restart, or — recorded as
/// ended by an older corral — has processes left in its cgroup.
fn needs_owner(sh: &Shared, record: &RunRecord) -> bool {
    use crate::model::AgentState;
    if record.status.is_live() || record.stop.is_some() || record.next_restart_at.is_some() {
        return true;
    }
    if record.state.is_some_and(|s| s != AgentState::Ended) {
        return true;
    }
    sh.cgroup.as_ref().is_ok_and(|root| {
        root.leaf(&super::leaf_name(&record.agent_id, record.run))
            .populated()
    })
}

/// Loads every agent of the store and resolves the live ones.
pub(crate) async fn load(sh: &Arc<Shared>) -> Result<()> {
    let shared = sh.clone();
    let loaded: Vec<(RunRecord, Spec, bool)> = blocking(move || {
        let mut out = Vec::new();
        for (record, _) in shared.store.load_latest()? {
            match AgentId::new(record.agent_id.clone()) {
                Ok(id) => {
                    let owned = needs_owner(&shared, &record);
                    let spec = spec_of(&shared, &record, id);
                    out.push((record, spec, owned));
                }
                Err(_) => {
                    tracing::warn!(agent_id = ?record.agent_id, "skipping a stored run with an invalid id")
                }
            }
        }
        Ok(out)
    })
    .await?;
    // The agents below a parent are in the registry before the parent's owner
    // runs: a parent that ended while no daemon ran stops its team, and must
    // find every member of it (`team_stop.rs`).
    let mut loaded = loaded;
    loaded
        .sort_by_key(|(record, _, _)| std::cmp::Reverse(super::team_stop::depth(&record.agent_id)));
    let mut first_states = Vec::new();
    for (record, spec, owned) in loaded {
        if !owned {
            let view = View::from_record(&record, Arc::new(spec));
            let (tx, _) = mpsc::unbounded_channel();
            let (_, published) = watch::channel(Published {
                view: Some(Arc::new(view.clone())),
                busy: false,
            });
            lock(&sh.registry).insert(
                view.id.clone(),
                Slot {
                    tx,
                    published,
                    removing: false,
                },
            );
            continue;
        }
        first_states.push(launch(
            sh,
            spec,
            Start::Recover(Box::new(record)),
            false,
            false,
        )?);
    }
    for mut published in first_states {
        let _ = published.wait_for(|p| p.view.is_some()).await;
    }
    let shared = sh.clone();
    blocking(move || {
        super::reaper::sweep_empty_leaves(&shared, true);
        Ok(())
    })
    .await
}

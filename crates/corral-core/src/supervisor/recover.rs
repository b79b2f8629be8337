//! What a daemon makes of the store when it starts.
//!
//! Every agent id gets its newest run back: a run the store holds as live gets
//! an owner that re-adopts its process (same pid, start time and boot id) or
//! records how it ended; a restart that was planned is resumed where it left
//! off; anything else is an ended agent, shown as it was recorded. `load`
//! returns once every owner has published its first state, so nothing is ever
//! shown as running that is gone. Then cgroups left by ended runs are swept.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::id::AgentId;
use crate::store::RunRecord;

use super::actor::Start;
use super::spec::{self, Spec};
use super::view::{Published, View};
use super::{Shared, Slot, blocking, launch, leaf_name, lock};

/// The checked spec of a stored run (blocking: may look up a user). A stored
/// request that no longer passes the checks is kept as it was, with defaults.
fn spec_of(sh: &Shared, record: &RunRecord, id: AgentId) -> Spec {
    let user = record
        .spec
        .user
        .as_deref()
        .and_then(|u| crate::platform::files::lookup_user(u).ok().flatten());
    let mut request = record.spec.clone();
    request.agent_id = id.to_string();
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

/// Loads every agent of the store and resolves the live ones.
pub(crate) async fn load(sh: &Arc<Shared>) -> Result<()> {
    let shared = sh.clone();
    let loaded: Vec<(RunRecord, Spec)> = blocking(move || {
        let mut out = Vec::new();
        for (record, _) in shared.store.load_latest()? {
            match AgentId::new(record.agent_id.clone()) {
                Ok(id) => {
                    let spec = spec_of(&shared, &record, id);
                    out.push((record, spec));
                }
                Err(_) => {
                    tracing::warn!(agent_id = ?record.agent_id, "skipping a stored run with an invalid id")
                }
            }
        }
        Ok(out)
    })
    .await?;
    let mut first_states = Vec::new();
    for (record, spec) in loaded {
        let start = if record.status.is_live() {
            Start::Adopt(Box::new(record))
        } else if record.next_restart_at.is_some() {
            Start::Planned(Box::new(record))
        } else {
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
        };
        first_states.push(launch(sh, spec, start)?);
    }
    for mut published in first_states {
        let _ = published.wait_for(|p| p.view.is_some()).await;
    }
    let shared = sh.clone();
    blocking(move || {
        sweep_stale_leaves(&shared);
        Ok(())
    })
    .await
}

/// Removes the empty cgroups of runs that are not alive (left by a daemon that
/// died before it could remove them).
fn sweep_stale_leaves(sh: &Shared) {
    let Ok(root) = &sh.cgroup else { return };
    let live: HashSet<PathBuf> = lock(&sh.registry)
        .values()
        .filter_map(|slot| slot.published.borrow().view.clone())
        .filter(|v| v.proc_.is_some())
        .map(|v| root.leaf(&leaf_name(v.id.as_str(), v.run)).dir().to_owned())
        .collect();
    let Ok(entries) = std::fs::read_dir(root.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || live.contains(&entry.path()) {
            continue;
        }
        let leaf = root.leaf(&entry.file_name().to_string_lossy());
        if leaf.populated() {
            tracing::warn!(cgroup = %leaf.dir().display(), "processes of an ended run are still running in its cgroup");
        } else if let Err(e) = root.remove_leaf(&leaf) {
            tracing::warn!(cgroup = %leaf.dir().display(), error = %e, "cannot remove a stale cgroup");
        }
    }
}

//! A parent agent's team in a stop: the agents below it by id (`L2.1.3` is
//! below `L2.1` and `L2`) are its descendants, as its own processes are.
//!
//! - **A stop someone asks for** (`stop`, `kill`, `restart`, `down`, a
//!   daemon stop that stops agents) stops the team first: the deepest level
//!   first, each level at once, every member with cause `parent` (or as a
//!   stop under way already has it), with the parent's timeouts and `force`;
//!   then the parent itself. The coordinator goes last: none of its helpers
//!   outlives it, and it is not left running while its helpers vanish after it
//!   had already been told to stop.
//! - **The parent's own end** (its main process exits, or a limit, the runtime
//!   limit or a probe stops it) stops the team as part of its leftovers: the
//!   owner begins the team's stop when the main process's end is on record,
//!   and a restart of the parent waits until the team is gone, so a new run
//!   never starts beside the helpers of the old one and none is orphaned.
//! - **Nothing is spawned into a team being stopped**: from the moment a stop
//!   of `X` is asked until it is answered (its team's stop and its own), a
//!   spawn of an id below `X` (a helper the coordinator starts in its last
//!   moments, or anybody else's) is refused (`launch`).
//!
//! Each member's stop is its own owner's, committed before its first signal
//! like any other: a daemon that dies meanwhile finishes each on its next
//! start. The mark that refuses spawns is this daemon's memory only.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::AgentId;
use crate::model::{StopCause, StopReport};

use super::{Shared, Slot, lock};

/// The registry's agents below `parent` (every id starting `parent.`): one
/// range of the ordered map, no scan of the other agents.
pub(crate) fn below<'a>(
    reg: &'a BTreeMap<AgentId, Slot>,
    parent: &str,
) -> impl Iterator<Item = (&'a AgentId, &'a Slot)> + 'a {
    let prefix = format!("{parent}.");
    reg.range::<str, _>((
        std::ops::Bound::Excluded(prefix.as_str()),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(id, _)| id.as_str().starts_with(&prefix))
}

/// The live agents below `parent`.
pub(crate) fn live_below(sh: &Shared, parent: &AgentId) -> Vec<AgentId> {
    let reg = lock(&sh.registry);
    below(&reg, parent.as_str())
        .filter(|(_, slot)| slot.busy())
        .map(|(id, _)| id.clone())
        .collect()
}

/// Refuses a spawn of `id` while an agent above it (an id it starts with, up
/// to a `.`) is being stopped. Called under the registry's lock; costs a
/// lookup per level of `id`.
pub(crate) fn refuse_spawn(sh: &Shared, id: &AgentId) -> Result<()> {
    let stopping = lock(&sh.teams_stopping);
    if stopping.is_empty() {
        return Ok(());
    }
    match above(id.as_str()).find(|p| stopping.contains_key(*p)) {
        Some(parent) => Err(Error::State {
            agent_id: id.to_string(),
            state: "refused".into(),
            reason: format!(
                "its parent agent {parent} is being stopped, with every agent below it"
            ),
        }),
        None => Ok(()),
    }
}

/// Holds `parent` as being stopped while it lives: spawns below it are refused.
pub(crate) struct Mark<'a> {
    sh: &'a Shared,
    parent: AgentId,
}

impl<'a> Mark<'a> {
    pub(crate) fn new(sh: &'a Shared, parent: &AgentId) -> Self {
        *lock(&sh.teams_stopping).entry(parent.clone()).or_default() += 1;
        Self {
            sh,
            parent: parent.clone(),
        }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        let mut stopping = lock(&self.sh.teams_stopping);
        if let Some(n) = stopping.get_mut(&self.parent) {
            *n -= 1;
            if *n == 0 {
                stopping.remove(&self.parent);
            }
        }
    }
}

/// Stops every live agent below `parent`, deepest level first, each level at
/// once, with cause `parent`; answers once each member's stop is answered
/// (its tree gone, or reported unkillable). Agents spawned below `parent`
/// meanwhile are refused. `timeouts` `None`: each member's own.
pub(crate) async fn stop_team(
    sh: &Arc<Shared>,
    parent: &AgentId,
    timeouts: Option<[f64; 3]>,
    force: bool,
) -> Vec<StopReport> {
    let _mark = Mark::new(sh, parent);
    let mut asked: HashSet<AgentId> = HashSet::new();
    let mut reports = Vec::new();
    loop {
        // Looked at again after every level: a member that was starting when
        // the mark went up is live now, and one unkillable is asked once.
        let below: Vec<AgentId> = live_below(sh, parent)
            .into_iter()
            .filter(|id| !asked.contains(id))
            .collect();
        let Some(deepest) = below.iter().map(|id| depth(id.as_str())).max() else {
            break;
        };
        let level: Vec<AgentId> = below
            .into_iter()
            .filter(|id| depth(id.as_str()) == deepest)
            .collect();
        tracing::info!(agent_id = %parent, members = level.len(), "stopping agents of a team before their parent");
        let stops = level
            .iter()
            .map(|id| super::ops::stop_alone(sh, id, timeouts, force, StopCause::Parent));
        reports.extend(
            futures_util::future::join_all(stops)
                .await
                .into_iter()
                .flatten(),
        );
        asked.extend(level);
    }
    reports
}

/// The ids above `id`, the top first (`L2.1.3`: `L2`, `L2.1`).
pub(crate) fn above(id: &str) -> impl Iterator<Item = &str> {
    id.match_indices('.').map(move |(i, _)| &id[..i])
}

/// How many levels `id` is below the top (`L2.1.3`: 2).
pub(crate) fn depth(id: &str) -> usize {
    id.bytes().filter(|b| *b == b'.').count()
}

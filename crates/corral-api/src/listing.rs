//! `GET /v1/agents`: the listing, its filters and its field selection.
//!
//! A fleet of thousands of agents makes the listing the API's largest
//! answer, so the daemon filters it (`selector`, `state`, `label`, `node`) before
//! writing anything, writes only the fields asked for (`fields`), and streams
//! what it writes: the JSON object is written a slice of agents at a time, so
//! no buffer of the whole answer is ever built and the first bytes leave at
//! once. Without parameters the answer is byte for byte what a
//! `Json<BTreeMap<String, AgentStatus>>` would write.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use corral_core::{
    AgentState, AgentStatus, ErrorBody, ListQuery, Listed, Selector, StatusFields, Supervisor,
};

use crate::error::ApiError;

/// Agents written per chunk of a streamed listing: big enough that a chunk
/// is worth a write, small enough that a chunk stays a few tens of KiB.
const CHUNK_AGENTS: usize = 64;

/// What a listing keeps and writes, parsed and checked.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    selector: Option<Selector>,
    states: Vec<AgentState>,
    labels: Vec<(String, String)>,
    /// Nodes an agent must be placed on one of (none: no filter).
    nodes: Vec<String>,
    /// The fields to write; `None`: all of them (the whole status).
    fields: Option<Vec<&'static str>>,
}

impl Listing {
    /// Parses the query's `(name, value)` pairs; `label` may repeat, every
    /// other parameter may appear once.
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut seen: Vec<&'static str> = Vec::new();
        let mut once = |name: &'static str| {
            if seen.contains(&name) {
                return Err(ApiError::invalid(format!(
                    "bad query: {name} is given twice (separate values with commas)"
                )));
            }
            seen.push(name);
            Ok(())
        };
        let mut out = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                "selector" => {
                    once("selector")?;
                    out.selector = Some(Selector::parse(&value)?);
                }
                "state" => {
                    once("state")?;
                    for word in items(&value) {
                        let state = word.parse::<AgentState>().map_err(|_| {
                            ApiError::invalid(format!(
                                "bad query: state {:?} is not a lifecycle state; use {}",
                                corral_core::elide(word, 64),
                                AgentState::ALL.map(AgentState::as_str).join(", ")
                            ))
                        })?;
                        out.states.push(state);
                    }
                }
                "label" => {
                    for piece in value.split(',') {
                        match (piece.split_once('='), out.labels.last_mut()) {
                            (Some((k, v)), _) => out.labels.push((k.to_owned(), v.to_owned())),
                            // A piece without `=` continues the value before it:
                            // `team=a,b` is the label team = "a,b".
                            (None, Some((_, v))) if !piece.is_empty() => {
                                v.push(',');
                                v.push_str(piece);
                            }
                            _ => {
                                return Err(ApiError::invalid(format!(
                                    "bad query: label {:?} is not k=v",
                                    corral_core::elide(&value, 64)
                                )));
                            }
                        }
                    }
                }
                "node" => {
                    once("node")?;
                    out.nodes = items(&value).map(str::to_owned).collect();
                    if out.nodes.is_empty() {
                        return Err(ApiError::invalid(
                            "bad query: node names no node (give node=NAME[,NAME...])",
                        ));
                    }
                }
                "fields" => {
                    once("fields")?;
                    let mut fields = Vec::new();
                    for word in items(&value) {
                        let field = AgentStatus::FIELDS
                            .into_iter()
                            .find(|f| *f == word)
                            .ok_or_else(|| {
                                ApiError::invalid(format!(
                                    "bad query: fields: {:?} is not a field of an agent's status",
                                    corral_core::elide(word, 64)
                                ))
                            })?;
                        if !fields.contains(&field) {
                            fields.push(field);
                        }
                    }
                    out.fields = Some(fields);
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "bad query: unknown parameter {:?}; expected selector, state, label, node or fields",
                        corral_core::elide(other, 64)
                    )));
                }
            }
        }
        Ok(out)
    }

    /// True when an agent passes every filter.
    fn keeps(&self, a: &Listed<'_>) -> bool {
        self.selector.as_ref().is_none_or(|sel| sel.matches(a.id))
            && (self.states.is_empty() || self.states.contains(&a.state))
            && self
                .labels
                .iter()
                .all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
            && (self.nodes.is_empty()
                || a.node
                    .is_some_and(|node| self.nodes.iter().any(|n| n == node)))
    }

    /// Writes `kept` (sorted by id) as one JSON object by id, a chunk at a time.
    fn stream(self, kept: Vec<AgentStatus>) -> Body {
        if kept.is_empty() {
            return Body::from("{}");
        }
        let fields = self.fields;
        let chunks = kept.len().div_ceil(CHUNK_AGENTS);
        let mut kept = kept.into_iter();
        let stream = futures_util::stream::iter((0..chunks).map(move |i| {
            let mut buf = Vec::with_capacity(CHUNK_AGENTS * 1024);
            buf.push(if i == 0 { b'{' } else { b',' });
            for (j, s) in kept.by_ref().take(CHUNK_AGENTS).enumerate() {
                if j > 0 {
                    buf.push(b',');
                }
                write_entry(&mut buf, &s, fields.as_deref())?;
            }
            if i + 1 == chunks {
                buf.push(b'}');
            }
            Ok::<_, serde_json::Error>(Bytes::from(buf))
        }));
        Body::from_stream(stream)
    }
}

/// One `"id":{status}` entry.
fn write_entry(
    buf: &mut Vec<u8>,
    s: &AgentStatus,
    fields: Option<&[&'static str]>,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *buf, &s.agent_id)?;
    buf.push(b':');
    match fields {
        None => serde_json::to_writer(&mut *buf, s),
        Some(fields) => serde_json::to_writer(&mut *buf, &StatusFields { status: s, fields }),
    }
}

/// The non-empty, trimmed items of a comma-separated value.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|w| !w.is_empty())
}

impl<S: Send + Sync> FromRequestParts<S> for Listing {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let crate::routes::Q(pairs) =
            crate::routes::Q::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        Self::parse(pairs)
    }
}

/// Every agent's status, by id (`monitor_all_agents`); the parameters filter
/// the agents and pick the fields (each status then has only those, and
/// `agent_id`). The header `X-Corral-Event-Seq` is the newest event stored
/// before the statuses were read: following `GET /v1/events?since=` it
/// misses no change after this answer, and replays none before it.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(ListQuery),
    responses((status = 200, body = BTreeMap<String, AgentStatus>,
        description = "Statuses by id (with `fields`: only those fields of each)",
        headers(("x-corral-event-seq" = i64, description = "The newest event stored before the statuses were read"))),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn list(State(sup): State<Supervisor>, listing: Listing) -> Response {
    // The sampled figures: fresh ones are waited for only when asked for.
    const SAMPLED: [&str; 5] = [
        "cpu_percent",
        "memory_mb",
        "num_threads",
        "tree",
        "process_status",
    ];
    if listing
        .fields
        .as_ref()
        .is_none_or(|fields| fields.iter().any(|f| SAMPLED.contains(f)))
    {
        sup.fresh_figures().await;
    }
    // Read before the statuses: an event committed meanwhile is sent again
    // to a follower starting here, never lost.
    let seq = *sup.subscribe_events().borrow();
    let keep = |a: &Listed<'_>| listing.keeps(a);
    let kept = match &listing.fields {
        // Only the asked fields are built (`agent_id` is always written).
        Some(fields) => sup.monitor_agent_fields(keep, &|f| f == "agent_id" || fields.contains(&f)),
        None => sup.monitor_agents(keep),
    };
    let body = listing.stream(kept);
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            ),
            (
                axum::http::HeaderName::from_static("x-corral-event-seq"),
                axum::http::HeaderValue::from(seq),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use corral_core::AgentId;

    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[tokio::test]
    async fn the_streamed_listing_is_byte_for_byte_the_maps_json() {
        for n in [0, 1, CHUNK_AGENTS - 1, CHUNK_AGENTS, 3 * CHUNK_AGENTS + 5] {
            let map: BTreeMap<String, AgentStatus> = (0..n)
                .map(|i| {
                    let mut s = AgentStatus::blank(format!("a.{i}"));
                    s.cpu_percent = 0.1 * i as f64;
                    s.labels.insert("k\"".into(), format!("v{i}"));
                    (s.agent_id.clone(), s)
                })
                .collect();
            let body = Listing::default().stream(map.values().cloned().collect());
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            assert_eq!(
                String::from_utf8(bytes.to_vec()).unwrap(),
                serde_json::to_string(&map).unwrap(),
                "{n} agents"
            );
        }
    }

    #[test]
    fn parameters_are_checked_and_named_when_wrong() {
        let l = Listing::parse(pairs(&[
            ("state", "running, paused"),
            ("label", "a=1,b=2"),
            ("label", "c=x=y"),
            ("label", "d=1,2,e=3"),
            ("fields", "state,progress,state"),
        ]))
        .unwrap();
        assert_eq!(l.states, [AgentState::Running, AgentState::Paused]);
        assert_eq!(
            l.labels,
            [
                ("a", "1"),
                ("b", "2"),
                ("c", "x=y"),
                ("d", "1,2"),
                ("e", "3")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(l.fields.as_deref(), Some(&["state", "progress"][..]));
        let msg = |q: &[(&str, &str)]| Listing::parse(pairs(q)).unwrap_err().message().to_owned();
        assert!(msg(&[("fields", "state,bogus")]).contains("\"bogus\""));
        assert!(msg(&[("state", "runing")]).contains("\"runing\""));
        assert!(msg(&[("label", "nokv")]).contains("\"nokv\""));
        assert!(msg(&[("label", "a=1,,b")]).contains("\"a=1,,b\""));
        assert!(msg(&[("status", "x")]).contains("\"status\""));
        assert!(msg(&[("selector", "*")]).contains('*'));
        assert!(msg(&[("state", "ended"), ("state", "running")]).contains("twice"));
        assert!(msg(&[("node", "n1"), ("node", "n2")]).contains("twice"));
        assert!(msg(&[("node", " , ")]).contains("no node"));
    }

    #[test]
    fn node_keeps_only_agents_placed_on_those_nodes() {
        let l = Listing::parse(pairs(&[("node", "n1, n3")])).unwrap();
        assert_eq!(l.nodes, ["n1", "n3"]);
        let id = AgentId::new("a").unwrap();
        let labels = BTreeMap::new();
        let on = |node: Option<&'static str>| Listed {
            id: &id,
            state: AgentState::Running,
            labels: &labels,
            node,
        };
        assert!(l.keeps(&on(Some("n1"))));
        assert!(l.keeps(&on(Some("n3"))));
        assert!(!l.keeps(&on(Some("n2"))));
        assert!(!l.keeps(&on(Some("n10"))), "names match whole");
        assert!(!l.keeps(&on(None)), "on this host, or queued: on no node");
        assert!(Listing::default().keeps(&on(None)));
    }
}

//! Delegation: an agent works on its own team, and only on it.
//!
//! Agents form teams by their ids (`L2.1.3` is under `L2.1`). A request from
//! a process inside agent `X` — known from the socket's peer credentials, by
//! [`Supervisor::agent_of_caller`] on the daemon's own socket and by
//! [`Supervisor::agent_containing`] (nothing the caller can forge) on the
//! agent socket — is served only for `X`'s subtree:
//!
//! - `/v1/agents/{id}` and everything under it (status, health, runs, wait,
//!   logs, stop, kill, restart, rm, progress): `id` is `X` or below it
//!   (progress stays the caller's own, as the route checks);
//! - `POST /v1/agents` and `/v1/agents/batch`: every new id strictly below
//!   `X` (`X.…`), and its `user` unset or `X`'s own — unset becomes `X`'s, so
//!   a child never runs as another user than its parent, a more privileged
//!   one least of all; no `agent_dir` (the daemon makes that dir, as its own
//!   user), and no cluster placement for a parent of another user (jobs run
//!   as the daemon's user). Bodies are read as the route reads them and sent
//!   on re-encoded: what is checked is what is served;
//! - `GET /v1/agents`: a `selector` within the subtree, or none, which
//!   becomes `X.*`;
//! - `POST /v1/stop` and `/v1/restart`: a `selector` within the subtree
//!   (`all` is refused: it would take `X` itself along);
//! - `POST /v1/pause` and `/v1/resume`: an `agent_id` or `selector` strictly
//!   below `X` (`X.…`): a caller that froze its own agent could not thaw it;
//! - `GET /v1/teams/{id}`: the budgets and usage of a team `X` belongs to
//!   (`X` itself or one above it: its spawns count against them) or of one
//!   within `X`'s subtree; setting and removing budgets, and the list of
//!   every team, are the owner's — an agent cannot raise its own cap;
//! - `GET /v1/health` and `/v1/openapi.json`, as for anyone;
//! - everything else (events, summary, metrics, reap, prune, stopping the
//!   daemon) is the owner's: 403 `forbidden`, naming the allowed prefix.
//!
//! A request over TCP (it carries the token) or from a process outside every
//! agent is the owner's, and is not scoped.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_core::{
    AgentId, BatchRequest, ErrorCode, PauseRequest, Selector, SpawnRequest, StopManyRequest,
    Supervisor,
};

use crate::error::ApiError;
use crate::routes::Peer;

/// The agent a delegated request comes from (set on the requests whose
/// answers the route itself narrows to the caller's subtree).
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub AgentId);

/// The daemon's own socket: scopes callers inside an agent to their team.
pub(crate) async fn delegate(State(sup): State<Supervisor>, req: Request, next: Next) -> Response {
    let Some(peer) = req.extensions().get::<Peer>().cloned() else {
        return next.run(req).await;
    };
    let Some(connected) = peer.pid else {
        return next.run(req).await;
    };
    // The process that connected has exited and something else holds its
    // connection: nobody can say whose team that is.
    let Some(pid) = peer.live_pid() else {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!("pid {connected}, which opened this connection, has exited"),
        )
        .into_response();
    };
    let caller = peer
        .agent
        .get_or_init(|| sup.agent_of_caller(pid))
        .await
        .clone()
        .filter(|_| peer.live_pid() == Some(pid));
    match caller {
        None => next.run(req).await,
        Some(me) => scope(&sup, me, req, next).await,
    }
}

/// The 403 of a request outside `me`'s team, saying what was asked.
fn forbidden(me: &AgentId, what: &str) -> Response {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("agent {me} may work only on agents under its own id ({me}.*): {what}"),
    )
    .into_response()
}

/// Serves `req` from inside agent `me` only as far as its team reaches.
pub(crate) async fn scope(sup: &Supervisor, me: AgentId, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let forbid = |what: String| forbidden(&me, &what);
    if let Some(rest) = path.strip_prefix("/v1/agents/") {
        if rest == "batch" && method == Method::POST {
            return spawn_within(sup, &me, req, next, true).await;
        }
        let id = rest.split('/').next().unwrap_or_default();
        // A percent-encoded id is refused rather than decoded twice.
        let ok = !id.contains('%') && AgentId::new(id).is_ok_and(|id| id.is_within(&me));
        return if ok {
            next.run(req).await
        } else {
            forbid(format!("not {}", corral_core::elide(id, 100)))
        };
    }
    if let Some(team) = path.strip_prefix("/v1/teams/") {
        let related = !team.contains('%')
            && AgentId::new(team).is_ok_and(|t| t.is_within(&me) || me.is_within(&t));
        return match method {
            Method::GET if related => {
                // A team above the caller's: its budget and usage, but only
                // the members within the caller's own subtree.
                let mut req = req;
                req.extensions_mut().insert(Caller(me.clone()));
                next.run(req).await
            }
            Method::GET => forbid(format!(
                "team {} is neither one it belongs to nor within its own",
                corral_core::elide(team, 100)
            )),
            _ => forbid(format!(
                "{method} {path}: a team's budgets are the owner's to set"
            )),
        };
    }
    match (method.clone(), path.as_str()) {
        (Method::GET, "/v1/health" | "/v1/openapi.json") => next.run(req).await,
        (Method::POST, "/v1/agents") => spawn_within(sup, &me, req, next, false).await,
        (Method::GET, "/v1/agents") => list_within(&me, req, next).await,
        (Method::POST, "/v1/stop" | "/v1/restart") => many_within(&me, req, next).await,
        (Method::POST, "/v1/pause" | "/v1/resume") => pause_below(&me, req, next).await,
        _ => forbid(format!("{method} {path} is the owner's")),
    }
}

/// Whether a selector picks only agents of `me`'s team.
fn selector_within(raw: &str, me: &AgentId) -> bool {
    match Selector::parse(raw) {
        Ok(Selector::One(id) | Selector::Subtree(id)) => id.is_within(me),
        _ => false,
    }
}

/// The request's body as `T` (what the route itself would read), changed
/// by `change` — which may refuse it, with a message — and sent on as JSON.
/// A body that is not a `T` is refused here, in the route's words, never
/// passed on unread: serde would take the same fields as an array too.
async fn with_body<T: serde::de::DeserializeOwned + serde::Serialize>(
    req: Request,
    change: impl FnOnce(&mut T) -> Result<(), String>,
) -> Result<Request, Result<String, ApiError>> {
    let (mut parts, body) = req.into_parts();
    // Read as every route reads a body: bounded in time and size, with the
    // same errors (the body limit travels in the request's extensions).
    let mut whole = Request::new(body);
    *whole.extensions_mut() = parts.extensions.clone();
    let bytes = crate::routes::read_body(whole, &()).await.map_err(Err)?;
    let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if is_object {
        serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string())
    } else {
        Err("the body must be a JSON object".to_owned())
    };
    let mut value = match parsed {
        Ok(v) => v,
        Err(e) => {
            return Err(Err(ApiError::invalid(format!("invalid request body: {e}"))));
        }
    };
    change(&mut value).map_err(Ok)?;
    let out = serde_json::to_vec(&value).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(Request::from_parts(parts, Body::from(out)))
}

async fn spawn_within(
    sup: &Supervisor,
    me: &AgentId,
    req: Request,
    next: Next,
    batch: bool,
) -> Response {
    // The parent's user: its children run as it, or not at all. A parent
    // that cannot be looked up has no children.
    let parent_user = match sup.get_agent_status(me) {
        Ok(s) => s.user,
        Err(e) => {
            return ApiError::new(
                ErrorCode::Forbidden,
                format!("agent {me} cannot spawn: {e}"),
            )
            .into_response();
        }
    };
    let check = |r: &mut SpawnRequest| -> Result<(), String> {
        let id = r.agent_id.as_str();
        let below = AgentId::new(id).is_ok_and(|id| id.is_within(me) && id != *me);
        if !below {
            return Err(format!(
                "it may spawn only below itself ({me}.…), not {}",
                corral_core::elide(id, 100)
            ));
        }
        // The daemon makes an agent's dir itself (as its own user): a
        // child's is corral's default, under the state dir.
        if r.agent_dir.is_some() {
            return Err(format!(
                "{id}: agent_dir is the owner's to choose; a child's is corral's default"
            ));
        }
        // Jobs on a cluster engine run as the daemon's user.
        if r.placement.is_some() && parent_user.is_some() {
            return Err(format!(
                "{id}: an agent of another user cannot place a child on a cluster engine (its jobs run as the daemon's user)"
            ));
        }
        match (&r.user, &parent_user) {
            (None, Some(u)) => {
                r.user = Some(u.clone());
                Ok(())
            }
            (None, None) => Ok(()),
            (Some(a), Some(u)) if a == u => Ok(()),
            (Some(a), _) => Err(format!(
                "{id} would run as {a:?}; a child runs as its parent's user ({})",
                parent_user.as_deref().unwrap_or("the daemon's")
            )),
        }
    };
    let changed = if batch {
        with_body(req, |b: &mut BatchRequest| {
            b.agents.iter_mut().try_for_each(check)
        })
        .await
    } else {
        with_body(req, check).await
    };
    finish(me, changed, next).await
}

async fn many_within(me: &AgentId, req: Request, next: Next) -> Response {
    let changed = with_body(req, |r: &mut StopManyRequest| match &r.selector {
        Some(s) if !selector_within(s, me) => Err(format!("not {}", corral_core::elide(s, 100))),
        Some(_) => Ok(()),
        // `--all` from inside an agent would take the agent itself along.
        None if r.all => Err(format!(
            "--all is the owner's; name agents of its team ({me}.* includes {me} itself)"
        )),
        None => Ok(()),
    })
    .await;
    finish(me, changed, next).await
}

async fn pause_below(me: &AgentId, req: Request, next: Next) -> Response {
    let below = |raw: &str| match Selector::parse(raw) {
        Ok(Selector::One(id) | Selector::Subtree(id)) => id.is_within(me) && id != *me,
        _ => false,
    };
    let changed = with_body(req, |r: &mut PauseRequest| {
        let named = r.agent_id.iter().chain(&r.selector);
        match named.clone().find(|s| !below(s)) {
            Some(s) => Err(format!(
                "it may pause and resume only agents below itself ({me}.…), not {}",
                corral_core::elide(s, 100)
            )),
            None if r.all || named.count() == 0 => Err(format!(
                "pausing every agent is the owner's; name agents below it ({me}.…)"
            )),
            None => Ok(()),
        }
    })
    .await;
    finish(me, changed, next).await
}

async fn finish(
    me: &AgentId,
    changed: Result<Request, Result<String, ApiError>>,
    next: Next,
) -> Response {
    match changed {
        Ok(req) => next.run(req).await,
        Err(Ok(why)) => forbidden(me, &why),
        Err(Err(e)) => e.into_response(),
    }
}

async fn list_within(me: &AgentId, mut req: Request, next: Next) -> Response {
    let forbid = |what: String| forbidden(me, &what);
    let raw = req.uri().query().unwrap_or_default();
    // Pairs, so a repeated parameter is seen (and a selector is never missed).
    let Ok(mut pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(raw) else {
        return ApiError::invalid("the query string is not form-encoded").into_response();
    };
    let selectors: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "selector")
        .map(|(_, v)| v)
        .collect();
    match selectors.as_slice() {
        [] => pairs.push(("selector".into(), format!("{me}.*"))),
        [one] if selector_within(one, me) => {}
        [one] => return forbid(format!("not {}", corral_core::elide(one, 100))),
        _ => return forbid("one selector at most".into()),
    }
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    match format!("/v1/agents?{query}").parse() {
        Ok(uri) => {
            *req.uri_mut() = uri;
            next.run(req).await
        }
        Err(_) => ApiError::invalid("cannot scope the listing's query").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_within_a_team() {
        let me = AgentId::new("L2.1").unwrap();
        assert!(selector_within("L2.1", &me));
        assert!(selector_within("L2.1.*", &me));
        assert!(selector_within("L2.1.3", &me));
        assert!(!selector_within("L2.*", &me));
        assert!(!selector_within("L2.10", &me));
        assert!(!selector_within("L3", &me));
        assert!(!selector_within("*", &me));
    }
}

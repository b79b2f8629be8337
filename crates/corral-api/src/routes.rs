//! The router: one handler per route, each a thin call into the [`Supervisor`].
//!
//! Routes are registered through `utoipa-axum`, so the OpenAPI document
//! (`GET /v1/openapi.json`) is generated from the same handlers and from the
//! wire types' derives in `corral-proto`: a route or a field cannot exist on
//! one side only. Request bodies, paths and queries are parsed here, so every
//! malformed input gets the one error shape with a message naming the problem.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use corral_core::{
    AgentHistory, AgentId, AgentStatus, BatchFailure, BatchRequest, BatchResponse, BatchResult,
    CleanupOptions, DaemonHealth, ErrorBody, ErrorCode, ErrorDetail, Event, HealthReport,
    HistoryQuery, KillRequest, KillResponse, PauseReport, PauseRequest, ProcessSummary,
    ProgressUpdate, Removal, RunInfo, Selector, SpawnRequest, SpawnResponse, StopManyRequest,
    StopReport, Supervisor, UiLogin, WaitQuery,
};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;

/// Largest request body accepted, bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Longest a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait a `wait` request may ask for, seconds.
const MAX_WAIT_S: f64 = 3600.0;

/// Stops the daemon when `POST /v1/daemon/stop` asks (present only in a
/// daemon: an embedded server answers that route with 404).
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(pub std::sync::Arc<tokio::sync::watch::Sender<bool>>);

/// Who is calling, from the connection: a Unix-socket peer's pid (from
/// `SO_PEERCRED`) and a pidfd of that very process (`SO_PEERPIDFD`, where
/// the kernel has it), or nothing for TCP.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The peer process's pid, when the connection is a Unix socket.
    pub pid: Option<i32>,
    /// A pidfd of the process that connected: the pid names it only while
    /// this says it is alive (after it exits, the pid may be another's).
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The agent the peer was found inside, looked up once per connection
    /// (the agent socket's check; shared by the connection's requests).
    pub agent: std::sync::Arc<tokio::sync::OnceCell<Option<corral_core::AgentId>>>,
}

impl Peer {
    /// The peer's pid, when it still names the process that connected:
    /// always when that process is alive per its pidfd; without a pidfd
    /// (kernels before 6.5) the pid as it was given.
    pub fn live_pid(&self) -> Option<i32> {
        use std::os::fd::AsFd;
        let pid = self.pid?;
        match &self.pidfd {
            Some(fd) => corral_core::process::pidfd_alive(fd.as_fd()).then_some(pid),
            None => Some(pid),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "corral",
        description = "corral's control API: spawn, observe, stop and record agent processes. \
            Served on a Unix socket (mode 0600) and, optionally, on TCP with a bearer token. \
            Every error is `{\"error\": {\"code\", \"message\"}}` with the matching status."
    ),
    components(schemas(ErrorBody, ErrorDetail, Event))
)]
struct ApiDoc;

/// A JSON body parsed with corral's error shape.
pub struct Body<T>(pub T);

/// A request's body, within [`BODY_TIMEOUT`] and the body limit.
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let read = Bytes::from_request(req, state);
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?;
    bytes.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "invalid JSON body: {}",
            corral_core::elide(&e.to_string(), 300)
        ))
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "request body is empty; expected a JSON object",
            ));
        }
        parse(&bytes).map(Body)
    }
}

/// A JSON body that may be empty (then: the defaults).
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        parse(&bytes).map(OptionalBody)
    }
}

/// The `{id}` of a route, validated as an agent id.
pub struct IdPath(pub AgentId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "invalid agent id in the path: {}",
                        corral_core::elide(&e.body_text(), 200)
                    ))
                })?;
        Ok(IdPath(AgentId::new(raw)?))
    }
}

/// A query string parsed with corral's error shape.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| {
                ApiError::invalid(format!(
                    "bad query: {}",
                    corral_core::elide(&e.body_text(), 300)
                ))
            })
    }
}

static OPENAPI: OnceLock<String> = OnceLock::new();

/// The OpenAPI document of this router (generated from the handlers and the wire types).
pub fn openapi_json() -> &'static str {
    OPENAPI.get_or_init(|| {
        let (_, api) = api_router().split_for_parts();
        api.to_pretty_json().unwrap_or_default()
    })
}

fn api_router() -> OpenApiRouter<Supervisor> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(daemon_health))
        .routes(routes!(daemon_stop))
        .routes(routes!(openapi))
        .routes(routes!(spawn, crate::listing::list))
        .routes(routes!(spawn_batch))
        .routes(routes!(status, remove))
        .routes(routes!(health))
        .routes(routes!(progress))
        .routes(routes!(stop_one))
        .routes(routes!(kill))
        .routes(routes!(restart_one))
        .routes(routes!(restart_many))
        .routes(routes!(runs))
        .routes(routes!(history))
        .routes(routes!(wait))
        .routes(routes!(crate::logs::logs))
        .routes(routes!(stop_many))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(reap))
        .routes(routes!(prune))
        .routes(routes!(summary))
        .routes(routes!(crate::events::events))
        .routes(routes!(crate::metrics::metrics))
        .routes(routes!(crate::teams::teams))
        .routes(routes!(
            crate::teams::team,
            crate::teams::set_team,
            crate::teams::remove_team
        ))
        .routes(routes!(ui_login))
}

/// Builds the `/v1` router over a supervisor.
pub fn router(sup: Supervisor) -> Router {
    let (router, _) = api_router().split_for_parts();
    let cache = std::sync::Arc::new(crate::metrics::MetricsCache::default());
    let router = router
        .layer(Extension(cache))
        .layer(axum::middleware::from_fn_with_state(
            sup.clone(),
            crate::delegation::delegate,
        ));
    finish(router, sup, "no such route")
}

/// A router's answers to unknown routes and methods, its body limit, its state.
fn finish(router: Router<Supervisor>, sup: Supervisor, unknown: &'static str) -> Router {
    router
        .fallback(move || async move { ApiError::new(ErrorCode::NotFound, unknown) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(sup)
}

/// The routes the agent socket serves (see [`crate::agent_socket`]); the
/// caller check is the agent socket's layer.
pub(crate) fn agent_routes(sup: Supervisor) -> Router {
    let (router, _) = OpenApiRouter::<Supervisor>::new()
        .routes(routes!(daemon_health))
        .routes(routes!(spawn, crate::listing::list))
        .routes(routes!(spawn_batch))
        .routes(routes!(status, remove))
        .routes(routes!(health))
        .routes(routes!(progress))
        .routes(routes!(stop_one))
        .routes(routes!(kill))
        .routes(routes!(restart_one))
        .routes(routes!(restart_many))
        .routes(routes!(runs))
        .routes(routes!(history))
        .routes(routes!(wait))
        .routes(routes!(crate::logs::logs))
        .routes(routes!(stop_many))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(crate::teams::team))
        .split_for_parts();
    finish(
        router,
        sup,
        "no such route on the agent socket (it serves only agent routes)",
    )
}

/// Readiness: the daemon answers and its store takes writes.
#[utoipa::path(get, path = "/v1/health", tag = "daemon",
    responses((status = 200, body = DaemonHealth), (status = 503, body = ErrorBody)))]
async fn daemon_health(State(sup): State<Supervisor>) -> Result<Json<DaemonHealth>, ApiError> {
    sup.check_store().await?;
    Ok(Json(DaemonHealth {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        agents: u32::try_from(sup.agent_count()).unwrap_or(u32::MAX),
        state_dir: sup.state_dir().display().to_string(),
        uptime_s: sup.uptime_s(),
    }))
}

/// Stop the daemon (its agents keep running unless `stop_agents`); answers,
/// then stops serving.
#[utoipa::path(post, path = "/v1/daemon/stop", tag = "daemon",
    request_body(content = corral_core::DaemonStopRequest, description = "optional"),
    responses((status = 200, body = corral_core::DaemonStopResponse), (status = 404, body = ErrorBody)))]
async fn daemon_stop(
    State(sup): State<Supervisor>,
    trigger: Option<Extension<ShutdownTrigger>>,
    OptionalBody(req): OptionalBody<corral_core::DaemonStopRequest>,
) -> Result<Json<corral_core::DaemonStopResponse>, ApiError> {
    let Some(Extension(trigger)) = trigger else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this server is not a daemon that can be stopped",
        ));
    };
    let stopped = if req.stop_agents {
        sup.stop_selected(None, CleanupOptions::default(), true)
            .await?
    } else {
        Vec::new()
    };
    tracing::info!(stop_agents = req.stop_agents, "stopping on request");
    // After this answer is on its way: graceful shutdown lets it finish.
    trigger.0.send_replace(true);
    Ok(Json(corral_core::DaemonStopResponse {
        pid: std::process::id(),
        stopped,
    }))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

/// Spawn an agent (`spawn_agent`): 201 once it runs at the end of its
/// verification window (or has ended inside it: then `status` says how).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = SpawnRequest,
    responses((status = 201, body = SpawnResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn spawn(
    State(sup): State<Supervisor>,
    Body(req): Body<SpawnRequest>,
) -> Result<(StatusCode, Json<SpawnResponse>), ApiError> {
    Ok((StatusCode::CREATED, Json(sup.spawn_agent(req).await?)))
}

/// Spawn many agents in one request: all verification windows at once,
/// results in request order, one bad entry fails alone.
#[utoipa::path(post, path = "/v1/agents/batch", tag = "agents", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody)))]
async fn spawn_batch(
    State(sup): State<Supervisor>,
    Body(req): Body<BatchRequest>,
) -> Json<BatchResponse> {
    let ids: Vec<String> = req.agents.iter().map(|r| r.agent_id.clone()).collect();
    let results = sup
        .spawn_batch(req.agents)
        .await
        .into_iter()
        .zip(ids)
        .map(|(result, agent_id)| batch_result(&agent_id, result))
        .collect();
    Json(BatchResponse { results })
}

/// One entry of a batch answer: the spawn's answer, or the error it got alone.
fn batch_result(agent_id: &str, result: corral_core::Result<SpawnResponse>) -> BatchResult {
    match result {
        Ok(resp) => BatchResult::Spawned(resp),
        Err(e) => {
            let e = ApiError::from(e);
            BatchResult::Failed(BatchFailure {
                agent_id: corral_core::elide(agent_id, 128),
                error: ErrorDetail {
                    code: e.code().as_str().to_owned(),
                    message: e.message().to_owned(),
                },
            })
        }
    }
}

/// The agents a request for many names: `None` for `"all": true`, or its
/// selector; exactly one of the two.
fn many(all: bool, selector: Option<String>, verb: &str) -> Result<Option<Selector>, ApiError> {
    match (all, selector) {
        (true, None) => Ok(None),
        (false, Some(s)) => Ok(Some(Selector::parse(&s)?)),
        (true, Some(_)) => Err(ApiError::invalid(
            "give either \"all\": true or a \"selector\", not both",
        )),
        (false, None) => Err(ApiError::invalid(format!(
            "say which agents to {verb}: {{\"all\": true}} or {{\"selector\": \"L2.1.*\"}}"
        ))),
    }
}

/// One agent's status (`get_agent_status`).
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentStatus), (status = 404, body = ErrorBody)))]
async fn status(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
) -> Result<Json<AgentStatus>, ApiError> {
    Ok(Json(sup.agent_status(&id).await?))
}

/// Forget an ended agent: its runs, and its logs in the default place.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = Removal), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
) -> Result<Json<Removal>, ApiError> {
    Ok(Json(sup.remove_agent(&id).await?))
}

/// Quick health (`check_process_health`).
#[utoipa::path(get, path = "/v1/agents/{id}/health", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = HealthReport), (status = 404, body = ErrorBody)))]
async fn health(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
) -> Result<Json<HealthReport>, ApiError> {
    Ok(Json(sup.health_report(&id)?))
}

/// Report progress (0–100, optional message). From inside an agent, only for itself.
#[utoipa::path(put, path = "/v1/agents/{id}/progress", tag = "agents", params(("id" = String, Path)),
    request_body = ProgressUpdate,
    responses((status = 200, body = AgentStatus), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn progress(
    State(sup): State<Supervisor>,
    peer: Option<Extension<Peer>>,
    IdPath(id): IdPath,
    Body(update): Body<ProgressUpdate>,
) -> Result<Json<AgentStatus>, ApiError> {
    let caller = peer.and_then(|Extension(p)| p.live_pid());
    Ok(Json(sup.set_progress(&id, update, caller).await?))
}

/// Staged stop of one agent's whole tree (`cleanup`).
#[utoipa::path(post, path = "/v1/agents/{id}/stop", tag = "agents", params(("id" = String, Path)),
    request_body(content = CleanupOptions, description = "optional"),
    responses((status = 200, body = StopReport), (status = 404, body = ErrorBody)))]
async fn stop_one(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    OptionalBody(opts): OptionalBody<CleanupOptions>,
) -> Result<Json<StopReport>, ApiError> {
    let mut reports = sup.cleanup(Some(&Selector::One(id.clone())), opts).await?;
    reports
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("agent {id} not found")))
}

/// Kill one agent (`kill_agent`): the staged stop, or SIGKILL at once with `force`.
#[utoipa::path(post, path = "/v1/agents/{id}/kill", tag = "agents", params(("id" = String, Path)),
    request_body(content = KillRequest, description = "optional"),
    responses((status = 200, body = KillResponse), (status = 404, body = ErrorBody)))]
async fn kill(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    OptionalBody(body): OptionalBody<KillRequest>,
) -> Result<Json<KillResponse>, ApiError> {
    Ok(Json(sup.kill(&id, body.force).await?))
}

/// Every run of an agent, oldest first.
#[utoipa::path(get, path = "/v1/agents/{id}/runs", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = Vec<RunInfo>), (status = 404, body = ErrorBody)))]
async fn runs(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
) -> Result<Json<Vec<RunInfo>>, ApiError> {
    Ok(Json(sup.runs(&id).await?))
}

/// The agent's recent CPU and memory (its whole tree), oldest first: every
/// sample of about the last minute, then one point a minute back to an hour
/// (kept in memory, a fixed size per agent; empty until its first sample).
#[utoipa::path(get, path = "/v1/agents/{id}/history", tag = "agents", params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = AgentHistory), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn history(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    Q(q): Q<HistoryQuery>,
) -> Result<Json<AgentHistory>, ApiError> {
    if let Some(t) = q.since
        && !t.is_finite()
    {
        return Err(ApiError::invalid(
            "since must be a finite number of Unix seconds",
        ));
    }
    Ok(Json(sup.agent_history(&id, q.since)?))
}

/// A one-time login to the web dashboard: a URL whose code, visited within
/// `expires_s`, becomes a session cookie (once). Starts the dashboard's
/// loopback listener when the daemon serves no TCP. Not from inside an agent.
#[utoipa::path(post, path = "/v1/ui/login", tag = "daemon",
    responses((status = 200, body = UiLogin), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn ui_login(
    ui: Option<Extension<std::sync::Arc<crate::ui::Ui>>>,
) -> Result<Json<UiLogin>, ApiError> {
    let Some(Extension(ui)) = ui else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this server is not a daemon that serves the dashboard",
        ));
    };
    Ok(Json(ui.login().await?))
}

/// Wait until the current run has ended (and will not be restarted); 408 after `timeout_s`.
#[utoipa::path(get, path = "/v1/agents/{id}/wait", tag = "agents", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = AgentStatus), (status = 404, body = ErrorBody), (status = 408, body = ErrorBody)))]
async fn wait(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    Q(q): Q<WaitQuery>,
) -> Result<Json<AgentStatus>, ApiError> {
    let t = q.timeout_s.unwrap_or(30.0);
    if !(t.is_finite() && (0.0..=MAX_WAIT_S).contains(&t)) {
        return Err(ApiError::invalid(format!(
            "timeout_s must be 0–{MAX_WAIT_S} seconds; got {}",
            corral_core::short_number(t)
        )));
    }
    Ok(Json(sup.wait(&id, Duration::from_secs_f64(t)).await?))
}

/// Stop many: `{"all": true}` or `{"selector": "L2.1.*"}` (an empty body is refused).
#[utoipa::path(post, path = "/v1/stop", tag = "agents", request_body = StopManyRequest,
    responses((status = 200, body = Vec<StopReport>), (status = 400, body = ErrorBody)))]
async fn stop_many(
    State(sup): State<Supervisor>,
    Body(body): Body<StopManyRequest>,
) -> Result<Json<Vec<StopReport>>, ApiError> {
    let selector = many(body.all, body.selector, "stop")?;
    let opts = CleanupOptions {
        force: body.force,
        stop_timeouts: body.stop_timeouts,
    };
    Ok(Json(
        sup.stop_selected(selector.as_ref(), opts, body.live_only)
            .await?,
    ))
}

/// Pause agents: freeze their whole trees (the cgroup leaf's `cgroup.freeze`,
/// else SIGSTOP to every member); each is `paused` until resumed, across
/// daemon restarts too, its `max_runtime_s` and `progress_stale_s` clocks
/// stopped and its probes off. `{"agent_id"}`: one agent (409 `conflict`
/// naming its state when it is not running, or runs on a cluster engine);
/// `{"selector"}` or `{"all": true}`: every agent picked that has not ended,
/// those that cannot be paused `skipped` with the reason.
#[utoipa::path(post, path = "/v1/pause", tag = "agents", request_body = PauseRequest,
    responses((status = 200, body = Vec<PauseReport>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn pause(
    State(sup): State<Supervisor>,
    Body(body): Body<PauseRequest>,
) -> Result<Json<Vec<PauseReport>>, ApiError> {
    pause_or_resume(&sup, body, false).await.map(Json)
}

/// Resume paused agents: thaw their whole trees; each is `running` again.
/// `{"agent_id"}`: one agent (409 `conflict` naming its state when it is
/// neither paused nor running); `{"selector"}` or `{"all": true}`: every
/// agent picked that has not ended, those that cannot be resumed `skipped`.
#[utoipa::path(post, path = "/v1/resume", tag = "agents", request_body = PauseRequest,
    responses((status = 200, body = Vec<PauseReport>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn resume(
    State(sup): State<Supervisor>,
    Body(body): Body<PauseRequest>,
) -> Result<Json<Vec<PauseReport>>, ApiError> {
    pause_or_resume(&sup, body, true).await.map(Json)
}

/// A pause (or resume) of what `body` names: exactly one of `agent_id`,
/// `selector` and `all`.
async fn pause_or_resume(
    sup: &Supervisor,
    body: PauseRequest,
    resume: bool,
) -> Result<Vec<PauseReport>, ApiError> {
    let verb = if resume { "resume" } else { "pause" };
    match (body.agent_id, body.selector, body.all) {
        (Some(id), None, false) => {
            let id = AgentId::new(id)?;
            let report = if resume {
                sup.resume_agent(&id).await?
            } else {
                sup.pause_agent(&id).await?
            };
            Ok(vec![report])
        }
        (None, Some(selector), false) => {
            let selector = Selector::parse(&selector)?;
            Ok(if resume {
                sup.resume_selected(Some(&selector)).await?
            } else {
                sup.pause_selected(Some(&selector)).await?
            })
        }
        (None, None, true) => Ok(if resume {
            sup.resume_selected(None).await?
        } else {
            sup.pause_selected(None).await?
        }),
        (None, None, false) => Err(ApiError::invalid(format!(
            "say which agents to {verb}: {{\"agent_id\": \"L2.1\"}}, {{\"selector\": \"L2.1.*\"}} or {{\"all\": true}}"
        ))),
        _ => Err(ApiError::invalid(
            "give one of \"agent_id\", \"selector\" and \"all\": true, not several",
        )),
    }
}

/// Restart one agent: its staged stop (when it is live), then a new run with
/// the request it was last spawned with.
#[utoipa::path(post, path = "/v1/agents/{id}/restart", tag = "agents", params(("id" = String, Path)),
    request_body(content = CleanupOptions, description = "optional: the stop's waits, or force"),
    responses((status = 200, body = SpawnResponse), (status = 404, body = ErrorBody)))]
async fn restart_one(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    OptionalBody(opts): OptionalBody<CleanupOptions>,
) -> Result<Json<SpawnResponse>, ApiError> {
    let mut results = sup.restart(Some(&Selector::One(id.clone())), opts).await?;
    match results.pop() {
        Some((_, result)) => Ok(Json(result?)),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("agent {id} not found"),
        )),
    }
}

/// Restart many: `{"all": true}` or `{"selector": "L2.1.*"}`; each agent's
/// result as in a batch (a spawn answer, or its error alone).
#[utoipa::path(post, path = "/v1/restart", tag = "agents", request_body = StopManyRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = ErrorBody)))]
async fn restart_many(
    State(sup): State<Supervisor>,
    Body(body): Body<StopManyRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let selector = many(body.all, body.selector, "restart")?;
    let opts = CleanupOptions {
        force: body.force,
        stop_timeouts: body.stop_timeouts,
    };
    let results = sup
        .restart(selector.as_ref(), opts)
        .await?
        .into_iter()
        .map(|(id, result)| batch_result(id.as_str(), result))
        .collect();
    Ok(Json(BatchResponse { results }))
}

/// Sweep for unreaped processes (`reap_zombies`): the agents it had to reap (normally none).
#[utoipa::path(post, path = "/v1/reap", tag = "agents", responses((status = 200, body = Vec<String>)))]
async fn reap(State(sup): State<Supervisor>) -> Json<Vec<String>> {
    Json(sup.reap_zombies().await)
}

/// Forget every ended run (supervised agents keep their current run).
#[utoipa::path(post, path = "/v1/prune", tag = "agents",
    responses((status = 200, body = Removal), (status = 503, body = ErrorBody)))]
async fn prune(State(sup): State<Supervisor>) -> Result<Json<Removal>, ApiError> {
    Ok(Json(sup.prune().await?))
}

/// Counts and totals (`get_process_summary`).
#[utoipa::path(get, path = "/v1/summary", tag = "agents", responses((status = 200, body = ProcessSummary)))]
async fn summary(State(sup): State<Supervisor>) -> Json<ProcessSummary> {
    sup.fresh_figures().await;
    Json(sup.get_process_summary())
}

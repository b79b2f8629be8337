//! The router: one handler per route, each a thin call into the [`Supervisor`].
//!
//! Request bodies are read as bytes (bounded by [`MAX_BODY`]) and parsed here,
//! so every malformed body, wrong type or unknown field gets the one error shape
//! with a message that names the problem, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use corral_core::{
    AgentId, CleanupOptions, Error, ErrorCode, ProgressUpdate, Selector, SpawnRequest, Supervisor,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Largest request body accepted, bytes.
pub const MAX_BODY: usize = 1 << 20;

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid",
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        let status = match code {
            ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::SpawnFailed => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        Self {
            status,
            code: code.as_str(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body parsed with corral's error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: "payload_too_large",
                    message: format!("request body is larger than {MAX_BODY} bytes"),
                }
            } else {
                ApiError::invalid(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "request body is empty; expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}

fn agent_id(raw: String) -> Result<AgentId, ApiError> {
    AgentId::new(raw).map_err(ApiError::from)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    sup: Supervisor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(sup))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API on TCP until `shutdown` completes; every request must carry
/// `Authorization: Bearer <token>` (compared in constant time).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    sup: Supervisor,
    token: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = std::sync::Arc::new(token);
    let app = router(sup).layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let presented = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match presented {
                    Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => {
                        next.run(req).await
                    }
                    _ => ApiError {
                        status: StatusCode::UNAUTHORIZED,
                        code: "unauthorized",
                        message: "a valid `Authorization: Bearer <token>` header is required"
                            .into(),
                    }
                    .into_response(),
                }
            }
        },
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Builds the `/v1` router over a supervisor.
pub fn router(sup: Supervisor) -> Router {
    Router::new()
        .route("/v1/health", get(daemon_health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/agents", post(spawn).get(list))
        .route("/v1/agents/{id}", get(status).delete(remove))
        .route("/v1/agents/{id}/health", get(health))
        .route("/v1/agents/{id}/progress", put(progress))
        .route("/v1/agents/{id}/stop", post(stop_one))
        .route("/v1/agents/{id}/kill", post(kill))
        .route("/v1/stop", post(stop_many))
        .route("/v1/reap", post(reap))
        .route("/v1/prune", post(prune))
        .route("/v1/summary", get(summary))
        .route("/v1/events", get(events))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "not_found",
                message: "no such route".into(),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "invalid",
                message: "method not allowed on this route".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(sup)
}

/// Readiness: the daemon answers and its store takes writes.
async fn daemon_health(State(sup): State<Supervisor>) -> Result<Response, ApiError> {
    sup.check_store().await.map_err(|e| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
        message: e.to_string(),
    })?;
    let body = json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "agents": sup.get_process_summary().total,
    });
    Ok(Json(body).into_response())
}

/// The OpenAPI 3 description of these routes (`openapi.json` next to this file).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn spawn(
    State(sup): State<Supervisor>,
    Body(req): Body<SpawnRequest>,
) -> Result<Response, ApiError> {
    let resp = sup.spawn_agent(req).await?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

async fn list(State(sup): State<Supervisor>) -> Response {
    Json(sup.monitor_all_agents()).into_response()
}

async fn status(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(sup.get_agent_status(&agent_id(id)?)?).into_response())
}

async fn health(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(sup.health_report(&agent_id(id)?)?).into_response())
}

async fn remove(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(sup.remove_agent(&agent_id(id)?).await?).into_response())
}

async fn prune(State(sup): State<Supervisor>) -> Result<Response, ApiError> {
    Ok(Json(sup.prune().await?).into_response())
}

async fn reap(State(sup): State<Supervisor>) -> Response {
    Json(sup.reap_zombies().await).into_response()
}

async fn summary(State(sup): State<Supervisor>) -> Response {
    Json(sup.get_process_summary()).into_response()
}

async fn progress(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
    Body(update): Body<ProgressUpdate>,
) -> Result<Response, ApiError> {
    let id = agent_id(id)?;
    sup.set_progress(&id, update.progress, update.message)
        .await?;
    Ok(Json(sup.get_agent_status(&id)?).into_response())
}

/// Optional body: an empty body means "defaults".
fn optional<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

async fn stop_one(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = agent_id(id)?;
    let opts: CleanupOptions = optional(&body)?;
    let mut reports = sup.cleanup(Some(&Selector::One(id)), opts).await?;
    Ok(Json(reports.pop()).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    force: bool,
}

async fn kill(
    State(sup): State<Supervisor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = agent_id(id)?;
    let KillBody { force } = optional(&body)?;
    let killed = sup.kill_agent(&id, force).await?;
    Ok(Json(json!({"agent_id": id.as_str(), "killed": killed})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopMany {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    stop_timeouts: Option<Vec<f64>>,
}

async fn stop_many(
    State(sup): State<Supervisor>,
    Body(body): Body<StopMany>,
) -> Result<Response, ApiError> {
    let selector = match (body.all, body.selector) {
        (true, None) => None,
        (false, Some(s)) => Some(Selector::parse(&s)?),
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "give either \"all\": true or a \"selector\", not both",
            ));
        }
        (false, None) => {
            return Err(ApiError::invalid(
                "say which agents to stop: {\"all\": true} or {\"selector\": \"L2.1.*\"}",
            ));
        }
    };
    let opts = CleanupOptions {
        force: body.force,
        stop_timeouts: body.stop_timeouts,
    };
    Ok(Json(sup.cleanup(selector.as_ref(), opts).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Resume after this sequence number (also taken from `Last-Event-ID`).
    since: Option<i64>,
    /// Keep the stream open for new events (default); `false` ends it after the backlog.
    follow: Option<bool>,
}

/// Events read from the store per query.
const EVENT_PAGE: usize = 500;

/// `GET /v1/events`: server-sent events, each `id: <seq>`, `event: <kind>`,
/// `data: <JSON>`. Events are read from the store (never from memory), in `seq`
/// order, so a client that resumes with `?since=` (or `Last-Event-ID`) after a
/// disconnect — or after a daemon restart — gets every event exactly once.
async fn events(
    State(sup): State<Supervisor>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let since = q.since.or(last_event_id).unwrap_or(0).max(0);
    let follow = q.follow.unwrap_or(true);
    let newest = sup.subscribe_events();
    struct Cursor {
        sup: Supervisor,
        last: i64,
        pending: std::collections::VecDeque<corral_core::Event>,
        newest: tokio::sync::watch::Receiver<i64>,
        follow: bool,
    }
    let start = Cursor {
        sup,
        last: since,
        pending: Default::default(),
        newest,
        follow,
    };
    let stream = futures_util::stream::unfold(start, |mut c| async move {
        loop {
            if let Some(ev) = c.pending.pop_front() {
                c.last = ev.seq;
                let data = serde_json::to_string(&ev).unwrap_or_default();
                let sse = axum::response::sse::Event::default()
                    .id(ev.seq.to_string())
                    .event(ev.kind.clone())
                    .data(data);
                return Some((Ok::<_, std::convert::Infallible>(sse), c));
            }
            // Mark what we are about to read as seen before reading, so a commit
            // that lands in between still wakes us.
            c.newest.borrow_and_update();
            match c.sup.events_since(c.last, EVENT_PAGE) {
                Ok(page) if !page.is_empty() => {
                    c.pending.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read events");
                    return None;
                }
            }
            if !c.follow || c.newest.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}

//! `GET /v1/events`: the stored event log as server-sent events.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use corral_core::{EventsQuery, Supervisor};

use crate::error::ApiError;
use crate::routes::Q;

/// Events read from the store per query.
const EVENT_PAGE: usize = 500;

/// Server-sent events, each `id: <seq>`, `event: <kind>`, `data: <JSON>`
/// (an [`corral_core::Event`]). Read from the store (never from memory), in
/// `seq` order, so a client that resumes with `?since=` (or `Last-Event-ID`)
/// after a disconnect — or after a daemon restart — gets every event exactly once.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "Server-sent events; each `data` is an Event", content_type = "text/event-stream"),
        (status = 400, body = corral_core::ErrorBody)))]
pub(crate) async fn events(
    State(sup): State<Supervisor>,
    headers: axum::http::HeaderMap,
    Q(q): Q<EventsQuery>,
) -> Result<Response, ApiError> {
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
                    .event(ev.kind())
                    .data(data);
                return Some((Ok::<_, std::convert::Infallible>(sse), c));
            }
            // Mark what we are about to read as seen before reading, so a commit
            // that lands in between still wakes us.
            c.newest.borrow_and_update();
            match c.sup.events_since(c.last, EVENT_PAGE).await {
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

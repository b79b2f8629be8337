//! The web dashboard: its page, its logins, and who may use the API with a
//! browser's cookie.
//!
//! - **The page** (`/ui/`, `ui/*.html|js|css` embedded in the binary) is
//!   plain HTML, CSS and ES modules: no build step. It is served only on TCP
//!   and carries no data; everything it shows comes from the same `/v1`
//!   routes the CLI uses, under the same authorisation.
//! - **A login** is a one-time code minted on request (`POST /v1/ui/login`,
//!   over the socket or over TCP with the token; not from inside an agent,
//!   see `delegation.rs`): a URL such as a notebook server prints.
//!   Visiting `/ui/login?code=…` within [`CODE_TTL`] consumes the code and
//!   sets a session cookie (`HttpOnly`, `SameSite=Strict`, named after the
//!   listener's port, since browsers share cookies between the ports of one
//!   host); a second visit with the same code is refused. At most
//!   [`MAX_CODES`] codes and [`MAX_SESSIONS`] sessions are kept (the oldest
//!   go first); a session unused for [`SESSION_IDLE`] ends.
//! - **The listener.** A daemon started with `--listen` serves the page there.
//!   One without starts a listener on `127.0.0.1`, port chosen by the kernel,
//!   at the first login and keeps it for later ones: on that listener the
//!   cookie is the only credential (there is no token), and the listener
//!   takes connections only from this user's processes (and root's): the
//!   owner of the peer's socket is read from `/proc/net/tcp` at accept
//!   ([`OwnUser`]). Another local user who learns a login code or catches the
//!   cookie (browsers send a host's cookies to every port of it) cannot use
//!   either on it.
//! - **On TCP every request** to the API carries the bearer token or a valid
//!   session cookie ([`tcp_auth`]). A request that changes something and is
//!   authenticated by the cookie alone must also carry `X-Corral-UI: 1` — a
//!   header no cross-site form or image can send, and no cross-site script
//!   without a CORS preflight that the daemon never grants — and, when it
//!   has an `Origin`, one naming the host it was sent to: a page of another
//!   site cannot act with the user's cookie.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use corral_core::{ErrorCode, UiLogin};

use crate::auth::TokenGate;
use crate::error::ApiError;
use crate::serve::{self, Limits};

/// How long a login code stays valid.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// Login codes kept at most (the oldest goes first).
pub const MAX_CODES: usize = 32;
/// Sessions kept at most (the least recently used goes first).
pub const MAX_SESSIONS: usize = 64;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// The header a cookie-authenticated request that changes something must carry.
pub const CSRF_HEADER: &str = "x-corral-ui";

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// 32 random bytes as hex.
fn secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot draw a random login code: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Outstanding codes and live sessions.
#[derive(Default)]
struct Sessions {
    /// Code → when it was minted.
    codes: HashMap<String, Instant>,
    /// Session id → when it was last used.
    sessions: HashMap<String, Instant>,
}

impl Sessions {
    fn mint(&mut self, code: String, now: Instant) {
        self.codes
            .retain(|_, at| now.saturating_duration_since(*at) < CODE_TTL);
        if self.codes.len() >= MAX_CODES
            && let Some(oldest) = self
                .codes
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(c, _)| c.clone())
        {
            self.codes.remove(&oldest);
        }
        self.codes.insert(code, now);
    }

    /// Consumes `code`: true when it was outstanding and fresh.
    fn redeem(&mut self, code: &str, now: Instant) -> bool {
        self.codes
            .remove(code)
            .is_some_and(|at| now.saturating_duration_since(at) < CODE_TTL)
    }

    fn open(&mut self, id: String, now: Instant) {
        self.sessions
            .retain(|_, used| now.saturating_duration_since(*used) < SESSION_IDLE);
        if self.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(s, _)| s.clone())
        {
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(id, now);
    }

    /// Whether `id` is a live session; marks it used.
    fn touch(&mut self, id: &str, now: Instant) -> bool {
        match self.sessions.get_mut(id) {
            Some(used) if now.saturating_duration_since(*used) < SESSION_IDLE => {
                *used = now;
                true
            }
            Some(_) => {
                self.sessions.remove(id);
                false
            }
            None => false,
        }
    }
}

/// The dashboard's logins and listener, shared by the daemon's routers.
pub struct Ui {
    sessions: Mutex<Sessions>,
    /// The TCP address the page is served on, once there is one.
    listener: tokio::sync::Mutex<Option<SocketAddr>>,
    /// What serves a listener started at a login: the daemon's router, the
    /// limits, and the daemon's stop.
    serving: OnceLock<(Router, Limits, tokio::sync::watch::Receiver<bool>)>,
}

impl Ui {
    /// No logins yet; `listen` is the daemon's `--listen` address, if any.
    pub fn new(listen: Option<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::default(),
            listener: tokio::sync::Mutex::new(listen),
            serving: OnceLock::new(),
        })
    }

    /// How to serve a listener started at a login: `app` (the daemon's router,
    /// without the TCP checks: [`tcp_app`] adds them), until `stop` is true.
    pub fn serve_with(
        &self,
        app: Router,
        limits: Limits,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = self.serving.set((app, limits, stop));
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` names a live session (and marks it used).
    fn session(&self, id: &str) -> bool {
        self.sessions().touch(id, Instant::now())
    }

    /// The TCP address the page is served on, starting a loopback listener
    /// when there is none.
    async fn address(self: &Arc<Self>) -> Result<SocketAddr, ApiError> {
        let mut listener = self.listener.lock().await;
        if let Some(addr) = *listener {
            return Ok(addr);
        }
        let addr = self.start_listener().await?;
        *listener = Some(addr);
        Ok(addr)
    }

    async fn start_listener(self: &Arc<Self>) -> Result<SocketAddr, ApiError> {
        let Some((app, limits, stop)) = self.serving.get().cloned() else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "this server does not serve the dashboard",
            ));
        };
        let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot listen on 127.0.0.1 for the dashboard: {e}"),
                )
            })?;
        let addr = l.local_addr().map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot read the dashboard listener's address: {e}"),
            )
        })?;
        let app = tcp_app(app, self.clone(), None, addr.port());
        tracing::info!(%addr, "serving the dashboard on loopback (login cookie required)");
        tokio::spawn(async move {
            let mut stop = stop;
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = serve::serve(OwnUser(l), app, limits, stopped).await {
                tracing::error!(%addr, error = %e, "the dashboard listener failed");
            }
        });
        Ok(addr)
    }

    /// Mints a one-time login on the page's listener.
    pub async fn login(self: &Arc<Self>) -> Result<UiLogin, ApiError> {
        let addr = self.address().await?;
        let code = secret()?;
        self.sessions().mint(code.clone(), Instant::now());
        // A listener on every address is reached here through loopback.
        let host = match addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        let path = format!("/ui/login?code={code}");
        Ok(UiLogin {
            url: format!("http://{host}{path}"),
            path,
            expires_s: u32::try_from(CODE_TTL.as_secs()).unwrap_or(u32::MAX),
        })
    }
}

/// A loopback listener that takes connections only from processes of the
/// daemon's own user (or root): anyone else's is closed at once, unread.
pub struct OwnUser(pub tokio::net::TcpListener);

impl serve::Listener for OwnUser {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, crate::routes::Peer, Option<SocketAddr>)> {
        // SAFETY: a plain syscall.
        let me = unsafe { libc::geteuid() };
        loop {
            let (stream, peer) = self.0.accept().await?;
            let local = stream.local_addr()?;
            let owner = tokio::task::spawn_blocking(move || {
                corral_core::process::tcp_peer_uid(peer, local)
            })
            .await
            .map_err(std::io::Error::other)?;
            match owner {
                Ok(Some(uid)) if uid == me || uid == 0 => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, crate::routes::Peer::default(), Some(peer)));
                }
                Ok(owner) => {
                    tracing::warn!(%peer, ?owner, "refused a dashboard connection from another user's process");
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "refused a dashboard connection: cannot tell whose it is");
                }
            }
        }
    }
    fn kind(&self) -> &'static str {
        "dashboard"
    }
}

/// The name of the session cookie on the listener of `port`.
fn cookie_name(port: u16) -> String {
    format!("corral_ui_{port}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The TCP checks and the page around the daemon's router.
pub fn tcp_app(app: Router, ui: Arc<Ui>, gate: Option<Arc<TokenGate>>, port: u16) -> Router {
    let auth = Arc::new(TcpAuth {
        ui: ui.clone(),
        gate,
        cookie: cookie_name(port),
    });
    page(ui, port)
        .merge(app)
        .layer(axum::middleware::from_fn_with_state(auth, tcp_auth))
}

/// `/ui/…`: the page's files and its login.
fn page(ui: Arc<Ui>, port: u16) -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
                .into_response()
        }
    };
    let index = move || async move {
        let mut r = asset(INDEX_HTML, "text/html; charset=utf-8")().await;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        r
    };
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/style.css",
            get(asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/ui/login", get(login_page))
        .with_state((ui, port))
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// `GET /ui/login?code=…`: consumes the code, sets the session cookie, and
/// sends the browser to the page.
async fn login_page(
    State((ui, port)): State<(Arc<Ui>, u16)>,
    method: Method,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    // A HEAD (a link preview) does not spend the code.
    if method == Method::HEAD {
        return StatusCode::OK.into_response();
    }
    let now = Instant::now();
    let ok = q
        .code
        .as_deref()
        .is_some_and(|c| ui.sessions().redeem(c, now));
    if !ok {
        tracing::warn!("refused a dashboard login: the code is unknown, used or expired");
        return (
            StatusCode::FORBIDDEN,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "<!doctype html><meta charset=utf-8><title>corral: login refused</title>\
             <p>This login link was used already or has expired. Run <code>corral ui</code> for a new one.</p>",
        )
            .into_response();
    }
    let id = match secret() {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    ui.sessions().open(id.clone(), now);
    tracing::info!("dashboard login: a session was opened");
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        cookie_name(port),
        SESSION_IDLE.as_secs()
    );
    let mut r = axum::response::Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// What [`tcp_auth`] checks against.
pub struct TcpAuth {
    ui: Arc<Ui>,
    /// The bearer token (none on a loopback listener started at a login).
    gate: Option<Arc<TokenGate>>,
    cookie: String,
}

/// Methods that change nothing (a cookie alone suffices for them).
fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Every TCP request: the page and its login pass; anything else needs a
/// session cookie (and, to change something, the CSRF header and a matching
/// origin) or the bearer token.
pub async fn tcp_auth(State(auth): State<Arc<TcpAuth>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/ui" || path.starts_with("/ui/") {
        return next.run(req).await;
    }
    let session = cookie(req.headers(), &auth.cookie).map(str::to_owned);
    if session.is_some_and(|id| auth.ui.session(&id)) {
        if !safe(req.method())
            && let Err(why) = same_origin(req.headers())
        {
            tracing::warn!(method = %req.method(), path, "refused a dashboard request: {why}");
            return ApiError::new(ErrorCode::Forbidden, why).into_response();
        }
        return next.run(req).await;
    }
    match &auth.gate {
        Some(gate) => crate::auth::check_token(gate, req, next).await,
        None => crate::auth::unauthorized(
            "log in first: `corral ui` prints a login URL for this listener".into(),
            None,
        ),
    }
}

/// A cookie-authenticated request that changes something was sent by the
/// page itself: it carries [`CSRF_HEADER`], and its `Origin` (when it has
/// one) is the host it was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    if headers.get(CSRF_HEADER).is_none() {
        return Err(format!(
            "a request that changes something with the dashboard's cookie must carry the {CSRF_HEADER} header (the page sends it; other sites cannot)"
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        // `https://` too: behind a TLS proxy that passes the Host on.
        (Some(o), Some(h))
            if o.strip_prefix("http://") == Some(h) || o.strip_prefix("https://") == Some(h) =>
        {
            Ok(())
        }
        (o, _) => Err(format!(
            "the request's origin {} is not this daemon's",
            corral_core::elide(o.unwrap_or("(not text)"), 100)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_good_once_and_only_while_fresh() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        s.mint("a".into(), t0);
        s.mint("b".into(), t0);
        assert!(s.redeem("a", t0));
        assert!(!s.redeem("a", t0), "used twice");
        assert!(!s.redeem("b", t0 + CODE_TTL), "expired");
        assert!(!s.redeem("nope", t0));
    }

    #[test]
    fn codes_and_sessions_are_bounded() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        for i in 0..(MAX_CODES + 10) {
            s.mint(i.to_string(), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.codes.len(), MAX_CODES);
        assert!(
            !s.redeem("0", t0 + Duration::from_secs(1)),
            "the oldest went"
        );
        for i in 0..(MAX_SESSIONS + 10) {
            s.open(i.to_string(), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(s.sessions.len(), MAX_SESSIONS);
        let last = (MAX_SESSIONS + 9).to_string();
        assert!(s.touch(&last, t0 + Duration::from_secs(1)));
        assert!(!s.touch(&last, t0 + Duration::from_secs(1) + SESSION_IDLE));
    }

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; corral_ui_80=abc ; y=2"),
        );
        assert_eq!(cookie(&h, "corral_ui_80"), Some("abc"));
        assert_eq!(cookie(&h, "corral_ui_81"), None);
    }

    #[test]
    fn a_change_needs_the_header_and_a_matching_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5"));
        assert!(same_origin(&h).is_err());
        h.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(same_origin(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&h).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:5"),
        );
        assert!(same_origin(&h).is_ok());
    }
}

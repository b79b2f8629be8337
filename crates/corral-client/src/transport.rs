//! A small HTTP/1.1 client for the daemon's Unix socket (or its TCP port).
//!
//! One connection per request: the CLI makes one or two calls per run, and a
//! fresh connection keeps every call independent of the last one's fate.
//! Before anything is sent over the socket, the socket must be owned by this
//! user (or root): in a state dir someone else could write, a planted socket
//! would otherwise receive this user's requests — environments, tokens and all.
//!
//! The client does not trust what answers either: a broken or hostile peer
//! must not be able to grow it without bound, hold it forever, or crash it.
//!
//! - **Size.** A non-streaming answer's body is read up to [`ANSWER_LIMIT`]
//!   and no further; one server-sent event up to [`EVENT_LIMIT`].
//! - **Time.** Every call has an overall deadline covering the connect, the
//!   request, the answer's head and its whole body — a peer that drips one
//!   byte a second cannot stretch it. The deadline is the client's timeout
//!   ([`DEFAULT_TIMEOUT`], or `$CORRAL_CLIENT_TIMEOUT` in seconds, or
//!   [`Client::with_timeout`]) plus what the request itself asks the daemon
//!   to take: a wait's `timeout_s`, a spawn's verification window, a stop's
//!   stage timeouts (see [`Client::deadline`]).
//! - **Streams** (a followed log, the event stream) are exempt from both once
//!   their answer has begun: they last as long as the run or the caller wants.
//!   Their head still has the deadline, and the event stream, on which the
//!   daemon sends a keep-alive every 15 s, fails after [`EVENT_STALL`] of
//!   silence. A followed log has no keep-alive (a quiet agent writes nothing
//!   for hours), so it has no stall limit.
//! - **Shape.** An answer that is not HTTP, not JSON where JSON is expected,
//!   or not the expected shape is a [`ClientError::Decode`] naming the
//!   request and what was expected; it never panics.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
pub use hyper::body::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// The most a non-streaming answer's body may hold, bytes (64 MiB).
///
/// The largest answer corral gives is the listing of every agent
/// (`GET /v1/agents`): measured at about 0.9 KiB per agent (compact JSON, a
/// label, a short command), so 10,000 agents take about 9 MiB. 64 MiB leaves
/// room for seven times that — long commands, many labels, probe output —
/// while an endless answer costs the client at most this much memory.
pub const ANSWER_LIMIT: usize = 64 << 20;

/// The most one server-sent event (or one line of the stream) may hold,
/// bytes (4 MiB). corral's events are a few hundred bytes: a progress message
/// is at most 1 KiB.
pub const EVENT_LIMIT: usize = 4 << 20;

/// The overall deadline of a call that asks the daemon for nothing slow,
/// when neither `$CORRAL_CLIENT_TIMEOUT` nor [`Client::with_timeout`] sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that sets the client's timeout, in seconds
/// (fractions allowed): `CORRAL_CLIENT_TIMEOUT=5 corral ps`.
pub const TIMEOUT_ENV: &str = "CORRAL_CLIENT_TIMEOUT";

/// How long the event stream may stay silent: four of the daemon's 15 s keep-alives.
pub const EVENT_STALL: Duration = Duration::from_secs(60);

/// The daemon's default wait (`timeout_s` not given), seconds.
const DEFAULT_WAIT_S: f64 = 30.0;
/// The longest wait the daemon accepts, seconds.
const MAX_WAIT_S: f64 = 3600.0;
/// The longest stop stage (and verification window) the daemon accepts, seconds.
const MAX_STAGE_S: f64 = 86_400.0;
/// What a stop that names no stage timeouts may take beyond the usual
/// deadline: the agents' own stages are the daemon's to know (up to three
/// days each), and a client must not wait that long on a peer that never
/// answers. A stop the client gives up on goes on in the daemon.
pub const UNSTATED_STOP_ALLOWANCE: Duration = Duration::from_secs(900);
/// How much of an answer that is not understood is quoted in the error.
const QUOTE_CHARS: usize = 120;
/// How much of an error message a peer sends is kept.
const MESSAGE_CHARS: usize = 2000;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot connect to the corral daemon at {}: {source}", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the connection broke, or closed before the answer was complete).
    #[error("talking to the corral daemon: {0}")]
    Http(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code (`not_found`, `conflict`, ...).
        code: String,
        /// Human-readable message.
        message: String,
    },
    /// The daemon's answer was not what this client understands: not HTTP,
    /// not JSON, or not the shape expected. The message names the request and
    /// what was expected.
    #[error("unexpected answer from the corral daemon: {0}")]
    Decode(String),
    /// An answer (or one event of a stream) was larger than this client reads.
    #[error(
        "{what} from the corral daemon at {} is larger than {} MiB, more than corral ever sends; stopped reading",
        socket.display(), limit >> 20
    )]
    TooLarge {
        /// What was being read: `the answer to GET /v1/agents`, `an event of GET /v1/events`.
        what: String,
        /// The socket (or TCP address).
        socket: PathBuf,
        /// The limit, bytes.
        limit: usize,
    },
    /// The whole exchange did not finish within the call's deadline.
    #[error(
        "no complete answer to {request} from the corral daemon at {} within {}",
        socket.display(), seconds(*after)
    )]
    Timeout {
        /// The request: `GET /v1/agents`.
        request: String,
        /// The socket (or TCP address).
        socket: PathBuf,
        /// The deadline it had.
        after: Duration,
    },
    /// A stream that promises keep-alives went silent.
    #[error(
        "{request} from the corral daemon at {} sent nothing for {} (it sends a keep-alive every 15s)",
        socket.display(), seconds(*after)
    )]
    Stalled {
        /// The request: `GET /v1/events`.
        request: String,
        /// The socket (or TCP address).
        socket: PathBuf,
        /// How long it was silent.
        after: Duration,
    },
    /// This client could not put the request into JSON (a path that is not UTF-8).
    #[error("cannot send the request: {0}")]
    Encode(String),
    /// `$CORRAL_CLIENT_TIMEOUT` is not a number of seconds.
    #[error("{TIMEOUT_ENV} must be a number of seconds above 0, like 30 or 2.5; got {0:?}")]
    BadTimeout(String),
    /// The socket is not one this user can trust.
    #[error("refusing to talk to {}: {reason}", socket.display())]
    Untrusted {
        /// The socket.
        socket: PathBuf,
        /// Why not.
        reason: String,
    },
}

impl ClientError {
    /// The API's error code, when the daemon answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// `60s`, `2.5s`.
fn seconds(d: Duration) -> String {
    format!("{}s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Checks that `socket` is a socket owned by this user or root.
fn check_socket(socket: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        // Nothing there: connecting says so in the usual words.
        Err(_) => return Ok(()),
    };
    let untrusted = |reason: String| ClientError::Untrusted {
        socket: socket.to_owned(),
        reason,
    };
    if !meta.file_type().is_socket() {
        return Err(untrusted("it is not a socket (a symlink or a file)".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(untrusted(format!(
            "it is owned by uid {}, not by this user (uid {me}) or root",
            meta.uid()
        )));
    }
    Ok(())
}

/// `$CORRAL_CLIENT_TIMEOUT`, read once per process: `None` when unset or empty.
fn env_timeout() -> Result<Option<Duration>, ClientError> {
    static PARSED: OnceLock<Result<Option<Duration>, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            let Some(raw) = std::env::var_os(TIMEOUT_ENV).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            let text = raw.to_string_lossy();
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(Some)
                .ok_or_else(|| corral_proto::elide(&text, 40))
        })
        .clone()
        .map_err(ClientError::BadTimeout)
}

/// A client bound to one daemon: its Unix socket, or a TCP address with the
/// bearer token the daemon requires there.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    tcp: Option<(std::net::SocketAddr, String)>,
    timeout: Option<Duration>,
}

/// The connection of one call. Dropping it (the call's deadline passed, the
/// caller stopped reading a stream) ends the connection's task at once.
struct Conn {
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Conn {
    /// Lets the connection close cleanly once the answer has been read.
    async fn finish(mut self) {
        self.sender = None;
        let _ = (&mut self.driver).await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Client {
    /// A client for the daemon listening on `socket`. Its timeout is
    /// `$CORRAL_CLIENT_TIMEOUT` when set, else [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            tcp: None,
            timeout: None,
        }
    }

    /// A client for a daemon serving TCP (`corral daemon --listen`), sending `token`.
    pub fn tcp(addr: std::net::SocketAddr, token: impl Into<String>) -> Self {
        Self {
            socket: PathBuf::from(addr.to_string()),
            tcp: Some((addr, token.into())),
            timeout: None,
        }
    }

    /// The same client with `timeout` as the deadline of calls that ask the
    /// daemon for nothing slow (instead of `$CORRAL_CLIENT_TIMEOUT` or [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The deadline of a call that asks the daemon for nothing slow.
    pub fn timeout(&self) -> Result<Duration, ClientError> {
        match self.timeout {
            Some(t) => Ok(t),
            None => Ok(env_timeout()?.unwrap_or(DEFAULT_TIMEOUT)),
        }
    }

    /// The overall deadline of one call: the client's timeout, plus what the
    /// request asks the daemon to take — a wait's `timeout_s` (30 s when not
    /// given), a spawn's (or batch's longest) `verify_ms`, a stop's or kill's
    /// stage timeouts (when the request names none, the agents' own apply,
    /// which the daemon bounds at 86,400 s a stage).
    pub fn deadline(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Duration, ClientError> {
        let own = Duration::try_from_secs_f64(own_seconds(method, path, body)).unwrap_or_default();
        Ok(self.timeout()?.saturating_add(own))
    }

    /// `Authorization` for TCP; nothing on the socket.
    fn authorize(&self, req: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match &self.tcp {
            Some((_, token)) => req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}")),
            None => req,
        }
    }

    /// The socket path (for a TCP client, the address as a path, for messages).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A fresh HTTP/1.1 connection to the daemon, its driver running as a task.
    async fn connect(&self) -> Result<Conn, ClientError> {
        let connect_err = |source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        };
        match &self.tcp {
            Some((addr, _)) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_err)?;
                handshake(stream).await
            }
            None => {
                check_socket(&self.socket)?;
                let stream = UnixStream::connect(&self.socket)
                    .await
                    .map_err(connect_err)?;
                handshake(stream).await
            }
        }
    }

    /// Connects, sends one request and returns the answer's head, its body
    /// unread. A request with a body (even an empty one) is labelled JSON.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        request: &str,
    ) -> Result<(hyper::Response<Incoming>, Conn), ClientError> {
        let mut conn = self.connect().await?;
        let mut req = self
            .authorize(Request::builder())
            .method(method)
            .uri(path)
            .header(HOST, "corral");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Encode(format!("{request}: {e}")))?;
        let Some(sender) = conn.sender.as_mut() else {
            return Err(ClientError::Http(format!("{request}: no connection")));
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http_error(request, &e))?;
        Ok((resp, conn))
    }

    /// A `TooLarge` for `what`, at [`ANSWER_LIMIT`] unless told.
    pub(crate) fn too_large(&self, what: String, limit: usize) -> ClientError {
        ClientError::TooLarge {
            what,
            socket: self.socket.clone(),
            limit,
        }
    }

    /// The body of an answer, up to [`ANSWER_LIMIT`] bytes.
    async fn read_body(&self, mut body: Incoming, request: &str) -> Result<Bytes, ClientError> {
        let too_large = || self.too_large(format!("the answer to {request}"), ANSWER_LIMIT);
        // A declared length says at once whether the answer can fit, and lets
        // the buffer be made once, at its size.
        let declared = body.size_hint().lower();
        let Some(declared) = usize::try_from(declared)
            .ok()
            .filter(|n| *n <= ANSWER_LIMIT)
        else {
            return Err(too_large());
        };
        let mut buf = Vec::with_capacity(declared);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| http_error(request, &e))?;
            if let Ok(data) = frame.into_data() {
                if data.len() > ANSWER_LIMIT - buf.len() {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.into())
    }

    /// Sends one request; returns the status and raw body (at most
    /// [`ANSWER_LIMIT`] bytes), all within [`Client::deadline`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = describe(&method, path);
        let within = self.deadline(&method, path, body.as_deref())?;
        let exchange = async {
            // Every request but a stream's says JSON, with a body or without, as it always has.
            let body = Some(body.unwrap_or_default());
            let (resp, conn) = self.open(method, path, body, &request).await?;
            let status = resp.status();
            let bytes = self.read_body(resp.into_body(), &request).await?;
            conn.finish().await;
            Ok((status, bytes))
        };
        match tokio::time::timeout(within, exchange).await {
            Ok(done) => done,
            Err(_) => Err(ClientError::Timeout {
                request,
                socket: self.socket.clone(),
                after: within,
            }),
        }
    }

    /// Sends a request and decodes a JSON answer; error answers become [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.call_as(method, path, body, &type_words::<T>()).await
    }

    /// [`Client::call`], naming what was expected as `expected` when the answer is not it.
    async fn call_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        expected: &str,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        let request = describe(&method, path);
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Decode(format!(
                "{request}: expected JSON for {expected}, got {} ({e})",
                quote(&bytes)
            ))
        })
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// The agents `query` picks, by id (`GET /v1/agents?…`; the daemon
    /// filters). With `query.fields`, only those fields come over the wire
    /// and the others are [`corral_proto::AgentStatus::blank`]'s.
    pub async fn list_agents(
        &self,
        query: &corral_proto::ListQuery,
    ) -> Result<std::collections::BTreeMap<String, corral_proto::AgentStatus>, ClientError> {
        if query.fields.is_none() {
            return self.get(&query.path()).await;
        }
        // Named as what it stands for: a map of (partial) statuses.
        let partial: std::collections::BTreeMap<
            String,
            serde_json::Map<String, serde_json::Value>,
        > = self
            .call_as(
                Method::GET,
                &query.path(),
                None::<&()>,
                "BTreeMap<String, AgentStatus>",
            )
            .await?;
        partial
            .into_iter()
            .map(
                |(id, fields)| match corral_proto::AgentStatus::from_partial(&id, fields) {
                    Ok(s) => Ok((id, s)),
                    Err(e) => Err(ClientError::Decode(format!(
                        "GET /v1/agents: the fields of agent {id} are not a status's ({e})"
                    ))),
                },
            )
            .collect()
    }

    /// The agents `query` picks, by id, each as the fields it asked for
    /// (`query.fields`; all of them without it) and `agent_id`.
    pub async fn list_agent_fields(
        &self,
        query: &corral_proto::ListQuery,
    ) -> Result<
        std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
        ClientError,
    > {
        self.get(&query.path()).await
    }
}

impl Client {
    /// Sends a GET and hands each piece of the answer's body to `on_chunk` as it
    /// arrives (a followed log), until the body ends or `on_chunk` returns false.
    ///
    /// The answer's head must come within the client's timeout; the body has
    /// no deadline and no size limit (it lasts as long as what it follows).
    pub async fn stream(
        &self,
        path: &str,
        on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.stream_within(path, None, on_chunk).await
    }

    /// [`Client::stream`], failing with [`ClientError::Stalled`] when no byte
    /// arrives for `stall` (for streams that promise keep-alives).
    async fn stream_within(
        &self,
        path: &str,
        stall: Option<Duration>,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self.open_stream(path, stall).await?;
        while let Some(chunk) = body.next_chunk().await {
            if !on_chunk(&chunk?) {
                // Dropping the connection ends it: the daemon sees the reader gone.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends a GET whose answer is a stream; returns it once its head has come
    /// (within the client's timeout), its body to be read as it arrives.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        stall: Option<Duration>,
    ) -> Result<BodyStream, ClientError> {
        let request = describe(&Method::GET, path);
        let within = self.timeout()?;
        let head = async {
            let (resp, conn) = self.open(Method::GET, path, None, &request).await?;
            let status = resp.status();
            if !status.is_success() {
                let bytes = self.read_body(resp.into_body(), &request).await?;
                return Err(api_error(status, &bytes));
            }
            Ok((resp, conn))
        };
        let (resp, conn) =
            tokio::time::timeout(within, head)
                .await
                .map_err(|_| ClientError::Timeout {
                    request: request.clone(),
                    socket: self.socket.clone(),
                    after: within,
                })??;
        Ok(BodyStream {
            body: resp.into_body(),
            conn: Some(conn),
            request,
            socket: self.socket.clone(),
            stall,
        })
    }

    /// Reads a server-sent-events stream, calling `on_event` with each event's
    /// `data` (one JSON document per event on corral's routes) until the server
    /// ends the stream or `on_event` returns false.
    ///
    /// No event (nor line) may exceed [`EVENT_LIMIT`], and the stream may not
    /// stay silent for [`EVENT_STALL`]: the daemon sends keep-alives.
    pub async fn sse(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut events =
            crate::streams::SseReader::new(self.open_stream(path, Some(EVENT_STALL)).await?);
        while let Some(data) = events.next_data().await {
            if !on_event(&data?) {
                break;
            }
        }
        Ok(())
    }
}

/// The body of a streamed answer, read as it arrives. Dropping it closes the
/// connection (the daemon sees the reader gone).
pub(crate) struct BodyStream {
    body: Incoming,
    conn: Option<Conn>,
    pub(crate) request: String,
    pub(crate) socket: PathBuf,
    stall: Option<Duration>,
}

impl BodyStream {
    /// The next piece of the body; `None` once it has ended.
    pub(crate) async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            let next = match self.stall {
                Some(stall) => match tokio::time::timeout(stall, self.body.frame()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Some(Err(ClientError::Stalled {
                            request: self.request.clone(),
                            socket: self.socket.clone(),
                            after: stall,
                        }));
                    }
                },
                None => self.body.frame().await,
            };
            let Some(frame) = next else {
                if let Some(conn) = self.conn.take() {
                    conn.finish().await;
                }
                return None;
            };
            match frame {
                Err(e) => return Some(Err(http_error(&self.request, &e))),
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Some(Ok(data));
                    }
                }
            }
        }
    }
}

/// `GET /v1/agents` (the query left out), for messages.
fn describe(method: &Method, path: &str) -> String {
    let bare = path.split_once('?').map_or(path, |(p, _)| p);
    format!("{method} {}", corral_proto::elide(bare, 200))
}

/// Seconds a request asks the daemon to take, beyond answering: see [`Client::deadline`].
fn own_seconds(method: &Method, path: &str, body: Option<&[u8]>) -> f64 {
    #[derive(Deserialize)]
    struct Spawn {
        verify_ms: Option<f64>,
    }
    #[derive(Deserialize)]
    struct Batch {
        agents: Vec<Spawn>,
    }
    #[derive(Deserialize)]
    struct Stop {
        stop_timeouts: Option<Vec<f64>>,
    }
    let clamp = |s: f64, most: f64| {
        if s.is_finite() {
            s.clamp(0.0, most)
        } else {
            most
        }
    };
    let (bare, query) = path.split_once('?').unwrap_or((path, ""));
    let body = body.unwrap_or_default();
    let under_agents = bare.starts_with("/v1/agents/");
    if *method == Method::GET && under_agents && bare.ends_with("/wait") {
        let asked = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("timeout_s="))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(DEFAULT_WAIT_S);
        return clamp(asked, MAX_WAIT_S);
    }
    if *method != Method::POST {
        return 0.0;
    }
    let verify = |s: &Spawn| clamp(s.verify_ms.unwrap_or(0.0) / 1000.0, MAX_STAGE_S);
    match bare {
        "/v1/agents" => serde_json::from_slice::<Spawn>(body).map_or(0.0, |s| verify(&s)),
        "/v1/agents/batch" => serde_json::from_slice::<Batch>(body)
            .map_or(0.0, |b| b.agents.iter().map(verify).fold(0.0, f64::max)),
        // A restart is a stop, then a spawn of the same request (its window is
        // the daemon's to know: within the allowance below when unnamed).
        _ if bare == "/v1/stop"
            || bare == "/v1/restart"
            || (under_agents
                && (bare.ends_with("/stop")
                    || bare.ends_with("/kill")
                    || bare.ends_with("/restart"))) =>
        {
            match serde_json::from_slice::<Stop>(body)
                .ok()
                .and_then(|s| s.stop_timeouts)
            {
                Some(stages) => stages.iter().map(|s| clamp(*s, MAX_STAGE_S)).sum(),
                None => UNSTATED_STOP_ALLOWANCE.as_secs_f64(),
            }
        }
        _ => 0.0,
    }
}

/// The start of an answer this client did not understand, quoted and escaped
/// (no control characters from a peer reach the terminal).
fn quote(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty body".into();
    }
    let head = &bytes[..bytes.len().min(QUOTE_CHARS * 4)];
    format!(
        "{} bytes beginning {:?}",
        bytes.len(),
        corral_proto::elide(&String::from_utf8_lossy(head), QUOTE_CHARS)
    )
}

/// A peer's text as a message: cut short, control characters escaped.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in corral_proto::elide(text, MESSAGE_CHARS).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A type's name without its module paths: `BTreeMap<String, AgentStatus>`.
fn type_words<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(word.rsplit("::").next().unwrap_or(word));
        word.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A hyper error as this client's: an answer that does not parse as HTTP is a
/// [`ClientError::Decode`], a broken exchange an [`ClientError::Http`].
fn http_error(request: &str, e: &hyper::Error) -> ClientError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ClientError::Decode(format!("{request}: expected an HTTP/1.1 answer: {e}"))
    } else {
        ClientError::Http(format!("{request}: {e}"))
    }
}

/// HTTP/1.1 over any connected stream, the connection driven by its own task.
async fn handshake<S>(stream: S) -> Result<Conn, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok(Conn {
        sender: Some(sender),
        driver: tokio::spawn(conn),
    })
}

pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<corral_proto::ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: printable(&e.error.message),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            ClientError::Api {
                status: status.as_u16(),
                code: "internal".into(),
                message: format!(
                    "HTTP {status}: {}",
                    if text.is_empty() {
                        "no body".into()
                    } else {
                        printable(&corral_proto::elide(text, 300))
                    }
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_add_what_the_request_asks_for() {
        let s = |m: Method, p: &str, b: &str| own_seconds(&m, p, Some(b.as_bytes()));
        assert_eq!(s(Method::GET, "/v1/agents", ""), 0.0);
        assert_eq!(s(Method::GET, "/v1/agents/a/wait?timeout_s=2.5", ""), 2.5);
        assert_eq!(s(Method::GET, "/v1/agents/a/wait", ""), DEFAULT_WAIT_S);
        assert_eq!(
            s(Method::GET, "/v1/agents/a/wait?timeout_s=1e9", ""),
            3600.0
        );
        assert_eq!(
            s(Method::GET, "/v1/agents/a/wait?timeout_s=NaN", ""),
            3600.0
        );
        assert_eq!(s(Method::POST, "/v1/agents", r#"{"verify_ms": 1500}"#), 1.5);
        assert_eq!(
            s(
                Method::POST,
                "/v1/agents/batch",
                r#"{"agents": [{"verify_ms": 100}, {"verify_ms": 4000}, {}]}"#
            ),
            4.0
        );
        assert_eq!(
            s(Method::POST, "/v1/stop", r#"{"stop_timeouts": [1, 2, 3]}"#),
            6.0
        );
        assert_eq!(
            s(Method::POST, "/v1/agents/a/kill", r#"{"force": true}"#),
            900.0,
            "stages not named: a bounded allowance, not the three days they may be"
        );
        assert_eq!(s(Method::POST, "/v1/prune", ""), 0.0);
    }

    #[test]
    fn type_words_drop_module_paths() {
        assert_eq!(
            type_words::<std::collections::BTreeMap<String, Vec<u8>>>(),
            "BTreeMap<String, Vec<u8>>"
        );
        assert_eq!(type_words::<serde_json::Value>(), "Value");
    }

    #[test]
    fn peers_text_is_quoted_short_and_escaped() {
        assert_eq!(quote(b""), "an empty body");
        assert_eq!(quote(b"hi\x1b[2J"), r#"6 bytes beginning "hi\u{1b}[2J""#);
        let long = "x".repeat(10_000);
        assert!(quote(long.as_bytes()).len() < 200);
        assert_eq!(printable("a\u{1b}b"), "a\\u{1b}b");
    }
}

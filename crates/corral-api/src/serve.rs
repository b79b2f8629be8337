//! Serving the router on a Unix socket and on TCP, so that no client — idle,
//! slow, malicious or just gone — can hang the daemon, starve it of
//! descriptors, or lock other clients out.
//!
//! - **A cap on open connections** per listener, so a flood takes a bounded
//!   number of descriptors and the daemon keeps the rest for its agents. TCP
//!   and the socket have separate caps: an unauthenticated flood on TCP cannot
//!   touch the local socket.
//! - **At the cap, the newcomer is served and the longest-idle connection
//!   goes.** Refusing newcomers would let anyone who can connect (any process
//!   of the daemon's user on the socket, anyone on the network over TCP) lock
//!   every client out by holding idle or half-sent connections until the
//!   header timeout. Instead, when a listener is full, one connection that is
//!   *not answering a request* is closed to make room:
//!   1. first one that has never completed a request (connected and silent,
//!      or a request head still incomplete: what a flood holds), the one open
//!      longest;
//!   2. else a keep-alive connection idle between requests, the one idle
//!      longest. Closing it costs its client no more than the header timeout
//!      would: a client must already expect an idle keep-alive connection to
//!      be closed under it.
//!
//!   A connection answering a request — a long poll such as `/wait`, a
//!   followed log or event stream, an answer still being written — is never
//!   closed for room: it was let in and is doing its work. Only when every
//!   connection is answering a request is a newcomer refused (logged at most
//!   once a second). Idleness counts from when the connection was opened or
//!   its last answer was sent, not from its last byte: trickling a request
//!   head one byte at a time does not make a connection look busy. A request
//!   that arrives in the instant its connection is chosen is lost, as it can
//!   be with any idle timeout on a keep-alive connection.
//! - **A wide accept queue** (`ACCEPT_BACKLOG`): a burst of connections
//!   waits in the kernel until the loop takes (and, at the cap, trades) them,
//!   instead of having its SYNs dropped, which would cost a client caught in
//!   a TCP flood a one-second retransmission.
//! - **One owner for the connection table**: the accept loop
//!   (`Connections`) alone holds it — no lock. Each connection shares a
//!   `Slot` of atomics with it (answering a request or not, served before,
//!   idle since) and holds the receiving end of a oneshot; the loop closes a
//!   connection by sending on it, and sees one end when its receiver is gone.
//! - **Timeouts**: request headers must arrive within [`HEADER_TIMEOUT`], which
//!   also closes idle keep-alive connections; a client that stops reading its
//!   answer for [`WRITE_STALL_TIMEOUT`] is dropped. (Bodies have their own
//!   timeout in the router; a long poll is a request in progress, not idleness.)
//! - **One error shape**: hyper answers protocol errors itself (400, 414 URI
//!   too long, 431 too many headers) with an empty body; [`Guarded`] rewrites
//!   those answers into corral's `{"error": {"code", "message"}}`.
//! - **Who is calling**: each Unix-socket request carries the peer's pid
//!   (`SO_PEERCRED`) as a [`Peer`] extension; each TCP request carries the
//!   peer's address as axum's [`ConnectInfo`] (the token check slows down an
//!   address that keeps failing it, see [`crate::auth`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use corral_core::ErrorCode;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};
use tower::ServiceExt;

use crate::routes::Peer;

/// Request headers must be complete this long after a connection is ready for
/// the next request (also closes idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that reads nothing of its answer for this long is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish when the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Connections the kernel queues for a listener until it accepts them. With
/// std's default of 128, a burst beyond it makes the kernel drop SYNs, and a
/// client caught in a TCP flood waits a 1 s retransmission (Unix sockets
/// already get the system's maximum).
const ACCEPT_BACKLOG: i32 = 4096;

/// How many connections a listener keeps open, and how long they may idle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections; beyond it the longest-idle one is closed to make room
    /// (a newcomer is refused only when every connection is answering a request).
    pub max_connections: usize,
    /// Request headers must be complete this long after the connection is
    /// ready for a request (closes idle keep-alive connections too).
    pub header_timeout: Duration,
}

impl Limits {
    /// A cap that leaves most of `nofile` to agents: a quarter of it per
    /// listener, at most 1024.
    pub fn for_nofile(nofile: u64) -> Self {
        Self {
            max_connections: (nofile / 4).clamp(16, 1024) as usize,
            ..Self::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// A listener the serve loop can take connections from.
pub trait Listener: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection, with who is on the other end: the peer's
    /// credentials, and its network address when it has one.
    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Io, Peer, Option<SocketAddr>)>> + Send;
    /// For logs: `socket`, `agent socket` or `tcp`.
    fn kind(&self) -> &'static str;
    /// Lets a burst of up to `backlog` connections wait in the kernel's accept
    /// queue (called once, before serving).
    fn widen_backlog(&self, backlog: i32) -> io::Result<()> {
        let _ = backlog;
        Ok(())
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, Peer, Option<SocketAddr>)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
        let peer = Peer {
            pid,
            ..Peer::default()
        };
        Ok((stream, peer, None))
    }
    fn kind(&self) -> &'static str {
        "socket"
    }
}

/// A Unix socket whose callers are pinned when they connect: each
/// connection also holds a pidfd of its peer (`SO_PEERPIDFD`), so that its
/// pid names the caller only while that very process lives. Costs a
/// descriptor per connection: for the agent socket, where who calls decides
/// what is allowed.
pub struct PinnedPeers(pub tokio::net::UnixListener);

impl Listener for PinnedPeers {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, Peer, Option<SocketAddr>)> {
        let (stream, _) = self.0.accept().await?;
        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
        let pidfd = {
            use std::os::fd::AsFd;
            corral_core::process::peer_pidfd(stream.as_fd()).map(std::sync::Arc::new)
        };
        let peer = Peer {
            pid,
            pidfd,
            ..Peer::default()
        };
        Ok((stream, peer, None))
    }
    fn kind(&self) -> &'static str {
        "agent socket"
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, Peer, Option<SocketAddr>)> {
        let (stream, addr) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::default(), Some(addr)))
    }
    fn kind(&self) -> &'static str {
        "tcp"
    }
    fn widen_backlog(&self, backlog: i32) -> io::Result<()> {
        // tokio listens with std's backlog of 128; listening again on a
        // listening socket only changes its backlog (the kernel caps it at
        // net.core.somaxconn).
        rustix::net::listen(self, backlog).map_err(io::Error::from)
    }
}

/// Logs an event at most once a second, with how many were left out.
pub(crate) struct Throttled {
    last: std::sync::Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttled {
    pub(crate) fn new() -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    /// Calls `log` with the number of events left out since its last call,
    /// unless it was called less than a second ago.
    pub(crate) fn hit(&self, log: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        log(self.skipped.swap(0, Ordering::Relaxed));
    }
}

/// What one connection shares with the accept loop: only atomics, written by
/// the connection and read by the loop when it must choose one to close.
pub(crate) struct Slot {
    /// Requests being answered; a request counts until its answer's body has
    /// been sent (or dropped).
    answering: AtomicU32,
    /// Whether it has completed a request.
    served: AtomicBool,
    /// When it was opened or last finished an answer, in milliseconds since
    /// `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Slot {
    fn new(epoch: Instant) -> Self {
        Self {
            answering: AtomicU32::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(ms_since(epoch)),
            epoch,
        }
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Counts a request as being answered from its head's arrival until its
/// answer is sent: created when the service is called, moved into the
/// answer's body, dropped with it.
struct Answering(Arc<Slot>);

impl Answering {
    fn start(slot: Arc<Slot>) -> Self {
        slot.answering.fetch_add(1, Ordering::AcqRel);
        Self(slot)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let slot = &self.0;
        slot.served.store(true, Ordering::Release);
        slot.idle_since_ms
            .store(ms_since(slot.epoch), Ordering::Release);
        slot.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request's handle on its connection's bookkeeping (an extension on every
/// request [`serve`] answers).
#[derive(Clone)]
pub(crate) struct Connection(Arc<Slot>);

impl Connection {
    /// Runs `f` (part of answering this request) with the connection counted
    /// as idle: a deliberate stall, such as the pause before answering an
    /// address that keeps failing the token check, must not shield its
    /// connection from being closed for room.
    pub(crate) async fn idle_while<F: Future>(&self, f: F) -> F::Output {
        /// Counts the request again when `f` ends or is dropped.
        struct Resume<'a>(&'a Slot);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.answering.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.0.answering.fetch_sub(1, Ordering::AcqRel);
        let _resume = Resume(&self.0);
        f.await
    }
}

/// One open connection in the table: its shared state, and how to close it.
struct Entry {
    slot: Arc<Slot>,
    close: oneshot::Sender<()>,
}

/// What [`Connections::make_room`] did.
enum Room {
    /// Below the cap.
    Free,
    /// Closed a connection that was not answering a request.
    Evicted {
        /// It had completed a request (an idle keep-alive connection).
        served: bool,
        /// How long it had been idle.
        idle: Duration,
    },
    /// Every connection is answering a request.
    Full,
}

/// A listener's table of open connections, owned by its accept loop alone.
struct Connections {
    max: usize,
    epoch: Instant,
    open: Vec<Entry>,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            epoch: Instant::now(),
            open: Vec::new(),
        }
    }

    /// Makes room for one more connection, closing the longest-idle one that
    /// is not answering a request if the listener is at its cap.
    fn make_room(&mut self) -> Room {
        if self.open.len() >= self.max {
            // Forget connections that have ended (their receiver is gone).
            self.open.retain(|e| !e.close.is_closed());
        }
        if self.open.len() < self.max {
            return Room::Free;
        }
        // Never-served before served, then the longest idle: the smallest key.
        let victim = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, e)| e.slot.answering.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, e)| {
                (
                    e.slot.served.load(Ordering::Acquire),
                    e.slot.idle_since_ms.load(Ordering::Acquire),
                )
            })
            .map(|(i, _)| i);
        let Some(i) = victim else {
            return Room::Full;
        };
        let entry = self.open.swap_remove(i);
        let idle_since = entry.slot.idle_since_ms.load(Ordering::Acquire);
        let served = entry.slot.served.load(Ordering::Acquire);
        // Its task drops the connection as soon as it sees this.
        let _ = entry.close.send(());
        Room::Evicted {
            served,
            idle: Duration::from_millis(ms_since(self.epoch).saturating_sub(idle_since)),
        }
    }

    /// Registers a new connection: its slot, and the receiver that tells it to close.
    fn insert(&mut self) -> (Arc<Slot>, oneshot::Receiver<()>) {
        let slot = Arc::new(Slot::new(self.epoch));
        let (close, closed) = oneshot::channel();
        self.open.push(Entry {
            slot: slot.clone(),
            close,
        });
        (slot, closed)
    }

    /// Resolves once every connection has ended.
    async fn drained(&mut self) {
        for entry in &mut self.open {
            entry.close.closed().await;
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; open connections then
/// get two seconds to finish.
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut conns = Connections::new(limits.max_connections);
    let (stop_tx, stop_rx) = watch::channel(false);
    let evicted = Throttled::new();
    let refused = Throttled::new();
    let failed = Throttled::new();
    let kind = listener.kind();
    if let Err(e) = listener.widen_backlog(ACCEPT_BACKLOG) {
        tracing::warn!(listener = kind, error = %e, "cannot widen the accept backlog");
    }
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (io, peer, addr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, or the peer left before we took it: say so
                // (once a second) and pause briefly rather than spin.
                failed.hit(|skipped| tracing::warn!(listener = kind, error = %e, skipped, "cannot accept a connection"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match conns.make_room() {
            Room::Free => {}
            Room::Evicted { served, idle } => evicted.hit(|skipped| {
                tracing::warn!(
                    listener = kind,
                    max = limits.max_connections,
                    keep_alive = served,
                    idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                    skipped,
                    "too many open connections: closed the longest-idle one for a new one"
                )
            }),
            Room::Full => {
                drop(io);
                refused.hit(|skipped| {
                    tracing::warn!(
                        listener = kind,
                        max = limits.max_connections,
                        skipped,
                        "connection refused: too many open connections, all answering requests"
                    )
                });
                continue;
            }
        }
        let (slot, close) = conns.insert();
        let app = app.clone();
        let stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            serve_connection(io, peer, addr, app, slot, close, stop, header_timeout).await;
        });
    }
    let _ = stop_tx.send(true);
    // Let connections in flight finish, up to the grace period; dropping the
    // table then closes the rest.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conns.drained()).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<I>(
    io: I,
    peer: Peer,
    addr: Option<SocketAddr>,
    app: Router,
    slot: Arc<Slot>,
    mut close: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // The head has arrived: from now until its answer is sent, the
            // connection is answering a request. Counted here, not in the
            // future, so no eviction can slip in between.
            let answering = Answering::start(slot.clone());
            let ext = req.extensions_mut();
            ext.insert(peer.clone());
            ext.insert(Connection(slot.clone()));
            if let Some(addr) = addr {
                ext.insert(ConnectInfo(addr));
            }
            let answer = app.clone().oneshot(req);
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(move |body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        // The body owns the count until it is sent or dropped.
                        let _ = &answering;
                        frame
                    }))
                }))
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(Guarded::new(io)), service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        // Closed for room (or the listener is gone): drop it now.
        _ = &mut close => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = tokio::time::timeout(SHUTDOWN_GRACE, conn) => {}
                _ = close => {}
            }
        }
    }
}

/// A connection's I/O with a write-stall timeout, and hyper's own error
/// answers given corral's JSON error body.
pub struct Guarded<I> {
    inner: I,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A rewritten answer still being written: (bytes, written so far, original length).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<I> Guarded<I> {
    fn new(inner: I) -> Self {
        Self {
            inner,
            stalled: None,
            pending: None,
        }
    }
}

/// hyper's automatic answer to a request it could not parse, rewritten with a
/// JSON body: `Some(new bytes)` when `buf` is exactly such an answer.
fn rewrite_protocol_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(buf).ok()?;
    let rest = head.strip_prefix("HTTP/1.1 ")?;
    let (code, message) = match rest.get(..4)? {
        "400 " => (ErrorCode::Invalid, "malformed HTTP request"),
        "414 " => (ErrorCode::UriTooLong, "the request URI is too long"),
        "431 " => (
            ErrorCode::HeadersTooLarge,
            "too many or too large request headers (at most 100 headers)",
        ),
        _ => return None,
    };
    if !head.ends_with("\r\n\r\n")
        || !head.contains("\r\nconnection: close\r\n")
        || !head.contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let body = crate::error::body_bytes(code, message);
    let head = head.trim_end_matches("\r\n").replace(
        "\r\ncontent-length: 0",
        &format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}",
            body.len()
        ),
    );
    let mut out = format!("{head}\r\n\r\n").into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its answer",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none()
            && let Some(rewritten) = rewrite_protocol_error(buf)
        {
            this.pending = Some((rewritten, 0, buf.len()));
        }
        if let Some((bytes, done, original)) = &mut this.pending {
            // Write the rewritten answer whole, then report the original as written.
            while *done < bytes.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &bytes[*done..]) {
                    Poll::Ready(Ok(n)) => *done += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return this.write_stalled(cx),
                }
            }
            let n = *original;
            this.pending = None;
            this.stalled = None;
            return Poll::Ready(Ok(n));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.write_stalled(cx),
            ready => {
                this.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_error_answers_get_the_json_shape() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 27 Nov 2026 04:06:15 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_protocol_error(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        // corral's own answers (with bodies) are left alone.
        assert!(
            rewrite_protocol_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n")
                .is_none()
        );
        assert!(
            rewrite_protocol_error(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            )
            .is_none()
        );
    }
}

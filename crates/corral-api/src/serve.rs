//! Serving the router on a Unix socket and on TCP, so that no client — idle,
//! slow, malicious or just gone — can hang the daemon or starve it of
//! descriptors.
//!
//! - **A cap on open connections** per listener: beyond it, a new connection is
//!   closed at once (and the refusals logged, at most once a second), so a
//!   flood takes a bounded number of descriptors and the daemon keeps the rest
//!   for its agents. TCP and the socket have separate caps: an unauthenticated
//!   flood on TCP cannot lock out the local socket.
//! - **Timeouts**: request headers must arrive within [`HEADER_TIMEOUT`], which
//!   also closes idle keep-alive connections; a client that stops reading its
//!   answer for [`WRITE_STALL_TIMEOUT`] is dropped. (Bodies have their own
//!   timeout in the router; a long poll is a request in progress, not idleness.)
//! - **One error shape**: hyper answers protocol errors itself (400, 414 URI
//!   too long, 431 too many headers) with an empty body; [`Guarded`] rewrites
//!   those answers into corral's `{"error": {"code", "message"}}`.
//! - **Who is calling**: each Unix-socket request carries the peer's pid
//!   (`SO_PEERCRED`) as a [`Peer`] extension.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use corral_core::ErrorCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::routes::Peer;

/// Request headers must be complete this long after a connection is ready for
/// the next request (also closes idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that reads nothing of its answer for this long is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish when the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How many connections a listener keeps open, and how long they may idle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections; beyond it new ones are closed at once.
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
    /// Accepts one connection, with who is on the other end.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;
    /// For logs: `socket` or `tcp`.
    fn kind(&self) -> &'static str;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, Peer)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
        Ok((stream, Peer { pid }))
    }
    fn kind(&self) -> &'static str {
        "socket"
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, Peer)> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::default()))
    }
    fn kind(&self) -> &'static str {
        "tcp"
    }
}

/// Logs an event at most once a second, with how many were left out.
struct Throttled {
    last: std::sync::Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttled {
    fn new() -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    fn hit(&self, log: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        log(self.skipped.swap(0, Ordering::Relaxed));
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
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let refused = Throttled::new();
    let failed = Throttled::new();
    let kind = listener.kind();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (io, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, or the peer left before we took it: say so
                // (once a second) and pause briefly rather than spin.
                failed.hit(|skipped| tracing::warn!(listener = kind, error = %e, skipped, "cannot accept a connection"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(io);
            refused.hit(|skipped| {
                tracing::warn!(
                    listener = kind,
                    max = limits.max_connections,
                    skipped,
                    "connection refused: too many open connections"
                )
            });
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            serve_connection(io, peer, app, stop, header_timeout).await;
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Let connections in flight finish, up to the grace period.
    let all = limits.max_connections as u32;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    peer: Peer,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            app.clone().oneshot(req)
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
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
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

//! A small HTTP/1.1 client for the daemon's Unix socket (or its TCP port).
//!
//! One connection per request: the CLI makes one or two calls per run, and a
//! fresh connection keeps every call independent of the last one's fate.
//! Before anything is sent over the socket, the socket must be owned by this
//! user (or root): in a state dir someone else could write, a planted socket
//! would otherwise receive this user's requests — environments, tokens and all.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

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
    /// The HTTP exchange failed.
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
    /// The daemon's answer was not what this client understands.
    #[error("unexpected answer from the corral daemon: {0}")]
    Decode(String),
    /// This client could not put the request into JSON (a path that is not UTF-8).
    #[error("cannot send the request: {0}")]
    Encode(String),
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

/// A client bound to one daemon: its Unix socket, or a TCP address with the
/// bearer token the daemon requires there.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    tcp: Option<(std::net::SocketAddr, String)>,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            tcp: None,
        }
    }

    /// A client for a daemon serving TCP (`corral daemon --listen`), sending `token`.
    pub fn tcp(addr: std::net::SocketAddr, token: impl Into<String>) -> Self {
        Self {
            socket: PathBuf::from(addr.to_string()),
            tcp: Some((addr, token.into())),
        }
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
    async fn connect(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            tokio::task::JoinHandle<hyper::Result<()>>,
        ),
        ClientError,
    > {
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

    /// Sends one request; returns the status and raw body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (mut sender, conn) = self.connect().await?;
        let req = self
            .authorize(Request::builder())
            .method(method)
            .uri(path)
            .header(HOST, "corral")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        drop(sender);
        let _ = conn.await;
        Ok((status, bytes))
    }

    /// Sends a request and decodes a JSON answer; error answers become [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }
}

impl Client {
    /// Sends a GET and hands each piece of the answer's body to `on_chunk` as it
    /// arrives (a followed log), until the body ends or `on_chunk` returns false.
    pub async fn stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let (mut sender, conn) = self.connect().await?;
        let req = self
            .authorize(Request::builder())
            .method(Method::GET)
            .uri(path)
            .header(HOST, "corral")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Some(chunk) = frame.data_ref()
                && !on_chunk(chunk)
            {
                conn.abort();
                return Ok(());
            }
        }
        drop(sender);
        let _ = conn.await;
        Ok(())
    }

    /// Reads a server-sent-events stream, calling `on_event` with each event's
    /// `data` (one JSON document per event on corral's routes) until the server
    /// ends the stream or `on_event` returns false.
    pub async fn sse(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut buf = String::new();
        let mut data = String::new();
        self.stream(path, |chunk| {
            buf.push_str(&String::from_utf8_lossy(chunk));
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() && !on_event(&data) {
                        return false;
                    }
                    data.clear();
                } else if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            true
        })
        .await
    }
}

/// HTTP/1.1 over any connected stream, the connection driven by its own task.
async fn handshake<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    ClientError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    Ok((sender, tokio::spawn(conn)))
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<corral_core::ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "internal".into(),
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        },
    }
}

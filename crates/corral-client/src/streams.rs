//! Streamed answers as values one pulls from: the event stream
//! ([`EventStream`], server-sent events decoded into [`Event`]s) and a log
//! ([`LogStream`], its bytes or its lines). Each holds its connection;
//! dropping it ends the connection, which the daemon sees as the reader gone.
//!
//! The limits of the transport hold here too: no event (nor SSE line) over
//! [`EVENT_LIMIT`], no silence on the event stream longer than
//! [`EVENT_STALL`](crate::transport::EVENT_STALL) (the daemon sends a
//! keep-alive every 15 s); a followed log has neither (a quiet agent writes
//! nothing for hours).

use corral_proto::Event;
use futures_util::Stream;

use crate::transport::{BodyStream, Bytes, ClientError, EVENT_LIMIT};

/// Server-sent events: each event's `data`, lines cut on bytes and decoded
/// whole, so a character split between two chunks arrives intact.
pub(crate) struct SseReader {
    body: BodyStream,
    buf: Vec<u8>,
    scanned: usize,
    data: String,
    ended: bool,
}

impl SseReader {
    pub(crate) fn new(body: BodyStream) -> Self {
        Self {
            body,
            buf: Vec::new(),
            scanned: 0,
            data: String::new(),
            ended: false,
        }
    }

    /// The next event's `data`; `None` when the stream has ended.
    pub(crate) async fn next_data(&mut self) -> Option<Result<String, ClientError>> {
        if self.ended && self.buf.is_empty() {
            return None;
        }
        loop {
            while let Some(nl) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + nl;
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..=end);
                self.scanned = 0;
                let line = line.trim_end_matches('\r');
                if line.is_empty() {
                    if !self.data.is_empty() {
                        return Some(Ok(std::mem::take(&mut self.data)));
                    }
                } else if let Some(d) = line.strip_prefix("data:") {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            self.scanned = self.buf.len();
            if self.buf.len() + self.data.len() > EVENT_LIMIT {
                // Said once; the stream is over.
                self.ended = true;
                self.buf.clear();
                self.data.clear();
                self.scanned = 0;
                return Some(Err(ClientError::TooLarge {
                    what: format!("an event of {}", self.body.request),
                    socket: self.body.socket.clone(),
                    limit: EVENT_LIMIT,
                }));
            }
            if self.ended {
                return None;
            }
            match self.body.next_chunk().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }
}

/// The event stream (`GET /v1/events`), each event decoded.
pub struct EventStream {
    sse: SseReader,
}

impl EventStream {
    pub(crate) fn new(body: BodyStream) -> Self {
        Self {
            sse: SseReader::new(body),
        }
    }

    /// The next event; `None` when the stream has ended (without `follow`,
    /// after the stored backlog). An event this client cannot decode is a
    /// [`ClientError::Decode`] naming it; the stream goes on after it.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        let data = match self.sse.next_data().await? {
            Ok(data) => data,
            Err(e) => return Some(Err(e)),
        };
        Some(serde_json::from_str(&data).map_err(|e| {
            ClientError::Decode(format!(
                "{}: an event that is not an Event ({e}): {}",
                self.sse.body.request,
                corral_proto::elide(&data, 200)
            ))
        }))
    }

    /// The next event's JSON exactly as the daemon sent it (for a tool that
    /// passes events on: a kind newer than this client stays whole).
    pub async fn next_raw(&mut self) -> Option<Result<String, ClientError>> {
        self.sse.next_data().await
    }

    /// The same events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Event, ClientError>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
    }
}

/// A log's text (`GET /v1/agents/{id}/logs`): as it comes, or line by line.
pub struct LogStream {
    body: BodyStream,
    partial: Vec<u8>,
    ended: bool,
}

impl LogStream {
    pub(crate) fn new(body: BodyStream) -> Self {
        Self {
            body,
            partial: Vec::new(),
            ended: false,
        }
    }

    /// The next piece of the log as the daemon sent it; `None` at its end
    /// (with `follow`: once the run has ended and everything was read).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        if !self.partial.is_empty() {
            return Some(Ok(Bytes::from(std::mem::take(&mut self.partial))));
        }
        if self.ended {
            return None;
        }
        self.body.next_chunk().await
    }

    /// The next whole line, without its newline (a last line without one
    /// comes at the end); invalid UTF-8 is replaced.
    pub async fn next_line(&mut self) -> Option<Result<String, ClientError>> {
        loop {
            if let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.partial.drain(..=nl).collect();
                line.pop();
                return Some(Ok(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.ended {
                if self.partial.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut self.partial);
                return Some(Ok(String::from_utf8_lossy(&rest).into_owned()));
            }
            match self.body.next_chunk().await {
                Some(Ok(chunk)) => self.partial.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => self.ended = true,
            }
        }
    }

    /// The log's lines as a [`Stream`].
    pub fn lines(self) -> impl Stream<Item = Result<String, ClientError>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            let next = s.next_line().await?;
            Some((next, s))
        })
    }
}

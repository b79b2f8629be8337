//! `GET /v1/agents/{id}/logs`: a run's output, as text, streamed while following.
//!
//! The log files are read by the daemon (so `corral logs` works over TCP too),
//! opened with no symlink anywhere on their path, on blocking threads.
//! Following polls the files for growth every 100 ms and ends once the run has
//! ended and nothing more was written.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use corral_core::{AgentId, LogsQuery, Supervisor};

use crate::error::ApiError;
use crate::routes::{IdPath, Q};

/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;
/// How often a followed file is checked for growth.
const POLL: Duration = Duration::from_millis(100);

/// A run's stdout, stderr or both (`stream=both`: stdout's text, then stderr's;
/// while following, whatever either gains, as it comes), optionally only the
/// last `tail` lines first, following with `follow=true`.
#[utoipa::path(get, path = "/v1/agents/{id}/logs", tag = "agents", params(("id" = String, Path), LogsQuery),
    responses((status = 200, description = "The log text (streamed while following)", content_type = "text/plain"),
        (status = 400, body = corral_core::ErrorBody), (status = 404, body = corral_core::ErrorBody)))]
pub(crate) async fn logs(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    Q(q): Q<LogsQuery>,
) -> Result<Response, ApiError> {
    let streams: &[bool] = match q.stream.as_deref().unwrap_or("stdout") {
        "stdout" => &[false],
        "stderr" => &[true],
        "both" => &[false, true],
        other => {
            return Err(ApiError::invalid(format!(
                "stream must be stdout, stderr or both; got {:?}",
                corral_core::elide(other, 50)
            )));
        }
    };
    let mut files = Vec::new();
    let mut run = None;
    for stderr in streams {
        let (path, _) = sup.log_file(&id, q.run, *stderr).await?;
        files.push(path);
    }
    if q.follow.unwrap_or(false) {
        run = Some(match q.run {
            Some(r) => r,
            None => sup.run_state(&id)?.0,
        });
    }
    let opened = open_all(files, q.tail).await?;
    let state = Follow {
        sup,
        id,
        run,
        files: opened,
        idle_after_end: false,
    };
    let stream = futures_util::stream::unfold(state, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), f))
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One open log file and how far it has been sent.
struct Open {
    file: std::fs::File,
    pos: u64,
}

/// Opens each file and places it `tail` lines before its end (or at its start).
async fn open_all(paths: Vec<PathBuf>, tail: Option<usize>) -> Result<Vec<Open>, ApiError> {
    tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|path| {
                let file = corral_core::process::open_agent_file(&path).map_err(|e| {
                    ApiError::new(
                        corral_core::ErrorCode::NotFound,
                        format!("log {}: {e}", path.display()),
                    )
                })?;
                let pos = match tail {
                    Some(n) => tail_offset(&file, n).unwrap_or(0),
                    None => 0,
                };
                Ok(Open { file, pos })
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::new(corral_core::ErrorCode::Internal, e.to_string()))?
}

/// The offset where the last `n` lines of `file` begin.
fn tail_offset(file: &std::fs::File, n: usize) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let window = len.min(1 << 20);
    let mut buf = vec![0u8; window as usize];
    let mut f = file;
    f.seek(SeekFrom::Start(len - window))?;
    f.read_exact(&mut buf)?;
    let cut = corral_core::logs::tail_start(&buf, n);
    Ok(len - window + cut as u64)
}

struct Follow {
    sup: Supervisor,
    id: AgentId,
    /// The run being followed (None: no following).
    run: Option<u32>,
    files: Vec<Open>,
    idle_after_end: bool,
}

impl Follow {
    /// The next piece of text; `None` at the end.
    async fn next_chunk(&mut self) -> Option<axum::body::Bytes> {
        loop {
            let files = std::mem::take(&mut self.files);
            let (files, chunk) = tokio::task::spawn_blocking(move || {
                let mut files = files;
                let chunk = read_some(&mut files);
                (files, chunk)
            })
            .await
            .ok()?;
            self.files = files;
            if let Some(chunk) = chunk {
                return Some(chunk.into());
            }
            let run = self.run?;
            if self.idle_after_end {
                return None;
            }
            // The run ends with its tree: leftovers still being stopped may
            // still write.
            let ended = match self.sup.run_state(&self.id) {
                Ok((now, state)) => {
                    now != run
                        || matches!(
                            state,
                            corral_core::AgentState::Ended | corral_core::AgentState::Backoff
                        )
                }
                Err(_) => true,
            };
            if ended {
                // One more read: what was written just before the end.
                self.idle_after_end = true;
                continue;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Up to one chunk of new text from the first file that has some.
fn read_some(files: &mut [Open]) -> Option<Vec<u8>> {
    for f in files.iter_mut() {
        let len = f.file.metadata().ok()?.len();
        if len < f.pos {
            f.pos = 0; // truncated (rotated)
        }
        if len > f.pos {
            let mut buf = vec![0u8; ((len - f.pos) as usize).min(CHUNK)];
            if f.file.seek(SeekFrom::Start(f.pos)).is_err() {
                continue;
            }
            if let Ok(n) = f.file.read(&mut buf) {
                buf.truncate(n);
                f.pos += n as u64;
                if n > 0 {
                    return Some(buf);
                }
            }
        }
    }
    None
}

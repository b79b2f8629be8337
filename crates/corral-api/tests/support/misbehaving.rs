//! A server on a Unix socket that answers every request badly, the way a
//! hostile or broken peer would, to test that clients bound what they accept.
//! Plain threads and std sockets: nothing of the client's own stack.
//!
//! Shared by corral-api's client tests and the CLI's (by `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server answers.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A 200 whose body never ends (no length: it runs until the client hangs up).
    Endless,
    /// A well-formed answer, one byte every `interval`: too long to ever finish here.
    Drip(Duration),
    /// Reads the request, then says nothing.
    Silent,
    /// A complete 200 `application/json` answer that is not JSON.
    NotJson,
    /// A complete 200 answer that is JSON of the wrong shape.
    WrongShape,
    /// An answer whose status line is not HTTP.
    BadStatus,
    /// A 500 whose body is not corral's error shape, long and full of control characters.
    UglyError,
    /// An event stream whose one line never ends.
    EndlessEvent,
}

pub const NOT_JSON: &str = "<html>corral? never heard of it</html>\n";

/// A running server; dropping it stops it, joins every thread it started and
/// removes its socket.
pub struct Misbehaving {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The request line of each request received.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Misbehaving {
    /// Serves `mode` on a new socket at `path`; with `health_ok`,
    /// `GET /v1/health` is answered properly (so a client that first checks
    /// for a daemon goes on to the request that misbehaves).
    pub fn start(path: &Path, mode: Mode, health_ok: bool) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handlers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let accept = {
            let (stop, handlers, requests) = (stop.clone(), handlers.clone(), requests.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (stop, requests) = (stop.clone(), requests.clone());
                    let handler =
                        std::thread::spawn(move || serve(conn, mode, health_ok, &stop, &requests));
                    handlers.lock().unwrap().push(handler);
                }
            })
        };
        Self {
            path: path.to_owned(),
            stop,
            accept: Some(accept),
            handlers,
            requests,
        }
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(accept) = self.accept.take() {
            accept.join().unwrap();
        }
        for handler in self.handlers.lock().unwrap().drain(..) {
            handler.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The request's head (and body, by its Content-Length), or `None` when the
/// peer left or the server is stopping.
fn read_request(conn: &mut UnixStream, stop: &AtomicBool) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let mut head_end = None;
    let mut want = usize::MAX;
    while data.len() < want {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return None,
        }
        if head_end.is_none()
            && let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            head_end = Some(i);
            let head = String::from_utf8_lossy(&data[..i]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            want = i + 4 + length;
        }
    }
    Some(String::from_utf8_lossy(&data[..head_end?]).into_owned())
}

/// Writes all of `bytes` unless the peer leaves or the server stops; false then.
fn write_all(conn: &mut UnixStream, mut bytes: &[u8], stop: &AtomicBool) -> bool {
    conn.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while !bytes.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match conn.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    true
}

fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    mut conn: UnixStream,
    mode: Mode,
    health_ok: bool,
    stop: &AtomicBool,
    requests: &Mutex<Vec<String>>,
) {
    let Some(head) = read_request(&mut conn, stop) else {
        return;
    };
    let line = head.lines().next().unwrap_or_default().to_owned();
    requests.lock().unwrap().push(line.clone());
    if health_ok && line.starts_with("GET /v1/health ") {
        write_all(
            &mut conn,
            answer("200 OK", "application/json", r#"{"ok":true}"#).as_bytes(),
            stop,
        );
        return;
    }
    match mode {
        Mode::Endless => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[";
            let chunk = b"0,".repeat(32 * 1024);
            if write_all(&mut conn, head, stop) {
                while write_all(&mut conn, &chunk, stop) {}
            }
        }
        Mode::EndlessEvent => {
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ";
            let chunk = b"x".repeat(64 * 1024);
            if write_all(&mut conn, head, stop) {
                while write_all(&mut conn, &chunk, stop) {}
            }
        }
        Mode::Drip(interval) => {
            let body = format!(r#"{{"agent_id":"{}"}}"#, "x".repeat(4096));
            for byte in answer("200 OK", "application/json", &body).bytes() {
                std::thread::sleep(interval);
                if !write_all(&mut conn, &[byte], stop) {
                    return;
                }
            }
        }
        Mode::Silent => {
            // Holds the connection open until the client leaves or the server stops.
            let mut buf = [0u8; 1024];
            conn.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                match conn.read(&mut buf) {
                    Ok(0) => return,
                    Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return;
                    }
                    _ => {}
                }
            }
        }
        Mode::NotJson => {
            write_all(
                &mut conn,
                answer("200 OK", "application/json", NOT_JSON).as_bytes(),
                stop,
            );
        }
        Mode::WrongShape => {
            write_all(
                &mut conn,
                answer("200 OK", "application/json", r#"["not", "a", "map"]"#).as_bytes(),
                stop,
            );
        }
        Mode::BadStatus => {
            write_all(&mut conn, b"SSH-2.0-OpenSSH_9.6\r\n\r\n", stop);
        }
        Mode::UglyError => {
            let body = format!("\x1b[2J\x1b[31mgateway exploded\r\n{}", "y".repeat(100_000));
            write_all(
                &mut conn,
                answer("500 Internal Server Error", "text/plain", &body).as_bytes(),
                stop,
            );
        }
    }
}

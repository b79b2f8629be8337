//! The client against servers that misbehave: endless answers, answers that
//! drip, answers that are not HTTP or not JSON. Each ends in the client's own
//! error, within its deadline, with bounded memory.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "support/misbehaving.rs"]
mod misbehaving;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_api::client::{ANSWER_LIMIT, EVENT_LIMIT, Method};
use corral_api::{Client, ClientError};
use misbehaving::{Misbehaving, Mode};

/// A private directory for one socket.
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("corral.sock");
    (dir, socket)
}

/// Time and result of `f`, which must end within `limit` (so a client that
/// hangs fails the test instead of hanging it).
async fn timed<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> (Duration, T) {
    let start = Instant::now();
    let out = tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("the call was still running after {limit:?}"));
    (start.elapsed(), out)
}

#[tokio::test]
async fn an_endless_answer_is_cut_at_the_limit() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::Endless, false);
    let client = Client::new(&socket);
    let (_, out) = timed(
        Duration::from_secs(30),
        client.get::<serde_json::Value>("/v1/agents"),
    )
    .await;
    let e = out.unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { limit, .. } if limit == ANSWER_LIMIT),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("the answer to GET /v1/agents") && text.contains("larger than 64 MiB"),
        "{text}"
    );
    drop(server);
}

#[tokio::test]
async fn a_declared_length_beyond_the_limit_is_refused_before_reading() {
    // Checked without a fake server of its own: the endless server declares
    // no length, so this one is a plain listener answering once.
    let (_dir, socket) = socket_dir();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n[")
            .unwrap();
        // Holds the connection until the client hangs up.
        let _ = conn.read(&mut buf);
    });
    let client = Client::new(&socket);
    let (took, out) = timed(
        Duration::from_secs(30),
        client.raw(Method::GET, "/v1/agents", None),
    )
    .await;
    assert!(matches!(out, Err(ClientError::TooLarge { .. })), "{out:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Joined off the runtime's thread, which must run to close the client's connection.
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dripping_answer_ends_at_the_deadline() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::Drip(Duration::from_millis(100)), false);
    let deadline = Duration::from_secs(1);
    let client = Client::new(&socket).with_timeout(deadline);
    let (took, out) = timed(
        Duration::from_secs(30),
        client.get::<serde_json::Value>("/v1/agents"),
    )
    .await;
    let e = out.unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { after, .. } if after == deadline),
        "{e:?}"
    );
    assert!(e.to_string().contains("GET /v1/agents"), "{e}");
    // Bytes kept arriving all along: only an overall deadline ends this.
    assert!(took >= deadline, "ended early: {took:?}");
    assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
    drop(server);
}

#[tokio::test]
async fn a_wait_gets_its_own_timeout_on_top_of_the_deadline() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::Silent, false);
    let client = Client::new(&socket).with_timeout(Duration::from_millis(500));
    let (took, out) = timed(
        Duration::from_secs(30),
        client.get::<serde_json::Value>("/v1/agents/a/wait?timeout_s=1"),
    )
    .await;
    let e = out.unwrap_err();
    let expected = Duration::from_millis(1500);
    assert!(
        matches!(e, ClientError::Timeout { after, .. } if after == expected),
        "{e:?}"
    );
    assert!(took >= expected, "ended before the wait could: {took:?}");
    assert!(took < expected + Duration::from_secs(2), "took {took:?}");
    drop(server);
}

#[tokio::test]
async fn an_answer_that_is_not_json_names_what_was_expected() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::NotJson, false);
    let client = Client::new(&socket);
    let e = client
        .get::<BTreeMap<String, serde_json::Value>>("/v1/agents")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Decode(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("GET /v1/agents: expected JSON for BTreeMap<String, Value>")
            && text.contains("<html>corral?"),
        "{text}"
    );
    drop(server);
}

#[tokio::test]
async fn json_of_the_wrong_shape_names_what_was_expected() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::WrongShape, false);
    let client = Client::new(&socket);
    let e = client
        .get::<BTreeMap<String, serde_json::Value>>("/v1/agents")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, ClientError::Decode(_))
            && text.contains("GET /v1/agents: expected JSON for BTreeMap<String, Value>")
            && text.contains("expected a map"),
        "{text}"
    );
    drop(server);
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_decode_error() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::BadStatus, false);
    let client = Client::new(&socket);
    let e = client
        .raw(Method::GET, "/v1/health", None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Decode(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("GET /v1/health: expected an HTTP/1.1 answer"),
        "{e}"
    );
    drop(server);
}

#[tokio::test]
async fn an_error_answer_not_in_corrals_shape_is_short_and_escaped() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::UglyError, false);
    let client = Client::new(&socket);
    let e = client
        .get::<serde_json::Value>("/v1/agents")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ClientError::Api { status: 500, .. }), "{e:?}");
    assert!(text.starts_with("HTTP 500"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
    assert!(text.len() < 1000, "{} bytes", text.len());
    drop(server);
}

#[tokio::test]
async fn a_stream_is_not_cut_at_the_answer_limit() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::Endless, false);
    let client = Client::new(&socket);
    let mut got = 0usize;
    let out = client
        .stream("/v1/agents/a/logs?follow=true", |chunk| {
            got += chunk.len();
            got <= 2 * ANSWER_LIMIT
        })
        .await;
    assert!(out.is_ok(), "{out:?}");
    assert!(got > 2 * ANSWER_LIMIT, "{got}");
    drop(server);
}

#[tokio::test]
async fn an_endless_event_is_cut_at_the_event_limit() {
    let (_dir, socket) = socket_dir();
    let server = Misbehaving::start(&socket, Mode::EndlessEvent, false);
    let client = Client::new(&socket);
    let mut events = 0;
    let (_, out) = timed(
        Duration::from_secs(30),
        client.sse("/v1/events?follow=true", |_| {
            events += 1;
            true
        }),
    )
    .await;
    let e = out.unwrap_err();
    assert!(
        matches!(e, ClientError::TooLarge { limit, .. } if limit == EVENT_LIMIT),
        "{e:?}"
    );
    assert!(e.to_string().contains("an event of GET /v1/events"), "{e}");
    assert_eq!(events, 0);
    drop(server);
}

#[tokio::test]
async fn events_split_inside_a_character_arrive_whole() {
    let (_dir, socket) = socket_dir();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        // "data: é\n\n" with the é's two bytes in two chunks, flushed apart.
        let event = "data: \"é\"\n\n".as_bytes();
        let cut = event.iter().position(|b| *b == 0xc3).unwrap() + 1;
        for part in [&event[..cut], &event[cut..]] {
            conn.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .unwrap();
            conn.write_all(part).unwrap();
            conn.write_all(b"\r\n").unwrap();
            conn.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        conn.write_all(b"0\r\n\r\n").unwrap();
    });
    let client = Client::new(&socket);
    let mut seen = Vec::new();
    client
        .sse("/v1/events?follow=false", |data| {
            seen.push(data.to_owned());
            true
        })
        .await
        .unwrap();
    assert_eq!(seen, vec!["\"é\"".to_owned()]);
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
}

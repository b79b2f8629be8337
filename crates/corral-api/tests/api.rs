//! The HTTP API over a real Unix socket: error shapes for bad input, and a
//! daemon that keeps serving (with its store untouched) after each of them.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use corral_api::Client;
use corral_api::client::{Method, StatusCode};
use corral_api::serve::Limits;
use corral_core::{CleanupOptions, Config, Supervisor};
use serde_json::{Value, json};

struct Api {
    client: Client,
    sup: Supervisor,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut config = Config::new(&state);
        config.sample_interval = Duration::from_millis(200);
        let sup = Supervisor::open(config).await.unwrap();
        let socket = state.join("corral.sock");
        let listener = corral_api::daemon::bind_socket(&socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(corral_api::serve::serve(
            listener,
            corral_api::router(sup.clone()),
            Limits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            client: Client::new(socket),
            sup,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    async fn send(&self, method: Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        let (status, bytes) = self
            .client
            .raw(method, path, Some(body.to_vec()))
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn finish(mut self) {
        let pids: Vec<i64> = self
            .sup
            .monitor_all_agents()
            .values()
            .filter_map(|s| s.pid.map(i64::from))
            .collect();
        self.sup
            .cleanup(
                None,
                CleanupOptions {
                    force: true,
                    stop_timeouts: None,
                },
            )
            .await
            .unwrap();
        for pid in pids.into_iter().filter(|p| *p > 0) {
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                assert!(std::time::Instant::now() < end, "pid {pid} left behind");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

fn assert_error(resp: &(StatusCode, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(resp.0.as_u16(), status, "{:?}", resp.1);
    assert_eq!(resp.1["error"]["code"], code, "{:?}", resp.1);
    let message = resp.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_one_error_shape_and_the_daemon_keeps_serving() {
    let api = Api::start().await;
    let post = |body: &'static [u8]| api.send(Method::POST, "/v1/agents", body);

    assert_error(
        &post(b"{not json").await,
        400,
        "invalid",
        "invalid JSON body",
    );
    assert_error(&post(b"").await, 400, "invalid", "body is empty");
    assert_error(
        &post(br#"{"agent_id": "a", "command": "sleep 1"}"#).await,
        400,
        "invalid",
        "invalid type",
    );
    assert_error(
        &post(br#"{"agent_id": "a", "command": ["sleep"], "colour": 1}"#).await,
        400,
        "invalid",
        "unknown field",
    );
    assert_error(
        &post(br#"{"agent_id": "a", "command": []}"#).await,
        400,
        "invalid",
        "empty command",
    );
    assert_error(
        &post(br#"{"agent_id": "../x", "command": ["true"]}"#).await,
        400,
        "invalid",
        "invalid agent id",
    );
    assert_error(
        &post(br#"{"agent_id": "a", "command": ["/no/such/bin"]}"#).await,
        422,
        "spawn_failed",
        "No such file or directory",
    );
    let huge = format!(
        r#"{{"agent_id": "a", "command": ["{}"]}}"#,
        "x".repeat(2 << 20)
    );
    let resp = api.send(Method::POST, "/v1/agents", huge.as_bytes()).await;
    assert_error(&resp, 413, "payload_too_large", "larger than");
    assert_error(
        &api.send(Method::GET, "/v1/agents/nobody", b"").await,
        404,
        "not_found",
        "agent nobody not found",
    );
    assert_error(
        &api.send(Method::GET, "/v1/nowhere", b"").await,
        404,
        "not_found",
        "no such route",
    );
    assert_error(
        &api.send(Method::POST, "/v1/stop", b"{}").await,
        400,
        "invalid",
        "say which agents",
    );

    // Still serving, and only the one attempt that reached the OS is on record.
    let all: Value = api.client.get("/v1/agents").await.unwrap();
    assert_eq!(all.as_object().unwrap().keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(all["a"]["persistent_status"], "failed");
    let body = json!({"agent_id": "ok", "command": ["sleep", "30"]});
    let created: Value = api
        .client
        .call(Method::POST, "/v1/agents", Some(&body))
        .await
        .unwrap();
    assert_eq!(created["status"], "running");
    let conflict = api
        .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
        .await;
    assert_error(&conflict, 409, "conflict", "is still running");
    api.finish().await;
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The properties of a schema in the document, sorted.
fn schema_fields(doc: &Value, name: &str) -> Vec<String> {
    keys(&doc["components"]["schemas"][name]["properties"])
}

#[tokio::test]
async fn the_openapi_document_is_generated_from_the_routes_and_the_types() {
    let api = Api::start().await;
    let doc: Value = api.client.get("/v1/openapi.json").await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let body = json!({"agent_id": "doc", "command": ["sleep", "30"], "verify_ms": 0,
                      "labels": {"k": "v"}});
    let spawned: Value = api
        .client
        .call(Method::POST, "/v1/agents", Some(&body))
        .await
        .unwrap();
    // Field by field: what the daemon answers is what the document describes.
    let status: Value = api.client.get("/v1/agents/doc").await.unwrap();
    assert_eq!(schema_fields(&doc, "AgentStatus"), keys(&status));
    for k in keys(&spawned) {
        assert!(
            schema_fields(&doc, "SpawnResponse").contains(&k),
            "{k} undocumented"
        );
    }
    let summary: Value = api.client.get("/v1/summary").await.unwrap();
    assert_eq!(schema_fields(&doc, "ProcessSummary"), keys(&summary));
    // The listing's query parameters are documented.
    let params: Vec<&str> = doc["paths"]["/v1/agents"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        ["selector", "state", "label", "node", "fields"],
        "{params:?}"
    );
    // Every request field the type has is documented (a full request round-trips).
    let full: corral_core::SpawnRequest = serde_json::from_value(json!({
        "agent_id": "x", "command": ["x"], "cwd": "/", "env": {"A": "1"}, "inherit_env": false, "agent_dir": "/tmp",
        "labels": {"a": "b"}, "stop_timeouts": [1, 1, 1], "verify_ms": 1,
        "restart": {"policy": "always"}, "max_runtime_s": 1, "limits": {"memory_mb": 1},
        "probes": {"liveness": {"tcp": "127.0.0.1:1"}}, "user": "nobody",
        "logs": {"max_mb": 1}, "placement": {"slurm": {}}
    }))
    .unwrap();
    assert_eq!(
        schema_fields(&doc, "SpawnRequest"),
        keys(&serde_json::to_value(&full).unwrap())
    );
    // Every documented route is routed and answers (with a real id where one is needed).
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
        {
            documented += 1;
            let path = path.replace("{id}", "doc");
            let path = match path.as_str() {
                "/v1/events" => "/v1/events?follow=false".to_owned(),
                "/v1/agents/doc/wait" => "/v1/agents/doc/wait?timeout_s=0".to_owned(),
                _ => path,
            };
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body: &[u8] = match (method.as_str(), path.as_str()) {
                ("put", _) => br#"{"progress": 10}"#,
                ("post", "/v1/stop") => br#"{"selector": "nobody.*"}"#,
                ("post", "/v1/agents/batch") => br#"{"agents": []}"#,
                _ => b"",
            };
            let (status, value) = api.send(m, &path, body).await;
            assert_ne!(status.as_u16(), 405, "{method} {path}");
            assert!(
                !(status.as_u16() == 404 && value["error"]["message"] == "no such route"),
                "{method} {path} is documented but not routed"
            );
        }
    }
    assert!(documented >= 19, "{documented} operations documented");
    api.finish().await;
}

#[tokio::test]
async fn every_route_works_over_the_socket() {
    let api = Api::start().await;
    let c = &api.client;
    let health: Value = c.get("/v1/health").await.unwrap();
    assert_eq!(health["ok"], true);
    let body = json!({
        "agent_id": "team.a", "command": ["sleep", "30"], "cwd": "/tmp", "env": {"X": "1"},
        "labels": {"k": "v"}, "stop_timeouts": [1, 1, 1], "verify_ms": 20
    });
    let (status, created) = api
        .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
        .await;
    assert_eq!(status.as_u16(), 201, "{created}");
    let pid = created["pid"].as_i64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.split(|b| *b == 0).any(|kv| kv == b"X=1"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/tmp")
    );
    let b = json!({"agent_id": "team.b", "command": ["sleep", "30"], "verify_ms": 0});
    let _: Value = c.call(Method::POST, "/v1/agents", Some(&b)).await.unwrap();
    let all: Value = c.get("/v1/agents").await.unwrap();
    assert_eq!(all.as_object().unwrap().len(), 2);
    let one: Value = c.get("/v1/agents/team.a").await.unwrap();
    assert_eq!(
        (one["pid"].as_i64(), one["labels"]["k"].as_str()),
        (Some(pid), Some("v"))
    );
    let h: Value = c.get("/v1/agents/team.a/health").await.unwrap();
    assert_eq!(
        h,
        json!({"agent_id": "team.a", "healthy": true, "health": "healthy"})
    );
    let p: Value = c
        .call(
            Method::PUT,
            "/v1/agents/team.a/progress",
            Some(&json!({"progress": 60, "message": "m"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (p["progress"].as_i64(), p["progress_message"].as_str()),
        (Some(60), Some("m"))
    );
    let sum: Value = c.get("/v1/summary").await.unwrap();
    assert_eq!(sum["running"], 2);
    let stop: Value = c
        .call(Method::POST, "/v1/agents/team.a/stop", Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(stop["stage"], "term");
    let kill: Value = c
        .call(
            Method::POST,
            "/v1/agents/team.b/kill",
            Some(&json!({"force": true})),
        )
        .await
        .unwrap();
    assert_eq!(kill["killed"], true);
    let many: Value = c
        .call(
            Method::POST,
            "/v1/stop",
            Some(&json!({"selector": "team.*"})),
        )
        .await
        .unwrap();
    assert!(
        many.as_array()
            .unwrap()
            .iter()
            .all(|r| r["stage"] == "already_ended")
    );
    let reaped: Value = c.call(Method::POST, "/v1/reap", None::<&()>).await.unwrap();
    assert_eq!(reaped, json!([]));
    let removed: Value = c
        .call(Method::DELETE, "/v1/agents/team.a", None::<&()>)
        .await
        .unwrap();
    assert_eq!(removed["removed"], json!(["team.a"]));
    let pruned: Value = c
        .call(Method::POST, "/v1/prune", None::<&()>)
        .await
        .unwrap();
    assert_eq!(pruned["removed"], json!(["team.b"]));
    let mut kinds = Vec::new();
    c.sse("/v1/events?follow=false", |data| {
        let ev: Value = serde_json::from_str(data).unwrap();
        kinds.push(ev["kind"].as_str().unwrap().to_owned());
        true
    })
    .await
    .unwrap();
    for kind in ["state", "progress", "stop_stage"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} event in {kinds:?}"
        );
    }
    api.finish().await;
}

#[tokio::test]
async fn junk_on_the_socket_leaves_the_daemon_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await;
    for junk in [
        &b"\x00\xff\xfe garbage \r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/agents HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
    ] {
        let mut s = tokio::net::UnixStream::connect(api.client.socket())
            .await
            .unwrap();
        let _ = s.write_all(junk).await;
        let _ = s.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    }
    let health: Value = api.client.get("/v1/health").await.unwrap();
    assert_eq!(health["ok"], true);
    assert!(
        api.sup.monitor_all_agents().is_empty(),
        "nothing was spawned by junk"
    );
    api.finish().await;
}

#[tokio::test]
async fn tcp_serving_requires_the_bearer_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = "0123456789abcdef0123456789abcdef".to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = corral_api::router(api.sup.clone()).layer(axum::middleware::from_fn_with_state(
        std::sync::Arc::new(corral_api::auth::TokenGate::new(token.clone())),
        corral_api::auth::require_token,
    ));
    let server = tokio::spawn(corral_api::serve::serve(
        listener,
        app,
        Limits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let get = |auth: Option<String>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let header = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req =
            format!("GET /v1/summary HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(get(None).await.starts_with("HTTP/1.1 401"));
    assert!(
        get(Some("Bearer wrong-token-wrong-token-xx".into()))
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        get(Some(format!("Basic {token}")))
            .await
            .starts_with("HTTP/1.1 401")
    );
    let ok = get(Some(format!("Bearer {token}"))).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"total\""));
    // RFC 9110: the scheme is case-insensitive.
    let lower = get(Some(format!("bearer {token}"))).await;
    assert!(lower.starts_with("HTTP/1.1 200"), "{lower}");
    let unauthorized = get(None).await;
    assert!(
        unauthorized.contains("\"code\":\"unauthorized\""),
        "{unauthorized}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    api.finish().await;
}

#[tokio::test]
async fn an_event_client_that_resumes_with_since_gets_every_event_exactly_once() {
    let api = Api::start().await;
    let spawn = |id: String| {
        let c = api.client.clone();
        async move {
            let b = json!({"agent_id": id, "command": ["true"], "verify_ms": 0});
            let _: Value = c.call(Method::POST, "/v1/agents", Some(&b)).await.unwrap();
        }
    };
    for i in 0..5 {
        spawn(format!("first{i}")).await;
    }
    // Read three events, then drop the connection.
    let mut seen: Vec<i64> = Vec::new();
    api.client
        .sse("/v1/events", |data| {
            seen.push(
                serde_json::from_str::<Value>(data).unwrap()["seq"]
                    .as_i64()
                    .unwrap(),
            );
            seen.len() < 3
        })
        .await
        .unwrap();
    // More events happen while disconnected.
    for i in 0..5 {
        spawn(format!("second{i}")).await;
    }
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while api
        .sup
        .monitor_all_agents()
        .values()
        .any(|s| s.persistent_status.is_live())
    {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = *seen.last().unwrap();
    api.client
        .sse(&format!("/v1/events?since={last}&follow=false"), |data| {
            seen.push(
                serde_json::from_str::<Value>(data).unwrap()["seq"]
                    .as_i64()
                    .unwrap(),
            );
            true
        })
        .await
        .unwrap();
    let expected: Vec<i64> = (1..=*seen.last().unwrap()).collect();
    assert_eq!(seen, expected, "every event once, in order");
    assert!(
        seen.len() >= 30,
        "10 agents × (spawning, pid, end): {}",
        seen.len()
    );
    api.finish().await;
}

/// Sends raw bytes on a fresh connection and reads the whole answer.
async fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a raw HTTP answer.
fn json_body(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or(("", ""));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

#[tokio::test]
async fn every_error_has_the_json_shape_even_protocol_ones() {
    let api = Api::start().await;
    let socket = api.client.socket().to_owned();
    // A path segment that is not UTF-8.
    let bad = raw_exchange(
        &socket,
        b"GET /v1/agents/%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert_eq!(json_body(&bad)["error"]["code"], "invalid");
    // A URI over hyper's limit.
    let long = format!(
        "GET /v1/agents/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let long = raw_exchange(&socket, long.as_bytes()).await;
    assert!(
        long.starts_with("HTTP/1.1 414"),
        "{}",
        &long[..100.min(long.len())]
    );
    assert_eq!(json_body(&long)["error"]["code"], "uri_too_long");
    // 5000 headers.
    let headers: String = (0..5000).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = raw_exchange(
        &socket,
        format!("GET /v1/agents HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes(),
    )
    .await;
    assert!(
        many.starts_with("HTTP/1.1 431"),
        "{}",
        &many[..100.min(many.len())]
    );
    assert_eq!(json_body(&many)["error"]["code"], "headers_too_large");
    // Garbage.
    let junk = raw_exchange(&socket, b"GARBAGE\r\n\r\n").await;
    assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
    assert_eq!(json_body(&junk)["error"]["code"], "invalid");
    // A bad query.
    let (status, v) = api.send(Method::GET, "/v1/events?since=abc", b"").await;
    assert_eq!(status.as_u16(), 400);
    assert_eq!(v["error"]["code"], "invalid");
    // Still serving.
    let health: Value = api.client.get("/v1/health").await.unwrap();
    assert_eq!(health["ok"], true);
    api.finish().await;
}

#[tokio::test]
async fn huge_ids_and_labels_are_refused_without_being_echoed() {
    let api = Api::start().await;
    let huge_id = "x".repeat(900_000);
    let body = json!({"agent_id": huge_id, "command": ["true"]}).to_string();
    let (status, v) = api.send(Method::POST, "/v1/agents", body.as_bytes()).await;
    assert_eq!(status.as_u16(), 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.len() < 400, "echoed {} bytes", message.len());
    let body = json!({"agent_id": "a", "command": ["true"], "labels": {"k": "v".repeat(900_000)}});
    let (status, v) = api
        .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
        .await;
    assert_eq!(status.as_u16(), 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("labels") && message.contains("1024"),
        "{message}"
    );
    assert!(message.len() < 400);
    assert!(api.sup.monitor_all_agents().is_empty(), "nothing recorded");
    api.finish().await;
}

#[tokio::test]
async fn bad_agent_dirs_are_client_errors_naming_the_field() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let cases = [
        (json!("/tmp/a\u{0}b"), 400, "agent_dir contains a NUL byte"),
        (
            json!("/proc/self"),
            400,
            "agent_dir must not be under /proc",
        ),
        (json!(file), 422, "agent_dir"),
    ];
    for (i, (agent_dir, code, needle)) in cases.into_iter().enumerate() {
        let body =
            json!({"agent_id": format!("d{i}"), "command": ["true"], "agent_dir": agent_dir});
        let resp = api
            .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
            .await;
        assert_eq!(resp.0.as_u16(), code, "{agent_dir}: {}", resp.1);
        let message = resp.1["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    api.finish().await;
}

#[tokio::test]
async fn a_fifo_at_a_log_path_is_an_error_and_never_a_hang() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mkfifo = |path: &std::path::Path| {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    // A FIFO planted where the next run's log goes is set aside with its run
    // dir, never opened: the spawn answers at once.
    let planted = dir.path().join("runs/1");
    std::fs::create_dir_all(&planted).unwrap();
    mkfifo(&planted.join("stdout.log"));
    let body = json!({"agent_id": "j0", "command": ["true"], "agent_dir": dir.path()});
    let began = std::time::Instant::now();
    let resp = api
        .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
        .await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(resp.0.as_u16(), 201, "{}", resp.1);
    let log = std::path::PathBuf::from(resp.1["stdout_log"].as_str().unwrap());
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file());
    let aside: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("1.old-"))
        .collect();
    assert_eq!(aside.len(), 1, "the planted run dir is set aside");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(aside[0].path().join("stdout.log"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A FIFO swapped in for a log after the run started: reading it is an
    // error at once, never a hang.
    std::fs::remove_file(&log).unwrap();
    mkfifo(&log);
    let began = std::time::Instant::now();
    let (status, body) = api
        .client
        .raw(Method::GET, "/v1/agents/j0/logs", None)
        .await
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(status.as_u16(), 404, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The daemon answers at once.
    let began = std::time::Instant::now();
    let all: Value = api.client.get("/v1/agents").await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(1));
    assert!(all.get("j0").is_some());
    api.finish().await;
}

/// Polls `GET /v1/agents/{id}` until `state` is `want`.
async fn wait_state(api: &Api, id: &str, want: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s: Value = api.client.get(&format!("/v1/agents/{id}")).await.unwrap();
        if s["state"] == want {
            return;
        }
        assert!(std::time::Instant::now() < end, "{id} never {want}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The ids of a listing answer, sorted.
async fn listed(api: &Api, query: &str) -> Vec<String> {
    let (status, v) = api
        .send(Method::GET, &format!("/v1/agents{query}"), b"")
        .await;
    assert_eq!(status.as_u16(), 200, "{query}: {v}");
    keys(&v)
}

#[tokio::test]
async fn the_listing_filters_in_the_daemon_and_writes_only_the_fields_asked_for() {
    let api = Api::start().await;
    let agent = |id: &str, labels: Value| json!({"agent_id": id, "command": ["sleep", "60"], "verify_ms": 0, "labels": labels});
    // More agents than one chunk of the streamed listing holds.
    let mut agents: Vec<Value> = (0..70)
        .map(|i| agent(&format!("many.{i}"), json!({"team": "many"})))
        .collect();
    agents.push(agent("lt.a", json!({"team": "x", "tier": "1"})));
    agents.push(agent("lt.a.1", json!({"team": "x"})));
    agents.push(agent("lt.b", json!({"team": "y", "tier": "1"})));
    agents.push(agent("other", json!({})));
    agents.push(json!({"agent_id": "done", "command": ["true"], "verify_ms": 0}));
    let batch: Value = api
        .client
        .call(
            Method::POST,
            "/v1/agents/batch",
            Some(&json!({"agents": agents})),
        )
        .await
        .unwrap();
    for r in batch["results"].as_array().unwrap() {
        assert!(r["error"].is_null(), "{r}");
    }
    wait_state(&api, "done", "ended").await;
    for id in ["lt.a", "lt.a.1", "lt.b", "other"] {
        wait_state(&api, id, "running").await;
    }

    // Without parameters: every agent, whole, in one JSON object (that it is
    // byte for byte a map's JSON is `listing`'s unit test: serde_json reads
    // floats back to within a unit in the last place, so not here).
    let (status, body) = api
        .client
        .raw(Method::GET, "/v1/agents", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let all: std::collections::BTreeMap<String, corral_core::AgentStatus> =
        serde_json::from_slice(&body).unwrap();
    assert_eq!(all.len(), 75);
    assert!(all.contains_key("many.69") && all.contains_key("done"));
    let whole: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        keys(&whole["lt.a"]),
        keys(&serde_json::to_value(&all["lt.a"]).unwrap())
    );
    // Streamed: no Content-Length, chunked.
    let answer = raw_exchange(
        api.client.socket(),
        b"GET /v1/agents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = answer
        .split_once("\r\n\r\n")
        .unwrap()
        .0
        .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");

    // Filters, alone and together.
    assert_eq!(
        listed(&api, "?selector=lt.*").await,
        ["lt.a", "lt.a.1", "lt.b"]
    );
    assert_eq!(listed(&api, "?selector=lt.a").await, ["lt.a"]);
    assert_eq!(listed(&api, "?selector=lt.a.*").await, ["lt.a", "lt.a.1"]);
    assert_eq!(listed(&api, "?state=ended").await, ["done"]);
    assert_eq!(listed(&api, "?state=running,ended").await.len(), 75);
    assert_eq!(listed(&api, "?label=team%3Dx").await, ["lt.a", "lt.a.1"]);
    assert_eq!(
        listed(&api, "?label=team%3Dx&label=tier%3D1").await,
        ["lt.a"]
    );
    assert_eq!(listed(&api, "?label=team%3Dx,tier%3D1").await, ["lt.a"]);
    assert_eq!(
        listed(&api, "?label=tier%3D1&selector=lt.*").await,
        ["lt.a", "lt.b"]
    );
    assert_eq!(
        listed(&api, "?selector=nobody.*").await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(&api, "?state=paused&selector=lt.*").await,
        Vec::<String>::new()
    );

    // Fields: only those keys (and agent_id), with the values the whole status has.
    let (status, picked) = api
        .send(Method::GET, "/v1/agents?fields=state,progress,labels", b"")
        .await;
    assert_eq!(status.as_u16(), 200, "{picked}");
    assert_eq!(picked.as_object().unwrap().len(), 75);
    for (id, s) in picked.as_object().unwrap() {
        assert_eq!(keys(s), ["agent_id", "labels", "progress", "state"], "{s}");
        assert_eq!(s["agent_id"], id.as_str());
        assert_eq!(s["state"], all[id].state.as_str());
        assert_eq!(s["labels"], json!(all[id].labels));
    }
    // Every other field, asked for alone or with a live one (only the asked
    // fields are built), says what the whole status says.
    for (field, live) in [
        ("cmdline", "health"),
        ("stdout_log", "process_alive"),
        ("restart_policy", "is_zombie"),
        ("stop_timeouts", "process_status"),
        ("containment", "health"),
        ("run", "process_alive"),
    ] {
        for query in [field.to_owned(), format!("{field},{live}")] {
            let (status, picked) = api
                .send(Method::GET, &format!("/v1/agents?fields={query}"), b"")
                .await;
            assert_eq!(status.as_u16(), 200, "{picked}");
            for (id, s) in picked.as_object().unwrap() {
                let whole = serde_json::to_value(&all[id]).unwrap();
                assert_eq!(s[field], whole[field], "{id} {query}");
                if query.contains(',') {
                    assert_eq!(s[live], whole[live], "{id} {query}");
                }
            }
        }
    }
    let (_, only_ids) = api
        .send(Method::GET, "/v1/agents?fields=&selector=lt.b", b"")
        .await;
    assert_eq!(only_ids, json!({"lt.b": {"agent_id": "lt.b"}}));
    // The client lays the fields over a blank status.
    let q = corral_core::ListQuery {
        selector: Some("lt.*".into()),
        label: Some("tier=1".into()),
        fields: Some("state,labels".into()),
        ..Default::default()
    };
    let through_client = api.client.list_agents(&q).await.unwrap();
    assert_eq!(through_client.keys().collect::<Vec<_>>(), ["lt.a", "lt.b"]);
    assert_eq!(
        through_client["lt.b"].state,
        corral_core::AgentState::Running
    );
    assert_eq!(through_client["lt.b"].labels["team"], "y");

    // Bad parameters: 400 in the one error shape, naming what is wrong.
    let bad = api
        .send(Method::GET, "/v1/agents?fields=state,bogus", b"")
        .await;
    assert_error(&bad, 400, "invalid", "\"bogus\"");
    let bad = api.send(Method::GET, "/v1/agents?state=runing", b"").await;
    assert_error(&bad, 400, "invalid", "\"runing\"");
    let bad = api.send(Method::GET, "/v1/agents?label=team", b"").await;
    assert_error(&bad, 400, "invalid", "\"team\"");
    let bad = api
        .send(Method::GET, "/v1/agents?status=running", b"")
        .await;
    assert_error(&bad, 400, "invalid", "\"status\"");
    let bad = api.send(Method::GET, "/v1/agents?selector=*", b"").await;
    assert_error(&bad, 400, "invalid", "selector");
    api.finish().await;
}

#[tokio::test]
async fn metrics_follow_spawns_and_stops_at_once_between_samples() {
    let api = Api::start().await;
    let count = |text: &str, state: &str| -> u32 {
        let line = format!("corral_agents{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap()
            .parse()
            .unwrap()
    };
    let scrape = || async {
        let (status, body) = api.client.raw(Method::GET, "/metrics", None).await.unwrap();
        assert_eq!(status.as_u16(), 200);
        String::from_utf8(body.to_vec()).unwrap()
    };
    let before = scrape().await;
    assert_eq!(count(&before, "running"), 0);
    assert_eq!(scrape().await.lines().count(), before.lines().count());
    let _: Value = api
        .client
        .call(
            Method::POST,
            "/v1/agents",
            Some(&json!({"agent_id": "m", "command": ["sleep", "60"], "verify_ms": 0})),
        )
        .await
        .unwrap();
    wait_state(&api, "m", "running").await;
    // Whatever the sampler's timing: the spawn is in the very next scrape.
    let after = scrape().await;
    assert_eq!(count(&after, "running"), 1, "{after}");
    assert!(
        after.contains("corral_agent_up{agent_id=\"m\"} 1"),
        "{after}"
    );
    let _: Value = api
        .client
        .call(
            Method::POST,
            "/v1/agents/m/stop",
            Some(&json!({"force": true})),
        )
        .await
        .unwrap();
    let stopped = scrape().await;
    assert_eq!(count(&stopped, "running"), 0, "{stopped}");
    assert_eq!(count(&stopped, "ended"), 1, "{stopped}");
    assert!(
        stopped.contains("corral_agent_up{agent_id=\"m\"} 0"),
        "{stopped}"
    );
    api.finish().await;
}

#[tokio::test]
async fn pause_and_resume_take_one_of_agent_id_selector_or_all() {
    let api = Api::start().await;
    for id in ["pz.a", "pz.b"] {
        let body = json!({"agent_id": id, "command": ["sleep", "60"], "verify_ms": 0});
        let (status, v) = api
            .send(Method::POST, "/v1/agents", body.to_string().as_bytes())
            .await;
        assert_eq!(status.as_u16(), 201, "{v}");
    }
    let pause = |body: &'static [u8]| api.send(Method::POST, "/v1/pause", body);
    assert_error(&pause(b"").await, 400, "invalid", "expected a JSON object");
    assert_error(
        &pause(b"{}").await,
        400,
        "invalid",
        "say which agents to pause",
    );
    assert_error(
        &pause(br#"{"agent_id": "pz.a", "all": true}"#).await,
        400,
        "invalid",
        "not several",
    );
    assert_error(
        &pause(br#"{"agent": "pz.a"}"#).await,
        400,
        "invalid",
        "unknown field",
    );
    assert_error(
        &pause(br#"{"agent_id": "pz.none"}"#).await,
        404,
        "not_found",
        "pz.none",
    );
    assert_error(
        &pause(br#"{"selector": "pz"}"#).await,
        404,
        "not_found",
        "pz",
    );

    let (status, one) = pause(br#"{"agent_id": "pz.a"}"#).await;
    assert_eq!(status.as_u16(), 200, "{one}");
    assert_eq!(one[0]["outcome"], "paused", "{one}");
    assert_eq!(one[0]["state"], "paused", "{one}");
    let s: Value = api.client.get("/v1/agents/pz.a").await.unwrap();
    assert_eq!(
        (&s["state"], &s["health"]),
        (&json!("paused"), &json!("paused"))
    );
    let h: Value = api.client.get("/v1/agents/pz.a/health").await.unwrap();
    assert_eq!(h["healthy"], false, "{h}");
    assert_eq!(listed(&api, "?state=paused").await, ["pz.a"]);

    let (status, many) = pause(br#"{"selector": "pz.*"}"#).await;
    assert_eq!(status.as_u16(), 200, "{many}");
    let outcomes: Vec<&str> = many
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["already_paused", "paused"], "{many}");

    let (status, all) = api
        .send(Method::POST, "/v1/resume", br#"{"all": true}"#)
        .await;
    assert_eq!(status.as_u16(), 200, "{all}");
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "resumed")
    );
    wait_state(&api, "pz.b", "running").await;

    // An agent that has ended: a conflict naming its state.
    api.sup
        .kill_agent(&corral_core::AgentId::new("pz.b").unwrap(), true)
        .await
        .unwrap();
    assert_error(
        &pause(br#"{"agent_id": "pz.b"}"#).await,
        409,
        "conflict",
        "agent pz.b is ended: only a running agent can be paused",
    );
    api.finish().await;
}

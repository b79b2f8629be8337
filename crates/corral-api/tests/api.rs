//! The HTTP API over a real Unix socket: error shapes for bad input, and a
//! daemon that keeps serving (with its store untouched) after each of them.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use corral_api::Client;
use corral_api::client::{Method, StatusCode};
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
        let server = tokio::spawn(corral_api::server::serve(listener, sup.clone(), async {
            let _ = stopped.await;
        }));
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
            .map(|s| i64::from(s.pid))
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

//! The web dashboard's server side: one-time logins that become session
//! cookies, the loopback listener made at the first login and reused, the
//! CSRF defence on changes made with the cookie alone, `--listen` logins for
//! another machine, and the per-agent history route. (The page itself is
//! tested in a real browser: `scripts/ui-tests.sh`.)
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// An answer: status, head (lower-cased names), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection to `addr` (`host:port`), or to
/// a Unix socket when `addr` is a path.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        if addr.starts_with('/') {
            "localhost"
        } else {
            addr
        },
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut raw = Vec::new();
    if addr.starts_with('/') {
        let mut s = std::os::unix::net::UnixStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    } else {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.read_to_end(&mut raw).unwrap();
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `corral ui --no-open` (with `extra` options): its URL's `host:port` and path.
fn login(env: &Env, extra: &[&str]) -> (String, String) {
    let mut args = vec!["ui", "--no-open"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let rest = url.strip_prefix("http://").expect(&url);
    let (host, path) = rest.split_once('/').unwrap();
    assert!(path.starts_with("ui/login?code="), "{url}");
    (host.to_owned(), format!("/{path}"))
}

/// Visits a login; the `Cookie` header it sets, if it does.
fn redeem(host: &str, path: &str) -> (Answer, Option<String>) {
    let a = http(host, "GET", path, &[], "");
    let cookie = a
        .header("set-cookie")
        .map(|c| c.split(';').next().unwrap().to_owned());
    (a, cookie)
}

#[test]
fn a_login_is_good_once_and_its_loopback_listener_is_made_once() {
    let env = Env::new();
    let (host, path) = login(&env, &[]);
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    let (host2, path2) = login(&env, &[]);
    assert_eq!(host, host2, "the second login reuses the listener");
    assert_ne!(path, path2, "each login has its own code");
    // The daemon holds one listening TCP socket, on loopback.
    let port = host.rsplit(':').next().unwrap();
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_hex = format!(":{:04X}", port.parse::<u16>().unwrap());
    let lines: Vec<&str> = listening
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&port_hex))
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:"),
        "{lines:?}"
    );

    let (first, cookie) = redeem(&host, &path);
    assert_eq!(first.status, 303, "{}", first.head);
    assert_eq!(first.header("location").as_deref(), Some("/ui/"));
    let set = first.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = cookie.unwrap();
    assert!(
        cookie.starts_with(&format!("corral_ui_{port}=")),
        "{cookie}"
    );
    // The same code again (another browser): refused, and no cookie.
    let (again, none) = redeem(&host, &path);
    assert_eq!(again.status, 403);
    assert!(none.is_none());
    assert!(again.body.contains("used already or has expired"));
    // A made-up code, and none at all.
    assert_eq!(redeem(&host, "/ui/login?code=00").0.status, 403);
    assert_eq!(redeem(&host, "/ui/login").0.status, 403);

    // The cookie opens the API; nothing else does on this listener.
    let ok = http(&host, "GET", "/v1/agents", &[("Cookie", &cookie)], "");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.header("x-corral-event-seq").is_some());
    assert_eq!(http(&host, "GET", "/v1/agents", &[], "").status, 401);
    let forged = format!("corral_ui_{port}=deadbeef");
    assert_eq!(
        http(&host, "GET", "/v1/agents", &[("Cookie", &forged)], "").status,
        401
    );
    assert_eq!(
        http(
            &host,
            "GET",
            "/v1/agents",
            &[("Authorization", "Bearer 0123456789abcdef")],
            ""
        )
        .status,
        401,
        "the loopback listener has no token"
    );
    // The page is there, with its policy, for anyone (it holds no data).
    let page = http(&host, "GET", "/ui/", &[], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("app.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    for asset in ["/ui/app.js", "/ui/style.css"] {
        assert_eq!(http(&host, "GET", asset, &[], "").status, 200, "{asset}");
    }
    env.finish();
}

#[test]
fn a_change_with_the_cookie_alone_is_refused() {
    // Pauses by SIGSTOP, so /proc shows it (state T).
    let env = Env::without_cgroups();
    let out = env.run(&["spawn", "w", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = env.json(&["status", "w"])["pid"].as_i64().unwrap() as i32;
    let (host, path) = login(&env, &[]);
    let cookie = redeem(&host, &path).1.unwrap();
    let body = r#"{"agent_id": "w"}"#;
    let json = ("Content-Type", "application/json");
    // No header: a cross-site form could send this.
    let a = http(
        &host,
        "POST",
        "/v1/pause",
        &[("Cookie", &cookie), json],
        body,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "forbidden");
    assert!(a.body.contains("x-corral-ui"), "{}", a.body);
    // The header, but another site's origin.
    let a = http(
        &host,
        "POST",
        "/v1/pause",
        &[
            ("Cookie", &cookie),
            json,
            ("X-Corral-UI", "1"),
            ("Origin", "http://evil.example"),
        ],
        body,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_ne!(
        proc_stat(pid).unwrap()[0],
        "T",
        "a refused pause stopped the agent"
    );
    assert_eq!(env.json(&["status", "w"])["state"], "running");
    // As the page sends it: served.
    let origin = format!("http://{host}");
    let a = http(
        &host,
        "POST",
        "/v1/pause",
        &[
            ("Cookie", &cookie),
            json,
            ("X-Corral-UI", "1"),
            ("Origin", &origin),
        ],
        body,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    eventually(
        Duration::from_secs(10),
        "the agent stopped by SIGSTOP",
        || (proc_stat(pid)?[0] == "T").then_some(()),
    );
    env.finish();
}

#[test]
fn over_listen_a_login_is_minted_with_the_token_and_works_at_the_given_address() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = env
        .cmd(&[
            "daemon",
            "--listen",
            &addr,
            "--token-file",
            token.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the daemon answers", || {
        env.run(&["--no-autostart", "summary"])
            .status
            .success()
            .then_some(())
    });
    // As from another machine: through --url and the token.
    let out = env
        .cmd(&[
            "ui",
            "--no-open",
            "--url",
            &addr,
            "--token-file",
            token.to_str().unwrap(),
        ])
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let url = String::from_utf8(out.stdout).unwrap();
    let path = url
        .trim()
        .strip_prefix(&format!("http://{addr}"))
        .expect(&url)
        .to_owned();
    let cookie = redeem(&addr, &path).1.expect("a cookie");
    assert!(cookie.starts_with(&format!("corral_ui_{port}=")));
    assert_eq!(
        http(&addr, "GET", "/v1/summary", &[("Cookie", &cookie)], "").status,
        200
    );
    // The token still works alone, and a change with it needs no UI header.
    let bearer = ("Authorization", "Bearer 0123456789abcdef0123456789abcdef");
    assert_eq!(http(&addr, "GET", "/v1/summary", &[bearer], "").status, 200);
    assert_eq!(http(&addr, "POST", "/v1/reap", &[bearer], "").status, 200);
    // Neither: refused.
    assert_eq!(http(&addr, "GET", "/v1/summary", &[], "").status, 401);
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    let _ = daemon.try_wait();
    env.finish();
}

#[test]
fn the_history_answers_a_known_agents_recent_figures() {
    let env = Env::new();
    let out = env.run(&["spawn", "h", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let socket = env.state.join("corral.sock");
    let socket = socket.to_str().unwrap();
    let points = eventually(Duration::from_secs(20), "three points", || {
        let a = http(socket, "GET", "/v1/agents/h/history", &[], "");
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        assert_eq!(v["agent_id"], "h");
        assert_eq!(v["interval_s"], 1.0);
        let points = v["points"].as_array().unwrap().clone();
        (points.len() >= 3).then_some(points)
    });
    let ts: Vec<f64> = points.iter().map(|p| p["t"].as_f64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "oldest first: {ts:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ts.iter().all(|t| (now - 3600.0..now + 1.0).contains(t)),
        "{ts:?}"
    );
    // The tree's memory: a sleep holds some RSS, as /proc says.
    let pid = env.json(&["status", "h"])["pid"].as_i64().unwrap();
    let rss_kb: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let mb = points.last().unwrap()["memory_mb"].as_f64().unwrap();
    assert!(
        (mb - rss_kb / 1024.0).abs() < 2.0,
        "{mb} MiB against VmRSS {rss_kb} kB"
    );
    // `since` leaves out what came before.
    let since = ts[ts.len() - 2];
    let later = http(
        socket,
        "GET",
        &format!("/v1/agents/h/history?since={since}"),
        &[],
        "",
    )
    .json();
    let later_ts: Vec<f64> = later["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["t"].as_f64().unwrap())
        .collect();
    assert!(
        !later_ts.is_empty() && later_ts.iter().all(|t| *t > since),
        "{later_ts:?}"
    );
    // Bad input and unknown agents.
    let bad = http(socket, "GET", "/v1/agents/h/history?since=soon", &[], "");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad = http(socket, "GET", "/v1/agents/h/history?since=inf", &[], "");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let none = http(socket, "GET", "/v1/agents/nobody/history", &[], "");
    assert_eq!(none.status, 404, "{}", none.body);
    env.finish();
}

#[test]
fn an_agent_cannot_mint_a_login_but_reads_its_own_teams_history() {
    let env = Env::new();
    let corral = env!("CARGO_BIN_EXE_corral");
    let dir = env
        .dir
        .as_ref()
        .unwrap()
        .path()
        .to_str()
        .unwrap()
        .to_owned();
    // Inside agent `boss`: a login (refused), then its own history over its socket.
    let script = format!(
        r#"if "{corral}" ui --no-open >/dev/null 2>ui.err; then echo minted; else echo refused; fi > ui.out
python3 - <<'PY' > history.out
import http.client, json, os, socket
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(os.environ["CORRAL_SOCKET"])
for path in ("/v1/agents/boss/history", "/v1/agents/other/history"):
    c = C("localhost"); c.request("GET", path); print(c.getresponse().status)
PY
sleep 300"#
    );
    let out = env.run(&["spawn", "other", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["spawn", "boss", "--cwd", &dir, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let history = eventually(Duration::from_secs(20), "the agent's answers", || {
        let s = std::fs::read_to_string(format!("{dir}/history.out")).ok()?;
        (s.lines().count() == 2).then_some(s)
    });
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/ui.out"))
            .unwrap()
            .trim(),
        "refused"
    );
    let err = std::fs::read_to_string(format!("{dir}/ui.err")).unwrap();
    assert!(
        err.contains("may work only on agents under its own id"),
        "{err}"
    );
    assert_eq!(history.lines().collect::<Vec<_>>(), ["200", "403"]);
    env.finish();
}

/// The loopback listener takes connections from the daemon's user (and
/// root) only: another user's process that knows a login code (command
/// lines and cookies can leak on a shared host) is cut off unanswered, and
/// the code stays good for its owner. A HEAD (a link preview) spends nothing.
#[test]
fn another_users_process_cannot_use_the_loopback_listener() {
    require_root("the other user's process is made with setpriv");
    let env = Env::new();
    let (host, path) = login(&env, &[]);
    let script = format!(
        "import socket\ns = socket.create_connection(('{}', {}))\n\
         s.sendall(b'GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         s.settimeout(10)\ntry:\n    print(repr(s.recv(100)))\nexcept OSError as e:\n    print('refused', e)\n",
        host.split(':').next().unwrap(),
        host.split(':').nth(1).unwrap(),
    );
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("b''") || said.starts_with("refused"),
        "another user was answered: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = http(&host, "HEAD", &path, &[], "");
    assert_eq!(head.status, 200);
    assert!(head.header("set-cookie").is_none());
    let (a, cookie) = redeem(&host, &path);
    assert_eq!(a.status, 303, "{}", a.head);
    assert!(cookie.is_some());
    env.finish();
}

/// `corral ui` hands the browser a private file that redirects to the login,
/// never the URL itself (a command line is every local user's to read).
#[test]
fn the_browser_is_given_a_private_page_not_the_login_url() {
    let env = Env::new();
    let dir = env.dir.as_ref().unwrap().path().to_owned();
    let seen = dir.join("argv");
    let browser = dir.join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$@\" > {}\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env
        .cmd(&["ui"])
        .env("BROWSER", &browser)
        .env("XDG_RUNTIME_DIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let code = url.split("code=").nth(1).unwrap().to_owned();
    let argv = eventually(DEADLINE, "the browser to be started", || {
        std::fs::read_to_string(&seen).ok()
    });
    assert!(
        !argv.contains(&code),
        "the code is on a command line: {argv}"
    );
    let page = argv.trim().strip_prefix("file://").expect(&argv).to_owned();
    let meta = std::fs::metadata(&page).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&page).unwrap().contains(&url));
    std::fs::remove_file(&page).unwrap();
    env.finish();
}

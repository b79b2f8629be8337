//! Connection floods against a real daemon process: idle and half-sent
//! connections beyond a listener's cap must not lock clients out (the
//! longest-idle connection is closed for a newcomer), requests in progress are
//! never what gets closed, and an address that keeps failing the token check
//! is slowed down and logged while other addresses are not.
//!
//! Each test starts its own daemon with a small cap (`--max-connections 16`)
//! and a header timeout far longer than the test, so only eviction can let a
//! newcomer in.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CAP: usize = 16;
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// A newcomer must be answered this fast while the listener is flooded (the
/// old behaviour closed it at once; the header timeout is a minute here).
const PROMPT: Duration = Duration::from_secs(3);

/// Lifts this process's soft open-file limit to its hard one (a flood needs fds).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn daemon_log(env: &Env) -> String {
    std::fs::read_to_string(env.state.join("daemon.log")).unwrap_or_default()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A daemon in the foreground with a cap of [`CAP`] per listener, serving TCP
/// too when `port` is given; returns once it answers on the socket.
fn start_daemon(env: &Env, port: Option<u16>) -> Child {
    let token = env.dir.as_ref().unwrap().path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cap = CAP.to_string();
    let listen = port.map(|p| format!("127.0.0.1:{p}"));
    let mut args = vec![
        "--token-file",
        token.to_str().unwrap(),
        "daemon",
        "--max-connections",
        &cap,
        "--header-timeout-ms",
        "60000",
    ];
    if let Some(l) = &listen {
        args.extend(["--listen", l]);
    }
    let daemon = env
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.state.join("corral.sock");
    eventually(Duration::from_secs(10), "the daemon answers", || {
        UnixStream::connect(&sock)
            .ok()
            .map(|s| exchange(s, &get("/v1/health", None)))
            .filter(|a| a.starts_with("HTTP/1.1 200"))
    });
    daemon
}

fn stop_daemon(env: Env, daemon: Child) {
    kill_and_reap(daemon.id() as i32, libc::SIGTERM);
    env.finish();
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: corral\r\n{auth}Connection: close\r\n\r\n")
}

trait Stream: Read + Write {
    fn set_timeout(&self, t: Duration);
}
impl Stream for UnixStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
        self.set_write_timeout(Some(t)).unwrap();
    }
}
impl Stream for TcpStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
        self.set_write_timeout(Some(t)).unwrap();
    }
}

/// Sends `request` and reads the answer to its end; a failure is returned as
/// text (an answer never starts with it).
fn exchange(mut s: impl Stream, request: &str) -> String {
    s.set_timeout(Duration::from_secs(10));
    if let Err(e) = s.write_all(request.as_bytes()) {
        return format!("write failed: {e}");
    }
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) if answer.is_empty() => "closed without an answer".into(),
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) => format!(
            "read failed: {e} after {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
}

/// A health check on a new socket connection: its answer and how long it took.
fn unix_health(env: &Env) -> (String, Duration) {
    let t = Instant::now();
    let answer = match UnixStream::connect(env.state.join("corral.sock")) {
        Ok(s) => exchange(s, &get("/v1/health", None)),
        Err(e) => format!("connect failed: {e}"),
    };
    (answer, t.elapsed())
}

/// A TCP connection from `src` (any 127/8 address is this host) to `port`.
fn tcp_from(src: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until it
    // hands it to the TcpStream (or closes it on failure).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let from = sockaddr(SocketAddrV4::new(src, 0));
        let to = sockaddr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        if libc::bind(fd, (&raw const from).cast(), len) != 0
            || libc::connect(fd, (&raw const to).cast(), len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// A TCP request with `token` from `src`: its answer and how long it took.
fn tcp_get(src: Ipv4Addr, port: u16, path: &str, token: &str) -> (String, Duration) {
    let t = Instant::now();
    let answer = match tcp_from(src, port) {
        Ok(s) => exchange(s, &get(path, Some(token))),
        Err(e) => format!("connect failed: {e}"),
    };
    (answer, t.elapsed())
}

/// Bytes written on `fd` that its peer has not read yet.
fn unread_by_peer(fd: &impl AsRawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "ioctl(TIOCOUTQ)");
    n
}

/// Whether the daemon has closed its end of `s` (without waiting for it).
fn closed_by_daemon(s: &UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn unix_flood(env: &Env, n: usize) -> Vec<UnixStream> {
    let sock = env.state.join("corral.sock");
    (0..n)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect()
}

#[test]
fn an_idle_flood_on_the_socket_does_not_lock_out_a_health_check() {
    raise_nofile();
    let env = Env::new();
    let daemon = start_daemon(&env, None);
    let pid = daemon.id() as i32;
    let baseline = fd_count(pid);
    let mut flood = Vec::new();
    for round in 0..5 {
        // Ten times the cap, never a byte sent; the health check comes last.
        flood.extend(unix_flood(&env, 10 * CAP));
        let (answer, took) = unix_health(&env);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\":true"),
            "round {round}: a health check behind {} idle connections got {answer:?}",
            flood.len()
        );
        assert!(took < PROMPT, "round {round}: health answered in {took:?}");
    }
    // The daemon holds no more than its cap: the oldest idle connections were
    // closed to make room, the newest are still open.
    eventually(Duration::from_secs(5), "the flood held to the cap", || {
        (fd_count(pid) <= baseline + CAP + 2).then_some(())
    });
    eventually(
        Duration::from_secs(5),
        "the longest-idle one closed",
        || closed_by_daemon(&flood[0]).then_some(()),
    );
    assert!(
        !closed_by_daemon(flood.last().unwrap()),
        "the newest idle one was kept"
    );
    eventually(Duration::from_secs(5), "the eviction logged", || {
        daemon_log(&env)
            .contains("too many open connections: closed the longest-idle one")
            .then_some(())
    });
    drop(flood);
    stop_daemon(env, daemon);
}

#[test]
fn half_sent_requests_on_tcp_do_not_lock_out_a_client_with_the_token() {
    raise_nofile();
    let env = Env::new();
    let port = free_port();
    let daemon = start_daemon(&env, Some(port));
    let mut flood = Vec::new();
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for _ in 0..40 * CAP {
            let t = Instant::now();
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            slowest = slowest.max(t.elapsed());
            // A request head that never ends.
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost:");
            flood.push(s);
        }
        let (answer, took) = tcp_get(Ipv4Addr::LOCALHOST, port, "/v1/health", TOKEN);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\":true"),
            "round {round}: a client with the token behind {} half-sent requests got {answer:?}",
            flood.len()
        );
        assert!(took < PROMPT, "round {round}: answered in {took:?}");
    }
    // No connection waited out a dropped SYN (a 1 s retransmission): the
    // burst fit in the accept queue.
    assert!(
        slowest < Duration::from_millis(900),
        "a connect took {slowest:?}"
    );
    // The socket has its own cap and was never touched.
    let (answer, _) = unix_health(&env);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(flood);
    stop_daemon(env, daemon);
}

#[test]
fn a_flood_never_closes_a_long_poll_or_a_followed_log() {
    raise_nofile();
    let env = Env::new();
    let daemon = start_daemon(&env, None);
    let spawned = env.run(&["--no-autostart", "spawn", "sleeper", "--", "sleep", "60"]);
    assert!(spawned.status.success(), "{}", stderr(&spawned));
    let sock = env.state.join("corral.sock");
    // Both opened before the flood: the oldest connections, so the first to
    // go if requests in progress were not protected.
    let mut wait = UnixStream::connect(&sock).unwrap();
    wait.write_all(get("/v1/agents/sleeper/wait?timeout_s=60", None).as_bytes())
        .unwrap();
    let mut follow = UnixStream::connect(&sock).unwrap();
    follow
        .write_all(get("/v1/agents/sleeper/logs?follow=true", None).as_bytes())
        .unwrap();
    // The daemon has read the wait request (hyper reads a head and starts
    // answering it in one step) and has begun the followed log's answer.
    eventually(Duration::from_secs(10), "the wait request read", || {
        (unread_by_peer(&wait) == 0).then_some(())
    });
    follow.set_timeout(Duration::from_secs(10));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            follow.read(&mut byte).unwrap(),
            1,
            "follow closed: {head:?}"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");

    // Silent connections, then keep-alive ones that each completed a request
    // and idle: more than the cap of each, so both kinds are closed for room.
    let flood = unix_flood(&env, 20 * CAP);
    let kept: Vec<UnixStream> = (0..2 * CAP)
        .map(|_| keep_alive_after_one_request(env.state.join("corral.sock")))
        .collect();
    let (answer, took) = unix_health(&env);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < PROMPT, "health answered in {took:?}");
    eventually(Duration::from_secs(5), "idle connections closed", || {
        (closed_by_daemon(&flood[0]) && closed_by_daemon(&kept[0])).then_some(())
    });
    assert!(!closed_by_daemon(&wait), "the long poll was closed");
    assert!(!closed_by_daemon(&follow), "the followed log was closed");

    // Both end with their request, whole.
    let stopped = env.run(&["--no-autostart", "stop", "sleeper"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let waited = exchange(wait, "");
    assert!(
        waited.starts_with("HTTP/1.1 200") && waited.contains("\"agent_id\":\"sleeper\""),
        "{waited}"
    );
    let mut rest = Vec::new();
    follow.read_to_end(&mut rest).unwrap();
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "the followed log ended with its last chunk: {:?}",
        String::from_utf8_lossy(&rest)
    );
    drop((flood, kept));
    stop_daemon(env, daemon);
}

/// A socket connection that has completed one request and stays open, idle.
fn keep_alive_after_one_request(sock: std::path::PathBuf) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_timeout(Duration::from_secs(10));
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: corral\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if body.len() >= len {
                return s;
            }
        }
    }
}

#[test]
fn repeated_bad_tokens_are_slowed_down_and_logged_for_their_address_only() {
    let env = Env::new();
    let port = free_port();
    let daemon = start_daemon(&env, Some(port));
    let attacker = Ipv4Addr::LOCALHOST;
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let bad = "not-the-token-not-the-token-0000";
    let mut took = Vec::new();
    for _ in 0..7 {
        let (answer, t) = tcp_get(attacker, port, "/v1/summary", bad);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        took.push(t);
    }
    // The eighth waits its turn; meanwhile another address is served at once.
    let eighth = std::thread::spawn(move || tcp_get(attacker, port, "/v1/summary", bad));
    std::thread::sleep(Duration::from_millis(100));
    let (answer, t_ok) = tcp_get(other, port, "/v1/summary", TOKEN);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (answer, t_bad) = tcp_get(other, port, "/v1/summary", bad);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let (answer, t8) = eighth.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    took.push(t8);
    // Free at first, then growing: 100 ms after the third failure, doubling.
    assert!(took[0] < Duration::from_secs(1), "{took:?}");
    assert!(took[6] >= Duration::from_millis(700), "{took:?}");
    assert!(took[7] >= Duration::from_millis(1500), "{took:?}");
    assert!(took[7] > took[4] && took[6] > took[3], "{took:?}");
    assert!(
        t_ok < Duration::from_secs(1) && t_bad < Duration::from_secs(1),
        "another address waited: {t_ok:?}, {t_bad:?}"
    );
    // Logged, at most a line a second, with how many were left out.
    let lines = eventually(Duration::from_secs(5), "the refusals logged", || {
        let log = daemon_log(&env);
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("no valid bearer token"))
            .map(str::to_owned)
            .collect();
        lines
            .iter()
            .any(|l| l.contains("peer=127.0.0.1") && l.contains("failures=8"))
            .then_some(lines)
    });
    assert!(lines.len() < 9, "not rate-limited: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| !l.contains("skipped=0") && l.contains("skipped=")),
        "no count of left-out lines: {lines:#?}"
    );
    stop_daemon(env, daemon);
}

#[test]
fn requests_waiting_out_a_penalty_do_not_hold_the_listener_full() {
    raise_nofile();
    let env = Env::new();
    let port = free_port();
    let daemon = start_daemon(&env, Some(port));
    let attacker = Ipv4Addr::LOCALHOST;
    let bad = "not-the-token-not-the-token-0000";
    // Past the free failures: from now on each check from this address waits
    // its turn, 400 ms apart (so 25 fit in the 10 s queue).
    for _ in 0..5 {
        let (answer, _) = tcp_get(attacker, port, "/v1/summary", bad);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    // More whole requests than the cap, each queued behind the others (and
    // fewer than the queue holds, so none is refused at once).
    let mut queued = Vec::new();
    for _ in 0..CAP + 4 {
        let Ok(mut s) = tcp_from(attacker, port) else {
            continue;
        };
        let _ = s.write_all(get("/v1/summary", Some(bad)).as_bytes());
        queued.push(s);
    }
    // Every one the daemon still holds has been read (it waits its turn).
    let ports: Vec<u16> = queued
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    eventually(Duration::from_secs(10), "the queued requests read", || {
        (unread_by_daemon(port, &ports) == 0).then_some(())
    });
    let (answer, took) = tcp_get(Ipv4Addr::new(127, 0, 0, 2), port, "/v1/health", TOKEN);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "behind {} queued bad requests: {answer:?}",
        queued.len()
    );
    assert!(took < PROMPT, "answered in {took:?}");
    drop(queued);
    stop_daemon(env, daemon);
}

/// Bytes the daemon (listening on `port`) has received from these client
/// ports and not read yet, from the kernel's table of TCP sockets.
fn unread_by_daemon(port: u16, clients: &[u16]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (port_of(f[1]) == port && clients.contains(&port_of(f[2])))
                .then(|| u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap())
        })
        .sum()
}

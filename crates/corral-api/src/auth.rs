//! The bearer token on TCP, and what failing it costs.
//!
//! Every TCP request must carry `Authorization: Bearer <token>` (the scheme
//! matched case-insensitively, RFC 9110; the token compared in constant time).
//! A wrong or missing token gets a 401 that closes the connection, so each
//! further guess costs a new connection (and counts against the listener's
//! cap like any other, see [`crate::serve`]).
//!
//! **Failures are logged**, at most one line a second, each line with the
//! address, that address's failures, and how many refusals were left out
//! since the previous line: a brute force shows up in `daemon.log` without
//! filling it.
//!
//! **An address that keeps failing is slowed down.** [`TokenGate`] keeps, per
//! peer address (IPv6 by its /64, which one host usually holds whole), the
//! failures of the last [`FORGET_AFTER`] and the earliest time its next token
//! check may run. The first [`FREE_FAILURES`] failures cost nothing (a typo, a
//! stale token file); after that each check from the address waits its turn,
//! [`FIRST_PENALTY`] doubling with every failure up to [`MAX_PENALTY`], and
//! turns are taken one after another, so opening many connections does not
//! multiply the guesses: an address gets at most one check per penalty. A
//! request whose turn is more than [`MAX_QUEUE`] away is refused at once
//! without its token being looked at. The wait applies to every request from
//! that address — a right token included, since checking it early would let
//! parallel guesses through — but never to another address; while a request
//! waits its connection counts as idle, so waiting requests cannot hold a
//! listener full. The table is bounded ([`MAX_PEERS`]): when full, forgotten
//! entries go first, then the one whose last failure is oldest.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_core::ErrorCode;

use crate::error::ApiError;
use crate::serve::{Connection, Throttled};

/// Failures an address may make before its checks are slowed down.
pub const FREE_FAILURES: u32 = 2;
/// The wait after the first failure beyond the free ones; it doubles with each.
pub const FIRST_PENALTY: Duration = Duration::from_millis(100);
/// The longest wait between two token checks from one address.
pub const MAX_PENALTY: Duration = Duration::from_secs(5);
/// A request whose check would wait longer than this is refused unchecked.
pub const MAX_QUEUE: Duration = Duration::from_secs(10);
/// An address's failures are forgotten this long after its last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses with recent failures that are remembered at most.
pub const MAX_PEERS: usize = 4096;

/// One address's recent failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// The earliest time this address's next token check may run.
    next_check: Instant,
}

/// The wait between checks after `count` failures.
fn penalty(count: u32) -> Duration {
    let Some(beyond) = count.checked_sub(FREE_FAILURES).filter(|n| *n > 0) else {
        return Duration::ZERO;
    };
    FIRST_PENALTY
        .saturating_mul(1u32 << (beyond - 1).min(16))
        .min(MAX_PENALTY)
}

/// When a request's token may be checked.
#[derive(Debug, PartialEq)]
enum Turn {
    /// Now.
    Now,
    /// After this wait (the turn is reserved).
    After(Duration),
    /// Not within [`MAX_QUEUE`]: refuse without checking; the turn comes in this long.
    Refused(Duration),
}

/// The token, and the addresses that recently failed it.
pub struct TokenGate {
    token: String,
    peers: Mutex<HashMap<IpAddr, Failures>>,
    log: Throttled,
}

impl TokenGate {
    /// A gate for `token`, with no failures on record.
    pub fn new(token: String) -> Self {
        Self {
            token,
            peers: Mutex::new(HashMap::new()),
            log: Throttled::new(),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `peer`'s next turn to have its token checked.
    fn turn(&self, peer: IpAddr, now: Instant) -> Turn {
        let mut peers = self.peers();
        let Some(f) = peers.get_mut(&peer) else {
            return Turn::Now;
        };
        if now.saturating_duration_since(f.last) > FORGET_AFTER {
            peers.remove(&peer);
            return Turn::Now;
        }
        let at = f.next_check.max(now);
        let wait = at - now;
        if wait > MAX_QUEUE {
            return Turn::Refused(wait);
        }
        f.next_check = at + penalty(f.count);
        if wait.is_zero() {
            Turn::Now
        } else {
            Turn::After(wait)
        }
    }

    /// Records a failed check from `peer`; returns its failures so far.
    fn failed(&self, peer: IpAddr, now: Instant) -> u32 {
        let mut peers = self.peers();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, f| now.saturating_duration_since(f.last) <= FORGET_AFTER);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k)
            {
                peers.remove(&oldest);
            }
        }
        let f = peers.entry(peer).or_insert(Failures {
            count: 0,
            last: now,
            next_check: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.next_check = f.next_check.max(now + penalty(f.count));
        f.count
    }

    /// Whether `presented` is the token.
    fn matches(&self, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.token.as_bytes())
    }
}

/// The address failures are counted under: IPv4 as is, IPv6 by its /64.
fn peer_key(addr: SocketAddr) -> IpAddr {
    match addr.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A 401 that closes the connection.
pub(crate) fn unauthorized(message: String, retry_after: Option<Duration>) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(wait) = retry_after {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
    }
    response
}

/// `Authorization: Bearer <token>` on every TCP request, with failures logged
/// and an address that keeps failing slowed down (see the module docs).
pub async fn require_token(
    State(gate): State<Arc<TokenGate>>,
    req: Request,
    next: Next,
) -> Response {
    check_token(&gate, req, next).await
}

/// [`require_token`]'s check, for a layer that accepts other credentials too
/// (the dashboard's cookie, see [`crate::ui::tcp_auth`]).
pub(crate) async fn check_token(gate: &TokenGate, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| peer_key(*addr));
    if let Some(peer) = peer {
        match gate.turn(peer, Instant::now()) {
            Turn::Now => {}
            Turn::After(wait) => {
                let pause = tokio::time::sleep(wait);
                match req.extensions().get::<Connection>().cloned() {
                    Some(conn) => conn.idle_while(pause).await,
                    None => pause.await,
                }
            }
            Turn::Refused(wait) => {
                gate.log.hit(|skipped| {
                    tracing::warn!(
                        %peer,
                        retry_in_s = wait.as_secs(),
                        skipped,
                        "refused a TCP request unchecked: too many failed token checks from its address"
                    )
                });
                return unauthorized(
                    format!(
                        "too many failed token checks from {peer}; try again in {} s",
                        wait.as_secs().max(1)
                    ),
                    Some(wait),
                );
            }
        }
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    if presented.is_some_and(|t| gate.matches(t)) {
        return next.run(req).await;
    }
    let failures = peer.map(|p| gate.failed(p, Instant::now()));
    gate.log.hit(|skipped| {
        let peer = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::warn!(
            %peer,
            failures = failures.unwrap_or(1),
            skipped,
            "refused a TCP request: no valid bearer token"
        )
    });
    unauthorized(
        "a valid `Authorization: Bearer <token>` header is required".into(),
        None,
    )
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_penalty_starts_after_the_free_failures_doubles_and_is_bounded() {
        assert_eq!(penalty(0), Duration::ZERO);
        assert_eq!(penalty(FREE_FAILURES), Duration::ZERO);
        assert_eq!(penalty(FREE_FAILURES + 1), FIRST_PENALTY);
        assert_eq!(penalty(FREE_FAILURES + 2), FIRST_PENALTY * 2);
        assert_eq!(penalty(u32::MAX), MAX_PENALTY);
    }

    #[test]
    fn turns_from_one_address_are_rationed_and_others_are_untouched() {
        let gate = TokenGate::new("x".repeat(32));
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES + 4 {
            gate.failed(bad, t0);
        }
        // Parallel requests queue one penalty apart, then are refused.
        let mut waits = Vec::new();
        loop {
            match gate.turn(bad, t0) {
                Turn::After(w) => waits.push(w),
                Turn::Refused(w) => {
                    assert!(w > MAX_QUEUE);
                    break;
                }
                Turn::Now => panic!("a penalised address was let through at once"),
            }
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert_eq!(gate.turn(other, t0), Turn::Now);
        // Forgotten after a quiet while.
        assert_eq!(gate.turn(bad, t0 + FORGET_AFTER * 2), Turn::Now);
    }

    #[test]
    fn the_table_stays_bounded() {
        let gate = TokenGate::new("x".repeat(32));
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 100) {
            gate.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(gate.peers().len() <= MAX_PEERS);
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_v4_as_v4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:6".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}

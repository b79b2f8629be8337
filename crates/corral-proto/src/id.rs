//! Agent ids and selectors.
//!
//! An id is the coordinator's name for one agent: 1–128 characters of
//! `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`, with no `..`. Ids double as
//! directory names under `agents/`, so these rules are what keep an id from
//! escaping the state dir. Dots make ids hierarchical (`L2.1.1` is under `L2.1`),
//! and a [`Selector`] picks one id, a dotted subtree (`L2.1.*`) or every agent.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest id accepted, in bytes (ids are ASCII).
pub const MAX_ID_LEN: usize = 128;

/// Characters of a rejected id quoted back in the error (the rest is elided):
/// an error must not echo a megabyte of input.
const ECHO_LIMIT: usize = 100;

/// Orders ids the way people count: runs of digits compare as numbers, so
/// `w.2` comes before `w.10` (and `w.02` right after `w.2`); everything else
/// compares as text. Ties fall back to plain byte order, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
                let (n, m) = (run(x), run(y));
                let trim = |s: &[u8]| {
                    let zeros = s.iter().take_while(|b| **b == b'0').count();
                    s[zeros..].to_vec()
                };
                let (p, q) = (trim(&x[..n]), trim(&y[..m]));
                let by_value = p.len().cmp(&q.len()).then_with(|| p.cmp(&q));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                // Same value: fewer leading zeros first.
                if n != m {
                    return n.cmp(&m);
                }
                (x, y) = (&x[n..], &y[m..]);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

/// An id or selector that broke the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent id {shown:?}: {reason}")]
pub struct InvalidId {
    /// The id as given, cut to its first 100 characters (`…` marks a cut).
    pub shown: String,
    /// Which rule it broke.
    pub reason: &'static str,
}

impl InvalidId {
    fn new(raw: &str, reason: &'static str) -> Self {
        Self {
            shown: crate::elide(raw, ECHO_LIMIT),
            reason,
        }
    }
}

/// A validated agent id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl AgentId {
    /// Validates `raw` as an agent id.
    pub fn new(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let raw = raw.into();
        match why_invalid(&raw) {
            None => Ok(Self(raw)),
            Some(reason) => Err(InvalidId::new(&raw, reason)),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `self` is `prefix` or lies below it in the dotted hierarchy.
    pub fn is_within(&self, prefix: &AgentId) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(prefix.as_str())
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'.'))
    }
}

fn why_invalid(raw: &str) -> Option<&'static str> {
    if raw.is_empty() {
        return Some("an id must not be empty");
    }
    if raw.len() > MAX_ID_LEN {
        return Some("an id must be at most 128 characters");
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(if bad.is_whitespace() {
            "an id must not contain whitespace (allowed: A-Z a-z 0-9 . _ -)"
        } else if bad == '/' {
            "an id must not contain '/' (allowed: A-Z a-z 0-9 . _ -)"
        } else {
            "an id may only contain A-Z a-z 0-9 . _ -"
        });
    }
    if raw.starts_with('.') || raw.starts_with('-') {
        return Some("an id must not start with '.' or '-'");
    }
    if raw.contains("..") {
        return Some("an id must not contain '..'");
    }
    None
}

impl TryFrom<String> for AgentId {
    type Error = InvalidId;
    fn try_from(raw: String) -> Result<Self, InvalidId> {
        Self::new(raw)
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Equality, hashing and order are the string's (derived on the one field), so
// maps keyed by ids can be searched by `&str` — a team's members are a range of
// an ordered map (every id starting `TEAM.`).
impl std::borrow::Borrow<str> for AgentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Which agents a command addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every agent.
    All,
    /// Exactly one id.
    One(AgentId),
    /// An id and everything below it (`L2.1.*` selects `L2.1`, `L2.1.1`, `L2.1.2.3`).
    Subtree(AgentId),
}

impl Selector {
    /// Parses `ID` or `ID.*`. A bare `*` (or anything else that is not an id
    /// or a subtree) is refused with a hint: every agent is `--all` /
    /// `{"all": true}`, never a pattern, so a stray glob cannot stop a fleet.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let hint = |reason: &'static str| InvalidId::new(raw, reason);
        if raw == "*" || raw == ".*" {
            return Err(hint(
                "not a selector: use PREFIX.* for a subtree, or --all / {\"all\": true} for every agent",
            ));
        }
        match raw.strip_suffix(".*") {
            Some(prefix) => AgentId::new(prefix).map(Self::Subtree).map_err(|e| {
                hint(if e.reason.starts_with("an id may only") {
                    "a selector is ID or PREFIX.* (one trailing .* and no other wildcard)"
                } else {
                    e.reason
                })
            }),
            None if raw.contains('*') => Err(hint(
                "a selector is ID or PREFIX.* (one trailing .* and no other wildcard); --all picks every agent",
            )),
            None => AgentId::new(raw).map(Self::One),
        }
    }

    /// True when the selector picks `id`.
    pub fn matches(&self, id: &AgentId) -> bool {
        match self {
            Self::All => true,
            Self::One(one) => one == id,
            Self::Subtree(prefix) => id.is_within(prefix),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ids_sort_the_way_people_count() {
        let mut ids = vec![
            "w.10", "w.2", "w.1", "job.b", "w.02", "job.a10", "job.a9", "w", "w.1.3", "w.1.10",
            "x.007", "x.7",
        ];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            ids,
            [
                "job.a9", "job.a10", "job.b", "w", "w.1", "w.1.3", "w.1.10", "w.2", "w.02", "w.10",
                "x.7", "x.007"
            ]
        );
        assert_eq!(natural_cmp("a", "a"), std::cmp::Ordering::Equal);
        // Digit runs longer than any integer still compare by value.
        assert_eq!(
            natural_cmp("n.99999999999999999999999", "n.100000000000000000000000"),
            std::cmp::Ordering::Less
        );
    }

    use super::*;

    #[test]
    fn accepts_the_contract_alphabet() {
        for ok in ["L2.1.1", "a", "A_b-c.d", "x".repeat(128).as_str(), "9"] {
            assert!(AgentId::new(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn rejects_what_could_escape_or_confuse() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a..b",
            ".hidden",
            "-flag",
            "has space",
            "tab\t",
            "é",
            &"x".repeat(129),
            &"x".repeat(300),
        ] {
            let err = AgentId::new(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid agent id"), "{bad}: {err}");
        }
    }

    #[test]
    fn subtree_selectors_respect_dot_boundaries() {
        let sel = Selector::parse("L2.1.*").unwrap();
        let yes = ["L2.1", "L2.1.1", "L2.1.2.3"];
        let no = ["L2.10", "L2.1x", "L2", "L3.1.1"];
        for id in yes {
            assert!(sel.matches(&AgentId::new(id).unwrap()), "{id}");
        }
        for id in no {
            assert!(!sel.matches(&AgentId::new(id).unwrap()), "{id}");
        }
        assert!(Selector::parse("../*").is_err());
    }

    #[test]
    fn stray_globs_get_a_hint_and_long_ids_are_not_echoed_whole() {
        for glob in ["*", "L2*", "a.*.b"] {
            let err = Selector::parse(glob).expect_err(glob).to_string();
            assert!(err.contains("--all") || err.contains("PREFIX.*"), "{err}");
        }
        let huge = "x".repeat(900_000);
        let err = AgentId::new(huge).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.contains('…'));
    }
}

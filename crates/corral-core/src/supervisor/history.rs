//! Each agent's recent figures over time, for plots (`GET /v1/agents/{id}/history`).
//!
//! The sampler adds one point per agent at every full pass (its tree's CPU
//! and memory); nothing else writes here and no read scans `/proc`. Memory is
//! bounded and fixed per agent: two rings allocated whole at the agent's first
//! point, [`FINE`] recent points as sampled, and [`COARSE`] points of one
//! [`COARSE_SPAN`] each (the mean of the samples in it) going back an hour —
//! [`BYTES_PER_AGENT`] bytes in all, whatever the interval or the agent's age.
//! At rest (nobody reading, no limits) the sampler passes once every ten
//! intervals, so recent points are that far apart; no extra pass is ever made
//! for history. An agent's history lives as long as the agent is known (it is
//! dropped with `rm`/`prune`, at the next pass), across its runs; it is not
//! stored, so a daemon restart starts it afresh.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::id::AgentId;
use crate::model::HistoryPoint;

/// Recent points kept as sampled.
pub(crate) const FINE: usize = 60;
/// Thinned points kept (one per [`COARSE_SPAN`]).
pub(crate) const COARSE: usize = 60;
/// What one thinned point sums up, seconds.
pub(crate) const COARSE_SPAN: f64 = 60.0;
/// Bytes of points one agent's history holds at most (its rings, allocated
/// at its first point).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const BYTES_PER_AGENT: usize = (FINE + COARSE) * std::mem::size_of::<Point>();

/// One stored point: time as tenths of a second since the table's epoch,
/// figures as `f32` (12 bytes).
#[derive(Debug, Clone, Copy)]
struct Point {
    t_ds: u32,
    cpu: f32,
    mem: f32,
}

/// The samples of the thinned point being filled.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    first_ds: u32,
    last_ds: u32,
    cpu: f64,
    mem: f64,
    n: u32,
}

/// One agent's rings.
#[derive(Debug)]
struct Rings {
    fine: VecDeque<Point>,
    coarse: VecDeque<Point>,
    bucket: Bucket,
}

impl Rings {
    fn new() -> Self {
        Self {
            fine: VecDeque::with_capacity(FINE),
            coarse: VecDeque::with_capacity(COARSE),
            bucket: Bucket::default(),
        }
    }

    fn push(&mut self, p: Point) {
        if self.fine.len() == FINE {
            self.fine.pop_front();
        }
        self.fine.push_back(p);
        let b = &mut self.bucket;
        if b.n > 0 && f64::from(p.t_ds.saturating_sub(b.first_ds)) / 10.0 >= COARSE_SPAN {
            let done = Point {
                t_ds: b.first_ds + b.last_ds.saturating_sub(b.first_ds) / 2,
                cpu: (b.cpu / f64::from(b.n)) as f32,
                mem: (b.mem / f64::from(b.n)) as f32,
            };
            if self.coarse.len() == COARSE {
                self.coarse.pop_front();
            }
            self.coarse.push_back(done);
            *b = Bucket::default();
        }
        if b.n == 0 {
            b.first_ds = p.t_ds;
        }
        b.last_ds = p.t_ds;
        b.cpu += f64::from(p.cpu);
        b.mem += f64::from(p.mem);
        b.n += 1;
    }
}

/// Every agent's history.
#[derive(Debug)]
pub(crate) struct History {
    /// Unix seconds of `t_ds == 0`.
    epoch: f64,
    agents: HashMap<AgentId, Rings>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl History {
    pub(crate) fn new() -> Self {
        Self {
            epoch: unix_now(),
            agents: HashMap::new(),
        }
    }

    /// Tenths of a second since the epoch, for `unix` seconds.
    fn ds(&self, unix: f64) -> u32 {
        ((unix - self.epoch).max(0.0) * 10.0).min(f64::from(u32::MAX)) as u32
    }

    fn unix(&self, ds: u32) -> f64 {
        self.epoch + f64::from(ds) / 10.0
    }

    /// Adds one point for `id`, taken now.
    pub(crate) fn record(&mut self, id: &AgentId, cpu_percent: f64, memory_mb: f64) {
        self.record_at(id, unix_now(), cpu_percent, memory_mb);
    }

    fn record_at(&mut self, id: &AgentId, unix: f64, cpu_percent: f64, memory_mb: f64) {
        let p = Point {
            t_ds: self.ds(unix),
            cpu: cpu_percent as f32,
            mem: memory_mb as f32,
        };
        match self.agents.get_mut(id) {
            Some(r) => r.push(p),
            None => {
                let mut r = Rings::new();
                r.push(p);
                self.agents.insert(id.clone(), r);
            }
        }
    }

    /// Forgets the agents `known` no longer holds.
    pub(crate) fn retain(&mut self, known: impl Fn(&AgentId) -> bool) {
        self.agents.retain(|id, _| known(id));
    }

    /// `id`'s points after `since` (Unix seconds), oldest first: thinned
    /// points older than the first recent one, then the recent ones.
    pub(crate) fn points(&self, id: &AgentId, since: Option<f64>) -> Vec<HistoryPoint> {
        let Some(r) = self.agents.get(id) else {
            return Vec::new();
        };
        let first_fine = r.fine.front().map_or(u32::MAX, |p| p.t_ds);
        let since = since.unwrap_or(f64::NEG_INFINITY);
        r.coarse
            .iter()
            .filter(|p| p.t_ds < first_fine)
            .chain(r.fine.iter())
            .map(|p| HistoryPoint {
                t: self.unix(p.t_ds),
                cpu_percent: f64::from(p.cpu),
                memory_mb: f64::from(p.mem),
            })
            .filter(|p| p.t > since)
            .collect()
    }

    /// Agents with a history.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.agents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_samples_stays_within_its_rings_thinned_by_the_minute() {
        let mut h = History::new();
        let id = AgentId::new("a.1").unwrap();
        let t0 = h.epoch;
        // Two hours at one sample a second.
        for s in 0..7200u32 {
            h.record_at(&id, t0 + f64::from(s), f64::from(40 + (s % 2) * 20), 10.0);
        }
        let r = &h.agents[&id];
        assert_eq!(r.fine.len(), FINE);
        assert_eq!(r.coarse.len(), COARSE);
        assert_eq!(r.fine.capacity(), FINE, "the ring never grows");
        let points = h.points(&id, None);
        assert!(points.len() <= FINE + COARSE);
        assert!(points.windows(2).all(|w| w[0].t < w[1].t), "oldest first");
        let span = points.last().unwrap().t - points.first().unwrap().t;
        assert!((3500.0..=3700.0).contains(&span), "about an hour: {span}");
        // A thinned point is the mean of its minute: 40 and 60 in turn → 50.
        assert!((points[0].cpu_percent - 50.0).abs() < 1.0, "{points:?}");
        assert!(points.last().unwrap().cpu_percent >= 40.0);
        assert!((points[0].memory_mb - 10.0).abs() < 1e-6);
        // `since` keeps only later points.
        let last = points.last().unwrap().t;
        assert_eq!(h.points(&id, Some(last - 5.5)).len(), 6);
        assert!(h.points(&id, Some(last)).is_empty());
    }

    #[test]
    fn forgotten_agents_go() {
        let mut h = History::new();
        let a = AgentId::new("a").unwrap();
        let b = AgentId::new("b").unwrap();
        h.record(&a, 1.0, 1.0);
        h.record(&b, 1.0, 1.0);
        h.retain(|id| id == &a);
        assert_eq!(h.len(), 1);
        assert!(h.points(&b, None).is_empty());
        assert_eq!(h.points(&a, None).len(), 1);
        assert_eq!(BYTES_PER_AGENT, 1440);
    }
}

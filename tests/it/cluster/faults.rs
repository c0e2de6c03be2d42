//! The fault driver: a seeded random schedule of fault cycles applied to a `Cluster`, and a
//! `Timeline` of what happened when (faults, client reconnects), printed when a test fails.
//!
//! A cycle is one fault held for a while, then undone, then a healthy pause:
//! kill -9 a node then restart it; SIGSTOP a node then SIGCONT it; cut the link between two
//! nodes then restore it; isolate a node then heal. The same seed gives the same schedule
//! (timings of the clients around it differ, of course).
//!
//! Knobs for long runs: `WARREN_FAULT_CYCLES`, `WARREN_FAULT_SEED` (see `Plan::from_env`).

use super::harness::Cluster;
use super::proxy::Cut;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What happened when, since the timeline was made; shared by the driver and the clients.
#[derive(Clone)]
pub struct Timeline(Arc<TimelineInner>);

struct TimelineInner {
    start: Instant,
    events: Mutex<Vec<(Duration, String)>>,
}

/// Events kept at most (a long run's client churn must not grow without bound).
const MAX_EVENTS: usize = 20_000;

impl Timeline {
    pub fn new() -> Timeline {
        Timeline(Arc::new(TimelineInner {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }))
    }

    pub fn log(&self, what: impl Into<String>) {
        let mut e = self.0.events.lock();
        if e.len() < MAX_EVENTS {
            e.push((self.0.start.elapsed(), what.into()));
        }
    }

    pub fn events(&self) -> Vec<(Duration, String)> {
        self.0.events.lock().clone()
    }

    /// How many events contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .events
            .lock()
            .iter()
            .filter(|(_, e)| e.contains(needle))
            .count()
    }

    /// One line per event: `  12.345s  what`.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (t, e) in self.0.events.lock().iter() {
            let _ = writeln!(s, "{:>9.3}s  {e}", t.as_secs_f64());
        }
        s
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

/// The kinds of fault a plan may draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 a node, restart it after the hold.
    Kill,
    /// SIGSTOP a node, SIGCONT it after the hold.
    Pause,
    /// Cut the link between two nodes (both directions), restore it after the hold.
    Cut,
    /// Cut every link of one node, heal after the hold.
    Isolate,
    /// kill -9 a node and delete its data directory (a replaced disk), restart it after the
    /// hold. Not in `Plan::new`'s set: add it where the cluster rebuilds a node.
    Replace,
}

/// One fault, with its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill9(usize),
    Pause(usize),
    Cut(usize, usize, Cut),
    Isolate(usize, Cut),
    Replace(usize),
}

/// One scheduled cycle: the fault, how long it is held, the healthy pause after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cycle {
    pub fault: Fault,
    pub hold: Duration,
    pub settle: Duration,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub cycles: usize,
    pub kinds: Vec<Kind>,
    /// How long a fault is held (drawn uniformly).
    pub hold: Range<Duration>,
    /// The healthy pause after each cycle (drawn uniformly).
    pub settle: Range<Duration>,
}

impl Plan {
    /// Every kind, holds of 0.5–3 s, pauses of 0.5–2 s.
    pub fn new(seed: u64, cycles: usize) -> Plan {
        Plan {
            seed,
            cycles,
            kinds: vec![Kind::Kill, Kind::Pause, Kind::Cut, Kind::Isolate],
            hold: Duration::from_millis(500)..Duration::from_secs(3),
            settle: Duration::from_millis(500)..Duration::from_secs(2),
        }
    }

    /// `Plan::new` with `WARREN_FAULT_CYCLES` (else `cycles`) and `WARREN_FAULT_SEED` (else a
    /// seed from the clock, so every CI run tries another schedule; the seed is in the
    /// timeline to replay it).
    pub fn from_env(cycles: usize) -> Plan {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let seed = env("WARREN_FAULT_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
        let cycles = env("WARREN_FAULT_CYCLES").map_or(cycles, |c| c as usize);
        Plan::new(seed, cycles)
    }

    /// The cycles for a cluster of `nodes` (link faults need two nodes or more and are left
    /// out below that).
    pub fn schedule(&self, nodes: usize) -> Vec<Cycle> {
        let kinds: Vec<Kind> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| nodes >= 2 || !matches!(k, Kind::Cut | Kind::Isolate))
            .collect();
        assert!(
            !kinds.is_empty(),
            "no fault kind applies to {nodes} node(s)"
        );
        let mut rng = StdRng::seed_from_u64(self.seed);
        let draw = |rng: &mut StdRng, r: &Range<Duration>| {
            if r.is_empty() {
                r.start
            } else {
                rng.gen_range(r.clone())
            }
        };
        // The first cycles take every kind once, in a random order, so a short run tries each.
        let mut first = kinds.clone();
        first.shuffle(&mut rng);
        let mut out = Vec::new();
        for c in 0..self.cycles {
            let (hold, settle) = (draw(&mut rng, &self.hold), draw(&mut rng, &self.settle));
            let kind = match first.get(c) {
                Some(&k) => k,
                None => kinds[rng.gen_range(0..kinds.len())],
            };
            let i = rng.gen_range(0..nodes);
            let how = if rng.gen_bool(0.5) {
                Cut::Blackhole
            } else {
                Cut::Reset
            };
            let fault = match kind {
                Kind::Kill => Fault::Kill9(i),
                Kind::Pause => Fault::Pause(i),
                Kind::Cut => {
                    let j = (i + rng.gen_range(1..nodes)) % nodes;
                    Fault::Cut(i, j, how)
                }
                Kind::Isolate => Fault::Isolate(i, how),
                Kind::Replace => Fault::Replace(i),
            };
            out.push(Cycle {
                fault,
                hold,
                settle,
            });
        }
        out
    }
}

/// Apply `plan` to `cluster`, logging each step in `timeline`. Stops at the first problem: a
/// node that does not come back, or one that exited on its own (`Cluster::crashed`).
pub async fn run(cluster: &mut Cluster, plan: &Plan, timeline: &Timeline) -> Result<(), String> {
    let cycles = plan.schedule(cluster.len());
    timeline.log(format!(
        "faults: seed {} ({} cycles; replay with WARREN_FAULT_SEED={} WARREN_FAULT_CYCLES={})",
        plan.seed, plan.cycles, plan.seed, plan.cycles
    ));
    let names: Vec<String> = (0..cluster.len())
        .map(|i| cluster.name(i).to_owned())
        .collect();
    let name = |i: usize| names[i].clone();
    for (k, c) in cycles.iter().enumerate() {
        let what = match c.fault {
            Fault::Kill9(i) => format!("kill -9 {}", name(i)),
            Fault::Pause(i) => format!("SIGSTOP {}", name(i)),
            Fault::Cut(i, j, how) => format!("cut {} <-> {} ({how:?})", name(i), name(j)),
            Fault::Isolate(i, how) => format!("isolate {} ({how:?})", name(i)),
            Fault::Replace(i) => format!("kill -9 {} and wipe its data", name(i)),
        };
        timeline.log(format!("cycle {k}: {what}, held {:?}", c.hold));
        match c.fault {
            Fault::Kill9(i) => cluster.kill9(i),
            Fault::Pause(i) => cluster.stop(i),
            Fault::Cut(i, j, how) => cluster.cut_with(i, j, how),
            Fault::Isolate(i, how) => cluster.isolate_with(i, how),
            Fault::Replace(i) => cluster.wipe(i),
        }
        tokio::time::sleep(c.hold).await;
        match c.fault {
            Fault::Kill9(i) | Fault::Replace(i) => {
                cluster
                    .restart(i)
                    .await
                    .map_err(|e| format!("cycle {k}: {} did not restart: {e}", name(i)))?;
                timeline.log(format!("cycle {k}: {} restarted", name(i)));
            }
            Fault::Pause(i) => {
                cluster.cont(i);
                timeline.log(format!("cycle {k}: SIGCONT {}", name(i)));
            }
            Fault::Cut(i, j, _) => {
                cluster.restore(i, j);
                timeline.log(format!("cycle {k}: restored {} <-> {}", name(i), name(j)));
            }
            Fault::Isolate(..) => {
                cluster.heal();
                timeline.log(format!("cycle {k}: healed"));
            }
        }
        check_alive(cluster, timeline)?;
        tokio::time::sleep(c.settle).await;
        check_alive(cluster, timeline)?;
    }
    timeline.log("faults: done");
    Ok(())
}

/// An error naming every node that exited without the driver killing it.
pub fn check_alive(cluster: &mut Cluster, timeline: &Timeline) -> Result<(), String> {
    let crashed = cluster.crashed();
    if crashed.is_empty() {
        return Ok(());
    }
    let msg = crashed
        .iter()
        .map(|(i, st)| format!("{} exited on its own ({st})", cluster.name(*i)))
        .collect::<Vec<_>>()
        .join("; ");
    timeline.log(&msg);
    Err(msg)
}

/// Panic with everything needed to understand a failed run: the problem, the timeline and each
/// node's log tail.
pub fn fail(problem: &str, timeline: &Timeline, cluster: &Cluster) -> ! {
    panic!(
        "{problem}\n===== timeline =====\n{}{}",
        timeline.dump(),
        cluster.dump_logs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule is a function of the seed, uses only faults that fit the cluster's size,
    /// never cuts a node from itself, and keeps holds within the plan's range.
    #[test]
    fn schedule_is_seeded_and_fits_the_cluster() {
        let p = Plan::new(42, 200);
        assert_eq!(p.schedule(3), p.schedule(3));
        assert_ne!(p.schedule(3), Plan::new(43, 200).schedule(3));
        let s = p.schedule(3);
        let mut first: Vec<String> = s[..4]
            .iter()
            .map(|c| {
                format!("{:?}", c.fault)
                    .split('(')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        first.sort();
        assert_eq!(
            first,
            ["Cut", "Isolate", "Kill9", "Pause"],
            "each kind first"
        );
        for k in [Kind::Kill, Kind::Pause, Kind::Cut, Kind::Isolate] {
            let n = s
                .iter()
                .filter(|c| {
                    matches!(
                        (k, c.fault),
                        (Kind::Kill, Fault::Kill9(_))
                            | (Kind::Pause, Fault::Pause(_))
                            | (Kind::Cut, Fault::Cut(..))
                            | (Kind::Isolate, Fault::Isolate(..))
                    )
                })
                .count();
            assert!(n > 20, "{k:?} drawn {n} times in 200");
        }
        for c in &s {
            assert!(p.hold.contains(&c.hold) && p.settle.contains(&c.settle));
            if let Fault::Cut(i, j, _) = c.fault {
                assert!(i != j && i < 3 && j < 3);
            }
        }
        let single = p.schedule(1);
        assert!(single
            .iter()
            .all(|c| matches!(c.fault, Fault::Kill9(0) | Fault::Pause(0))));
    }
}

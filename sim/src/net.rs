//! Our fault layer on top of madsim's network.
//!
//! madsim carries frames between endpoints over reliable, ordered pipes (see the driver) with a
//! tiny, fixed latency, and never loses, duplicates or reorders them on its own. Every network
//! fault of a run is decided here, from the run's fault generator:
//!
//! ```text
//!  sender's drain ── Transmit ──▶ plan(): loss? ─▶ dropped
//!                                   └─ delay = latency (+ reorder extra) per copy (duplicate: 2)
//!                                   └─ replay: also re-send an old datagram of this sender
//!     sender's queue: after the delay, into the madsim pipe to the receiver
//!  receiver's task ── arrival ──▶ connection epoch current? ─▶ else dropped (old connection)
//!                                   blocked link (partition)? ─▶ dropped
//!                                   clogged link (swizzle)?   ─▶ held until unclogged
//!                                   else ─▶ node inbox (bounded) ─▶ driver step ─▶ handle()
//! ```
//!
//! Partitions *drop* (a cut cable); clogs *hold* (a congested queue that drains later), which is
//! how TigerBeetle's swizzle-clogging exercises a network that stalls links one after another and
//! releases them in another order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use portcullis_core::rng::SeededRng;
use portcullis_core::time::Instant;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::options::Options;

/// Most datagrams held on one clogged link; beyond it the newest are dropped.
pub(crate) const MAX_HELD_PER_LINK: usize = 512;

/// Most old datagrams remembered per sender for replays.
pub(crate) const REPLAY_RING: usize = 64;

/// What travels through madsim: the sender, its connection, and the frame.
#[derive(Clone, Debug)]
pub(crate) struct Datagram {
    /// Sending slot.
    pub from: usize,
    /// Connection epoch the frame was sent on; frames of an older connection are dropped.
    pub epoch: u64,
    /// The core's frame.
    pub bytes: Vec<u8>,
}

/// How one transmit goes out: one delay per copy (none: lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SendPlan {
    /// Delay of each copy, in milliseconds.
    pub copies_ms: Vec<u64>,
    /// Whether a copy beyond the first was added (duplicate).
    pub duplicated: bool,
}

/// An ongoing swizzle-clog episode: clog `order[..clog_count]` one by one, then unclog them
/// in `unclog_order`.
#[derive(Clone, Debug)]
pub(crate) struct Swizzle {
    order: Vec<usize>,
    unclog_order: Vec<usize>,
    clog_count: usize,
    step: usize,
    next_at: Instant,
}

/// A change the network made that the world must carry out or trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetChange {
    /// A partition started: `a` ↛ `b`, and `b` ↛ `a` unless one-way.
    Partition {
        /// One side.
        a: Vec<usize>,
        /// The other side.
        b: Vec<usize>,
        /// Only `a` → `b` is cut.
        one_way: bool,
    },
    /// Every partition healed.
    Healed,
    /// A node's links are clogged (held) both ways.
    Clogged(usize),
    /// A node's links flow again; its held datagrams are released.
    Unclogged(usize),
}

/// Link state and fault decisions.
#[derive(Debug, Default)]
pub(crate) struct Network {
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    /// Nodes whose every link holds datagrams.
    clogged: BTreeSet<usize>,
    /// Nodes cut off from everyone until the given time (the lease nemesis).
    isolated: BTreeMap<usize, Instant>,
    /// Datagrams held on clogged links, per (from, to).
    held: BTreeMap<(usize, usize), VecDeque<Datagram>>,
    partition_until: Option<Instant>,
    swizzle: Option<Swizzle>,
    /// Per sender: recent datagrams (to, datagram), for replays.
    ring: BTreeMap<usize, VecDeque<(usize, Datagram)>>,
    /// Loss probability in force (capped in the liveness phase).
    pub loss: f64,
    /// Admission-reply loss probability in force (capped in the liveness phase).
    pub reply_loss: f64,
}

/// What the receiving side should do with an arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Deliver to the node.
    Deliver,
    /// Dropped: the link is cut.
    Blocked,
    /// Held until the link unclogs.
    Held,
    /// Dropped: the clogged link's queue is full.
    Overflow,
}

impl Network {
    pub(crate) fn new(opts: &Options) -> Network {
        Network {
            loss: opts.loss,
            reply_loss: opts.reply_loss,
            ..Network::default()
        }
    }

    /// Plans one transmit.
    pub(crate) fn plan(&self, rng: &mut SeededRng, opts: &Options) -> SendPlan {
        if rng.gen_bool(self.loss.clamp(0.0, 1.0)) {
            return SendPlan::default();
        }
        let delay = |rng: &mut SeededRng| {
            let mut d = rng.gen_range(opts.latency_min_ms..=opts.latency_max_ms);
            if rng.gen_bool(opts.reorder.clamp(0.0, 1.0)) {
                d += rng.gen_range(0..=opts.reorder_max_ms);
            }
            d
        };
        let mut copies_ms = vec![delay(rng)];
        let duplicated = rng.gen_bool(opts.duplicate.clamp(0.0, 1.0));
        if duplicated {
            copies_ms.push(delay(rng));
        }
        SendPlan {
            copies_ms,
            duplicated,
        }
    }

    /// Remembers a sent datagram for later replays.
    pub(crate) fn remember(&mut self, to: usize, dg: &Datagram) {
        let ring = self.ring.entry(dg.from).or_default();
        if ring.len() >= REPLAY_RING {
            ring.pop_front();
        }
        ring.push_back((to, dg.clone()));
    }

    /// With probability `replay`, an old datagram of `from` to send again.
    pub(crate) fn pick_replay(
        &self,
        rng: &mut SeededRng,
        opts: &Options,
        from: usize,
    ) -> Option<(usize, Datagram)> {
        if opts.replay <= 0.0 || !rng.gen_bool(opts.replay.clamp(0.0, 1.0)) {
            return None;
        }
        let ring = self.ring.get(&from)?;
        if ring.is_empty() {
            return None;
        }
        let i = rng.gen_range(0..ring.len());
        ring.get(i).cloned()
    }

    /// Forgets everything a crashed node had queued or remembered.
    pub(crate) fn forget_node(&mut self, n: usize) {
        self.ring.remove(&n);
        self.held.retain(|(a, b), _| *a != n && *b != n);
    }

    /// Decides an arrival from `from` at `to`.
    pub(crate) fn arrive(&mut self, to: usize, dg: &Datagram) -> Arrival {
        if self.blocked.contains(&(dg.from, to))
            || self.isolated.contains_key(&dg.from)
            || self.isolated.contains_key(&to)
        {
            return Arrival::Blocked;
        }
        if self.clogged.contains(&dg.from) || self.clogged.contains(&to) {
            let q = self.held.entry((dg.from, to)).or_default();
            if q.len() >= MAX_HELD_PER_LINK {
                return Arrival::Overflow;
            }
            q.push_back(dg.clone());
            return Arrival::Held;
        }
        Arrival::Deliver
    }

    /// Cuts `node` off from everyone until `until` (extending an isolation in force).
    pub(crate) fn isolate_until(&mut self, node: usize, until: Instant) {
        let t = self.isolated.entry(node).or_insert(until);
        *t = (*t).max(until);
    }

    /// Ends the isolations that are over; returns the nodes let back in.
    pub(crate) fn expire_isolations(&mut self, now: Instant) -> Vec<usize> {
        let over: Vec<usize> = self
            .isolated
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in &over {
            self.isolated.remove(n);
        }
        over
    }

    /// Maybe starts or ends a partition among `nodes` (live slots), at `rate` per second.
    pub(crate) fn partition_tick(
        &mut self,
        rng: &mut SeededRng,
        opts: &Options,
        now: Instant,
        nodes: &[usize],
    ) -> Option<NetChange> {
        if let Some(until) = self.partition_until {
            if now >= until {
                self.partition_until = None;
                self.blocked.clear();
                return Some(NetChange::Healed);
            }
            return None;
        }
        let p = opts.partition_rate * opts.tick_ms as f64 / 1_000.0;
        if nodes.len() < 2 || p <= 0.0 || !rng.gen_bool(p.clamp(0.0, 1.0)) {
            return None;
        }
        let mut shuffled = nodes.to_vec();
        shuffled.shuffle(rng);
        let cut = rng.gen_range(1..shuffled.len());
        let (a, b) = shuffled.split_at(cut);
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        let one_way = rng.gen_bool(opts.asymmetric.clamp(0.0, 1.0));
        for x in &a {
            for y in &b {
                self.blocked.insert((*x, *y));
                if !one_way {
                    self.blocked.insert((*y, *x));
                }
            }
        }
        let lasts_ms = rng.gen_range(1..=opts.partition_max_ms.max(1));
        self.partition_until = Some(now.saturating_add_ms(lasts_ms));
        Some(NetChange::Partition { a, b, one_way })
    }

    /// Cuts every link of `isolated` both ways (liveness: the non-core minority stays out).
    pub(crate) fn isolate(&mut self, isolated: &[usize], all: usize) {
        for x in isolated {
            for y in 0..all {
                if *x != y {
                    self.blocked.insert((*x, y));
                    self.blocked.insert((y, *x));
                }
            }
        }
        // A partition ending later must not heal the isolation.
        self.partition_until = None;
    }

    /// Maybe starts an episode, or takes its next step.
    pub(crate) fn swizzle_tick(
        &mut self,
        rng: &mut SeededRng,
        opts: &Options,
        now: Instant,
        nodes: &[usize],
    ) -> Option<NetChange> {
        let Some(sw) = self.swizzle.as_mut() else {
            let p = opts.clog_rate * opts.tick_ms as f64 / 1_000.0;
            if nodes.is_empty() || p <= 0.0 || !rng.gen_bool(p.clamp(0.0, 1.0)) {
                return None;
            }
            let mut order = nodes.to_vec();
            order.shuffle(rng);
            let clog_count = rng.gen_range(1..=order.len());
            let mut unclog_order = order[..clog_count].to_vec();
            unclog_order.shuffle(rng);
            self.swizzle = Some(Swizzle {
                order,
                unclog_order,
                clog_count,
                step: 0,
                next_at: now,
            });
            return None;
        };
        if now < sw.next_at {
            return None;
        }
        sw.next_at = now.saturating_add_ms(opts.clog_step_ms);
        let step = sw.step;
        sw.step += 1;
        if step < sw.clog_count {
            let n = sw.order[step];
            self.clogged.insert(n);
            return Some(NetChange::Clogged(n));
        }
        let k = step - sw.clog_count;
        if let Some(n) = sw.unclog_order.get(k).copied() {
            self.clogged.remove(&n);
            return Some(NetChange::Unclogged(n));
        }
        self.swizzle = None;
        None
    }

    /// Ends every episode: no cut links, no clogs. Returns the datagrams to release.
    pub(crate) fn heal_all(&mut self) -> Vec<(usize, Datagram)> {
        self.blocked.clear();
        self.isolated.clear();
        self.partition_until = None;
        self.swizzle = None;
        self.clogged.clear();
        self.release_flowing()
    }

    /// Takes the held datagrams whose link is no longer clogged, in (link, arrival) order.
    pub(crate) fn release_flowing(&mut self) -> Vec<(usize, Datagram)> {
        let flowing: Vec<(usize, usize)> = self
            .held
            .keys()
            .filter(|(a, b)| !self.clogged.contains(a) && !self.clogged.contains(b))
            .copied()
            .collect();
        let mut out = Vec::new();
        for link in flowing {
            if let Some(q) = self.held.remove(&link) {
                out.extend(q.into_iter().map(|dg| (link.1, dg)));
            }
        }
        out
    }
}

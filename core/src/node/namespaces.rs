//! Namespaces inside the node: per-namespace state, routing of namespace messages and topic
//! fan-out, local commands, durability and recovery (DESIGN.md, Protocol B).
//!
//! ```text
//!   Received ─▶ Subscriptions ─▶ PubSub (+ PeerSubscribed facts to joins)
//!            ─▶ Publish ─▶ PubSub: forward, dedup ─▶ Deliver(framed NamespaceMessage)  ┐
//!            ─▶ Namespace(direct: beacon answers, backfill)                            ┴▶ on_ns_message
//!   on_ns_message: Probe → responder → Send Beacon · Beacon → queue → verify → cache,
//!                  join, outbox · BackfillRequest → backfill::answer · BackfillBatch → join
//!                  Op → join / governance (persist applied, ack MemberJoined once durable)
//!                  · Ack → join, outbox
//!   JoinAction ─▶ Publish/Send/Subscribe · PersistIdentity/Outbox → PersistBatch · Event
//!   Persisted(n) ─▶ identities durable (NamespaceCreated for ours) · held acks published
//!                 · the view of the latest durable append becomes what beacons vouch for
//! ```
//!
//! Acks and beacons both vouch that ops survive our crash (a joiner clears its durable outbox
//! on either), so neither may cover an op whose append is still in flight: acks are held, and
//! beacons advertise the replica's view as of the latest append batch known durable.
//!
//! Received beacons are queued and verified together on the next immediate timer (like the
//! listener's join proofs), each on its own (`crypto::verify_each`), then inserted into the
//! beacon cache as verified.

use std::collections::{BTreeSet, VecDeque};

use rand::Rng;

use crate::crypto::{Domain, PublicKey};
use crate::durable::{DurableState, NamespaceSecret, NamespaceWrite, PersistBatch};
use crate::messages::PeerMessage;
use crate::namespace::NamespaceMessage;
use crate::namespace::backfill;
use crate::namespace::governance::{Governance, Inserted};
use crate::namespace::join::{
    AnnounceOutbox, JoinAction, JoinCtx, JoinEvent, JoinInput, JoinMachine, JoinParams, JoinPhase,
    NamespaceIdentity, RetryingJoin,
};
use crate::namespace::ops::{InvitePolicy, NamespaceId, Op, OpHash, SignedInvitation};
use crate::namespace::readiness::{
    self, Ack, Beacon, BeaconCache, BeaconView, ReadinessProbe, ReadinessResponder,
};
use crate::pubsub::{PubSubAction, Topic};
use crate::time::Instant;

use super::{CommandError, Event, Node, Output, PeerId};

/// Most beacons queued for one verification pass before it runs anyway.
pub(super) const BEACON_BATCH_MAX: usize = 64;

/// A join in progress: one attempt, or the retry wrapper.
#[derive(Debug)]
pub(super) enum NsJoin {
    Once(Box<JoinMachine>),
    Retrying(Box<RetryingJoin>),
}

impl NsJoin {
    fn handle(&mut self, ctx: &mut JoinCtx<'_>, input: JoinInput) {
        match self {
            NsJoin::Once(m) => m.handle(ctx, input),
            NsJoin::Retrying(r) => r.handle(ctx, input),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            NsJoin::Once(m) => m.next_deadline(),
            NsJoin::Retrying(r) => r.next_deadline(),
        }
    }

    fn machine(&self) -> Option<&JoinMachine> {
        match self {
            NsJoin::Once(m) => Some(m),
            NsJoin::Retrying(r) => r.machine(),
        }
    }

    fn is_idle(&self) -> bool {
        match self {
            NsJoin::Once(m) => m.is_idle(),
            NsJoin::Retrying(r) => r.is_idle(),
        }
    }
}

/// One namespace as this node holds it.
#[derive(Debug)]
pub(super) struct NsState {
    pub(super) governance: Governance,
    pub(super) identity: Option<NamespaceIdentity>,
    /// The batch that makes the identity durable, while it is in flight.
    pub(super) identity_batch: Option<u64>,
    /// Our admin key in a namespace we created, until the identity batch is durable and
    /// `NamespaceCreated` is emitted: a crash before then loses the namespace.
    pub(super) created_admin: Option<PublicKey>,
    /// The latest batch appending to the op log, while it is in flight.
    pub(super) ops_batch: Option<u64>,
    /// Acks held until the batch they wait for is durable: an ack vouches that its op
    /// survives our crash.
    pub(super) held_acks: UntilDurable<Ack, MAX_HELD_ACKS>,
    /// What our beacons vouch for: the replica's view when every op in it was durable
    /// (`None`: nothing durable to vouch for). Beacons DO NOT advertise the live replica.
    pub(super) durable_view: Option<BeaconView>,
    /// Views whose ops are all in append batches up to the one each waits for.
    pub(super) pending_views: UntilDurable<BeaconView, MAX_PENDING_VIEWS>,
    pub(super) responder: ReadinessResponder,
    pub(super) beacons: BeaconCache,
    pub(super) join: Option<NsJoin>,
    /// The invitation's inviter while a join runs (trusted for beacons).
    pub(super) inviter: Option<PublicKey>,
    /// A standalone announce outbox (resumed after a restart).
    pub(super) outbox: Option<AnnounceOutbox>,
    /// Caught up: a member that beacons, answers probes and backfills, and acks.
    pub(super) member: bool,
    /// Ops already appended to the durable op log.
    pub(super) logged: BTreeSet<OpHash>,
    /// Verified acks seen, to count replays (at most [`MAX_ACKS_REMEMBERED`]).
    pub(super) acks_seen: BTreeSet<(OpHash, PublicKey)>,
}

/// Most verified acks remembered per namespace for counting replays; beyond it, replays are
/// still harmless (acks are idempotent), just not counted.
const MAX_ACKS_REMEMBERED: usize = 1_024;
/// Most acks held per namespace while the op log's batch is in flight; past it the oldest is
/// dropped (counted in `namespace_messages_refused`). A joiner whose ack is lost keeps
/// re-announcing until another member's ack or beacon proves its op included.
const MAX_HELD_ACKS: usize = 256;
/// Most replica views waiting per namespace for their append batch; past it the newest is
/// replaced (its ops are in a later batch, so it is promoted later: beacons lag, never lie).
/// Keeping the oldest ones means a steady stream of appends still refreshes beacons.
const MAX_PENDING_VIEWS: usize = 8;

/// Values that wait for an append batch to be durable (held acks, beacon views): what each
/// vouches for is in that batch or an earlier one. Oldest first, at most `MAX`.
#[derive(Debug)]
pub(super) struct UntilDurable<T, const MAX: usize> {
    waiting: VecDeque<(u64, T)>,
}

impl<T, const MAX: usize> UntilDurable<T, MAX> {
    fn new() -> Self {
        UntilDurable {
            waiting: VecDeque::new(),
        }
    }

    /// Queues `value` until `batch` is durable; when full, the oldest value is dropped
    /// (returns whether one was).
    fn push_dropping_oldest(&mut self, batch: u64, value: T) -> bool {
        let full = self.waiting.len() >= MAX;
        if full {
            self.waiting.pop_front();
        }
        self.waiting.push_back((batch, value));
        full
    }

    /// Queues `value` until `batch` is durable, replacing the newest value if it waits for
    /// the same batch or the queue is full (for values where a later one supersedes: it is
    /// released later, never earlier, than the one it replaces).
    fn push_replacing_newest(&mut self, batch: u64, value: T) {
        if self.waiting.back().is_some_and(|(b, _)| *b == batch) || self.waiting.len() >= MAX {
            self.waiting.pop_back();
        }
        self.waiting.push_back((batch, value));
    }

    /// Takes out, oldest first, every value whose batch is durable (every batch up to
    /// `durable_through` is).
    fn release(&mut self, durable_through: u64) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || {
            self.waiting
                .pop_front_if(|(b, _)| *b <= durable_through)
                .map(|(_, v)| v)
        })
    }

    fn clear(&mut self) {
        self.waiting.clear();
    }

    /// Bounded, in batch order, and waiting only while `batch_in_flight` (the latest
    /// append) is, for no later batch.
    fn check_invariants(&self, batch_in_flight: Option<u64>, what: &str) {
        assert!(self.waiting.len() <= MAX, "{what} unbounded");
        assert!(
            self.waiting
                .iter()
                .zip(self.waiting.iter().skip(1))
                .all(|((a, _), (b, _))| a <= b),
            "{what} out of batch order"
        );
        assert!(
            self.waiting
                .back()
                .is_none_or(|(b, _)| batch_in_flight.is_some_and(|f| *b <= f)),
            "{what} waiting for no batch in flight"
        );
    }
}

/// Peers with no topics of their own get our subscriptions once per this many refresh rounds.
const IDLE_PEER_REFRESH_ROUNDS: u64 = 4;

impl NsState {
    fn new(namespace: NamespaceId, node: &Node) -> NsState {
        let config = &node.config.namespace;
        NsState {
            governance: Governance::new(namespace, config.governance),
            identity: None,
            identity_batch: None,
            created_admin: None,
            ops_batch: None,
            held_acks: UntilDurable::new(),
            durable_view: None,
            pending_views: UntilDurable::new(),
            responder: ReadinessResponder::new(namespace, config, node.now.instant),
            beacons: BeaconCache::new(namespace, config),
            join: None,
            inviter: None,
            outbox: None,
            member: false,
            logged: BTreeSet::new(),
            acks_seen: BTreeSet::new(),
        }
    }

    /// Whether the namespace is in use (subscribed): a member, joining, or announcing.
    pub(super) fn is_active(&self) -> bool {
        self.member || self.join.is_some() || self.outbox.is_some()
    }

    /// Takes the replica's view for beacons after its ops were logged: durable at once when
    /// no append is in flight, else once the latest append batch (which holds its newest ops)
    /// is durable.
    fn note_view(&mut self) {
        let view = BeaconView::of(&self.governance);
        match self.ops_batch {
            None => self.durable_view = (!view.is_empty()).then_some(view),
            Some(batch) => self.pending_views.push_replacing_newest(batch, view),
        }
    }

    /// Forgets every view (the replica was dropped).
    fn forget_views(&mut self) {
        self.durable_view = None;
        self.pending_views.clear();
    }

    /// Whether we beacon: a member with a durable key and a durable view to vouch for.
    fn beacons(&self) -> bool {
        self.member && self.durable_key().is_some() && self.durable_view.is_some()
    }

    /// The beacon we may sign now, if we have a durable key and a durable view
    /// (`vouch_early`: the `VouchBeforeDurable` canary's live view instead).
    fn durable_beacon(&self, unix_ms: u64, vouch_early: bool) -> Option<Beacon> {
        let key = self.durable_key()?;
        let durable = self.durable_view.as_ref()?;
        let live;
        let view = if vouch_early {
            live = BeaconView::of(&self.governance);
            &live
        } else {
            durable
        };
        Some(Beacon::for_view(
            key,
            self.governance.namespace(),
            view,
            unix_ms,
        ))
    }

    fn durable_key(&self) -> Option<&crate::crypto::SecretKey> {
        self.identity
            .as_ref()
            .filter(|i| i.is_durable())
            .map(NamespaceIdentity::key)
    }
}

fn topic(ns: NamespaceId) -> Topic {
    Topic(ns.0)
}

fn message_namespace(m: &NamespaceMessage) -> Option<NamespaceId> {
    match m {
        NamespaceMessage::Probe(p) => Some(p.namespace),
        NamespaceMessage::Beacon(b) => Some(b.namespace),
        NamespaceMessage::BackfillRequest(r) => Some(r.namespace),
        NamespaceMessage::Op(o) => Some(o.namespace),
        NamespaceMessage::Ack(a) => Some(a.namespace),
        NamespaceMessage::BackfillBatch(_) => None,
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl Node {
    // ---- queries -------------------------------------------------------------------------

    /// Our replica of namespace `ns`'s governance log, if we hold one.
    pub fn namespace(&self, ns: &NamespaceId) -> Option<&Governance> {
        self.namespaces.get(ns).map(|s| &s.governance)
    }

    /// Whether we are a caught-up member of `ns` (we beacon and ack).
    pub fn is_namespace_member(&self, ns: &NamespaceId) -> bool {
        self.namespaces.get(ns).is_some_and(|s| s.member)
    }

    /// Our identity key in `ns`, if one was provisioned.
    pub fn namespace_identity(&self, ns: &NamespaceId) -> Option<PublicKey> {
        self.namespaces
            .get(ns)
            .and_then(|s| s.identity.as_ref())
            .map(NamespaceIdentity::public)
    }

    /// Namespaces we hold state for.
    pub fn namespace_ids(&self) -> Vec<NamespaceId> {
        self.namespaces.keys().copied().collect()
    }

    /// Verified beacons cached for `ns`.
    pub fn cached_beacons(&self, ns: &NamespaceId) -> usize {
        self.namespaces.get(ns).map_or(0, |s| s.beacons.len())
    }

    // ---- recovery ------------------------------------------------------------------------

    /// Rebuilds every namespace from the durable state (identity, op log, outbox).
    pub(super) fn recover_namespaces(&mut self, durable: &DurableState) {
        for (id, d) in &durable.namespaces {
            let mut state = NsState::new(*id, self);
            state.identity = d
                .identity
                .as_ref()
                .map(|s| NamespaceIdentity::durable(s.key()));
            if d.active {
                let _ = state.governance.insert_many(d.ops.clone());
                state.logged = d.ops.iter().map(Op::hash).collect();
                state.note_view();
                state.member = state
                    .identity
                    .as_ref()
                    .is_some_and(|i| state.governance.is_member(&i.public()));
            }
            self.namespaces.insert(*id, state);
            if !d.active {
                continue;
            }
            if let Some(op) = d.outbox.clone() {
                let mut actions = Vec::new();
                if let Ok(mut outbox) =
                    AnnounceOutbox::resume(op, self.now, &self.config.namespace, &mut actions)
                    && let Some(state) = self.namespaces.get(id)
                {
                    for m in state.governance.members() {
                        outbox.trust(*m);
                    }
                    if let Some(state) = self.namespaces.get_mut(id) {
                        state.outbox = Some(outbox);
                    }
                }
                self.subscribe(*id);
                self.run_join_actions(*id, actions);
            } else {
                self.subscribe(*id);
            }
        }
    }

    // ---- pub/sub ---------------------------------------------------------------------------

    fn connected_peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    fn subscribe(&mut self, ns: NamespaceId) {
        let connected = self.connected_peers();
        let mut out = Vec::new();
        if self
            .pubsub
            .subscribe(topic(ns), &connected, &mut out)
            .is_err()
        {
            tracing::warn!(%ns, "too many topics; namespace not subscribed");
        }
        self.run_pubsub(out);
    }

    fn publish(&mut self, ns: NamespaceId, message: NamespaceMessage) {
        let frame = PeerMessage::Namespace(Box::new(message)).encode();
        let mut out = Vec::new();
        if self.pubsub.publish(topic(ns), frame, &mut out).is_err() {
            self.metrics.namespace_messages_refused += 1;
            return;
        }
        self.run_pubsub(out);
    }

    fn run_pubsub(&mut self, actions: Vec<PubSubAction>) {
        for action in actions {
            match action {
                PubSubAction::Announce(peer, subs) => {
                    self.transmit(peer, &PeerMessage::Subscriptions(subs));
                }
                PubSubAction::Forward(peer, msg) => self.transmit(peer, &PeerMessage::Publish(msg)),
                PubSubAction::Deliver {
                    from,
                    topic,
                    payload,
                } => {
                    let Some(from) = from else { continue };
                    match PeerMessage::decode(&payload, &self.config.limits()) {
                        Ok(PeerMessage::Namespace(m))
                            if message_namespace(&m).is_none_or(|ns| topic.0 == ns.0) =>
                        {
                            self.on_ns_message(from, *m);
                        }
                        _ => self.metrics.namespace_messages_refused += 1,
                    }
                }
            }
        }
    }

    /// A connection came up: announce our topics, tell joins.
    pub(super) fn ns_on_connected(&mut self, peer: PeerId) {
        let mut out = Vec::new();
        self.pubsub.on_connected(peer, &mut out);
        self.run_pubsub(out);
        self.feed_joins(|_| Some(JoinInput::PeerConnected(peer)));
    }

    /// A connection went down: forget its topics, tell joins.
    pub(super) fn ns_on_disconnected(&mut self, peer: PeerId) {
        self.pubsub.on_disconnected(peer);
        self.feed_joins(|_| Some(JoinInput::PeerDisconnected(peer)));
        self.feed_joins(|_| Some(JoinInput::PeerUnsubscribed(peer)));
    }

    pub(super) fn ns_on_subscriptions(
        &mut self,
        from: PeerId,
        subs: &crate::pubsub::Subscriptions,
    ) {
        let topics: BTreeSet<Topic> = subs.topics.iter().copied().collect();
        // A peer that newly subscribes to a namespace we are probing gets a probe of its own
        // at once: a probe published before we knew of it never reached it.
        let probing: Vec<NamespaceId> = self
            .namespaces
            .iter()
            .filter(|(id, s)| {
                topics.contains(&topic(**id))
                    && s.join
                        .as_ref()
                        .and_then(NsJoin::machine)
                        .is_some_and(|m| m.phase() == JoinPhase::Probing)
            })
            .map(|(id, _)| *id)
            .filter(|id| !self.pubsub.subscribers(&topic(*id)).contains(&from))
            .collect();
        let mut out = Vec::new();
        self.pubsub.on_subscriptions(from, subs, &mut out);
        self.run_pubsub(out);
        for ns in probing {
            let nonce = self.rng.r#gen();
            self.transmit(
                from,
                &PeerMessage::Namespace(Box::new(NamespaceMessage::Probe(ReadinessProbe {
                    namespace: ns,
                    nonce,
                }))),
            );
        }
        self.feed_joins(|ns| {
            Some(if topics.contains(&topic(ns)) {
                JoinInput::PeerSubscribed(from)
            } else {
                JoinInput::PeerUnsubscribed(from)
            })
        });
    }

    pub(super) fn ns_on_publish(&mut self, from: PeerId, msg: crate::pubsub::Publish) {
        let mut out = Vec::new();
        self.pubsub.on_publish(from, msg, &mut out);
        self.run_pubsub(out);
    }

    /// Feeds `input(ns)` to every running join.
    fn feed_joins(&mut self, input: impl Fn(NamespaceId) -> Option<JoinInput>) {
        let ids: Vec<NamespaceId> = self
            .namespaces
            .iter()
            .filter(|(_, s)| s.join.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(i) = input(id) {
                self.join_input(id, i);
            }
        }
    }

    /// Hands one input to the join of `ns` and carries out its actions.
    fn join_input(&mut self, ns: NamespaceId, input: JoinInput) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let Some(join) = state.join.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        let mut ctx = JoinCtx {
            now: self.now,
            config: &self.config.namespace,
            rng: &mut self.rng,
            beacons: &mut state.beacons,
            actions: &mut actions,
        };
        join.handle(&mut ctx, input);
        if let Some(m) = join.machine() {
            state.identity = Some(m.identity().clone());
        }
        self.ns_dirty.insert(ns);
        self.run_join_actions(ns, actions);
    }

    // ---- peer messages ---------------------------------------------------------------------

    /// A namespace message, direct or delivered from a topic.
    pub(super) fn on_ns_message(&mut self, from: PeerId, message: NamespaceMessage) {
        match message {
            NamespaceMessage::Probe(probe) => self.on_probe(from, &probe),
            NamespaceMessage::Beacon(beacon) => {
                if !self.namespaces.contains_key(&beacon.namespace) {
                    return;
                }
                if self.beacon_queue.len() >= BEACON_BATCH_MAX * 16 {
                    self.metrics.namespace_messages_refused += 1;
                    return;
                }
                self.beacon_queue.push((from, beacon));
                if self.beacon_queue.len() >= BEACON_BATCH_MAX {
                    self.flush_beacons();
                }
            }
            NamespaceMessage::BackfillRequest(req) => {
                let Some(state) = self.namespaces.get(&req.namespace) else {
                    return;
                };
                if !state.member {
                    return;
                }
                match backfill::answer(
                    &state.governance,
                    &req,
                    self.config.namespace.backfill_batch_ops,
                ) {
                    Ok(batch) => self.transmit(
                        from,
                        &PeerMessage::Namespace(Box::new(NamespaceMessage::BackfillBatch(batch))),
                    ),
                    Err(_) => self.metrics.namespace_messages_refused += 1,
                }
            }
            NamespaceMessage::BackfillBatch(batch) => {
                self.feed_joins(|_| {
                    Some(JoinInput::Batch {
                        from,
                        batch: batch.clone(),
                    })
                });
            }
            NamespaceMessage::Op(op) => self.on_op(from, op),
            NamespaceMessage::Ack(ack) => self.on_ack(from, ack),
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn on_probe(&mut self, from: PeerId, probe: &ReadinessProbe) {
        let now = self.now;
        let vouch_early = self.canary_vouches_before_durable();
        let Some(state) = self.namespaces.get_mut(&probe.namespace) else {
            return;
        };
        if !state.member {
            return;
        }
        // Nothing durable to vouch for yet: the joiner probes again.
        if !state.beacons() {
            return;
        }
        // Rate-limit before signing: a probe flood must not cost a signature per probe.
        if let Err(e) = state.responder.on_probe(now.instant, from, probe) {
            tracing::trace!(peer = from.0, reason = e.as_str(), "probe not answered");
            self.metrics.namespace_rejected("probe", e.as_str());
            return;
        }
        let Some(beacon) = state.durable_beacon(now.unix_ms, vouch_early) else {
            return;
        };
        self.transmit(
            from,
            &PeerMessage::Namespace(Box::new(NamespaceMessage::Beacon(beacon))),
        );
    }

    /// Verifies every queued beacon once ([`crate::crypto::verify_each`]), then caches and
    /// routes the good ones.
    pub(super) fn flush_beacons(&mut self) {
        if self.beacon_queue.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.beacon_queue);
        let bytes: Vec<Vec<u8>> = queue.iter().map(|(_, b)| b.signed_bytes()).collect();
        let items: Vec<(PublicKey, &[u8], crate::crypto::Signature)> = queue
            .iter()
            .zip(&bytes)
            .map(|((_, b), m)| (b.member_key, m.as_slice(), b.signature))
            .collect();
        let ok = crate::crypto::verify_each(Domain::Beacon, &items);
        for ((from, beacon), good) in queue.into_iter().zip(ok) {
            if !good {
                self.metrics.namespace_messages_refused += 1;
                self.metrics.namespace_rejected("beacon", "bad_signature");
                continue;
            }
            self.on_verified_beacon(from, beacon);
        }
    }

    fn on_verified_beacon(&mut self, from: PeerId, beacon: Beacon) {
        let ns = beacon.namespace;
        let now = self.now;
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let trusted =
            |k: &PublicKey| state.inviter.as_ref() == Some(k) || state.governance.is_member(k);
        if let Err(e) = state
            .beacons
            .insert_verified(now, from, beacon.clone(), trusted)
        {
            self.metrics.namespace_rejected("beacon", e.as_str());
        }
        let mut actions = Vec::new();
        if let Some(outbox) = state.outbox.as_mut() {
            outbox.handle_with_replica(
                now,
                &JoinInput::Beacon {
                    from,
                    beacon: beacon.clone(),
                },
                Some(&state.governance),
                &mut actions,
            );
        }
        self.run_join_actions(ns, actions);
        self.join_input(ns, JoinInput::Beacon { from, beacon });
    }

    fn on_op(&mut self, from: PeerId, op: Op) {
        let ns = op.namespace;
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let joining = state.join.is_some();
        if state.member {
            let inserted = state.governance.insert(op.clone());
            self.ns_dirty.insert(ns);
            if let Ok(Inserted::Applied { applied, .. }) = inserted {
                self.on_applied(ns, &applied);
            }
        }
        if joining {
            self.join_input(ns, JoinInput::Op { from, op });
        }
    }

    /// Persists newly applied ops and acks `MemberJoined` ops of others.
    fn on_applied(&mut self, ns: NamespaceId, applied: &[OpHash]) {
        let now = self.now;
        let skew = self.config.namespace.ack_max_skew_ms;
        let vouch_early = self.canary_vouches_before_durable();
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let me = state.identity.as_ref().map(NamespaceIdentity::public);
        let mut ops = Vec::new();
        let mut acks = Vec::new();
        for h in applied {
            let Some(op) = state.governance.get(h) else {
                continue;
            };
            if state.logged.insert(*h) {
                ops.push(op.clone());
            }
            if Some(op.author) != me
                && readiness::should_ack(&state.governance, op, now.unix_ms, skew)
                && let Some(key) = state.durable_key()
            {
                acks.push(Ack::sign(key, ns, *h));
            }
        }
        if let Some(outbox) = state.outbox.as_mut() {
            for m in state.governance.members() {
                outbox.trust(*m);
            }
        }
        if !ops.is_empty() {
            self.persist_ns(vec![NamespaceWrite::AppendOps { namespace: ns, ops }]);
        }
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        state.note_view();
        // An acked op may sit in this batch or an earlier one still in flight (`logged` counts
        // issued writes): hold the ack until every append issued so far is durable.
        let Some(batch) = state.ops_batch.filter(|_| !vouch_early) else {
            for ack in acks {
                self.publish(ns, NamespaceMessage::Ack(ack));
            }
            return;
        };
        for ack in acks {
            if state.held_acks.push_dropping_oldest(batch, ack) {
                self.metrics.namespace_messages_refused += 1;
            }
        }
    }

    fn on_ack(&mut self, from: PeerId, ack: Ack) {
        let ns = ack.namespace;
        let now = self.now;
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        // Only a node waiting for acks verifies them (the machines check the signer too); a
        // replay is counted either way. Acks are idempotent, so a replay to a waiting node is
        // still handed on: a signer trusted only now must not lose the ack it sent before.
        let seen = state.acks_seen.contains(&(ack.op, ack.member_key));
        let waiting = state.outbox.is_some() || state.join.is_some();
        if !waiting {
            if seen {
                self.metrics.namespace_rejected("ack", "replayed");
            }
            return;
        }
        if ack.verify().is_err() {
            self.metrics.namespace_rejected("ack", "bad_signature");
            return;
        }
        if seen {
            self.metrics.namespace_rejected("ack", "replayed");
        } else if state.acks_seen.len() < MAX_ACKS_REMEMBERED {
            state.acks_seen.insert((ack.op, ack.member_key));
        }
        let mut actions = Vec::new();
        if let Some(outbox) = state.outbox.as_mut() {
            outbox.handle(
                now,
                &JoinInput::Ack {
                    from,
                    ack: ack.clone(),
                },
                &mut actions,
            );
        }
        self.run_join_actions(ns, actions);
        self.join_input(ns, JoinInput::Ack { from, ack });
    }

    // ---- actions ---------------------------------------------------------------------------

    fn persist_ns(&mut self, writes: Vec<NamespaceWrite>) -> u64 {
        let number = self.take_batch_number();
        for w in &writes {
            if let NamespaceWrite::AppendOps { namespace, .. } = w
                && let Some(state) = self.namespaces.get_mut(namespace)
            {
                state.ops_batch = Some(number);
            }
        }
        self.outputs.push_back(Output::Persist(PersistBatch {
            number,
            namespaces: writes,
            ..PersistBatch::default()
        }));
        number
    }

    /// Ops of `replica` not yet in the durable log, in total order.
    fn unlogged_ops(state: &mut NsState, replica: &Governance) -> Vec<Op> {
        let (all, _) = replica.missing_ops(&[], None, usize::MAX);
        all.into_iter()
            .filter(|op| state.logged.insert(op.hash()))
            .collect()
    }

    pub(super) fn run_join_actions(&mut self, ns: NamespaceId, actions: Vec<JoinAction>) {
        for action in actions {
            match action {
                JoinAction::Publish(ns, m) => self.publish(ns, m),
                JoinAction::Send(peer, m) => {
                    self.transmit(peer, &PeerMessage::Namespace(Box::new(m)))
                }
                JoinAction::Subscribe(ns) => self.subscribe(ns),
                JoinAction::PersistIdentity { namespace, key } => {
                    let n = self.persist_ns(vec![NamespaceWrite::Identity {
                        namespace,
                        secret: NamespaceSecret::of(&key),
                    }]);
                    if let Some(state) = self.namespaces.get_mut(&namespace) {
                        state.identity_batch = Some(n);
                    }
                }
                JoinAction::PersistOutbox(op) => {
                    let namespace = op.namespace;
                    let mut writes = Vec::new();
                    if let Some(state) = self.namespaces.get_mut(&namespace) {
                        let replica = state
                            .join
                            .as_ref()
                            .and_then(NsJoin::machine)
                            .map(|m| m.governance().clone());
                        if let Some(replica) = replica {
                            let ops = Self::unlogged_ops(state, &replica);
                            if !ops.is_empty() {
                                writes.push(NamespaceWrite::AppendOps { namespace, ops });
                            }
                        }
                    }
                    writes.push(NamespaceWrite::SetOutbox {
                        namespace,
                        op: Box::new(op),
                    });
                    self.persist_ns(writes);
                }
                JoinAction::ClearOutbox { namespace, op } => {
                    self.persist_ns(vec![NamespaceWrite::ClearOutbox { namespace, op }]);
                    if let Some(state) = self.namespaces.get_mut(&namespace)
                        && state.outbox.as_ref().is_some_and(AnnounceOutbox::is_done)
                    {
                        state.outbox = None;
                    }
                }
                JoinAction::Event(e) => self.on_join_event(ns, e),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        self.settle_join(ns);
    }

    fn on_join_event(&mut self, ns: NamespaceId, event: JoinEvent) {
        let event = match event {
            JoinEvent::JoinStarted {
                partner,
                partner_key,
                partner_head: _,
                partner_applied,
            } => Event::NamespaceJoinStarted {
                namespace: ns,
                partner,
                partner_key,
                partner_applied,
            },
            JoinEvent::Ready(report) => {
                self.adopt_join_replica(ns);
                Event::NamespaceReady(report)
            }
            JoinEvent::Failed(failure) => {
                if failure.report.announced.is_some() {
                    self.adopt_join_replica(ns);
                }
                self.metrics
                    .namespace_rejected("join", failure.reason.as_str());
                Event::NamespaceJoinFailed(failure)
            }
            other => Event::NamespaceJoinProgress {
                namespace: ns,
                event: other,
            },
        };
        self.outputs.push_back(Output::Event(event));
    }

    /// The join announced us: its replica becomes the namespace's, and we are a member.
    fn adopt_join_replica(&mut self, ns: NamespaceId) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        let Some(replica) = state
            .join
            .as_ref()
            .and_then(NsJoin::machine)
            .map(|m| m.governance().clone())
        else {
            return;
        };
        let ops = Self::unlogged_ops(state, &replica);
        state.governance = replica;
        state.member = true;
        state.responder = ReadinessResponder::new(ns, &self.config.namespace, self.now.instant);
        self.ns_dirty.insert(ns);
        if !ops.is_empty() {
            self.persist_ns(vec![NamespaceWrite::AppendOps { namespace: ns, ops }]);
        }
        // Ops logged earlier (with the outbox) are in batches up to `ops_batch` too.
        if let Some(state) = self.namespaces.get_mut(&ns) {
            state.note_view();
        }
    }

    /// Drops a join that has nothing left to do.
    fn settle_join(&mut self, ns: NamespaceId) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        if state.join.as_ref().is_some_and(NsJoin::is_idle) {
            state.join = None;
            state.inviter = None;
        }
        if !state.is_active() {
            let mut out = Vec::new();
            let connected = self.connected_peers();
            self.pubsub.unsubscribe(&topic(ns), &connected, &mut out);
            self.run_pubsub(out);
        }
    }

    /// Every batch up to `number` is durable: identities, created namespaces and acks
    /// waiting on one are released.
    pub(super) fn ns_on_persisted(&mut self, number: u64) {
        let mut acks = Vec::new();
        for (id, state) in &mut self.namespaces {
            if state.ops_batch.is_some_and(|b| b <= number) {
                state.ops_batch = None;
            }
            if let Some(view) = state.pending_views.release(number).last() {
                state.durable_view = (!view.is_empty()).then_some(view);
            }
            acks.extend(state.held_acks.release(number).map(|ack| (*id, ack)));
        }
        for (ns, ack) in acks {
            self.publish(ns, NamespaceMessage::Ack(ack));
        }
        let done: Vec<NamespaceId> = self
            .namespaces
            .iter()
            .filter(|(_, s)| s.identity_batch.is_some_and(|b| b <= number))
            .map(|(id, _)| *id)
            .collect();
        for ns in done {
            let mut created = None;
            if let Some(state) = self.namespaces.get_mut(&ns) {
                state.identity_batch = None;
                if let Some(id) = state.identity.as_ref() {
                    state.identity = Some(NamespaceIdentity::durable(id.key().clone()));
                }
                created = state.created_admin.take();
            }
            if let Some(admin) = created {
                tracing::info!(%ns, "namespace created");
                self.outputs
                    .push_back(Output::Event(Event::NamespaceCreated {
                        namespace: ns,
                        admin,
                    }));
            }
            self.join_input(ns, JoinInput::IdentityPersisted);
        }
    }

    // ---- timers ----------------------------------------------------------------------------

    /// The earliest namespace deadline.
    pub(super) fn ns_next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for state in self.namespaces.values() {
            consider(state.join.as_ref().and_then(NsJoin::next_deadline));
            consider(
                state
                    .outbox
                    .as_ref()
                    .and_then(AnnounceOutbox::next_deadline),
            );
            if state.beacons() {
                consider(Some(state.responder.next_deadline()));
            }
        }
        if !self.beacon_queue.is_empty() {
            consider(Some(self.now.instant));
        }
        if !self.pubsub_is_idle() {
            consider(Some(self.next_subscriptions_refresh_at));
        }
        next
    }

    fn pubsub_is_idle(&self) -> bool {
        self.namespaces.values().all(|s| !s.is_active())
    }

    pub(super) fn ns_on_timers(&mut self, timer_fired: bool) {
        if timer_fired {
            self.flush_beacons();
        }
        let now = self.now;
        let vouch_early = self.canary_vouches_before_durable();
        let ids: Vec<NamespaceId> = self.namespaces.keys().copied().collect();
        for ns in ids {
            let Some(state) = self.namespaces.get_mut(&ns) else {
                continue;
            };
            // Periodic beacon from a caught-up member.
            let mut beacon = None;
            if state.beacons() && state.responder.beacon_due(now.instant) {
                state.beacons.prune(now);
                beacon = state.durable_beacon(now.unix_ms, vouch_early);
            }
            let mut actions = Vec::new();
            if let Some(outbox) = state.outbox.as_mut()
                && outbox.next_deadline().is_some_and(|d| d <= now.instant)
            {
                outbox.on_timer(now, &mut actions);
            }
            let join_due = state
                .join
                .as_ref()
                .and_then(NsJoin::next_deadline)
                .is_some_and(|d| d <= now.instant);
            if let Some(b) = beacon {
                self.publish(ns, NamespaceMessage::Beacon(b));
            }
            self.run_join_actions(ns, actions);
            if join_due {
                self.join_input(ns, JoinInput::Timer);
            }
        }
        // Subscriptions are announced on connect and on change, and to a peer that announces
        // its first topic; a lost announcement is repaired by this periodic refresh. A peer
        // with no topics of its own (most admitted nodes) is refreshed only every
        // IDLE_PEER_REFRESH_ROUNDS rounds: it has little use for ours until it subscribes,
        // and then it is told at once.
        if !self.pubsub_is_idle() && self.next_subscriptions_refresh_at <= now.instant {
            self.next_subscriptions_refresh_at = now
                .instant
                .saturating_add_ms(self.config.namespace.subscriptions_refresh_ms);
            self.subscriptions_refresh_round += 1;
            let idle_too = self
                .subscriptions_refresh_round
                .is_multiple_of(IDLE_PEER_REFRESH_ROUNDS);
            for peer in self.connected_peers() {
                if !idle_too && !self.pubsub.is_active_peer(peer) {
                    continue;
                }
                let mut out = Vec::new();
                self.pubsub.on_connected(peer, &mut out);
                self.run_pubsub(out);
            }
        }
    }

    // ---- commands --------------------------------------------------------------------------

    fn ns_room(&mut self, ns: &NamespaceId) -> bool {
        if self.namespaces.contains_key(ns)
            || self.namespaces.len() < usize::try_from(self.config.max_namespaces).unwrap_or(0)
        {
            return true;
        }
        self.reject_command(CommandError::TooManyNamespaces);
        false
    }

    pub(super) fn create_namespace(&mut self, salt: [u8; 16]) {
        let key = crate::crypto::SecretKey::generate(&mut self.rng);
        let create = Op::create(&key, salt, self.now.unix_ms);
        let ns = create.namespace;
        if self.namespaces.get(&ns).is_some_and(NsState::is_active) {
            return self.reject_command(CommandError::AlreadyInNamespace(ns));
        }
        if !self.ns_room(&ns) {
            return;
        }
        let mut state = NsState::new(ns, self);
        let _ = state.governance.insert(create.clone());
        state.logged.insert(create.hash());
        state.member = true;
        // The admin key is our identity; it signs beacons and acks once durable.
        state.identity = Some(NamespaceIdentity::persisting(key.clone()));
        self.namespaces.insert(ns, state);
        let n = self.persist_ns(vec![
            NamespaceWrite::Identity {
                namespace: ns,
                secret: NamespaceSecret::of(&key),
            },
            NamespaceWrite::AppendOps {
                namespace: ns,
                ops: vec![create],
            },
        ]);
        // `NamespaceCreated` waits for this batch: the user must not hold a namespace (or an
        // invitation to it) that a crash before the fsync would lose.
        if let Some(state) = self.namespaces.get_mut(&ns) {
            state.identity_batch = Some(n);
            state.created_admin = Some(key.public());
            state.note_view();
        }
        self.subscribe(ns);
        self.ns_dirty.insert(ns);
    }

    pub(super) fn issue_invitation(
        &mut self,
        ns: NamespaceId,
        expires_at_unix_ms: u64,
        policy: InvitePolicy,
    ) {
        let nonce: [u8; 16] = self.rng.r#gen();
        let Some(state) = self.namespaces.get(&ns) else {
            return self.reject_command(CommandError::UnknownNamespace(ns));
        };
        let Some(id) = state.identity.as_ref() else {
            return self.reject_command(CommandError::NotNamespaceAdmin(ns));
        };
        if !state.governance.admins().contains(&id.public()) {
            return self.reject_command(CommandError::NotNamespaceAdmin(ns));
        }
        // An invitation signed by a key a crash could still lose would outlive the namespace.
        if !id.is_durable() {
            return self.reject_command(CommandError::NamespaceNotDurable(ns));
        }
        let invitation = SignedInvitation::issue(id.key(), ns, expires_at_unix_ms, nonce, policy);
        self.outputs
            .push_back(Output::Event(Event::InvitationIssued(invitation)));
    }

    pub(super) fn join_namespace(
        &mut self,
        invitation: SignedInvitation,
        budget_ms: Option<u64>,
        retry: bool,
    ) {
        let ns = invitation.invitation.namespace;
        if self
            .namespaces
            .get(&ns)
            .is_some_and(|s| s.member || s.join.is_some())
        {
            return self.reject_command(CommandError::AlreadyInNamespace(ns));
        }
        if !self.ns_room(&ns) {
            return;
        }
        if !self.namespaces.contains_key(&ns) {
            let state = NsState::new(ns, self);
            self.namespaces.insert(ns, state);
        }
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return;
        };
        // Reuse the identity we hold (idempotent), else provision a new one.
        let identity = match state.identity.as_ref() {
            Some(id) if id.is_durable() => NamespaceIdentity::durable(id.key().clone()),
            Some(id) => id.clone(),
            None => NamespaceIdentity::provision(None, &mut self.rng),
        };
        state.inviter = Some(invitation.invitation.inviter);
        state.governance = Governance::new(ns, self.config.namespace.governance);
        state.forget_views();
        let mut actions = Vec::new();
        let mut ctx = JoinCtx {
            now: self.now,
            config: &self.config.namespace,
            rng: &mut self.rng,
            beacons: &mut state.beacons,
            actions: &mut actions,
        };
        // Planted bug (tests only): the join runs as if it had all the time in the world.
        #[cfg(feature = "canaries")]
        let budget_ms = if self.config.ledger.canary == crate::config::Canary::JoinIgnoresDeadline {
            Some(CANARY_UNBOUNDED_BUDGET_MS)
        } else {
            budget_ms
        };
        let join = if retry {
            // The wrapper's whole budget is read once, at its start.
            let mut config = self.config.namespace.clone();
            if let Some(b) = budget_ms {
                config.retry_max_total_ms = b.max(1);
            }
            #[cfg(feature = "canaries")]
            if self.config.ledger.canary == crate::config::Canary::JoinIgnoresDeadline {
                config.join_deadline_ms = CANARY_UNBOUNDED_BUDGET_MS;
            }
            let mut ctx = JoinCtx {
                now: ctx.now,
                config: &config,
                rng: ctx.rng,
                beacons: ctx.beacons,
                actions: ctx.actions,
            };
            NsJoin::Retrying(Box::new(RetryingJoin::start(
                &mut ctx, invitation, identity,
            )))
        } else {
            let mut params = JoinParams::new(invitation, identity, ctx.config);
            if let Some(b) = budget_ms {
                params.budget_ms = b.max(1);
            }
            NsJoin::Once(Box::new(JoinMachine::start(&mut ctx, params)))
        };
        if let Some(m) = join.machine() {
            state.identity = Some(m.identity().clone());
        }
        state.join = Some(join);
        self.ns_dirty.insert(ns);
        self.run_join_actions(ns, actions);
        // Mesh facts known before the join started.
        for peer in self.connected_peers() {
            self.join_input(ns, JoinInput::PeerConnected(peer));
        }
        for peer in self.pubsub.subscribers(&topic(ns)) {
            self.join_input(ns, JoinInput::PeerSubscribed(peer));
        }
    }

    pub(super) fn leave_namespace(&mut self, ns: NamespaceId) {
        let Some(state) = self.namespaces.get_mut(&ns) else {
            return self.reject_command(CommandError::UnknownNamespace(ns));
        };
        if !state.is_active() {
            return self.reject_command(CommandError::UnknownNamespace(ns));
        }
        state.join = None;
        state.outbox = None;
        state.inviter = None;
        state.member = false;
        state.governance = Governance::new(ns, self.config.namespace.governance);
        state.logged.clear();
        // The log they vouch for is dropped with the leave.
        state.held_acks.clear();
        state.forget_views();
        let connected = self.connected_peers();
        let mut out = Vec::new();
        self.pubsub.unsubscribe(&topic(ns), &connected, &mut out);
        self.run_pubsub(out);
        self.persist_ns(vec![NamespaceWrite::Left { namespace: ns }]);
        self.ns_dirty.insert(ns);
        tracing::info!(%ns, "namespace left");
        self.outputs
            .push_back(Output::Event(Event::NamespaceLeft { namespace: ns }));
    }

    /// Planted bug (tests only): beacons advertise the live replica and acks leave at once,
    /// vouching for ops whose append is still in flight.
    fn canary_vouches_before_durable(&self) -> bool {
        #[cfg(feature = "canaries")]
        return self.config.ledger.canary == crate::config::Canary::VouchBeforeDurable;
        #[cfg(not(feature = "canaries"))]
        false
    }

    // ---- invariants ------------------------------------------------------------------------

    /// Namespace invariants, for namespaces that changed since the last check.
    pub(super) fn check_ns_invariants(&mut self) {
        let dirty = std::mem::take(&mut self.ns_dirty);
        assert!(
            self.namespaces.len() <= usize::try_from(self.config.max_namespaces).unwrap_or(0),
            "too many namespaces"
        );
        assert!(
            self.beacon_queue.len() <= BEACON_BATCH_MAX * 16,
            "beacon queue unbounded"
        );
        for ns in dirty {
            let Some(state) = self.namespaces.get(&ns) else {
                continue;
            };
            state.governance.check_invariants();
            if state.member {
                assert!(state.identity.is_some(), "member without identity");
            }
            if let Some(m) = state.join.as_ref().and_then(NsJoin::machine) {
                m.check_invariants();
                assert_eq!(m.namespace(), ns, "join of another namespace");
            }
            assert!(
                state.logged.len() <= self.config.namespace.governance.max_ops,
                "op log index unbounded"
            );
            state
                .held_acks
                .check_invariants(state.ops_batch, "held acks");
            state
                .pending_views
                .check_invariants(state.ops_batch, "pending views");
            if let Some(v) = &state.durable_view {
                assert!(
                    v.applied_through <= state.governance.applied_through(),
                    "beacons vouch for more than the replica holds"
                );
            }
        }
    }
}

/// The budget a join gets under the `JoinIgnoresDeadline` canary: a year, i.e. none.
#[cfg(feature = "canaries")]
const CANARY_UNBOUNDED_BUDGET_MS: u64 = 365 * 24 * 3_600 * 1_000;

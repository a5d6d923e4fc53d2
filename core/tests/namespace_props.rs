//! Property tests of the namespace protocol.
//!
//! 1. Random sets of valid and invalid ops, delivered in any order with duplicates to several
//!    replicas, give the same members, heads, count and digest everywhere — equal to a naive
//!    model that recomputes every op's causal past explicitly — and invalid ops never take
//!    effect (1,000 cases).
//! 2. For any schedule of beacons, batches, acks, mesh facts and silence, a join finishes no
//!    later than start + budget (1,000 cases), and a retrying join never passes
//!    `retry_max_total_ms`, jitter included (1,000 cases).
//! 3. Arbitrary bytes never panic a namespace decoder (1,000 cases).

use std::collections::{BTreeMap, BTreeSet};

use portcullis_core::crypto::{Hash32, PublicKey, SecretKey};
use portcullis_core::namespace::governance::Governance;
use portcullis_core::namespace::join::{
    JoinAction, JoinEvent, JoinFailReason, JoinInput, NamespaceIdentity,
};
use portcullis_core::namespace::ops::{
    InvitePolicy, NamespaceId, Op, OpBody, OpHash, SignedInvitation,
};
use portcullis_core::namespace::readiness::Beacon;
use portcullis_core::namespace::testkit::{AnyJoin, EPOCH_UNIX_MS, Fixture, JoinHarness, key};
use portcullis_core::namespace::{NamespaceConfig, NamespaceMessage};
use portcullis_core::node::PeerId;
use portcullis_core::rng::SeededRng;
use portcullis_core::wire::BoundedVec;
use proptest::prelude::*;
use rand::Rng;

const CASES: u32 = 1_000;
const BASE_MS: u64 = 1_000_000;
const KEYS: u8 = 6;

// ───────────────────────────── 1. convergence ─────────────────────────────

/// One step of a random history. Every field is a small number, so histories collide often
/// (same members, same nonces, revocations racing joins).
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    author: u8,
    target: u8,
    nonce: u8,
    parents: u16,
    time: u16,
    expiry: u16,
    flag: u8,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        0..16u8,
        0..KEYS,
        0..KEYS,
        0..4u8,
        any::<u16>(),
        0..2_000u16,
        0..8_000u16,
        0..16u8,
    )
        .prop_map(
            |(kind, author, target, nonce, parents, time, expiry, flag)| Step {
                kind,
                author,
                target,
                nonce,
                parents,
                time,
                expiry,
                flag,
            },
        )
}

/// Kinds 0..=8 are joins (invalid when the flag says forged / non-admin inviter, or the
/// expiry falls before the op's time), 9..=10 removals and 11 revocations (by a non-admin
/// when the flag is high), 12 a bad signature, 13 a join signed by someone else, 14 a join
/// naming a parent never delivered, 15 a misplaced or foreign `Create` or a parentless op.
fn is_deliberately_broken(s: &Step) -> bool {
    s.kind >= 12 || s.flag >= 14
}

/// Builds the ops of a history. Op 0 is the genesis; later ops pick parents among earlier
/// ops (valid or not, though deliberately broken ones are picked less often, so histories
/// grow), so invalidity propagates. Some ops name a parent that is never delivered.
fn build_ops(steps: &[Step]) -> (NamespaceId, Vec<Op>) {
    let admin = key(0);
    let create = Op::create(&admin, [7; 16], BASE_MS);
    let ns = create.namespace;
    let mut ops = vec![create];
    let mut broken = vec![false];
    for s in steps {
        let allow_broken = s.parents >> 13 == 0b111;
        let window: Vec<OpHash> = ops
            .iter()
            .zip(&broken)
            .rev()
            .take(12)
            .filter(|(_, b)| allow_broken || !**b)
            .map(|(o, _)| o.hash())
            .collect();
        let mut parents: Vec<OpHash> = window
            .iter()
            .enumerate()
            .filter(|(i, _)| s.parents & (1 << i) != 0)
            .map(|(_, h)| *h)
            .collect();
        if parents.is_empty() {
            parents.push(window.first().copied().unwrap_or_else(|| ops[0].hash()));
        }
        if s.kind == 14 {
            parents.push(OpHash(Hash32([s.flag; 32]))); // never delivered
        }
        let Ok(parents) = Op::canonical_parents(parents) else {
            continue;
        };
        let unix_ms = BASE_MS + u64::from(s.time);
        let author = key(s.author);
        let target = key(s.target);
        let nonce = [s.nonce; 16];
        let policy = if s.nonce == 3 {
            InvitePolicy::SingleUse
        } else {
            InvitePolicy::Reusable
        };
        let inviter = if s.flag == 14 { &author } else { &admin }; // non-admin inviters
        let mut invitation =
            SignedInvitation::issue(inviter, ns, BASE_MS + u64::from(s.expiry), nonce, policy);
        if s.flag == 15 {
            invitation.invitation.expires_at_unix_ms += 1; // forged
        }
        let by_admin_unless_flag = if s.flag < 13 { &admin } else { &author };
        let op = match s.kind {
            0..=8 | 14 => Op::sign(
                &target,
                ns,
                parents,
                unix_ms,
                OpBody::MemberJoined {
                    member: target.public(),
                    invitation,
                },
            ),
            9 | 10 => Op::sign(
                by_admin_unless_flag,
                ns,
                parents,
                unix_ms,
                OpBody::MemberRemoved {
                    member: target.public(),
                },
            ),
            11 => Op::sign(
                by_admin_unless_flag,
                ns,
                parents,
                unix_ms,
                OpBody::InvitationRevoked { nonce },
            ),
            12 => {
                let mut op = Op::sign(
                    &admin,
                    ns,
                    parents,
                    unix_ms,
                    OpBody::InvitationRevoked { nonce },
                );
                op.unix_ms += 1; // bad signature
                op
            }
            13 => Op::sign(
                &author,
                ns,
                parents,
                unix_ms,
                OpBody::MemberJoined {
                    member: key(s.author.wrapping_add(1) % KEYS).public(),
                    invitation,
                },
            ),
            _ => match s.flag % 3 {
                0 => Op::create(&author, [s.nonce; 16], unix_ms), // another namespace
                1 => Op::sign(
                    &admin,
                    ns,
                    parents,
                    unix_ms,
                    OpBody::Create {
                        admin: admin.public(),
                        salt: [7; 16],
                    },
                ),
                _ => Op::sign(
                    &admin,
                    ns,
                    BoundedVec::new(),
                    unix_ms,
                    OpBody::MemberRemoved {
                        member: target.public(),
                    },
                ),
            },
        };
        broken.push(is_deliberately_broken(s));
        ops.push(op);
    }
    (ns, ops)
}

/// The naive model: each op's validity from an explicitly computed causal past.
struct Model {
    valid: BTreeSet<OpHash>,
    members: BTreeSet<PublicKey>,
    heads: Vec<OpHash>,
}

fn model(ns: NamespaceId, ops: &[Op]) -> Model {
    let by_hash: BTreeMap<OpHash, &Op> = ops.iter().map(|o| (o.hash(), o)).collect();
    let mut valid: BTreeMap<OpHash, (u64, BTreeSet<OpHash>)> = BTreeMap::new(); // depth, past
    let mut invalid: BTreeSet<OpHash> = BTreeSet::new();
    // Fixed point: decide ops whose parents are all decided.
    loop {
        let mut progress = false;
        for (h, op) in &by_hash {
            if valid.contains_key(h) || invalid.contains(h) {
                continue;
            }
            if op
                .parents
                .iter()
                .any(|p| !by_hash.contains_key(p) || invalid.contains(p))
            {
                // Missing parents stay undecided (never applied); rejected parents poison.
                if op.parents.iter().any(|p| invalid.contains(p)) {
                    invalid.insert(*h);
                    progress = true;
                }
                continue;
            }
            if !op.parents.iter().all(|p| valid.contains_key(p)) {
                continue;
            }
            let mut past = BTreeSet::new();
            let mut depth = 0;
            for p in op.parents.iter() {
                let (d, pp) = &valid[p];
                past.extend(pp.iter().copied());
                past.insert(*p);
                depth = depth.max(d + 1);
            }
            if model_valid(ns, op, &past, &by_hash) {
                valid.insert(*h, (depth, past));
            } else {
                invalid.insert(*h);
            }
            progress = true;
        }
        if !progress {
            break;
        }
    }
    // Membership: last writer in (depth, hash) order wins.
    let mut order: Vec<(u64, OpHash)> = valid.iter().map(|(h, (d, _))| (*d, *h)).collect();
    order.sort();
    let mut members = BTreeSet::new();
    for (_, h) in &order {
        match &by_hash[h].body {
            OpBody::Create { admin, .. } => {
                members.insert(*admin);
            }
            OpBody::MemberJoined { member, .. } => {
                members.insert(*member);
            }
            OpBody::MemberRemoved { member } => {
                members.remove(member);
            }
            _ => {}
        }
    }
    let named: BTreeSet<OpHash> = valid
        .keys()
        .flat_map(|h| by_hash[h].parents.iter().copied())
        .collect();
    let heads = valid
        .keys()
        .filter(|h| !named.contains(h))
        .copied()
        .collect();
    Model {
        valid: valid.keys().copied().collect(),
        members,
        heads,
    }
}

fn model_valid(
    ns: NamespaceId,
    op: &Op,
    past: &BTreeSet<OpHash>,
    by_hash: &BTreeMap<OpHash, &Op>,
) -> bool {
    if op.namespace != ns || !op.parents.windows(2).all(|w| w[0] < w[1]) {
        return false;
    }
    if op.verify_signature().is_err() {
        return false;
    }
    let past_ops = || past.iter().map(|h| by_hash[h]);
    let admins: BTreeSet<PublicKey> = past_ops()
        .filter_map(|o| match &o.body {
            OpBody::Create { admin, .. } => Some(*admin),
            _ => None,
        })
        .collect();
    match &op.body {
        OpBody::Create { admin, salt } => {
            op.parents.is_empty()
                && op.author == *admin
                && NamespaceId::derive(admin, salt) == op.namespace
        }
        _ if op.parents.is_empty() => false,
        OpBody::MemberJoined { member, invitation } => {
            let inv = &invitation.invitation;
            let revoked = past_ops().any(
                |o| matches!(o.body, OpBody::InvitationRevoked { nonce } if nonce == inv.nonce),
            );
            let used = inv.policy == InvitePolicy::SingleUse
                && past_ops().any(|o| match &o.body {
                    OpBody::MemberJoined { invitation: i, .. } => {
                        i.invitation.nonce == inv.nonce
                            && i.invitation.policy == InvitePolicy::SingleUse
                    }
                    _ => false,
                });
            op.author == *member
                && inv.namespace == ns
                && invitation.verify_signature().is_ok()
                && admins.contains(&inv.inviter)
                && op.unix_ms < inv.expires_at_unix_ms
                && !revoked
                && !used
        }
        OpBody::MemberRemoved { member } => admins.contains(&op.author) && !admins.contains(member),
        OpBody::InvitationRevoked { .. } => admins.contains(&op.author),
        _ => false,
    }
}

/// Delivers `ops` to a fresh replica in an order drawn from `seed`, each op once or twice.
fn deliver(ns: NamespaceId, ops: &[Op], seed: u64) -> Governance {
    let mut rng = SeededRng::from_u64(seed);
    let mut queue: Vec<&Op> = ops.iter().collect();
    for op in ops {
        if rng.gen_bool(0.3) {
            queue.push(op);
        }
    }
    for i in (1..queue.len()).rev() {
        let j = rng.gen_range(0..=i);
        queue.swap(i, j);
    }
    let mut g = Governance::new(ns, NamespaceConfig::default().governance);
    for op in queue {
        let _ = g.insert(op.clone());
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_invalid_ops_never_take_effect(
        steps in prop::collection::vec(arb_step(), 0..24),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let (ns, ops) = build_ops(&steps);
        let want = model(ns, &ops);
        let replicas: Vec<Governance> = seeds.iter().map(|s| deliver(ns, &ops, *s)).collect();
        for g in &replicas {
            g.check_invariants();
            prop_assert_eq!(g.members(), &want.members);
            prop_assert_eq!(g.heads(), want.heads.clone());
            prop_assert_eq!(g.applied_through(), want.valid.len() as u64);
            prop_assert_eq!(g.digest(), replicas[0].digest());
            for op in &ops {
                let h = op.hash();
                prop_assert_eq!(g.contains(&h), want.valid.contains(&h), "op {:?} {:?}", h, op.body.kind_name());
            }
            // A member is the admin or has a valid MemberJoined: invalid ops never add one.
            for m in g.members() {
                let vouched = m == &key(0).public() || ops.iter().any(|o| {
                    want.valid.contains(&o.hash())
                        && matches!(&o.body, OpBody::MemberJoined { member, .. } if member == m)
                });
                prop_assert!(vouched);
            }
        }
        // Batch insertion (a backfill batch) gives the same state, and the same verdict for
        // every op.
        let mut batched = Governance::new(ns, NamespaceConfig::default().governance);
        let mut single = Governance::new(ns, NamespaceConfig::default().governance);
        for chunk in ops.chunks(5) {
            let many = batched.insert_many(chunk.to_vec());
            let one: Vec<_> = chunk.iter().map(|op| single.insert(op.clone())).collect();
            prop_assert_eq!(many, one);
        }
        prop_assert_eq!(batched.digest(), single.digest());
        prop_assert_eq!(batched.members(), &want.members);
        // Applying the same ops again changes nothing (idempotence).
        let mut again = replicas[0].clone();
        for op in &ops {
            let _ = again.insert(op.clone());
        }
        prop_assert_eq!(again.digest(), replicas[0].digest());
    }
}

// ───────────────────────────── 2. join deadlines ─────────────────────────────

const INVITER: PeerId = PeerId(1);
const SECOND: PeerId = PeerId(2);

/// What the environment does; every time is in ms from the join's start.
#[derive(Clone, Debug)]
struct Schedule {
    budget_ms: u64,
    cached_beacon: bool,
    beacons: Vec<(bool, u64, u64)>, // (from the inviter?, at, age)
    answers: Vec<Option<u64>>,      // per request: answer after delay, or silence
    batch_ops: usize,
    mesh: Vec<(u64, u8, u8)>, // (at, peer, 0 subscribe / 1 connect / 2 both)
    mesh_low: usize,
    min_acks: usize,
    acks: Vec<(u64, u8, bool)>, // (delay after announce, member, forged?)
    new_identity: bool,
    persist_after: Option<u64>,
    garbage: Vec<(u64, u8)>,
}

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    (
        (
            prop_oneof![1..15_000u64, 4_000..15_000u64, 8_000..15_000u64],
            prop::bool::weighted(0.3),
        ),
        prop::collection::vec(
            (
                prop::bool::weighted(0.7),
                prop_oneof![3 => 0..1_500u64, 1 => 0..12_000u64],
                prop_oneof![3 => 0..2_000u64, 1 => 0..20_000u64],
            ),
            0..4,
        ),
        prop::collection::vec(
            prop::option::weighted(0.85, prop_oneof![3 => 0..500u64, 1 => 0..3_000u64]),
            1..8,
        ),
        1..4usize,
        prop::collection::vec((0..6_000u64, 1..4u8, 0..3u8), 0..8),
        (0..3usize, prop_oneof![3 => Just(1usize), 1 => Just(2usize)]),
        prop::collection::vec(
            (
                prop_oneof![3 => 0..1_500u64, 1 => 0..8_000u64],
                0..3u8,
                prop::bool::weighted(0.2),
            ),
            0..4,
        ),
        (any::<bool>(), prop::option::weighted(0.9, 0..3_000u64)),
        prop::collection::vec((0..15_000u64, 0..4u8), 0..4),
    )
        .prop_map(
            |(
                (budget_ms, cached_beacon),
                beacons,
                answers,
                batch_ops,
                mesh,
                (mesh_low, min_acks),
                acks,
                (new_identity, persist_after),
                garbage,
            )| Schedule {
                budget_ms,
                cached_beacon,
                beacons,
                answers,
                batch_ops,
                mesh,
                mesh_low,
                min_acks,
                acks,
                new_identity,
                persist_after,
                garbage,
            },
        )
}

#[derive(Debug)]
enum Env {
    Input(JoinInput),
}

/// Drives `h` against the scripted environment until nothing is left to happen. Returns
/// the time of each terminal event, and checks per-step bounds via `check`.
fn drive(h: &mut JoinHarness, f: &Fixture, s: &Schedule, mut check: impl FnMut(&JoinHarness)) {
    let mut queue: BTreeMap<(u64, u64), Env> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BTreeMap<(u64, u64), Env>, at: u64, input: JoinInput| {
        seq += 1;
        q.insert((at, seq), Env::Input(input));
    };
    for (from_inviter, at, age) in &s.beacons {
        let (peer, signer) = if *from_inviter {
            (INVITER, &f.admin)
        } else {
            (SECOND, &f.members[0])
        };
        let beacon = f.beacon(signer, (EPOCH_UNIX_MS + at).saturating_sub(*age));
        push(&mut queue, *at, JoinInput::Beacon { from: peer, beacon });
    }
    for (at, peer, what) in &s.mesh {
        let p = PeerId(u64::from(*peer));
        if *what != 1 {
            push(&mut queue, *at, JoinInput::PeerSubscribed(p));
        }
        if *what != 0 {
            push(&mut queue, *at, JoinInput::PeerConnected(p));
        }
    }
    for (at, what) in &s.garbage {
        let input = match what {
            0 => JoinInput::Ack {
                from: INVITER,
                ack: f.ack(&key(90), f.create.hash()),
            },
            1 => JoinInput::Batch {
                from: INVITER,
                batch: f.answer(
                    &portcullis_core::namespace::backfill::BackfillRequest {
                        namespace: f.namespace,
                        have_heads: BoundedVec::new(),
                        request_id: 12_345,
                        after: None,
                    },
                    256,
                ),
            },
            2 => JoinInput::Op {
                from: SECOND,
                op: f.create.clone(),
            },
            _ => JoinInput::PeerDisconnected(INVITER),
        };
        push(&mut queue, *at, input);
    }
    let mut seen_actions = h.log.len();
    let mut requests = 0usize;
    let mut announced = false;
    for _ in 0..20_000 {
        // React to new actions: answer requests, ack announces, confirm persists.
        let new: Vec<(u64, JoinAction)> = h.log[seen_actions..].to_vec();
        seen_actions = h.log.len();
        for (t, action) in new {
            match action {
                JoinAction::Send(peer, NamespaceMessage::BackfillRequest(req)) => {
                    if let Some(Some(delay)) = s.answers.get(requests) {
                        let batch = f.answer(&req, s.batch_ops);
                        push(
                            &mut queue,
                            t + delay,
                            JoinInput::Batch { from: peer, batch },
                        );
                    }
                    requests += 1;
                }
                JoinAction::Publish(_, NamespaceMessage::Op(op)) if !announced => {
                    announced = true;
                    for (delay, member, forged) in &s.acks {
                        let signer = if *member == 0 {
                            &f.admin
                        } else {
                            &f.members[usize::from(*member - 1) % f.members.len()]
                        };
                        let mut ack = f.ack(signer, op.hash());
                        if *forged {
                            ack.op = f.create.hash();
                        }
                        push(&mut queue, t + delay, JoinInput::Ack { from: INVITER, ack });
                    }
                }
                JoinAction::PersistIdentity { .. } => {
                    if let Some(after) = s.persist_after {
                        push(&mut queue, t + after, JoinInput::IdentityPersisted);
                    }
                }
                _ => {}
            }
        }
        let next_event = queue.keys().next().map(|(t, _)| *t);
        let next_timer = h.next_deadline_ms();
        let finished = h.verdict().is_some();
        let t = match (next_event, next_timer) {
            (Some(e), Some(d)) => e.min(d),
            (Some(e), None) => e,
            (None, Some(d)) => d,
            (None, None) => break,
        };
        if finished && t > 120_000 {
            break; // only the outbox is left; it re-publishes forever by design
        }
        if next_timer == Some(t) && next_event.is_none_or(|e| e > t) {
            h.input(t, JoinInput::Timer);
        } else if let Some(key) = queue.keys().next().copied() {
            let Some(Env::Input(input)) = queue.remove(&key) else {
                break;
            };
            h.input(t, input);
        }
        check(h);
    }
}

fn schedule_config(s: &Schedule) -> NamespaceConfig {
    NamespaceConfig {
        join_deadline_ms: s.budget_ms,
        backfill_batch_ops: s.batch_ops,
        mesh_low: s.mesh_low,
        min_acks: s.min_acks,
        ..NamespaceConfig::default()
    }
}

fn identity(s: &Schedule) -> NamespaceIdentity {
    if s.new_identity {
        NamespaceIdentity::provision(None, &mut SeededRng::from_u64(3))
    } else {
        NamespaceIdentity::durable(key(50))
    }
}

fn harness(f: &Fixture, s: &Schedule, config: NamespaceConfig, seed: u64) -> JoinHarness {
    let mut h = JoinHarness::new(f.namespace, config, seed);
    if s.cached_beacon {
        let inviter = f.admin.public();
        let b: Beacon = f.beacon(&f.admin, EPOCH_UNIX_MS);
        let _ = h.beacons.insert(
            portcullis_core::namespace::testkit::now_at(0),
            INVITER,
            b,
            |k| *k == inviter,
        );
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn a_join_finishes_no_later_than_its_deadline(s in arb_schedule(), seed in any::<u64>()) {
        let f = Fixture::new(2);
        let mut h = harness(&f, &s, schedule_config(&s), seed);
        h.start(f.invitation(EPOCH_UNIX_MS + 3_600_000, [1; 16]), identity(&s));
        drive(&mut h, &f, &s, |_| {});
        let verdicts: Vec<(u64, JoinEvent)> = h
            .events()
            .into_iter()
            .filter(|(_, e)| matches!(e, JoinEvent::Ready(_) | JoinEvent::Failed(_)))
            .collect();
        prop_assert_eq!(verdicts.len(), 1, "exactly one verdict: {:?}", h.events());
        let (t, verdict) = &verdicts[0];
        prop_assert!(*t <= s.budget_ms, "verdict at {} > budget {}", t, s.budget_ms);
        match verdict {
            JoinEvent::Ready(r) => {
                prop_assert!(r.acked_by.len() >= s.min_acks);
                prop_assert!(r.announced.is_some());
                prop_assert_eq!(r.applied_through, f.log.applied_through() + 1);
                prop_assert_eq!(r.elapsed_ms, *t);
            }
            JoinEvent::Failed(failure) => {
                prop_assert_eq!(failure.report.elapsed_ms, *t);
                if let JoinFailReason::NoReadyPeers { waited_ms } = failure.reason {
                    prop_assert_eq!(waited_ms, 2_000u64.min(s.budget_ms / 2));
                }
                prop_assert!(!matches!(failure.reason, JoinFailReason::InvalidInvitation(_)));
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_retrying_join_never_passes_its_total_budget(
        s in arb_schedule(),
        total in 1..40_000u64,
        initial in 1..5_000u64,
        seed in any::<u64>(),
    ) {
        let f = Fixture::new(2);
        let mut config = schedule_config(&s);
        config.join_deadline_ms = config.join_deadline_ms.min(total);
        config.retry_max_total_ms = total;
        config.retry_initial_ms = initial;
        config.retry_max_ms = initial.max(30_000);
        let attempt_max = config.join_deadline_ms;
        let mut h = harness(&f, &s, config, seed);
        h.start_retrying(f.invitation(EPOCH_UNIX_MS + 3_600_000, [1; 16]), identity(&s));
        let mut attempts = BTreeMap::new();
        drive(&mut h, &f, &s, |h| {
            if let Some(AnyJoin::Retrying(r)) = &h.join
                && let Some(m) = r.machine()
            {
                attempts.insert(r.attempts(), (m.started().as_millis(), m.deadline().as_millis()));
            }
        });
        let verdicts: Vec<(u64, JoinEvent)> = h
            .events()
            .into_iter()
            .filter(|(_, e)| matches!(e, JoinEvent::Ready(_) | JoinEvent::Failed(_)))
            .collect();
        prop_assert_eq!(verdicts.len(), 1, "exactly one verdict: {:?}", h.events());
        prop_assert!(verdicts[0].0 <= total, "verdict at {} > total {}", verdicts[0].0, total);
        for (n, (start, deadline)) in &attempts {
            prop_assert!(*deadline <= total, "attempt {} ends at {} > {}", n, deadline, total);
            prop_assert!(deadline - start <= attempt_max, "attempt {} got more than {}", n, attempt_max);
        }
        // Every retry delay is within [base, base + 25%], doubling to the cap.
        let mut base = initial;
        let mut starts = vec![0u64];
        for (t, e) in h.events() {
            if let JoinEvent::Retrying { delay_ms, failure, .. } = e {
                prop_assert!(failure.reason.is_retryable());
                prop_assert!((base..=base + base / 4).contains(&delay_ms));
                base = (base * 2).min(initial.max(30_000));
                starts.push(t + delay_ms);
            }
        }
        // Every attempt starts inside the total budget, and as many started as were scheduled
        // (an attempt may start early on a fresh beacon, never late).
        for start in &starts {
            prop_assert!(*start < total);
        }
        prop_assert_eq!(attempts.len(), starts.len());
        for ((_, (started, _)), scheduled) in attempts.iter().zip(&starts) {
            prop_assert!(started <= scheduled);
        }
    }
}

// ───────────────────────────── 3. decoders ─────────────────────────────

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(
        kind in 28..52u16,
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = NamespaceMessage::decode_payload(kind, &bytes);
    }

    #[test]
    fn arbitrary_ops_never_panic_a_replica(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let f = Fixture::new(1);
        let mut g = Governance::new(f.namespace, NamespaceConfig::default().governance);
        if let Ok(NamespaceMessage::Op(op)) =
            NamespaceMessage::decode_payload(portcullis_core::namespace::kinds::NAMESPACE_OP, &bytes)
        {
            let _ = g.insert(op);
            g.check_invariants();
        }
    }
}

#[test]
fn keys_in_the_model_are_distinct() {
    let keys: BTreeSet<PublicKey> = (0..KEYS).map(|n| key(n).public()).collect();
    assert_eq!(keys.len(), usize::from(KEYS));
    let _: &SecretKey = &key(0);
}

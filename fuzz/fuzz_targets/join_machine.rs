//! Hostile and out-of-order inputs to one namespace join (a single attempt or the retry
//! wrapper), driven through the core's `JoinHarness`: beacons from members, strangers and the
//! future, backfill batches that are late, truncated, reordered or lying, acks and ops from
//! anyone, connection churn, and timers at any time. After every input:
//!
//! ```text
//!   op ─▶ JoinHarness::input(t, JoinInput) ─▶ actions logged
//!        └▶ check: machine invariants · no verdict past the deadline · one verdict, final ·
//!                  bounded caches and actions · a Ready report is backed by member acks
//! ```
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_core::crypto::SecretKey;
use portcullis_core::namespace::NamespaceConfig;
use portcullis_core::namespace::backfill::BackfillBatch;
use portcullis_core::namespace::join::{JoinEvent, JoinInput, JoinPhase, NamespaceIdentity};
use portcullis_core::namespace::ops::{InvitePolicy, Op, OpBody, OpHash, SignedInvitation};
use portcullis_core::namespace::readiness::Ack;
use portcullis_core::namespace::testkit::{AnyJoin, EPOCH_UNIX_MS, Fixture, JoinHarness, key};
use portcullis_core::node::PeerId;
use portcullis_core::wire::BoundedVec;

/// Most ops run from one input.
const MAX_OPS: usize = 64;
/// Peers 0..PEERS deliver messages.
const PEERS: u8 = 4;
/// Most actions one input may cause (a batch of ops, an announce, a probe, events).
const MAX_ACTIONS_PER_INPUT: usize = 32;

/// The namespace: an admin (key 0) and two members (keys 1, 2), built once.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| Fixture::new(2));

/// The ops of the fixture's log, parents first.
static LOG_OPS: LazyLock<Vec<Op>> = LazyLock::new(|| {
    let f = &*FIXTURE;
    let mut ops = vec![f.create.clone()];
    // Fixture::new inserts one MemberJoined per member, each on the heads before it.
    let mut replica = portcullis_core::namespace::governance::Governance::new(
        f.namespace,
        NamespaceConfig::default().governance,
    );
    let _ = replica.insert(f.create.clone());
    let request = portcullis_core::namespace::backfill::request_for(&replica, 0, None);
    ops.extend(f.answer(&request, 256).ops.into_inner());
    ops
});

/// The invitations a join may start with.
static INVITATIONS: LazyLock<[SignedInvitation; 4]> = LazyLock::new(|| {
    let f = &*FIXTURE;
    let valid = f.invitation(EPOCH_UNIX_MS + 3_600_000, [0x11; 16]);
    let expired = f.invitation(EPOCH_UNIX_MS - 1, [0x12; 16]);
    // Signed by a member that is not an admin: the signature verifies, the log refuses it.
    let non_admin = SignedInvitation::issue(
        &f.members[0],
        f.namespace,
        EPOCH_UNIX_MS + 3_600_000,
        [0x13; 16],
        InvitePolicy::Reusable,
    );
    // A valid invitation whose expiry was edited after signing.
    let mut forged = valid.clone();
    forged.invitation.expires_at_unix_ms += 1;
    [valid, expired, non_admin, forged]
});

/// Signers: the admin, the two members, a stranger.
fn signer(n: u8) -> SecretKey {
    match n % 4 {
        0 => FIXTURE.admin.clone(),
        1 => FIXTURE.members[0].clone(),
        2 => FIXTURE.members[1].clone(),
        _ => key(7),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Heads {
    /// The log's real heads and count.
    Real,
    /// Real heads, a wrong count.
    WrongCount(u8),
    /// Only the genesis, claiming the whole log.
    GenesisOnly,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum BatchShape {
    /// The honest answer to the last request.
    Honest { max_ops: u8 },
    /// An answer to another request id.
    StaleId,
    /// The honest answer with its ops reversed (children before parents).
    Reversed,
    /// The honest answer without its first op.
    MissingFirst,
    /// The honest answer claiming a different `applied_through` and `more`.
    Lying { applied: u8, more: bool },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AckOf {
    /// Our announce, if any.
    Announce,
    /// The genesis op.
    Genesis,
    /// Our announce, with the signature damaged.
    Forged,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OpChoice {
    /// An op of the log.
    Log(u8),
    /// Our own announce, echoed back.
    Announce,
    /// A removal by a stranger on the genesis.
    Stranger,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Step {
    /// Fire every timer due in the next `ms` milliseconds, one by one. Time only moves this
    /// way: the drain contract has the driver fire a timer no later than it is due.
    Advance {
        ms: u16,
    },
    /// Fire a timer now, due or not.
    Timer,
    Beacon {
        from: u8,
        signer: u8,
        heads: Heads,
        /// Signed this far from now, in seconds (negative: the past).
        skew_s: i8,
    },
    Batch {
        from: u8,
        shape: BatchShape,
    },
    Ack {
        from: u8,
        signer: u8,
        of: AckOf,
    },
    Op {
        from: u8,
        op: OpChoice,
    },
    Connect(u8),
    Disconnect(u8),
    Subscribe(u8),
    Unsubscribe(u8),
    IdentityPersisted,
}

#[derive(Arbitrary, Debug)]
struct Input {
    invitation: u8,
    retrying: bool,
    durable_identity: bool,
    /// A beacon cached before the join starts.
    cached_beacon: Option<u8>,
    steps: Vec<Step>,
}

fn peer(n: u8) -> PeerId {
    PeerId(u64::from(n % PEERS))
}

struct Checker {
    verdict: Option<(u64, bool)>,
}

fn config() -> NamespaceConfig {
    NamespaceConfig {
        mesh_low: 2,
        ..NamespaceConfig::default()
    }
}

fuzz_target!(|input: Input| {
    let f = &*FIXTURE;
    let config = config();
    let mut h = JoinHarness::new(f.namespace, config.clone(), 7);
    h.now_ms = 1_000;
    if let Some(s) = input.cached_beacon {
        let beacon = f.beacon(&signer(s), EPOCH_UNIX_MS + h.now_ms);
        let now = portcullis_core::namespace::testkit::now_at(h.now_ms);
        let members = f.member_keys();
        let _ = h
            .beacons
            .insert(now, PeerId(0), beacon, |k| members.contains(k));
    }
    let invitation = INVITATIONS[usize::from(input.invitation) % 4].clone();
    let me = key(9);
    let identity = if input.durable_identity {
        NamespaceIdentity::durable(me)
    } else {
        NamespaceIdentity::provision(None, &mut h.rng)
    };
    if input.retrying {
        h.start_retrying(invitation, identity);
    } else {
        h.start(invitation, identity);
    }
    let mut checker = Checker { verdict: None };
    check(&h, &mut checker, 0);

    for step in input.steps.iter().take(MAX_OPS) {
        match *step {
            Step::Advance { ms } => {
                let until = h.now_ms + u64::from(ms);
                for _ in 0..1_000 {
                    match h.next_deadline_ms() {
                        Some(t) if t <= until => {
                            let before = h.log.len();
                            h.input(t, JoinInput::Timer);
                            check(&h, &mut checker, before);
                        }
                        _ => break,
                    }
                }
                h.now_ms = h.now_ms.max(until);
                continue;
            }
            Step::Timer => {
                let before = h.log.len();
                h.input(h.now_ms, JoinInput::Timer);
                check(&h, &mut checker, before);
                continue;
            }
            _ => {}
        }
        let Some(join_input) = make_input(&h, *step) else {
            continue;
        };
        let before = h.log.len();
        h.input(h.now_ms, join_input);
        check(&h, &mut checker, before);
    }
});

fn make_input(h: &JoinHarness, step: Step) -> Option<JoinInput> {
    let f = &*FIXTURE;
    let now_unix = EPOCH_UNIX_MS + h.now_ms;
    Some(match step {
        Step::Beacon {
            from,
            signer: s,
            heads,
            skew_s,
        } => {
            let unix_ms = now_unix.saturating_add_signed(i64::from(skew_s) * 1_000);
            let key = signer(s);
            let beacon = match heads {
                Heads::Real => f.beacon(&key, unix_ms),
                Heads::WrongCount(n) => {
                    f.beacon_with(&key, f.log.heads(), u64::from(n % 8), unix_ms)
                }
                Heads::GenesisOnly => f.beacon_with(
                    &key,
                    vec![f.create.hash()],
                    f.log.applied_through(),
                    unix_ms,
                ),
            };
            JoinInput::Beacon {
                from: peer(from),
                beacon,
            }
        }
        Step::Batch { from, shape } => {
            let (_, request) = h.last_request()?;
            let honest = |max: usize| f.answer(&request, max);
            let batch = match shape {
                BatchShape::Honest { max_ops } => honest(usize::from(max_ops % 4) + 1),
                BatchShape::StaleId => BackfillBatch {
                    request_id: request.request_id.wrapping_add(1),
                    ..honest(256)
                },
                BatchShape::Reversed => {
                    let mut b = honest(256);
                    let mut ops = b.ops.into_inner();
                    ops.reverse();
                    b.ops = BoundedVec::try_from_vec(ops).ok()?;
                    b
                }
                BatchShape::MissingFirst => {
                    let mut b = honest(256);
                    let mut ops = b.ops.into_inner();
                    if !ops.is_empty() {
                        ops.remove(0);
                    }
                    b.ops = BoundedVec::try_from_vec(ops).ok()?;
                    b
                }
                BatchShape::Lying { applied, more } => BackfillBatch {
                    applied_through: u64::from(applied % 8),
                    more,
                    ..honest(256)
                },
            };
            JoinInput::Batch {
                from: peer(from),
                batch,
            }
        }
        Step::Ack {
            from,
            signer: s,
            of,
        } => {
            let announce = h.persisted_outbox().map(|op| op.hash());
            let op = match of {
                AckOf::Genesis => f.create.hash(),
                AckOf::Announce | AckOf::Forged => {
                    announce.unwrap_or(OpHash(portcullis_core::crypto::Hash32([0x42; 32])))
                }
            };
            let mut ack = Ack::sign(&signer(s), f.namespace, op);
            if matches!(of, AckOf::Forged) {
                ack.op = f.create.hash();
            }
            JoinInput::Ack {
                from: peer(from),
                ack,
            }
        }
        Step::Op { from, op } => {
            let op = match op {
                OpChoice::Log(n) => LOG_OPS[usize::from(n) % LOG_OPS.len()].clone(),
                OpChoice::Announce => h.persisted_outbox()?,
                OpChoice::Stranger => Op::sign(
                    &key(7),
                    f.namespace,
                    Op::canonical_parents(vec![f.create.hash()]).ok()?,
                    now_unix,
                    OpBody::MemberRemoved {
                        member: f.members[0].public(),
                    },
                ),
            };
            JoinInput::Op {
                from: peer(from),
                op,
            }
        }
        Step::Connect(p) => JoinInput::PeerConnected(peer(p)),
        Step::Disconnect(p) => JoinInput::PeerDisconnected(peer(p)),
        Step::Subscribe(p) => JoinInput::PeerSubscribed(peer(p)),
        Step::Unsubscribe(p) => JoinInput::PeerUnsubscribed(peer(p)),
        Step::IdentityPersisted => JoinInput::IdentityPersisted,
        Step::Advance { .. } | Step::Timer => return None,
    })
}

/// The invariants, checked after every input; `before` is the action log's length before it.
fn check(h: &JoinHarness, checker: &mut Checker, before: usize) {
    let config = &h.config;
    assert!(
        h.log.len() - before <= MAX_ACTIONS_PER_INPUT,
        "{} actions from one input",
        h.log.len() - before
    );
    assert!(h.beacons.len() <= config.max_cached_beacons);
    assert!(h.beacons.parked_len() <= config.max_parked_beacons);

    let (deadline, finished, machine) = match h.join.as_ref().expect("started") {
        AnyJoin::Single(m) => (m.deadline(), m.is_finished(), Some(m)),
        AnyJoin::Retrying(r) => (r.total_deadline(), r.is_finished(), r.machine()),
    };
    if let Some(m) = machine {
        m.check_invariants();
        assert!(
            m.governance().pending_len() <= config.governance.max_pending_ops,
            "pending ops past the bound"
        );
    }
    if !finished && let Some(t) = h.next_deadline_ms() {
        assert!(t <= deadline.as_millis(), "a timer set past the deadline");
    }

    // Verdicts: at most one, never past the deadline, and final.
    for (t, event) in &h.log[before..] {
        let (t, ok, report) = match event {
            portcullis_core::namespace::join::JoinAction::Event(JoinEvent::Ready(r)) => {
                (*t, true, r)
            }
            portcullis_core::namespace::join::JoinAction::Event(JoinEvent::Failed(fail)) => {
                (*t, false, &fail.report)
            }
            _ => continue,
        };
        assert!(checker.verdict.is_none(), "a second verdict: {event:?}");
        assert!(t <= deadline.as_millis(), "a verdict past the deadline");
        if ok {
            assert!(!report.acked_by.is_empty(), "ready without an ack");
            let m = machine.expect("a ready join has its attempt");
            for member in &report.acked_by {
                assert!(
                    m.governance().is_member(member),
                    "ready on an ack from a non-member"
                );
            }
            assert_eq!(report.phase, JoinPhase::AwaitingAcks);
        }
        checker.verdict = Some((t, ok));
    }
    if checker.verdict.is_some() {
        assert!(
            finished,
            "a verdict was emitted but the join is not finished"
        );
    }
    assert_eq!(
        finished,
        checker.verdict.is_some(),
        "finished without a verdict event"
    );
}

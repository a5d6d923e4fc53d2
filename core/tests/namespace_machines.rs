//! Unit tests of the namespace machines: one test per rejection row (each asserting its typed
//! error), and the join machine's phases against a scripted partner.

use std::collections::BTreeSet;

use portcullis_core::namespace::backfill::{self, Progress};
use portcullis_core::namespace::governance::{Governance, InsertError, Inserted, OpRejection};
use portcullis_core::namespace::join::{
    AnnounceOutbox, InclusionProof, JoinAction, JoinEvent, JoinFailReason, JoinInput, JoinPhase,
    NamespaceIdentity, SwitchReason,
};
use portcullis_core::namespace::ops::{
    InvitationError, InvitePolicy, NamespaceId, Op, OpBody, OpHash, SignedInvitation,
};
use portcullis_core::namespace::readiness::{
    Beacon, BeaconCache, BeaconRejection, ProbeRefused, ReadinessProbe, ReadinessResponder,
    should_ack,
};
use portcullis_core::namespace::testkit::{EPOCH_UNIX_MS, Fixture, JoinHarness, key, now_at};
use portcullis_core::namespace::{NamespaceConfig, NamespaceMessage, kinds};
use portcullis_core::node::PeerId;
use portcullis_core::time::Instant;
use portcullis_core::wire::{self, BoundedVec, DecodeError};

const HOUR_MS: u64 = 3_600_000;
const INVITER_PEER: PeerId = PeerId(1);
const OTHER_PEER: PeerId = PeerId(2);

fn config() -> NamespaceConfig {
    NamespaceConfig {
        mesh_low: 1,
        ..NamespaceConfig::default()
    }
}

fn rejected(result: Result<Inserted, InsertError>) -> OpRejection {
    match result {
        Err(InsertError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn replica(f: &Fixture) -> Governance {
    let mut g = Governance::new(f.namespace, NamespaceConfig::default().governance);
    for op in f.log.ops_missing_for(&[]) {
        g.insert(op).unwrap();
    }
    g
}

fn admin_op(f: &Fixture, unix_ms: u64, body: OpBody) -> Op {
    f.op_on_heads(&f.admin, unix_ms, body)
}

// ───────────────────────────── governance rejection rows ─────────────────────────────

#[test]
fn forged_invitation_is_rejected_by_the_log_and_by_the_joiner() {
    let f = Fixture::new(1);
    let joiner = key(50);
    let mut inv = f.invitation(EPOCH_UNIX_MS + HOUR_MS, [40; 16]);
    inv.invitation.expires_at_unix_ms += HOUR_MS; // tampered after signing
    let op = f.joined_op(&joiner, inv.clone(), EPOCH_UNIX_MS);
    let mut g = replica(&f);
    assert!(matches!(
        rejected(g.insert(op.clone())),
        OpRejection::InvitationBadSignature(_)
    ));
    assert!(!g.is_member(&joiner.public()));
    assert!(!g.contains(&op.hash()));

    // The joiner checks the signature before trusting the inviter for anything.
    let mut h = JoinHarness::new(f.namespace, config(), 1);
    h.start(inv, NamespaceIdentity::durable(joiner));
    let (t, event) = h.verdict().expect("a verdict");
    assert_eq!(t, 0);
    let JoinEvent::Failed(failure) = event else {
        panic!("expected a failure, got {event:?}");
    };
    assert!(matches!(
        failure.reason,
        JoinFailReason::InvalidInvitation(InvitationError::BadSignature(_))
    ));
    // Nothing was subscribed or probed.
    assert!(
        !h.log
            .iter()
            .any(|(_, a)| matches!(a, JoinAction::Subscribe(_) | JoinAction::Publish(..)))
    );
}

#[test]
fn expired_invitation_is_rejected_by_the_log_and_by_the_joiner() {
    let f = Fixture::new(1);
    let joiner = key(50);
    let inv = f.invitation(EPOCH_UNIX_MS, [41; 16]);
    // Judged by the op's own time: expired at exactly its expiry...
    let late = f.joined_op(&joiner, inv.clone(), EPOCH_UNIX_MS);
    let mut g = replica(&f);
    assert_eq!(
        rejected(g.insert(late)),
        OpRejection::InvitationExpired {
            expires_at_unix_ms: EPOCH_UNIX_MS,
            op_unix_ms: EPOCH_UNIX_MS,
        }
    );
    // ... and valid one millisecond earlier, whatever any replica's clock says.
    let early = f.joined_op(&joiner, inv.clone(), EPOCH_UNIX_MS - 1);
    assert!(matches!(g.insert(early), Ok(Inserted::Applied { .. })));

    let mut h = JoinHarness::new(f.namespace, config(), 1);
    h.now_ms = 10;
    h.start(inv, NamespaceIdentity::durable(joiner));
    let Some((_, JoinEvent::Failed(failure))) = h.verdict() else {
        panic!("expected a failure");
    };
    assert_eq!(
        failure.reason,
        JoinFailReason::InvalidInvitation(InvitationError::Expired {
            expires_at_unix_ms: EPOCH_UNIX_MS,
            at_unix_ms: EPOCH_UNIX_MS + 10,
        })
    );
}

#[test]
fn invitation_from_a_non_admin_is_rejected() {
    let f = Fixture::new(1);
    let joiner = key(50);
    // A member (not the admin) signs an invitation: the signature itself is valid.
    let inv = SignedInvitation::issue(
        &f.members[0],
        f.namespace,
        EPOCH_UNIX_MS + HOUR_MS,
        [42; 16],
        InvitePolicy::Reusable,
    );
    assert!(inv.verify(EPOCH_UNIX_MS).is_ok());
    let op = f.joined_op(&joiner, inv, EPOCH_UNIX_MS);
    let mut g = replica(&f);
    assert_eq!(rejected(g.insert(op)), OpRejection::InviterNotAdmin);
    assert!(!g.is_member(&joiner.public()));
}

#[test]
fn joiner_with_a_non_admin_invitation_fails_after_backfill() {
    let f = Fixture::new(1);
    let member = &f.members[0];
    let inv = SignedInvitation::issue(
        member,
        f.namespace,
        EPOCH_UNIX_MS + HOUR_MS,
        [43; 16],
        InvitePolicy::Reusable,
    );
    let mut h = JoinHarness::new(f.namespace, config(), 3);
    h.start(inv, NamespaceIdentity::durable(key(50)));
    // The (signature-verified) inviter is trusted for beacons...
    h.input(
        10,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(member, EPOCH_UNIX_MS + 10),
        },
    );
    let (_, req) = h.last_request().expect("backfill request");
    h.input(
        20,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    h.connect_mesh(&[INVITER_PEER]);
    // ... but the log shows it is not an admin, so the announce would be invalid.
    let Some((t, JoinEvent::Failed(failure))) = h.verdict() else {
        panic!("expected a failure");
    };
    assert_eq!(t, 20);
    assert_eq!(
        failure.reason,
        JoinFailReason::AnnounceRejected(OpRejection::InviterNotAdmin)
    );
    assert!(
        h.persisted_outbox().is_none(),
        "an invalid op is never announced"
    );
}

#[test]
fn revoked_invitation_is_rejected_only_in_the_revocations_future() {
    let f = Fixture::new(1);
    let joiner = key(50);
    let nonce = [44; 16];
    let inv = f.invitation(EPOCH_UNIX_MS + HOUR_MS, nonce);
    // A join concurrent with the revocation (it does not see it) stays valid ...
    let concurrent = f.joined_op(&joiner, inv.clone(), EPOCH_UNIX_MS);
    let revoke = admin_op(&f, EPOCH_UNIX_MS, OpBody::InvitationRevoked { nonce });
    // ... a join that follows the revocation does not.
    let after_parents = Op::canonical_parents(vec![revoke.hash()]).unwrap();
    let other = key(51);
    let after = Op::sign(
        &other,
        f.namespace,
        after_parents,
        EPOCH_UNIX_MS + 1,
        OpBody::MemberJoined {
            member: other.public(),
            invitation: inv,
        },
    );
    let mut g = replica(&f);
    assert!(matches!(g.insert(revoke), Ok(Inserted::Applied { .. })));
    assert!(g.is_revoked(&nonce));
    assert_eq!(rejected(g.insert(after)), OpRejection::InvitationRevoked);
    assert!(matches!(g.insert(concurrent), Ok(Inserted::Applied { .. })));
    assert!(g.is_member(&joiner.public()));
    assert!(!g.is_member(&other.public()));
}

#[test]
fn single_use_invitation_cannot_be_used_twice_in_one_history() {
    let f = Fixture::new(0);
    let inv = SignedInvitation::issue(
        &f.admin,
        f.namespace,
        EPOCH_UNIX_MS + HOUR_MS,
        [45; 16],
        InvitePolicy::SingleUse,
    );
    let (a, b) = (key(50), key(51));
    let first = f.joined_op(&a, inv.clone(), EPOCH_UNIX_MS);
    let second = Op::sign(
        &b,
        f.namespace,
        Op::canonical_parents(vec![first.hash()]).unwrap(),
        EPOCH_UNIX_MS + 1,
        OpBody::MemberJoined {
            member: b.public(),
            invitation: inv,
        },
    );
    let mut g = replica(&f);
    g.insert(first).unwrap();
    assert_eq!(rejected(g.insert(second)), OpRejection::InvitationUsed);
}

#[test]
fn member_joined_must_be_signed_by_the_member() {
    let f = Fixture::new(1);
    let joiner = key(50);
    let inv = f.invitation(EPOCH_UNIX_MS + HOUR_MS, [46; 16]);
    // The admin signs a MemberJoined naming someone else.
    let op = admin_op(
        &f,
        EPOCH_UNIX_MS,
        OpBody::MemberJoined {
            member: joiner.public(),
            invitation: inv,
        },
    );
    assert_eq!(
        rejected(replica(&f).insert(op)),
        OpRejection::SignerNotMember
    );
}

#[test]
fn removal_and_revocation_by_a_non_admin_are_rejected() {
    let f = Fixture::new(2);
    let m = &f.members[0];
    let mut g = replica(&f);
    let remove = f.op_on_heads(
        m,
        EPOCH_UNIX_MS,
        OpBody::MemberRemoved {
            member: f.members[1].public(),
        },
    );
    assert_eq!(rejected(g.insert(remove)), OpRejection::RemovalByNonAdmin);
    assert!(g.is_member(&f.members[1].public()));
    let revoke = f.op_on_heads(
        m,
        EPOCH_UNIX_MS,
        OpBody::InvitationRevoked { nonce: [0; 16] },
    );
    assert_eq!(
        rejected(g.insert(revoke)),
        OpRejection::RevocationByNonAdmin
    );
    let remove_admin = admin_op(
        &f,
        EPOCH_UNIX_MS,
        OpBody::MemberRemoved {
            member: f.admin.public(),
        },
    );
    assert_eq!(
        rejected(g.insert(remove_admin)),
        OpRejection::CannotRemoveAdmin
    );
    // The admin may remove a member.
    let ok = admin_op(
        &f,
        EPOCH_UNIX_MS,
        OpBody::MemberRemoved {
            member: f.members[1].public(),
        },
    );
    assert!(matches!(g.insert(ok), Ok(Inserted::Applied { .. })));
    assert!(!g.is_member(&f.members[1].public()));
}

#[test]
fn create_must_be_first_and_match_its_namespace() {
    let f = Fixture::new(0);
    let mut g = replica(&f);
    // A Create with parents.
    let late = admin_op(
        &f,
        EPOCH_UNIX_MS,
        OpBody::Create {
            admin: f.admin.public(),
            salt: [9; 16],
        },
    );
    assert_eq!(rejected(g.insert(late)), OpRejection::CreateNotGenesis);
    // A Create for this namespace id by someone who is not its admin.
    let usurper = key(60);
    let fake = Op::sign(
        &usurper,
        f.namespace,
        BoundedVec::new(),
        EPOCH_UNIX_MS,
        OpBody::Create {
            admin: usurper.public(),
            salt: [9; 16],
        },
    );
    assert_eq!(rejected(g.insert(fake)), OpRejection::CreateWrongNamespace);
    // A non-genesis op without parents.
    let orphan = Op::sign(
        &f.admin,
        f.namespace,
        BoundedVec::new(),
        EPOCH_UNIX_MS,
        OpBody::InvitationRevoked { nonce: [1; 16] },
    );
    assert_eq!(rejected(g.insert(orphan)), OpRejection::MissingParents);
    assert_eq!(g.admins(), &BTreeSet::from([f.admin.public()]));
}

#[test]
fn op_for_another_namespace_is_rejected() {
    let f = Fixture::new(0);
    let other = Op::create(&f.admin, [1; 16], EPOCH_UNIX_MS);
    assert_ne!(other.namespace, f.namespace);
    assert!(matches!(
        rejected(replica(&f).insert(other)),
        OpRejection::WrongNamespace { .. }
    ));
}

#[test]
fn bad_op_signature_and_non_canonical_parents_are_rejected() {
    let f = Fixture::new(1);
    let mut op = admin_op(
        &f,
        EPOCH_UNIX_MS,
        OpBody::InvitationRevoked { nonce: [2; 16] },
    );
    op.unix_ms += 1;
    let mut g = replica(&f);
    assert!(matches!(
        rejected(g.insert(op)),
        OpRejection::BadSignature(_)
    ));
    let heads = f.log.ops_missing_for(&[]);
    let (a, b) = (heads[0].hash(), heads[1].hash());
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let unsorted = Op::sign(
        &f.admin,
        f.namespace,
        BoundedVec::try_from_vec(vec![hi, lo]).unwrap(),
        EPOCH_UNIX_MS,
        OpBody::InvitationRevoked { nonce: [2; 16] },
    );
    assert_eq!(
        rejected(g.insert(unsorted)),
        OpRejection::ParentsNotCanonical
    );
}

#[test]
fn descendants_of_an_invalid_op_are_rejected_even_when_buffered_first() {
    let f = Fixture::new(0);
    let intruder = key(70);
    // The intruder removes nobody (invalid: not an admin) and then builds on its own op.
    let bad = f.op_on_heads(
        &intruder,
        EPOCH_UNIX_MS,
        OpBody::MemberRemoved {
            member: key(71).public(),
        },
    );
    let child = Op::sign(
        &f.admin,
        f.namespace,
        Op::canonical_parents(vec![bad.hash()]).unwrap(),
        EPOCH_UNIX_MS,
        OpBody::InvitationRevoked { nonce: [3; 16] },
    );
    let mut g = Governance::new(f.namespace, NamespaceConfig::default().governance);
    assert!(matches!(
        g.insert(child.clone()),
        Ok(Inserted::Buffered { .. })
    ));
    assert!(matches!(
        g.insert(bad.clone()),
        Ok(Inserted::Buffered { .. })
    ));
    let Ok(Inserted::Applied { applied, rejected }) = g.insert(f.create.clone()) else {
        panic!("create applies");
    };
    assert_eq!(applied, vec![f.create.hash()]);
    assert_eq!(
        rejected,
        vec![
            (bad.hash(), OpRejection::RemovalByNonAdmin),
            (child.hash(), OpRejection::ParentRejected(bad.hash())),
        ]
    );
    assert_eq!(g.pending_len(), 0);
    g.check_invariants();
}

/// A replica of `f`'s namespace whose pending buffer holds `max_pending_ops`.
fn replica_with_buffer(f: &Fixture, max_pending_ops: usize) -> Governance {
    let mut limits = NamespaceConfig::default().governance;
    limits.max_pending_ops = max_pending_ops;
    Governance::new(f.namespace, limits)
}

/// An op by `author` whose one parent (`[n; 32]`) never arrives.
fn orphan(f: &Fixture, author: &portcullis_core::crypto::SecretKey, n: u8, body: OpBody) -> Op {
    let parent = OpHash(portcullis_core::crypto::Hash32([n; 32]));
    Op::sign(
        author,
        f.namespace,
        Op::canonical_parents(vec![parent]).unwrap(),
        EPOCH_UNIX_MS,
        body,
    )
}

fn buffered(result: Result<Inserted, InsertError>) -> bool {
    matches!(result, Ok(Inserted::Buffered { .. }))
}

/// A full pending buffer drops its oldest op, so ops whose parents never come age out.
#[test]
fn pending_buffer_is_bounded_and_drops_its_oldest() {
    let f = Fixture::new(0);
    let mut g = replica_with_buffer(&f, 2);
    let orphans: Vec<Op> = (0..4u8)
        .map(|n| {
            orphan(
                &f,
                &f.admin,
                n,
                OpBody::InvitationRevoked { nonce: [n; 16] },
            )
        })
        .collect();
    for op in &orphans {
        assert!(buffered(g.insert(op.clone())));
        g.check_invariants();
    }
    assert_eq!(g.pending_len(), 2);
    assert_eq!(g.stats().dropped_pending, 2);
    assert!(!g.is_pending(&orphans[0].hash()) && !g.is_pending(&orphans[1].hash()));
    assert!(g.is_pending(&orphans[2].hash()) && g.is_pending(&orphans[3].hash()));
    // A dropped op is taken again when it comes again (dropping the then-oldest).
    assert!(buffered(g.insert(orphans[0].clone())));
    assert!(g.is_pending(&orphans[0].hash()) && !g.is_pending(&orphans[2].hash()));
    assert_eq!(g.stats().dropped_pending, 3);
    g.check_invariants();
    // A buffer with no room at all refuses.
    assert_eq!(
        replica_with_buffer(&f, 0).insert(orphans[0].clone()),
        Err(InsertError::BufferFull { max: 0 })
    );
}

/// Junk that any key can sign (made-up parents that never arrive) DOES NOT fill the buffer
/// for good: a genuine op that arrives before its parent is still buffered, and applies
/// when the parent comes.
#[test]
fn junk_with_missing_parents_cannot_keep_a_genuine_op_out_of_the_buffer() {
    let f = Fixture::new(0);
    let mut g = replica_with_buffer(&f, 16);
    g.insert(f.create.clone()).unwrap();
    for n in 0..64u8 {
        let x = portcullis_core::crypto::SecretKey::from_secret_bytes(&[0x60 ^ n; 32]);
        let junk = orphan(&f, &x, n, OpBody::MemberRemoved { member: x.public() });
        assert!(buffered(g.insert(junk)));
    }
    assert_eq!(g.pending_len(), 16);
    let revoke = |parent: OpHash, n: u8| {
        Op::sign(
            &f.admin,
            f.namespace,
            Op::canonical_parents(vec![parent]).unwrap(),
            EPOCH_UNIX_MS,
            OpBody::InvitationRevoked { nonce: [n; 16] },
        )
    };
    let parent = revoke(f.create.hash(), 1);
    let child = revoke(parent.hash(), 2);
    assert!(buffered(g.insert(child.clone())));
    let Ok(Inserted::Applied { applied, .. }) = g.insert(parent.clone()) else {
        panic!("the parent applies");
    };
    assert_eq!(applied, vec![parent.hash(), child.hash()]);
    assert_eq!(g.pending_len(), 15);
    g.check_invariants();
}

// ───────────────────────────── beacon rejection rows ─────────────────────────────

fn cache_with(f: &Fixture) -> (BeaconCache, BTreeSet<portcullis_core::crypto::PublicKey>) {
    (
        BeaconCache::new(f.namespace, &NamespaceConfig::default()),
        f.member_keys().into_iter().collect(),
    )
}

#[test]
fn beacon_from_a_non_member_is_rejected() {
    let f = Fixture::new(1);
    let (mut cache, known) = cache_with(&f);
    let stranger = key(80);
    let b = f.beacon(&stranger, EPOCH_UNIX_MS);
    assert_eq!(
        cache.insert(now_at(0), OTHER_PEER, b, |k| known.contains(k)),
        Err(BeaconRejection::BeaconFromNonMember)
    );
    assert!(cache.is_empty());
    // Parked, and promoted only once the key is a member.
    assert_eq!(cache.parked_len(), 1);
    assert!(
        cache
            .promote_parked(now_at(5), |k| known.contains(k))
            .is_empty()
    );
    let promoted = cache.promote_parked(now_at(5), |k| *k == stranger.public());
    assert_eq!(promoted, vec![stranger.public()]);
    assert_eq!(cache.len(), 1);
}

#[test]
fn replayed_old_beacon_is_rejected() {
    let f = Fixture::new(1);
    let (mut cache, known) = cache_with(&f);
    let newer = f.beacon(&f.admin, EPOCH_UNIX_MS + 5_000);
    let older = f.beacon(&f.admin, EPOCH_UNIX_MS + 1_000);
    let now = now_at(6_000);
    assert!(
        cache
            .insert(now, INVITER_PEER, newer.clone(), |k| known.contains(k))
            .is_ok()
    );
    assert_eq!(
        cache.insert(now, INVITER_PEER, older, |k| known.contains(k)),
        Err(BeaconRejection::ReplayedBeacon {
            cached_unix_ms: EPOCH_UNIX_MS + 5_000,
            got_unix_ms: EPOCH_UNIX_MS + 1_000,
        })
    );
    // The same beacon again is a network duplicate, not an error.
    assert_eq!(
        cache.insert(now, INVITER_PEER, newer, |k| known.contains(k)),
        Ok(portcullis_core::namespace::readiness::BeaconAccepted::Duplicate)
    );
}

#[test]
fn beacon_from_the_future_is_rejected() {
    let f = Fixture::new(1);
    let (mut cache, known) = cache_with(&f);
    let skew = NamespaceConfig::default().max_future_skew_ms;
    let at_limit = f.beacon(&f.admin, EPOCH_UNIX_MS + skew);
    let beyond = f.beacon(&f.members[0], EPOCH_UNIX_MS + skew + 1);
    assert!(
        cache
            .insert(now_at(0), INVITER_PEER, at_limit, |k| known.contains(k))
            .is_ok()
    );
    assert_eq!(
        cache.insert(now_at(0), OTHER_PEER, beyond, |k| known.contains(k)),
        Err(BeaconRejection::BeaconFromFuture { ahead_ms: skew + 1 })
    );
}

#[test]
fn forged_and_stale_beacons_are_rejected() {
    let f = Fixture::new(1);
    let (mut cache, known) = cache_with(&f);
    let mut forged = f.beacon(&f.admin, EPOCH_UNIX_MS);
    forged.applied_through += 1;
    assert!(matches!(
        cache.insert(now_at(0), INVITER_PEER, forged, |k| known.contains(k)),
        Err(BeaconRejection::BadSignature(_))
    ));
    let ttl = NamespaceConfig::default().beacon_ttl_ms;
    let stale = f.beacon(&f.admin, EPOCH_UNIX_MS);
    assert_eq!(
        cache.insert(now_at(ttl + 1), INVITER_PEER, stale, |k| known.contains(k)),
        Err(BeaconRejection::StaleBeacon { age_ms: ttl + 1 })
    );
    assert!(cache.is_empty());
}

#[test]
fn cached_beacons_age_out_and_the_cache_is_bounded() {
    let f = Fixture::new(3);
    let config = NamespaceConfig {
        max_cached_beacons: 2,
        ..NamespaceConfig::default()
    };
    let mut cache = BeaconCache::new(f.namespace, &config);
    let keys = f.member_keys();
    for (i, m) in f.members.iter().enumerate() {
        let b = f.beacon(m, EPOCH_UNIX_MS + i as u64);
        cache
            .insert(now_at(10), PeerId(i as u64), b, |k| keys.contains(k))
            .unwrap();
    }
    assert_eq!(cache.len(), 2);
    assert!(
        cache.get(&f.members[0].public()).is_none(),
        "oldest evicted"
    );
    let ttl = config.beacon_ttl_ms;
    assert!(
        cache
            .best_fresh(now_at(2 + ttl), |_| true, &BTreeSet::new())
            .is_some()
    );
    assert!(
        cache
            .best_fresh(now_at(3 + ttl), |_| true, &BTreeSet::new())
            .is_none()
    );
}

#[test]
fn probes_are_answered_at_once_and_rate_limited_per_peer() {
    let f = Fixture::new(0);
    let config = NamespaceConfig::default();
    let mut r = ReadinessResponder::new(f.namespace, &config, Instant::from_millis(0));
    let probe = ReadinessProbe {
        namespace: f.namespace,
        nonce: 1,
    };
    let t = Instant::from_millis;
    assert_eq!(r.on_probe(t(0), PeerId(1), &probe), Ok(()));
    assert_eq!(r.on_probe(t(0), PeerId(2), &probe), Ok(()));
    assert_eq!(
        r.on_probe(t(1_000), PeerId(1), &probe),
        Err(ProbeRefused::RateLimited {
            retry_after_ms: 1_500
        })
    );
    assert_eq!(r.on_probe(t(2_500), PeerId(1), &probe), Ok(()));
    let wrong = ReadinessProbe {
        namespace: NamespaceId::default(),
        nonce: 1,
    };
    assert_eq!(
        r.on_probe(t(9_000), PeerId(3), &wrong),
        Err(ProbeRefused::WrongNamespace)
    );
    // Periodic beacons every beacon_interval_ms.
    assert!(r.beacon_due(t(0)));
    assert!(!r.beacon_due(t(4_999)));
    assert_eq!(r.next_deadline(), t(5_000));
    assert!(r.beacon_due(t(5_000)));
}

#[test]
fn members_ack_only_applied_plausible_announces() {
    let f = Fixture::new(0);
    let joiner = key(50);
    let op = f.joined_op(
        &joiner,
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [5; 16]),
        EPOCH_UNIX_MS,
    );
    let mut g = replica(&f);
    assert!(
        !should_ack(&g, &op, EPOCH_UNIX_MS, 60_000),
        "not applied yet"
    );
    g.insert(op.clone()).unwrap();
    assert!(should_ack(&g, &op, EPOCH_UNIX_MS + 60_000, 60_000));
    assert!(
        !should_ack(&g, &op, EPOCH_UNIX_MS + 60_001, 60_000),
        "backdated"
    );
}

// ───────────────────────────── wire ─────────────────────────────

#[test]
fn every_namespace_message_round_trips_and_decoding_is_bounded() {
    let f = Fixture::new(2);
    let empty = Governance::new(f.namespace, NamespaceConfig::default().governance);
    let req = backfill::request_for(&empty, 5, None);
    let batch = f.answer(&req, 256);
    let messages = vec![
        NamespaceMessage::Probe(ReadinessProbe {
            namespace: f.namespace,
            nonce: 3,
        }),
        NamespaceMessage::Beacon(f.beacon(&f.admin, EPOCH_UNIX_MS)),
        NamespaceMessage::BackfillRequest(req),
        NamespaceMessage::BackfillBatch(batch.clone()),
        NamespaceMessage::Op(f.create.clone()),
        NamespaceMessage::Ack(f.ack(&f.admin, f.create.hash())),
    ];
    let mut seen = BTreeSet::new();
    for m in messages {
        assert!((30..50).contains(&m.kind()));
        assert!(seen.insert(m.kind()), "kind numbers are distinct");
        let back = NamespaceMessage::decode_payload(m.kind(), &m.encode_payload()).unwrap();
        assert_eq!(back, m);
    }
    // A batch claiming more ops than MAX_OPS_PER_BATCH fails before reading them.
    let mut bytes = 7u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&1_000_000u32.to_le_bytes());
    assert_eq!(
        NamespaceMessage::decode_payload(kinds::BACKFILL_BATCH, &bytes),
        Err(DecodeError::CollectionTooLong {
            len: 1_000_000,
            max: backfill::MAX_OPS_PER_BATCH,
        })
    );
    // Largest possible batch fits the default frame.
    let big = batch
        .ops
        .iter()
        .map(|op| wire::encode(op).len())
        .max()
        .unwrap();
    assert!(big * backfill::MAX_OPS_PER_BATCH < portcullis_core::config::DEFAULT_MAX_FRAME_BYTES);
}

// ───────────────────────────── join machine phases ─────────────────────────────

/// A `MemberJoined` by `member` (with a fresh invitation, nonce `nonce`) whose one parent is
/// `parent`, whatever the fixture's log holds.
fn joined_on(
    f: &Fixture,
    member: &portcullis_core::crypto::SecretKey,
    parent: OpHash,
    nonce: [u8; 16],
) -> Op {
    Op::sign(
        member,
        f.namespace,
        Op::canonical_parents(vec![parent]).expect("one parent is canonical"),
        EPOCH_UNIX_MS + 200,
        OpBody::MemberJoined {
            member: member.public(),
            invitation: f.invitation(EPOCH_UNIX_MS + HOUR_MS, nonce),
        },
    )
}

/// A join of `key(50)` with a fresh invitation (nonce `[nonce; 16]`), started with the
/// inviter's beacon of the fixture's log just arrived: the partner is resolved.
fn joining_on_the_inviters_beacon(
    f: &Fixture,
    config: NamespaceConfig,
    seed: u64,
    nonce: u8,
) -> JoinHarness {
    let mut h = JoinHarness::new(f.namespace, config, seed);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [nonce; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    h.input(
        0,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS),
        },
    );
    h
}

/// Drives a join from a resolved partner to the announce: answers every request from the
/// fixture and connects the mesh. Returns the announced op.
fn backfill_and_announce(h: &mut JoinHarness, f: &Fixture, peer: PeerId, at_ms: u64) -> Op {
    for _ in 0..16 {
        let Some((to, req)) = h.last_request() else {
            break;
        };
        assert_eq!(to, peer);
        let batch = f.answer(&req, h.config.backfill_batch_ops);
        let more = batch.more;
        h.input(at_ms, JoinInput::Batch { from: peer, batch });
        if !more {
            break;
        }
    }
    h.connect_mesh(&[peer]);
    h.persisted_outbox().expect("announced")
}

#[test]
fn fast_path_resolves_on_a_cached_beacon_and_reports_real_values() {
    let f = Fixture::new(2);
    let joiner = key(50);
    let inv = f.invitation(EPOCH_UNIX_MS + HOUR_MS, [10; 16]);
    let mut h = JoinHarness::new(f.namespace, config(), 7);
    // Cached before the join starts (only the inviter is trusted at first).
    let inviter = f.admin.public();
    h.beacons
        .insert(
            now_at(0),
            INVITER_PEER,
            f.beacon(&f.admin, EPOCH_UNIX_MS),
            |k| *k == inviter,
        )
        .unwrap();
    h.now_ms = 100;
    h.start(inv, NamespaceIdentity::durable(joiner.clone()));
    let events = h.events();
    assert_eq!(
        events[0],
        (
            100,
            JoinEvent::JoinStarted {
                partner: INVITER_PEER,
                partner_key: f.admin.public(),
                partner_head: f.log.heads(),
                partner_applied: 3,
            }
        )
    );
    let op = backfill_and_announce(&mut h, &f, INVITER_PEER, 200);
    assert_eq!(h.machine().phase(), JoinPhase::AwaitingAcks);
    h.input(
        300,
        JoinInput::Ack {
            from: INVITER_PEER,
            ack: f.ack(&f.members[1], op.hash()),
        },
    );
    let Some((t, JoinEvent::Ready(report))) = h.verdict() else {
        panic!("expected ready, got {:?}", h.events());
    };
    assert_eq!(t, 300);
    assert_eq!(report.namespace, f.namespace);
    assert_eq!(report.final_heads, vec![op.hash()]);
    assert_eq!(report.applied_through, 4);
    assert_eq!(report.members_learned, 4);
    assert_eq!(report.acked_by, vec![f.members[1].public()]);
    assert_eq!(report.elapsed_ms, 200);
    assert_eq!(report.partner, Some(f.admin.public()));
    assert_eq!(report.announced, Some(op.hash()));
    assert_eq!(report.attempt, 1);
    // The ack also proved inclusion: the outbox is cleared and nothing is left to do.
    assert!(h.log.iter().any(|(_, a)| matches!(
        a,
        JoinAction::ClearOutbox { op: o, .. } if *o == op.hash()
    )));
    assert!(h.machine().is_idle());
    assert_eq!(h.next_deadline_ms(), None);
}

#[test]
fn fast_path_resolves_on_a_newly_arrived_beacon() {
    let f = Fixture::new(1);
    let mut h = JoinHarness::new(f.namespace, config(), 8);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [11; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    assert!(h.events().is_empty());
    // A beacon from a non-member first: refused, nothing resolves.
    h.input(
        100,
        JoinInput::Beacon {
            from: OTHER_PEER,
            beacon: f.beacon(&f.members[0], EPOCH_UNIX_MS + 100),
        },
    );
    assert!(h.events().is_empty());
    h.input(
        450,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS + 440),
        },
    );
    let events = h.events();
    assert!(matches!(
        events[0],
        (
            450,
            JoinEvent::JoinStarted {
                partner: INVITER_PEER,
                partner_applied: 2,
                ..
            }
        )
    ));
    assert_eq!(h.machine().phase(), JoinPhase::Backfilling);
}

#[test]
fn no_ready_peers_when_the_fast_path_budget_runs_out() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        join_deadline_ms: 3_000,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 9);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [12; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    // min(2 s, 3 s / 2) = 1.5 s.
    assert_eq!(
        h.machine().fast_path_deadline(),
        Instant::from_millis(1_500)
    );
    h.run_timers_until(10_000);
    let Some((t, JoinEvent::Failed(failure))) = h.verdict() else {
        panic!("expected a failure");
    };
    assert_eq!(t, 1_500);
    assert_eq!(
        failure.reason,
        JoinFailReason::NoReadyPeers { waited_ms: 1_500 }
    );
    assert_eq!(failure.report.phase, JoinPhase::Probing);
    assert!(failure.reason.is_retryable());
    // Probed at the start and again every probe_retry_ms, never after the verdict.
    let probes: Vec<u64> = h
        .log
        .iter()
        .filter(|(_, a)| matches!(a, JoinAction::Publish(_, NamespaceMessage::Probe(_))))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(probes, vec![0, 1_000]);
}

#[test]
fn a_silent_partner_is_replaced_by_another_fresh_member() {
    let f = Fixture::new(2);
    let c = NamespaceConfig {
        backfill_batch_ops: 2,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 10);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [13; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    // Member 0's beacon arrives first: not yet known, so parked.
    h.input(
        10,
        JoinInput::Beacon {
            from: OTHER_PEER,
            beacon: f.beacon(&f.members[0], EPOCH_UNIX_MS + 10),
        },
    );
    h.input(
        20,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS + 20),
        },
    );
    // The inviter sends one batch (create + member 0's join), then goes silent.
    let (_, req) = h.last_request().unwrap();
    let batch = f.answer(&req, 2);
    assert!(batch.more);
    h.input(
        30,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch,
        },
    );
    let (to, _) = h.last_request().unwrap();
    assert_eq!(to, INVITER_PEER);
    h.run_timers_until(2_030);
    let switched = h
        .events()
        .into_iter()
        .find(|(_, e)| matches!(e, JoinEvent::PartnerSwitched { .. }));
    assert_eq!(
        switched,
        Some((
            2_030,
            JoinEvent::PartnerSwitched {
                from: f.admin.public(),
                to: f.members[0].public(),
                reason: SwitchReason::Silent,
            }
        ))
    );
    let (to, req) = h.last_request().unwrap();
    assert_eq!(to, OTHER_PEER);
    // The new partner completes the backfill.
    h.input(
        2_100,
        JoinInput::Batch {
            from: OTHER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    assert!(h.events().iter().any(
        |(t, e)| *t == 2_100 && matches!(e, JoinEvent::BackfillComplete { applied_through: 3 })
    ));
    // A late batch from the old partner is ignored.
    h.input(
        2_200,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    // No known subscribers: min(mesh_low, 0) = 0 connected peers are enough.
    assert_eq!(h.machine().phase(), JoinPhase::AwaitingAcks);
}

#[test]
fn a_silent_partner_without_alternative_is_asked_again() {
    let f = Fixture::new(1);
    let mut h = joining_on_the_inviters_beacon(&f, config(), 11, 14);
    let (_, first) = h.last_request().unwrap();
    h.run_timers_until(2_000);
    let (to, second) = h.last_request().unwrap();
    assert_eq!(to, INVITER_PEER);
    assert_ne!(first.request_id, second.request_id);
    // The answer to the first (lost, then late) request no longer counts.
    h.input(
        2_100,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&first, 256),
        },
    );
    assert_eq!(h.machine().phase(), JoinPhase::Backfilling);
    h.input(
        2_200,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&second, 256),
        },
    );
    assert_eq!(
        h.machine().phase(),
        JoinPhase::AwaitingAcks,
        "min(mesh_low, 0 known subscribers) = 0"
    );
}

#[test]
fn zero_acks_is_a_failure_with_a_partial_report_inside_the_budget() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        join_deadline_ms: 6_000,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 12);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [15; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    h.input(
        500,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS + 500),
        },
    );
    let op = backfill_and_announce(&mut h, &f, INVITER_PEER, 2_000);
    // An ack for another op, a forged ack and an ack from a stranger do not count.
    let mut forged = f.ack(&f.admin, op.hash());
    forged.op = f.create.hash();
    for ack in [
        f.ack(&f.admin, f.create.hash()),
        forged,
        f.ack(&key(90), op.hash()),
    ] {
        h.input(
            3_000,
            JoinInput::Ack {
                from: INVITER_PEER,
                ack,
            },
        );
    }
    h.run_timers_until(20_000);
    let Some((t, JoinEvent::Failed(failure))) = h.verdict() else {
        panic!("expected a failure");
    };
    // The 5 s ack wait from 2 s is clamped to the 6 s budget.
    assert_eq!(t, 6_000);
    assert_eq!(
        failure.reason,
        JoinFailReason::AcksMissing {
            received: 0,
            required: 1
        }
    );
    let r = &failure.report;
    assert_eq!(r.phase, JoinPhase::AwaitingAcks);
    assert_eq!(r.final_heads, vec![op.hash()]);
    assert_eq!(r.applied_through, 3);
    assert_eq!(r.members_learned, 3);
    assert!(r.acked_by.is_empty());
    assert_eq!(r.elapsed_ms, 6_000);
    assert_eq!(r.announced, Some(op.hash()));
    assert!(
        !h.events()
            .iter()
            .any(|(_, e)| matches!(e, JoinEvent::Ready(_)))
    );
}

#[test]
fn outbox_republishes_survives_a_restart_and_stops_after_an_ack() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        join_deadline_ms: 4_000,
        ack_wait_ms: 1_000,
        ..config()
    };
    let mut h = joining_on_the_inviters_beacon(&f, c.clone(), 13, 16);
    let op = backfill_and_announce(&mut h, &f, INVITER_PEER, 100);
    h.run_timers_until(3_500);
    assert!(matches!(h.verdict(), Some((1_100, JoinEvent::Failed(_)))));
    // The outbox outlives the verdict: published at 100, then every second.
    assert_eq!(h.announce_publishes(), 4);
    assert!(!h.machine().is_idle());

    // "Restart": the node rebuilds the outbox from the persisted op alone.
    let persisted = h.persisted_outbox().unwrap();
    assert_eq!(persisted, op);
    let mut actions = Vec::new();
    let mut outbox = AnnounceOutbox::resume(persisted, now_at(10_000), &c, &mut actions).unwrap();
    assert!(matches!(&actions[..], [JoinAction::Publish(_, NamespaceMessage::Op(o))] if *o == op));
    let mut t = 10_000;
    for _ in 0..3 {
        t = outbox.next_deadline().unwrap().as_millis();
        outbox.handle(now_at(t), &JoinInput::Timer, &mut actions);
    }
    assert_eq!(t, 13_000);
    assert_eq!(actions.len(), 4);
    // An untrusted ack does nothing; the inviter's ack clears it.
    let stranger = f.ack(&key(90), op.hash());
    outbox.handle(
        now_at(t),
        &JoinInput::Ack {
            from: OTHER_PEER,
            ack: stranger,
        },
        &mut actions,
    );
    assert!(!outbox.is_done());
    let ack = f.ack(&f.admin, op.hash());
    outbox.handle(
        now_at(t),
        &JoinInput::Ack {
            from: INVITER_PEER,
            ack,
        },
        &mut actions,
    );
    assert!(outbox.is_done());
    assert!(matches!(
        &actions[4..],
        [
            JoinAction::ClearOutbox { .. },
            JoinAction::Event(JoinEvent::AnnounceIncluded {
                proof: InclusionProof::Ack(_),
                ..
            })
        ]
    ));
    assert_eq!(outbox.next_deadline(), None);
    outbox.handle(now_at(t + 5_000), &JoinInput::Timer, &mut actions);
    assert_eq!(actions.len(), 6, "nothing after the clear");

    // In the original machine, a member's beacon naming the op also proves inclusion.
    let mut g = replica(&f);
    g.insert(op.clone()).unwrap();
    h.input(
        3_600,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: Beacon::for_replica(&f.admin, &g, EPOCH_UNIX_MS + 3_600),
        },
    );
    assert!(h.machine().is_idle());
    let publishes = h.announce_publishes();
    h.run_timers_until(9_000);
    assert_eq!(h.announce_publishes(), publishes);
}

/// Only a member's ack or beacon proves an announce is in a member's durable log (DESIGN.md
/// "Join machine"). Any op descending from ours used to count: but another joiner that heard
/// our op can announce on top of it while no member holds ours, and members then buffer its
/// op forever for want of ours, which we had stopped re-publishing (found in review).
#[test]
fn an_op_descending_from_our_announce_is_no_proof_of_inclusion() {
    let f = Fixture::new(1);
    let mut h = joining_on_the_inviters_beacon(&f, config(), 17, 17);
    let ours = backfill_and_announce(&mut h, &f, INVITER_PEER, 100);
    let on_ours = joined_on(&f, &key(60), ours.hash(), [18; 16]);
    let publishes = h.announce_publishes();
    h.input(
        200,
        JoinInput::Op {
            from: OTHER_PEER,
            op: on_ours,
        },
    );
    assert!(
        !h.events()
            .iter()
            .any(|(_, e)| matches!(e, JoinEvent::AnnounceIncluded { .. })),
        "a joiner's op on top of ours cleared the outbox"
    );
    h.run_timers_until(100 + 2 * h.config.announce_retry_ms);
    assert!(h.announce_publishes() > publishes, "the outbox stopped");
}

/// After a restart the log has usually moved past our announce: members acked it once, before
/// the crash, and their beacons name only later heads. The resumed outbox re-published forever
/// (found in review); with our recovered replica it sees those heads descend from our op.
#[test]
fn a_resumed_outbox_clears_on_a_beacon_whose_heads_descend_from_the_op() {
    let f = Fixture::new(1);
    let c = config();
    let joiner = key(50);
    let ours = f.joined_op(
        &joiner,
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [19; 16]),
        EPOCH_UNIX_MS + 100,
    );
    let later = joined_on(&f, &key(61), ours.hash(), [20; 16]);
    let mut log = replica(&f);
    for op in [&ours, &later] {
        assert!(matches!(
            log.insert(op.clone()),
            Ok(Inserted::Applied { .. })
        ));
    }
    let beacon = Beacon::for_replica(&f.admin, &log, EPOCH_UNIX_MS + 300);
    assert!(!beacon.heads.contains(&ours.hash()), "the heads moved on");
    let input = JoinInput::Beacon {
        from: INVITER_PEER,
        beacon,
    };
    let mut actions = Vec::new();
    let mut outbox = AnnounceOutbox::resume(ours, now_at(1_000), &c, &mut actions).unwrap();
    outbox.handle(now_at(1_000), &input, &mut actions);
    assert!(
        !outbox.is_done(),
        "without a replica, only heads naming the op count"
    );
    outbox.handle_with_replica(now_at(1_000), &input, Some(&log), &mut actions);
    assert!(outbox.is_done());
    assert!(matches!(
        &actions[1..],
        [
            JoinAction::ClearOutbox { .. },
            JoinAction::Event(JoinEvent::AnnounceIncluded {
                proof: InclusionProof::Beacon(_),
                ..
            })
        ]
    ));
}

#[test]
fn a_new_identity_is_persisted_once_and_announced_only_when_durable() {
    let f = Fixture::new(1);
    let mut h = JoinHarness::new(f.namespace, config(), 14);
    let mut rng = portcullis_core::rng::SeededRng::from_u64(5);
    let identity = NamespaceIdentity::provision(None, &mut rng);
    let public = identity.public();
    h.start(f.invitation(EPOCH_UNIX_MS + HOUR_MS, [17; 16]), identity);
    let persists: Vec<_> = h
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            JoinAction::PersistIdentity { key, .. } => Some(key.public()),
            _ => None,
        })
        .collect();
    assert_eq!(persists, vec![public]);
    h.input(
        0,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS),
        },
    );
    let (_, req) = h.last_request().unwrap();
    h.input(
        10,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    h.connect_mesh(&[INVITER_PEER]);
    assert!(h.persisted_outbox().is_none(), "identity not durable yet");
    h.input(50, JoinInput::IdentityPersisted);
    let op = h.persisted_outbox().expect("announced once durable");
    assert_eq!(op.author, public);
}

#[test]
fn mesh_wait_needs_min_of_mesh_low_and_known_subscribers() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        mesh_low: 2,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 15);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [18; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    // Three known subscribers, one connected (facts may arrive before the beacon).
    for p in 1..=3 {
        h.input(0, JoinInput::PeerSubscribed(PeerId(p)));
    }
    h.input(0, JoinInput::PeerConnected(PeerId(1)));
    h.input(
        0,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS),
        },
    );
    let (_, req) = h.last_request().unwrap();
    h.input(
        10,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    assert_eq!(h.machine().phase(), JoinPhase::MeshWait);
    h.input(20, JoinInput::PeerConnected(PeerId(9))); // not a subscriber
    assert_eq!(h.machine().phase(), JoinPhase::MeshWait);
    h.input(30, JoinInput::PeerConnected(PeerId(3)));
    assert_eq!(h.machine().phase(), JoinPhase::AwaitingAcks);
}

#[test]
fn mesh_that_never_forms_fails_at_the_deadline() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        join_deadline_ms: 5_000,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 16);
    h.start(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [19; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    h.input(0, JoinInput::PeerSubscribed(PeerId(4)));
    h.input(
        0,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS),
        },
    );
    let (_, req) = h.last_request().unwrap();
    h.input(
        10,
        JoinInput::Batch {
            from: INVITER_PEER,
            batch: f.answer(&req, 256),
        },
    );
    h.run_timers_until(60_000);
    let Some((t, JoinEvent::Failed(failure))) = h.verdict() else {
        panic!("expected a failure");
    };
    assert_eq!(t, 5_000);
    assert_eq!(
        failure.reason,
        JoinFailReason::DeadlineExceeded {
            phase: JoinPhase::MeshWait
        }
    );
    assert_eq!(failure.report.applied_through, 2);
    assert_eq!(
        h.next_deadline_ms(),
        None,
        "nothing announced, nothing left"
    );
}

#[test]
fn retrying_join_backs_off_with_jitter_and_never_passes_the_total() {
    let f = Fixture::new(1);
    let c = NamespaceConfig {
        retry_max_total_ms: 60_000,
        ..config()
    };
    let mut h = JoinHarness::new(f.namespace, c, 17);
    h.start_retrying(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [20; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    h.run_timers_until(200_000);
    let events = h.events();
    let mut base = 3_000u64;
    let mut last_fail = 0;
    let mut retries = 0;
    for (t, e) in &events {
        match e {
            JoinEvent::Retrying {
                delay_ms, failure, ..
            } => {
                assert!(matches!(
                    failure.reason,
                    JoinFailReason::NoReadyPeers { .. }
                ));
                assert!(
                    (base..=base + base / 4).contains(delay_ms),
                    "delay {delay_ms} for base {base}"
                );
                base = (base * 2).min(30_000);
                retries += 1;
                last_fail = *t;
            }
            JoinEvent::Failed(failure) => {
                assert!(*t <= 60_000);
                assert!(*t >= last_fail);
                assert!(matches!(
                    failure.reason,
                    JoinFailReason::NoReadyPeers { .. }
                ));
                assert_eq!(failure.report.attempt, retries + 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(retries >= 3, "retried {retries} times");
    assert!(matches!(events.last(), Some((_, JoinEvent::Failed(_)))));
}

#[test]
fn a_fresh_beacon_ends_the_backoff_early() {
    let f = Fixture::new(1);
    let mut h = JoinHarness::new(f.namespace, config(), 18);
    h.start_retrying(
        f.invitation(EPOCH_UNIX_MS + HOUR_MS, [21; 16]),
        NamespaceIdentity::durable(key(50)),
    );
    h.run_timers_until(2_500);
    assert!(matches!(
        h.events()[..],
        [(2_000, JoinEvent::Retrying { .. })]
    ));
    h.input(
        2_600,
        JoinInput::Beacon {
            from: INVITER_PEER,
            beacon: f.beacon(&f.admin, EPOCH_UNIX_MS + 2_600),
        },
    );
    let started = h
        .events()
        .into_iter()
        .find(|(_, e)| matches!(e, JoinEvent::JoinStarted { .. }));
    assert!(matches!(started, Some((2_600, _))));
    assert_eq!(h.machine().deadline(), Instant::from_millis(12_600));
    // Completing the second attempt gives Ready with attempt 2.
    let op = backfill_and_announce(&mut h, &f, INVITER_PEER, 2_700);
    h.input(
        2_800,
        JoinInput::Ack {
            from: INVITER_PEER,
            ack: f.ack(&f.admin, op.hash()),
        },
    );
    let Some((_, JoinEvent::Ready(report))) = h.verdict() else {
        panic!("expected ready");
    };
    assert_eq!(report.attempt, 2);
}

/// More heads side by side than a request can name (anyone with a reusable invitation can
/// make them): the ops behind unnamed heads looked missing to the partner, which sent the
/// same held ops batch after batch until the deadline, so every later join of the namespace
/// failed (found in review). The request's cursor moves each pass forward.
#[test]
fn backfill_finishes_past_more_heads_than_a_request_names() {
    let mut f = Fixture::new(0);
    for i in 0..400u16 {
        let mut secret = [7u8; 32];
        secret[..2].copy_from_slice(&i.to_le_bytes());
        let member = portcullis_core::crypto::SecretKey::from_secret_bytes(&secret);
        let mut nonce = [3u8; 16];
        nonce[..2].copy_from_slice(&i.to_le_bytes());
        // On the genesis only: every one of them stays a head.
        let op = joined_on(&f, &member, f.create.hash(), nonce);
        assert!(matches!(f.log.insert(op), Ok(Inserted::Applied { .. })));
    }
    assert_eq!(f.log.heads().len(), 400);
    let mut h = joining_on_the_inviters_beacon(&f, config(), 23, 23);
    for round in 0..8u64 {
        let Some((_, req)) = h.last_request() else {
            break;
        };
        let batch = f.answer(&req, h.config.backfill_batch_ops);
        h.input(
            10 + round,
            JoinInput::Batch {
                from: INVITER_PEER,
                batch,
            },
        );
        if h.events()
            .iter()
            .any(|(_, e)| matches!(e, JoinEvent::BackfillComplete { .. }))
        {
            return;
        }
    }
    panic!("backfill did not finish in 8 batches of 256 for 401 ops");
}

#[test]
fn missing_ops_after_a_key_starts_just_past_it() {
    let f = Fixture::new(3);
    let (all, more) = f.log.missing_ops(&[], None, usize::MAX);
    assert!(!more);
    assert_eq!(all.len(), 4);
    for (i, op) in all.iter().enumerate() {
        let key = f.log.order_key(&op.hash()).expect("applied");
        let (rest, more) = f.log.missing_ops(&[], Some(key), 1);
        assert_eq!(rest.first(), all.get(i + 1), "after op {i}");
        assert_eq!(more, i + 2 < all.len());
    }
}

#[test]
fn backfill_progress_is_exact() {
    let f = Fixture::new(3);
    let mut g = Governance::new(f.namespace, NamespaceConfig::default().governance);
    let heads = f.log.heads();
    let applied = f.log.applied_through();
    assert_eq!(
        backfill::progress(&g, &heads, applied),
        Progress::Incomplete
    );
    let mut req = backfill::request_for(&g, 1, None);
    loop {
        let batch = f.answer(&req, 1);
        assert_eq!(batch.ops.len(), 1);
        for op in batch.ops.iter().cloned() {
            assert!(matches!(g.insert(op), Ok(Inserted::Applied { .. })));
        }
        if !batch.more {
            break;
        }
        req = backfill::request_for(&g, req.request_id + 1, None);
    }
    assert_eq!(backfill::progress(&g, &heads, applied), Progress::Complete);
    assert_eq!(
        backfill::progress(&g, &heads, applied + 1),
        Progress::Inconsistent { ours: applied }
    );
    assert_eq!(g.digest(), f.log.digest());
}

//! Namespaces end to end through `Node` in the deterministic harness (issue 4 acceptance).

use portcullis_core::config::Config;
use portcullis_core::crypto::{Hash32, SecretKey};
use portcullis_core::messages::PeerMessage;
use portcullis_core::namespace::NamespaceMessage;
use portcullis_core::namespace::join::{JoinEvent, JoinFailReason};
use portcullis_core::namespace::ops::{
    InvitePolicy, NamespaceId, Op, OpBody, OpHash, SignedInvitation,
};
use portcullis_core::namespace::readiness::{Beacon, ReadinessProbe};
use portcullis_core::node::{CommandError, Event, LocalCommand, PeerId};
use portcullis_core::pubsub::{Subscriptions, Topic};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::wire::BoundedVec;

fn config() -> Config {
    portcullis_core::testing::quick_namespace_config()
}

/// An admin plus `members - 1` joined members, fully connected. Returns the namespace, the
/// member node indices (admin first) and a reusable invitation.
fn namespace_with(
    cluster: &mut Cluster,
    members: usize,
) -> (NamespaceId, Vec<usize>, SignedInvitation) {
    let admin = cluster.namespace_node(&[]);
    let ns = cluster.create_namespace(admin, [7; 16]);
    let inv = cluster.invite(admin, ns, 3_600_000);
    let mut nodes = vec![admin];
    for _ in 1..members {
        let n = cluster.namespace_node(&nodes.clone());
        cluster.join_namespace(n, inv.clone(), 10_000);
        assert!(
            cluster.run_until(10_000, |c| c.namespace_ready(n, ns).is_some()),
            "member {n} ready: {:?}",
            cluster.namespace_join_failure(n, ns)
        );
        nodes.push(n);
    }
    (ns, nodes, inv)
}

fn joiner_ready_with(members: usize, seed: u64) {
    let mut c = Cluster::new(0, seed, config(), Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, members);
    let j = c.namespace_node(&nodes);
    c.join_namespace(j, inv, 10_000);
    assert!(c.run_until(10_000, |c| c.namespace_ready(j, ns).is_some()));
    let report = c.namespace_ready(j, ns).unwrap();
    assert_eq!(report.members_learned, members as u64 + 1);
    assert!(!report.acked_by.is_empty());
    assert!(report.elapsed_ms < 100, "elapsed {}", report.elapsed_ms);
    let me = c.namespace_identity(j, ns).unwrap();
    assert!(c.run_until(2_000, |c| {
        nodes.iter().all(|m| c.namespace_has_member(*m, ns, &me))
    }));
}

#[test]
fn joiner_is_ready_with_one_member() {
    joiner_ready_with(1, 1);
}

#[test]
fn joiner_is_ready_with_three_members() {
    joiner_ready_with(3, 2);
}

#[test]
fn joiner_is_ready_with_seven_members() {
    joiner_ready_with(7, 3);
}

#[test]
fn joiner_is_ready_under_twenty_percent_loss() {
    for seed in 10..14 {
        let mut c = Cluster::new(0, seed, config(), Faults::default());
        let (ns, nodes, inv) = namespace_with(&mut c, 3);
        c.faults.loss = 0.2;
        let j = c.namespace_node(&nodes);
        c.join_namespace_with_retry(j, inv, 30_000);
        assert!(
            c.run_until(30_000, |c| c.namespace_ready(j, ns).is_some()),
            "seed {seed}: {:?}",
            c.namespace_join_failure(j, ns)
        );
        let me = c.namespace_identity(j, ns).unwrap();
        assert!(
            c.run_until(10_000, |c| nodes
                .iter()
                .all(|m| c.namespace_has_member(*m, ns, &me))),
            "seed {seed}: every member learns the joiner"
        );
    }
}

#[test]
fn joiner_switches_partner_when_partner_crashes_mid_backfill() {
    // One op per batch, so the backfill takes several round trips.
    let mut config = config();
    config.namespace.backfill_batch_ops = 1;
    let mut c = Cluster::new(0, 4, config, Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, 4);
    let j = c.namespace_node(&nodes);
    c.join_namespace(j, inv, 10_000);
    assert!(c.run_until(1_000, |c| {
        c.events(j)
            .iter()
            .any(|e| matches!(e, Event::NamespaceJoinStarted { .. }))
    }));
    let partner = c
        .events(j)
        .iter()
        .find_map(|e| match e {
            Event::NamespaceJoinStarted { partner, .. } => Some(partner.0 as usize),
            _ => None,
        })
        .unwrap();
    assert!(nodes.contains(&partner));
    // At first the joiner trusts only the inviter; two batches (2 ms each) later it knows
    // the first member too. The third request is in flight: the partner dies with it.
    assert_eq!(partner, nodes[0]);
    c.run_for(4);
    assert!(c.namespace_ready(j, ns).is_none());
    let old = c.namespace_identity(partner, ns);
    assert!(old.is_some());
    c.crash(partner);
    assert!(c.run_until(10_000, |c| c.namespace_ready(j, ns).is_some()));
    assert!(c.events(j).iter().any(|e| matches!(
        e,
        Event::NamespaceJoinProgress {
            event: JoinEvent::PartnerSwitched { .. },
            ..
        }
    )));
    let report = c.namespace_ready(j, ns).unwrap();
    assert_eq!(report.members_learned, 5);
    assert_ne!(report.partner, old);
}

#[test]
fn restart_mid_announce_resumes_the_outbox_and_every_member_sees_the_joiner() {
    let mut c = Cluster::new(0, 5, config(), Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, 3);
    let j = c.namespace_node(&nodes);
    c.join_namespace(j, inv, 10_000);
    // Stop as soon as the announce is durable, before any member received it.
    assert!(c.run_until(1_000, |c| {
        c.nodes[j]
            .disk
            .namespaces
            .get(&ns)
            .is_some_and(|d| d.outbox.is_some())
    }));
    let me = c.namespace_identity(j, ns).unwrap();
    assert!(nodes.iter().all(|m| !c.namespace_has_member(*m, ns, &me)));
    c.crash(j);
    c.run_for(50);
    assert!(nodes.iter().all(|m| !c.namespace_has_member(*m, ns, &me)));
    c.restart(j);
    assert_eq!(c.namespace_identity(j, ns), Some(me), "identity survives");
    assert!(c.run_until(5_000, |c| {
        nodes.iter().all(|m| c.namespace_has_member(*m, ns, &me))
    }));
    // The outbox is proven included and cleared, on disk too.
    assert!(c.run_until(5_000, |c| {
        c.nodes[j]
            .disk
            .namespaces
            .get(&ns)
            .is_some_and(|d| d.outbox.is_none())
    }));
    assert!(c.events(j).iter().any(|e| matches!(
        e,
        Event::NamespaceJoinProgress {
            event: JoinEvent::AnnounceIncluded { .. },
            ..
        }
    )));
}

#[test]
fn identity_is_created_once_and_reused_after_restart() {
    let mut c = Cluster::new(0, 6, config(), Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, 1);
    // A join with nobody reachable fails, but provisions (and persists) the identity.
    let j = c.namespace_node(&[]);
    c.join_namespace(j, inv.clone(), 1_000);
    assert!(c.run_until(2_000, |c| c.namespace_join_failure(j, ns).is_some()));
    let first = c.namespace_identity(j, ns).unwrap();
    let stored = c.nodes[j].disk.namespaces[&ns].identity.clone().unwrap();
    assert_eq!(stored.key().public(), first);
    c.crash(j);
    c.restart(j); // reconnects to every live node
    assert_eq!(c.namespace_identity(j, ns), Some(first));
    c.join_namespace(j, inv, 10_000);
    assert!(c.run_until(10_000, |c| c.namespace_ready(j, ns).is_some()));
    assert_eq!(
        c.namespace_identity(j, ns),
        Some(first),
        "reused, not replaced"
    );
    assert!(c.run_until(2_000, |c| c.namespace_has_member(nodes[0], ns, &first)));
    // Still exactly the one stored key.
    assert_eq!(
        c.nodes[j].disk.namespaces[&ns]
            .identity
            .as_ref()
            .unwrap()
            .key()
            .public(),
        first
    );
    assert!(format!("{:?}", c.nodes[j].disk).contains("NamespaceSecret(..)"));
}

#[test]
fn retry_succeeds_when_members_appear_after_no_ready_peers() {
    let mut c = Cluster::new(0, 7, config(), Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, 1);
    let j = c.namespace_node(&[]);
    c.join_namespace_with_retry(j, inv, 20_000);
    assert!(c.run_until(5_000, |c| c.events(j).iter().any(|e| matches!(
        e,
        Event::NamespaceJoinProgress {
            event: JoinEvent::Retrying { failure, .. },
            ..
        } if matches!(failure.reason, JoinFailReason::NoReadyPeers { .. })
    ))));
    c.connect_nodes(j, nodes[0]);
    assert!(c.run_until(20_000, |c| c.namespace_ready(j, ns).is_some()));
    assert!(c.namespace_ready(j, ns).unwrap().attempt >= 2);
}

#[test]
fn single_attempt_without_members_fails_with_no_ready_peers() {
    let mut c = Cluster::new(0, 8, config(), Faults::default());
    let (ns, _nodes, inv) = namespace_with(&mut c, 1);
    let j = c.namespace_node(&[]);
    c.join_namespace(j, inv, 2_000);
    assert!(c.run_until(3_000, |c| c.namespace_join_failure(j, ns).is_some()));
    let failure = c.namespace_join_failure(j, ns).unwrap();
    assert!(matches!(
        failure.reason,
        JoinFailReason::NoReadyPeers { .. }
    ));
    assert!(c.namespace_ready(j, ns).is_none());
}

#[test]
fn leave_stops_membership_locally_and_persists() {
    let mut c = Cluster::new(0, 9, config(), Faults::default());
    let (ns, nodes, _inv) = namespace_with(&mut c, 2);
    let member = nodes[1];
    c.command(member, LocalCommand::LeaveNamespace { namespace: ns });
    assert!(
        c.events(member)
            .iter()
            .any(|e| matches!(e, Event::NamespaceLeft { namespace } if *namespace == ns))
    );
    let node = c.nodes[member].node.as_ref().unwrap();
    assert!(!node.is_namespace_member(&ns));
    c.run_for(10);
    assert!(!c.nodes[member].disk.namespaces[&ns].active);
    // Leaving twice is refused with a typed error.
    c.command(member, LocalCommand::LeaveNamespace { namespace: ns });
    assert!(
        c.events(member)
            .iter()
            .any(|e| matches!(e, Event::CommandRejected(_)))
    );
    // The identity is kept for a later join.
    assert!(c.nodes[member].disk.namespaces[&ns].identity.is_some());
}

#[test]
fn invitations_need_an_admin_and_forged_ones_fail() {
    let mut c = Cluster::new(0, 10, config(), Faults::default());
    let (ns, nodes, inv) = namespace_with(&mut c, 2);
    c.command(
        nodes[1],
        LocalCommand::IssueInvitation {
            namespace: ns,
            expires_at_unix_ms: c.unix_ms() + 1_000,
            policy: portcullis_core::namespace::ops::InvitePolicy::Reusable,
        },
    );
    assert!(
        c.events(nodes[1])
            .iter()
            .any(|e| matches!(e, Event::CommandRejected(_)))
    );
    let mut forged = inv;
    forged.invitation.expires_at_unix_ms += 1;
    let j = c.namespace_node(&nodes);
    c.join_namespace(j, forged, 5_000);
    let failure = c.namespace_join_failure(j, ns).unwrap();
    assert!(matches!(
        failure.reason,
        JoinFailReason::InvalidInvitation(_)
    ));
}

/// A disk whose fsync takes 50 ms: durable-only effects must wait for it.
fn slow_disk() -> Faults {
    Faults {
        fsync_ms: 50,
        ..Faults::default()
    }
}

/// Namespace messages external peer `peer` received, sent directly or published to it.
fn namespace_messages_to(c: &Cluster, peer: PeerId) -> Vec<NamespaceMessage> {
    let limits = c.config.limits();
    c.external_inbox
        .iter()
        .filter(|(_, p, _)| *p == peer)
        .filter_map(|(_, _, bytes)| match PeerMessage::decode(bytes, &limits) {
            Ok(PeerMessage::Publish(p)) => PeerMessage::decode(&p.payload, &limits).ok(),
            other => other.ok(),
        })
        .filter_map(|m| match m {
            PeerMessage::Namespace(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Acks for `op` that external peer `peer` received.
fn acks_to(c: &Cluster, peer: PeerId, op: OpHash) -> usize {
    namespace_messages_to(c, peer)
        .iter()
        .filter(|m| matches!(m, NamespaceMessage::Ack(a) if a.op == op))
        .count()
}

/// Beacons that external peer `peer` received (answers to its probes and published ones).
fn beacons_to(c: &Cluster, peer: PeerId) -> Vec<Beacon> {
    namespace_messages_to(c, peer)
        .into_iter()
        .filter_map(|m| match m {
            NamespaceMessage::Beacon(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn on_disk(c: &Cluster, i: usize, ns: NamespaceId, op: OpHash) -> bool {
    c.nodes[i]
        .disk
        .namespaces
        .get(&ns)
        .is_some_and(|d| d.ops.iter().any(|o| o.hash() == op))
}

/// An admin's namespace with an external peer subscribed to it (it sees everything the admin
/// publishes), and a `MemberJoined` the admin has applied but whose append is still in flight
/// on its slow disk.
struct InFlightOp {
    c: Cluster,
    a: usize,
    ns: NamespaceId,
    peer: PeerId,
    /// The `MemberJoined`.
    h: OpHash,
    /// The admin's heads before it, all durable.
    durable_heads: Vec<OpHash>,
}

fn in_flight_member_joined(seed: u64) -> InFlightOp {
    let mut c = Cluster::new(0, seed, config(), slow_disk());
    let a = c.namespace_node(&[]);
    let ns = c.create_namespace(a, [7; 16]);
    let inv = c.invite(a, ns, 3_600_000);
    let peer = c.connect_external(
        a,
        1,
        SecretKey::from_secret_bytes(&[0x71; 32]).public(),
        Hash32([1; 32]),
    );
    let topics = BoundedVec::try_from_vec(vec![Topic(ns.0)]).unwrap();
    c.inject(
        a,
        peer,
        PeerMessage::Subscriptions(Subscriptions { topics }).encode(),
    );
    let x = SecretKey::from_secret_bytes(&[0x72; 32]);
    let durable_heads = c.namespace_heads(a, ns);
    let op = Op::sign(
        &x,
        ns,
        Op::canonical_parents(durable_heads.clone()).unwrap(),
        c.unix_ms(),
        OpBody::MemberJoined {
            member: x.public(),
            invitation: inv,
        },
    );
    let h = op.hash();
    c.inject(
        a,
        peer,
        PeerMessage::Namespace(Box::new(NamespaceMessage::Op(op))).encode(),
    );
    assert!(c.namespace_has_member(a, ns, &x.public()), "applied");
    assert!(!on_disk(&c, a, ns, h), "the append is still in flight");
    InFlightOp {
        c,
        a,
        ns,
        peer,
        h,
        durable_heads,
    }
}

/// A joiner takes an ack as proof that its `MemberJoined` survives, and clears its durable
/// outbox: the acker must not send it before the op is on its own disk.
#[test]
fn acks_wait_until_the_acked_op_is_durable() {
    let InFlightOp {
        mut c,
        a,
        ns,
        peer,
        h,
        ..
    } = in_flight_member_joined(11);
    assert_eq!(acks_to(&c, peer, h), 0, "acked before the op was durable");
    // The ack leaves at the first step it is out, and the op is on disk by then.
    assert!(
        c.run_until(1_000, |c| acks_to(c, peer, h) > 0),
        "never acked"
    );
    assert!(on_disk(&c, a, ns, h), "acked before the op was durable");
    assert_eq!(acks_to(&c, peer, h), 1);
}

/// A joiner also clears its durable outbox on a trusted beacon that covers its op, so a
/// member's beacons (probe answers and periodic ones) DO NOT advertise an op whose append is
/// still in flight: they vouch for the replica as of its latest durable append.
#[test]
fn beacons_vouch_only_for_ops_already_durable() {
    let InFlightOp {
        mut c,
        a,
        ns,
        peer,
        h,
        durable_heads,
    } = in_flight_member_joined(13);
    // A probe now is answered with the durable view: the create op's head, not our op.
    c.inject(
        a,
        peer,
        PeerMessage::Namespace(Box::new(NamespaceMessage::Probe(ReadinessProbe {
            namespace: ns,
            nonce: 1,
        })))
        .encode(),
    );
    let answer = beacons_to(&c, peer).pop().expect("the probe is answered");
    assert!(answer.verify().is_ok());
    assert_eq!(&answer.heads[..], &durable_heads[..]);
    assert_eq!(answer.applied_through, 1);
    // Until the op is on disk no beacon covers it; once it is, a periodic beacon does.
    let covered = |c: &Cluster| {
        let any = beacons_to(c, peer).iter().any(|b| b.heads.contains(&h));
        assert!(
            !any || on_disk(c, a, ns, h),
            "a beacon vouched for an op not yet durable"
        );
        any
    };
    assert!(
        c.run_until(10_000, covered),
        "no beacon covered the durable op"
    );
    let last = beacons_to(&c, peer).pop().unwrap();
    assert_eq!(last.applied_through, 2);
}

/// `NamespaceCreated` (and invitations) only once the admin key and the create op are
/// durable: before that a crash loses the namespace, and nobody may hold an invitation to it.
#[test]
fn namespace_is_created_and_invites_only_once_its_key_is_durable() {
    let mut c = Cluster::new(0, 12, config(), slow_disk());
    let created = |c: &Cluster, i: usize| {
        c.events(i).iter().find_map(|e| match e {
            Event::NamespaceCreated { namespace, .. } => Some(*namespace),
            _ => None,
        })
    };
    let a = c.namespace_node(&[]);
    c.command(a, LocalCommand::CreateNamespace { salt: [7; 16] });
    assert_eq!(created(&c, a), None, "created before the key was durable");
    let ns = c.nodes[a].node.as_ref().unwrap().namespace_ids()[0];
    let invite = |c: &mut Cluster| {
        let expires_at_unix_ms = c.unix_ms() + 60_000;
        c.command(
            a,
            LocalCommand::IssueInvitation {
                namespace: ns,
                expires_at_unix_ms,
                policy: InvitePolicy::Reusable,
            },
        );
        c.events(a)
            .iter()
            .any(|e| matches!(e, Event::InvitationIssued(_)))
    };
    assert!(
        !invite(&mut c),
        "invitation signed with a key not yet durable"
    );
    assert_eq!(
        c.events(a).last(),
        Some(&Event::CommandRejected(CommandError::NamespaceNotDurable(
            ns
        )))
    );
    assert!(c.run_until(1_000, |c| created(c, a).is_some()));
    assert_eq!(created(&c, a), Some(ns));
    let disk = &c.nodes[a].disk.namespaces[&ns];
    assert!(
        disk.identity.is_some() && !disk.ops.is_empty(),
        "created before durable"
    );
    assert!(invite(&mut c), "refused once durable");

    // A crash before the fsync loses the namespace; nobody was told it existed.
    let b = c.namespace_node(&[]);
    c.command(b, LocalCommand::CreateNamespace { salt: [8; 16] });
    c.crash(b);
    c.run_for(100);
    c.restart(b);
    assert!(c.nodes[b].node.as_ref().unwrap().namespace_ids().is_empty());
    assert_eq!(created(&c, b), None);
}

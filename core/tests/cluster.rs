//! Protocol A end to end in the core's deterministic harness (issue 3's acceptance list).

use portcullis_core::admission::JoinFailure;
use portcullis_core::config::Config;
use portcullis_core::messages::RejectReason;
use portcullis_core::testing::{Cluster, Faults};

fn config() -> Config {
    Config::default()
}

#[test]
fn three_nodes_elect_a_leader() {
    let mut c = Cluster::new(3, 1, config(), Faults::default());
    assert!(
        c.run_until(10_000, |c| c.leader().is_some()),
        "no leader after 10 s"
    );
    let leader = c.leader().unwrap();
    // Every node agrees on who leads.
    c.run_for(1_000);
    for n in &c.nodes {
        let node = n.node.as_ref().unwrap();
        assert_eq!(node.leader().map(|m| m.0), Some(leader as u64 + 1));
    }
}

/// Regression: the election timeout is drawn from the node's seeded RNG before every tick, so
/// raft-rs's `thread_rng` draw is never read. Same seed, same trace — forever.
#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let faults = Faults {
            loss: 0.1,
            duplicate: 0.1,
            min_delay_ms: 1,
            max_delay_ms: 20,
            fsync_ms: 1,
        };
        let mut c = Cluster::new(3, seed, config(), faults);
        c.run_for(20_000);
        (c.trace_digest(), c.steps, c.leader())
    };
    for seed in [1, 2, 3] {
        let a = std::thread::spawn(move || run(seed)).join().unwrap();
        let b = std::thread::spawn(move || run(seed)).join().unwrap();
        assert_eq!(a, b, "seed {seed} diverged");
    }
    assert_ne!(run(1).0, run(2).0, "different seeds should differ");
}

#[test]
fn a_joiner_is_admitted_and_becomes_a_learner() {
    let mut c = Cluster::new(3, 4, config(), Faults::default());
    assert!(c.run_until(10_000, |c| c.leader().is_some()));
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(c.run_until(10_000, |c| c.admitted(j).is_some()
        || c.join_failure(j).is_some()));
    let member = c.admitted(j).expect("admitted");
    assert_eq!(member.0, 4);
    // The leader adds it as a learner and it catches up.
    let leader = c.leader().unwrap();
    assert!(
        c.run_until(10_000, |c| {
            let (_, learners) = c.nodes[leader].node.as_ref().unwrap().conf();
            learners.contains(&4) && c.converged(&[0, 1, 2, j])
        }),
        "learner did not catch up"
    );
    let _ = (JoinFailure::NoSeeds, RejectReason::Expired);
}

// ---- helpers -----------------------------------------------------------------------------

use std::collections::BTreeMap;

use portcullis_core::crypto::{Domain, Hash32, SecretKey};
use portcullis_core::ledger::{MemberId, TokenState};
use portcullis_core::messages::{JoinRejected, JoinRequest, PeerMessage, join_proof_message};
use portcullis_core::node::{Event, LocalCommand};
use portcullis_core::token::JoinToken;
use portcullis_core::wire::{BoundedBytes, Limits};

fn lossy() -> Faults {
    Faults {
        loss: 0.10,
        duplicate: 0.10,
        min_delay_ms: 1,
        max_delay_ms: 10,
        fsync_ms: 1,
    }
}

fn settled(c: &Cluster, joiners: &[usize]) -> bool {
    joiners
        .iter()
        .all(|j| c.admitted(*j).is_some() || c.join_failure(*j).is_some())
}

fn granted(c: &Cluster, i: usize) -> usize {
    c.events(i)
        .iter()
        .filter(|e| matches!(e, Event::Admission(r) if r.result.is_ok()))
        .count()
}

fn refused(c: &Cluster, i: usize, reason: RejectReason) -> usize {
    c.events(i)
        .iter()
        .filter(|e| matches!(e, Event::Admission(r) if r.result == Err(reason)))
        .count()
}

/// When the lease holding `token` runs out, if node `i`'s ledger shows it in flight.
fn lease_until(c: &Cluster, i: usize, token: &JoinToken) -> Option<u64> {
    match c.token_record(i, &token.hash())?.state {
        TokenState::InFlight {
            lease_until_unix_ms,
            ..
        } => Some(lease_until_unix_ms),
        _ => None,
    }
}

fn founders_converged(c: &Cluster) -> bool {
    c.converged(&[0, 1, 2])
}

/// A raw client talking to node `i` as an external peer: signs a proper join request.
struct Client {
    key: SecretKey,
    binding: Hash32,
}

impl Client {
    fn new(seed: u8) -> Client {
        Client {
            key: SecretKey::from_secret_bytes(&[seed; 32]),
            binding: Hash32([seed.wrapping_add(100); 32]),
        }
    }

    fn request(&self, token: &JoinToken) -> Vec<u8> {
        let proof = self.key.sign(
            Domain::JoinProof,
            &join_proof_message(&token.hash(), &self.binding),
        );
        PeerMessage::JoinRequest(JoinRequest {
            token: BoundedBytes::try_from_vec(token.expose_bytes().to_vec()).unwrap(),
            node_key: self.key.public(),
            addrs: Default::default(),
            proof,
        })
        .encode()
    }
}

/// Sends `token` from a raw client to node `i` and runs until that client gets an answer.
fn raw_join(
    c: &mut Cluster,
    i: usize,
    ext: u64,
    client: &Client,
    token: &JoinToken,
) -> PeerMessage {
    let peer = c.connect_external(i, ext, client.key.public(), client.binding);
    let before = c.external_inbox.len();
    c.inject(i, peer, client.request(token));
    let answered = c.run_until(20_000, |c| {
        c.external_inbox[before..]
            .iter()
            .any(|(_, p, _)| *p == peer)
    });
    assert!(answered, "no answer to the raw join request");
    let (_, _, bytes) = c.external_inbox[before..]
        .iter()
        .find(|(_, p, _)| *p == peer)
        .unwrap()
        .clone();
    PeerMessage::decode(&bytes, &Limits::default()).unwrap()
}

fn rejection(msg: &PeerMessage) -> Option<RejectReason> {
    match msg {
        PeerMessage::JoinRejected(r) => Some(r.reason),
        _ => None,
    }
}

fn ready_cluster(seed: u64, faults: Faults) -> Cluster {
    let mut c = Cluster::new(3, seed, config(), faults);
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");
    c
}

// ---- acceptance ----------------------------------------------------------------------------

/// 200 tokens, each presented at once by 3 joiners at 3 different listeners, with 10% loss
/// and 10% duplication: every token admits exactly one joiner, and every replica ends with the
/// same ledger digest.
#[test]
fn two_hundred_tokens_three_presenters_each_exactly_one_admission() {
    let mut c = ready_cluster(7, lossy());
    let mut by_token: Vec<Vec<usize>> = Vec::new();
    let mut all = Vec::new();
    for _ in 0..200 {
        let token = c.issue_token(600_000);
        let mut joiners = Vec::new();
        for k in 0..3usize {
            // Joiner k starts at listener k.
            let seeds = [k, (k + 1) % 3, (k + 2) % 3];
            let j = c.add_joiner(&seeds);
            c.join(j, token.clone(), &seeds);
            joiners.push(j);
            all.push(j);
        }
        by_token.push(joiners);
    }
    assert!(
        c.run_until(300_000, |c| settled(c, &all)),
        "joins did not settle"
    );
    for (t, joiners) in by_token.iter().enumerate() {
        let admitted: Vec<usize> = joiners
            .iter()
            .copied()
            .filter(|j| c.admitted(*j).is_some())
            .collect();
        assert_eq!(admitted.len(), 1, "token {t}: admitted {admitted:?}");
        for j in joiners {
            if c.admitted(*j).is_none() {
                assert_eq!(
                    c.join_failure(*j),
                    Some(JoinFailure::Rejected(RejectReason::AlreadyConsumed)),
                    "token {t} joiner {j}"
                );
            }
        }
    }
    // Every replica (founders and the 200 learners) converges on one digest.
    let members: Vec<usize> = (0..c.nodes.len())
        .filter(|i| c.nodes[*i].member_id().is_some())
        .collect();
    assert_eq!(members.len(), 203);
    assert!(
        c.run_until(120_000, |c| c.converged(&members)),
        "replicas did not converge"
    );
    let ledger = c.nodes[0].node.as_ref().unwrap().ledger();
    assert_eq!(ledger.members().count(), 203);
}

/// The leader crashes in the middle of admissions: no token is consumed twice, every joiner
/// that got `JoinAccepted` is a member after recovery, and a retried valid token succeeds.
#[test]
fn leader_crash_mid_admissions_consumes_no_token_twice() {
    let mut c = ready_cluster(11, lossy());
    let mut joiners = Vec::new();
    let mut tokens = Vec::new();
    for k in 0..30usize {
        let token = c.issue_token(600_000);
        // Two presenters per token, at different listeners.
        for offset in 0..2 {
            let seeds = [(k + offset) % 3, (k + offset + 1) % 3, (k + offset + 2) % 3];
            let j = c.add_joiner(&seeds);
            c.join(j, token.clone(), &seeds);
            joiners.push((j, k));
        }
        tokens.push(token);
    }
    c.run_for(30);
    let leader = c.leader().expect("leader");
    let granted_before: usize = (0..3).map(|i| granted(&c, i)).sum();
    let in_flight_before: usize = (0..3)
        .map(|i| c.nodes[i].node.as_ref().unwrap().admissions_in_flight())
        .sum();
    // The crash must land mid-admission, or this test proves nothing.
    assert_eq!(granted_before, 0, "admissions finished before the crash");
    assert!(in_flight_before > 0, "no admission in flight at the crash");
    c.crash(leader);
    c.run_for(3_000);
    c.restart(leader);
    let all: Vec<usize> = joiners.iter().map(|(j, _)| *j).collect();
    assert!(
        c.run_until(300_000, |c| settled(c, &all)),
        "joins did not settle"
    );
    assert!(
        c.run_until(60_000, founders_converged),
        "founders did not converge"
    );

    let ledger = c.nodes[0].node.as_ref().unwrap().ledger().clone();
    let mut admitted_per_token: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (j, k) in &joiners {
        if let Some(member) = c.admitted(*j) {
            admitted_per_token.entry(*k).or_default().push(*j);
            // Every admission that was answered survives: the member is in the registry.
            let record = ledger.member(member).expect("admitted joiner is a member");
            assert_eq!(record.node_key, c.nodes[*j].node_key());
        }
    }
    for (k, token) in tokens.iter().enumerate() {
        let admitted = admitted_per_token.get(&k).map_or(0, |v| v.len());
        assert_eq!(admitted, 1, "token {k} admitted {admitted} joiners");
        assert!(matches!(
            ledger.record(&token.hash()).map(|r| r.state),
            Some(TokenState::Consumed { .. })
        ));
    }
    let retried: usize = (0..3)
        .map(|i| refused(&c, i, RejectReason::Unavailable) + refused(&c, i, RejectReason::Conflict))
        .sum();
    assert!(
        retried > 0,
        "no joiner had to retry: the crash did not bite"
    );
    // After recovery the cluster serves admissions again.
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(
        c.run_until(60_000, |c| c.admitted(j).is_some()),
        "fresh join after recovery failed"
    );
}

#[test]
fn expired_token_is_rejected_as_expired() {
    let mut c = ready_cluster(21, Faults::default());
    let token = c.expired_token(3_600_000);
    let j = c.add_joiner(&[0]);
    c.join(j, token, &[0]);
    assert!(c.run_until(30_000, |c| settled(c, &[j])));
    assert_eq!(
        c.join_failure(j),
        Some(JoinFailure::Rejected(RejectReason::Expired))
    );
}

/// A presenter admitted just before its token expired lost the reply, and asks again after
/// the expiry at a listener whose replica has not seen the token yet. That listener answered a
/// final `Expired` from its own replica, though the presenter is a member (found in review).
/// It now asks the ledger through Raft, which says this presenter consumed it.
#[test]
fn a_lagging_listener_does_not_refuse_an_admitted_presenter_as_expired() {
    let mut c = ready_cluster(40, Faults::default());
    c.isolate(2);
    let token = c.issue_token(5_000);
    let client = Client::new(40);
    let PeerMessage::JoinAccepted(first) = raw_join(&mut c, 0, 1, &client, &token) else {
        panic!("the first presentation was refused");
    };
    // The reply is "lost". Past the expiry and the clock skew allowance, the presenter asks
    // founder 2, which missed everything while cut off.
    c.run_for(5_000 + config().token_clock_skew_ms + 1_000);
    assert!(c.token_record(2, &token.hash()).is_none());
    c.heal();
    let again = raw_join(&mut c, 2, 2, &client, &token);
    let PeerMessage::JoinAccepted(again) = again else {
        panic!("an admitted presenter was answered {again:?}");
    };
    assert_eq!(
        again.member_id, first.member_id,
        "served the same admission"
    );
}

#[test]
fn forged_token_is_rejected_as_bad_mac() {
    let mut c = ready_cluster(22, Faults::default());
    let token = c.forge_token(600_000);
    let j = c.add_joiner(&[1]);
    c.join(j, token, &[1]);
    assert!(c.run_until(30_000, |c| settled(c, &[j])));
    assert_eq!(
        c.join_failure(j),
        Some(JoinFailure::Rejected(RejectReason::BadMac))
    );
}

/// A joiner never reveals a token to a cluster whose key does not match the token's pin: it
/// fails with `WrongCluster` once every seed has shown another cluster. A listener that is sent
/// such a token anyway answers `WrongCluster` too.
#[test]
fn wrong_cluster_token_is_rejected_as_wrong_cluster() {
    let mut c = ready_cluster(23, Faults::default());
    let token = c.wrong_cluster_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token.clone(), &[0, 1, 2]);
    assert!(c.run_until(60_000, |c| settled(c, &[j])));
    assert_eq!(
        c.join_failure(j),
        Some(JoinFailure::Rejected(RejectReason::WrongCluster))
    );
    let answer = raw_join(&mut c, 0, 1, &Client::new(1), &token);
    assert_eq!(rejection(&answer), Some(RejectReason::WrongCluster));
}

#[test]
fn revoked_token_is_rejected_as_revoked() {
    let mut c = ready_cluster(24, Faults::default());
    let token = c.issue_token(600_000);
    let follower = (c.leader().unwrap() + 1) % 3;
    // Revoke before it was ever presented, at a follower (the proposal is forwarded).
    c.command(
        follower,
        LocalCommand::RevokeToken {
            hash: token.hash(),
            expires_at_unix_ms: token.body().expires_at_unix_ms,
        },
    );
    assert!(c.run_until(10_000, |c| {
        c.events(follower)
            .iter()
            .any(|e| matches!(e, Event::TokenRevoked { .. }))
    }));
    let j = c.add_joiner(&[2]);
    c.join(j, token, &[2]);
    assert!(c.run_until(30_000, |c| settled(c, &[j])));
    assert_eq!(
        c.join_failure(j),
        Some(JoinFailure::Rejected(RejectReason::Revoked))
    );
}

#[test]
fn consumed_token_is_rejected_as_already_consumed_but_served_again_to_its_owner() {
    let mut c = ready_cluster(25, Faults::default());
    let token = c.issue_token(600_000);
    let owner = Client::new(1);
    let first = raw_join(&mut c, 0, 1, &owner, &token);
    let PeerMessage::JoinAccepted(accepted) = first else {
        panic!("first presentation not accepted: {first:?}");
    };
    // The owner's reply was "lost": presenting again with the same key, at another listener,
    // is served the same admission.
    let again = raw_join(&mut c, 1, 2, &owner, &token);
    let PeerMessage::JoinAccepted(again) = again else {
        panic!("replay by the owner not served: {again:?}");
    };
    assert_eq!(again.member_id, accepted.member_id);
    // Anyone else: AlreadyConsumed, at every listener.
    for (i, listener) in [0usize, 1, 2].iter().enumerate() {
        let answer = raw_join(&mut c, *listener, 10 + i as u64, &Client::new(9), &token);
        assert_eq!(rejection(&answer), Some(RejectReason::AlreadyConsumed));
    }
    let j = c.add_joiner(&[2]);
    c.join(j, token, &[2]);
    assert!(c.run_until(30_000, |c| settled(c, &[j])));
    assert_eq!(
        c.join_failure(j),
        Some(JoinFailure::Rejected(RejectReason::AlreadyConsumed))
    );
}

#[test]
fn bad_proof_and_key_mismatch_are_rejected_as_bad_proof() {
    let mut c = ready_cluster(26, Faults::default());
    let token = c.issue_token(600_000);
    let client = Client::new(3);
    // Authenticated as one key, presenting another: refused before any Raft round trip.
    let peer = c.connect_external(
        0,
        7,
        SecretKey::from_secret_bytes(&[4; 32]).public(),
        client.binding,
    );
    c.inject(0, peer, client.request(&token));
    let (_, _, bytes) = c.external_inbox.last().unwrap().clone();
    assert_eq!(
        rejection(&PeerMessage::decode(&bytes, &Limits::default()).unwrap()),
        Some(RejectReason::BadProof)
    );
    // A proof over another connection's binding: refused.
    let replayed = Client {
        key: SecretKey::from_secret_bytes(&[3; 32]),
        binding: Hash32([0; 32]),
    };
    let peer = c.connect_external(0, 8, client.key.public(), client.binding);
    c.inject(0, peer, replayed.request(&token));
    let (_, _, bytes) = c.external_inbox.last().unwrap().clone();
    assert_eq!(
        rejection(&PeerMessage::decode(&bytes, &Limits::default()).unwrap()),
        Some(RejectReason::BadProof)
    );
    // Nothing reached the ledger.
    assert!(c.token_record(0, &token.hash()).is_none());
}

/// A node restarted from what it persisted (log compacted into snapshots along the way)
/// reaches the same digest as its peers.
#[test]
fn restarted_node_reaches_the_same_digest() {
    let config = Config {
        compact_after_entries: 8,
        ..config()
    };
    let mut c = Cluster::new(3, 31, config, lossy());
    assert!(c.run_until(20_000, |c| c.leader().is_some()));
    let victim = (c.leader().unwrap() + 1) % 3;
    let mut joiners = Vec::new();
    for k in 0..10usize {
        let token = c.issue_token(600_000);
        let seeds = [k % 3, (k + 1) % 3];
        let j = c.add_joiner(&seeds);
        c.join(j, token, &seeds);
        joiners.push(j);
        if k == 4 {
            c.run_for(200);
            c.crash(victim);
        }
    }
    assert!(c.run_until(120_000, |c| settled(c, &joiners)));
    c.restart(victim);
    assert!(
        c.run_until(60_000, founders_converged),
        "restarted node did not converge"
    );
    let digests = c.ledger_digests();
    let founders: Vec<_> = digests.iter().filter(|(i, _, _)| *i < 3).collect();
    assert!(
        founders
            .windows(2)
            .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
    );
    // It really restarted from a snapshot, not from an empty log.
    assert!(
        c.nodes[victim]
            .disk
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index > 1)
    );
    let _ = MemberId(0);
}

/// Promotion is an explicit command at the leader, and goes through a conf change.
#[test]
fn learner_is_promoted_to_voter_by_command() {
    let mut c = ready_cluster(32, Faults::default());
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(c.run_until(30_000, |c| c.admitted(j).is_some()));
    let member = c.admitted(j).unwrap();
    let leader = c.leader().unwrap();
    assert!(c.run_until(30_000, |c| {
        c.nodes[leader]
            .node
            .as_ref()
            .unwrap()
            .conf()
            .1
            .contains(&member.0)
    }));
    // At a follower: refused with a leader hint.
    let follower = (leader + 1) % 3;
    c.command(follower, LocalCommand::PromoteMember { member_id: member });
    assert!(
        c.events(follower)
            .iter()
            .any(|e| matches!(e, Event::CommandRejected(_)))
    );
    c.command(leader, LocalCommand::PromoteMember { member_id: member });
    assert!(c.run_until(30_000, |c| {
        c.nodes[leader]
            .node
            .as_ref()
            .unwrap()
            .conf()
            .0
            .contains(&member.0)
    }));
}

/// Regression (found by the admission benchmark, seed 2026): the leader added every admitted
/// member as a learner; past 1,024 the conf state no longer fit its wire bound and every node
/// stopped with a fatal error. The group is now capped at `max_raft_learners`.
#[test]
fn learners_are_capped_and_members_beyond_the_cap_are_still_admitted() {
    let config = Config {
        max_raft_learners: 2,
        ..config()
    };
    let mut c = Cluster::new(3, 2026, config, Faults::default());
    assert!(c.run_until(20_000, |c| c.leader().is_some()));
    let mut joiners = Vec::new();
    for _ in 0..5 {
        let token = c.issue_token(600_000);
        let j = c.add_joiner(&[0, 1, 2]);
        c.join(j, token, &[0, 1, 2]);
        joiners.push(j);
    }
    assert!(c.run_until(60_000, |c| joiners.iter().all(|j| c.admitted(*j).is_some())));
    c.run_for(5_000);
    let leader = c.leader().unwrap();
    let node = c.nodes[leader].node.as_ref().unwrap();
    assert_eq!(node.conf().1.len(), 2, "learners beyond the cap");
    assert_eq!(
        node.ledger().members().count(),
        8,
        "every joiner is a member"
    );
    assert!(
        c.nodes
            .iter()
            .all(|n| n.node.as_ref().is_none_or(|n| n.fatal().is_none()))
    );
}

#[test]
fn a_single_founder_is_a_one_voter_group_and_admits() {
    let mut c = Cluster::new(1, 40, config(), Faults::default());
    assert!(
        c.run_until(10_000, |c| c.leader() == Some(0)),
        "a lone founder leads"
    );
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0]);
    c.join(j, token, &[0]);
    assert!(c.run_until(10_000, |c| c.admitted(j).is_some()));
    assert_eq!(c.nodes[0].node.as_ref().unwrap().conf().0, vec![1]);
}

/// Admits a new node through the three founders; it holds no join secret. Returns its index.
fn admit_through_founders(c: &mut Cluster) -> usize {
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(c.run_until(30_000, |c| c.admitted(j).is_some()));
    j
}

/// A member without the join secret never admits: it points the joiner elsewhere.
#[test]
fn a_non_admitting_member_redirects() {
    let mut c = ready_cluster(41, Faults::default());
    let j = admit_through_founders(&mut c);
    // The admitted node holds no join secret: a join request sent to it is redirected.
    let other = c.issue_token(600_000);
    let answer = raw_join(&mut c, j, 1, &Client::new(5), &other);
    let PeerMessage::Redirect(redirect) = answer else {
        panic!("expected a redirect, got {answer:?}");
    };
    assert!(!redirect.admitting.is_empty());
}

/// A joiner whose only seed holds no join secret follows the redirect to the members it names
/// and is admitted there (before, it asked the same seed again until its deadline).
#[test]
fn a_joiner_given_only_a_non_admitting_seed_follows_its_redirect() {
    let mut c = ready_cluster(43, Faults::default());
    let j = admit_through_founders(&mut c);
    let token = c.issue_token(600_000);
    let k = c.add_joiner(&[j]);
    c.join(k, token, &[j]);
    assert!(
        c.run_until(30_000, |c| c.admitted(k).is_some()),
        "the joiner was not admitted through the members the redirect named"
    );
    assert_ne!(c.admitted(k), c.admitted(j));
    assert_eq!(c.join_failure(k), None);
}

/// A join started on the first seed to answer takes the others as they come up
/// (`AddJoinSeeds`, how the tokio driver dials seeds in parallel): a joiner whose only seed is
/// cut off is admitted through the seed added later, and the command is ignored by a node
/// with no join under way.
#[test]
fn seeds_added_to_a_join_under_way_are_tried() {
    let mut c = ready_cluster(44, Faults::default());
    let token = c.issue_token(600_000);
    let k = c.add_joiner(&[0, 1]);
    c.partition(&[k], &[0]);
    c.join(k, token, &[0]);
    c.run_for(3_000);
    assert_eq!(c.admitted(k), None, "seed 0 is cut off");
    c.add_join_seeds(k, &[0, 1]);
    assert!(
        c.run_until(30_000, |c| c.admitted(k).is_some()),
        "the seed added later was never tried"
    );
    assert_eq!(c.join_failure(k), None);
    // A member has no join under way: the command changes nothing and emits nothing.
    let events = c.events(1).len();
    c.add_join_seeds(1, &[0]);
    c.run_for(100);
    assert!(
        c.events(1)[events..]
            .iter()
            .all(|e| !matches!(e, Event::CommandRejected(_))),
        "{:?}",
        &c.events(1)[events..]
    );
}

#[test]
fn a_listener_answers_overloaded_beyond_its_bound() {
    let config = Config {
        max_inflight_admissions: 2,
        ..config()
    };
    let mut c = Cluster::new(3, 42, config, Faults::default());
    assert!(c.run_until(20_000, |c| c.leader().is_some()));
    // Three requests arrive together at one listener; the bound is two.
    let mut peers = Vec::new();
    for n in 0..3u8 {
        let token = c.issue_token(600_000);
        let client = Client::new(20 + n);
        let peer = c.connect_external(0, u64::from(n), client.key.public(), client.binding);
        c.inject(0, peer, client.request(&token));
        peers.push(peer);
    }
    assert!(c.run_until(20_000, |c| c.external_inbox.len() >= 3));
    let answers: Vec<PeerMessage> = c
        .external_inbox
        .iter()
        .map(|(_, _, b)| PeerMessage::decode(b, &Limits::default()).unwrap())
        .collect();
    let overloaded = answers
        .iter()
        .filter(|m| rejection(m) == Some(RejectReason::Overloaded))
        .count();
    let accepted = answers
        .iter()
        .filter(|m| matches!(m, PeerMessage::JoinAccepted(_)))
        .count();
    assert_eq!((accepted, overloaded), (2, 1), "{answers:?}");
}

/// A lease whose listener died is given back by the leader's sweeper, and an expired token is
/// marked expired, without any joiner's help.
#[test]
fn the_sweeper_reverts_abandoned_leases_and_expires_tokens() {
    let mut c = ready_cluster(43, Faults::default());
    let leader = c.leader().unwrap();
    let listener = (leader + 1) % 3;
    // A token with a short life, presented at a follower that crashes mid-admission.
    let short = c.issue_token(30_000);
    let long = c.issue_token(600_000);
    for (n, token) in [&short, &long].into_iter().enumerate() {
        let client = Client::new(30 + n as u8);
        let peer = c.connect_external(
            listener,
            100 + n as u64,
            client.key.public(),
            client.binding,
        );
        c.inject(listener, peer, client.request(token));
    }
    // Run until both leases are taken, then kill the listener before it consumes.
    assert!(
        c.run_until(5_000, |c| {
            [&short, &long]
                .iter()
                .all(|t| lease_until(c, leader, t).is_some())
        }),
        "leases were not taken"
    );
    c.crash(listener);
    // The lease (10 s) runs out: the sweeper reverts the long-lived token to Issued...
    assert!(
        c.run_until(30_000, |c| {
            let l = c.nodes[leader].node.as_ref().unwrap().ledger();
            matches!(
                l.record(&long.hash()).map(|r| r.state),
                Some(TokenState::Issued)
            )
        }),
        "abandoned lease was not reverted"
    );
    // ...and another presenter can now be admitted with it.
    let answer = raw_join(&mut c, leader, 200, &Client::new(40), &long);
    assert!(matches!(answer, PeerMessage::JoinAccepted(_)), "{answer:?}");
    // The short-lived token passes its expiry: the sweeper marks it Expired.
    assert!(
        c.run_until(60_000, |c| {
            let l = c.nodes[leader].node.as_ref().unwrap().ledger();
            matches!(
                l.record(&short.hash()).map(|r| r.state),
                Some(TokenState::Expired)
            )
        }),
        "expired token was not swept"
    );
}

/// A minority cut off from the majority admits nobody (its listener answers only after the
/// majority decides); the majority keeps admitting; after healing, everyone converges.
#[test]
fn a_partitioned_minority_cannot_admit_and_the_majority_can() {
    let mut c = ready_cluster(44, Faults::default());
    let leader = c.leader().unwrap();
    let minority = (leader + 1) % 3;
    let majority: Vec<usize> = (0..3).filter(|i| *i != minority).collect();
    c.isolate(minority);
    let token = c.issue_token(600_000);
    // A raw client at the minority: its request cannot commit, so it is refused in time.
    let client = Client::new(50);
    let peer = c.connect_external(minority, 300, client.key.public(), client.binding);
    c.inject(minority, peer, client.request(&token));
    let before = c.external_inbox.len();
    assert!(c.run_until(30_000, |c| c.external_inbox.len() > before));
    let (_, _, bytes) = c.external_inbox.last().unwrap().clone();
    let answer = PeerMessage::decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(rejection(&answer), Some(RejectReason::Unavailable));
    // The majority admits a joiner meanwhile.
    let token2 = c.issue_token(600_000);
    let j = c.add_joiner(&majority);
    c.join(j, token2, &majority);
    assert!(c.run_until(30_000, |c| c.admitted(j).is_some()));
    c.heal();
    assert!(
        c.run_until(60_000, founders_converged),
        "no convergence after healing"
    );
    // The minority's attempt left no consumption behind.
    let ledger = c.nodes[minority].node.as_ref().unwrap().ledger();
    assert!(!matches!(
        ledger.record(&token.hash()).map(|r| r.state),
        Some(TokenState::Consumed { .. })
    ));
}

/// The listener remembers verified proofs so a joiner's resends are not verified again; the
/// memory is keyed by the proof itself, so a request that differs only in its signature is
/// still verified (and refused) — and the good one is still served afterwards.
#[test]
fn remembered_proofs_never_excuse_a_different_signature() {
    let mut c = ready_cluster(27, Faults::default());
    let token = c.issue_token(600_000);
    let client = Client::new(5);
    let accepted = raw_join(&mut c, 0, 7, &client, &token);
    assert!(
        matches!(accepted, PeerMessage::JoinAccepted(_)),
        "{accepted:?}"
    );
    // Same key, binding and token, a corrupted signature.
    let PeerMessage::JoinRequest(mut forged) =
        PeerMessage::decode(&client.request(&token), &Limits::default()).unwrap()
    else {
        unreachable!("Client::request builds a JoinRequest")
    };
    forged.proof.0[0] ^= 1;
    let peer = c.connect_external(0, 8, client.key.public(), client.binding);
    let before = c.external_inbox.len();
    c.inject(0, peer, PeerMessage::JoinRequest(forged).encode());
    assert!(c.run_until(20_000, |c| c.external_inbox.len() > before));
    let (_, _, bytes) = c.external_inbox.last().unwrap().clone();
    assert_eq!(
        rejection(&PeerMessage::decode(&bytes, &Limits::default()).unwrap()),
        Some(RejectReason::BadProof)
    );
    // The byte-identical good request (a resend) is still served.
    let again = raw_join(&mut c, 0, 9, &client, &token);
    assert!(matches!(again, PeerMessage::JoinAccepted(_)), "{again:?}");
}

// ---- lazy ticks and quiet learners -----------------------------------------------------------

/// Admits one fresh joiner per token through `seeds`, running until each settles.
fn admit_learners(c: &mut Cluster, count: usize) -> Vec<usize> {
    let joiners: Vec<usize> = (0..count)
        .map(|_| {
            let token = c.issue_token(600_000);
            let j = c.add_joiner(&[0, 1, 2]);
            c.join(j, token, &[0, 1, 2]);
            j
        })
        .collect();
    assert!(
        c.run_until(30_000, |c| settled(c, &joiners)),
        "joins did not settle"
    );
    for j in &joiners {
        assert!(c.admitted(*j).is_some(), "joiner {j} was refused");
    }
    joiners
}

/// A follower that hears heartbeats is not woken for every Raft tick: its next timer is its
/// election timeout, pushed back by every heartbeat.
#[test]
fn an_idle_follower_sleeps_past_many_ticks() {
    let mut c = ready_cluster(21, Faults::default());
    c.run_for(3_000);
    let leader = c.leader().expect("a leader");
    let tick_ms = c.config.raft_tick_ms;
    for (i, n) in c.nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        let node = n.node.as_ref().expect("running");
        let wake = node
            .poll_timeout()
            .expect("a follower has an election timer");
        let ahead_ms = wake.as_millis().saturating_sub(c.now().as_millis());
        assert!(
            ahead_ms > tick_ms,
            "follower {i} wakes in {ahead_ms} ms, not past the next {tick_ms} ms tick"
        );
    }
}

/// Quiet learners: once caught up, learners are heartbeated rarely; yet every later commit
/// reaches them (within a few heartbeats), with and without message loss.
#[test]
fn quiet_learners_still_learn_every_commit() {
    for (seed, faults) in [(22, Faults::default()), (23, lossy())] {
        let mut c = ready_cluster(seed, faults);
        let mut learners = admit_learners(&mut c, 3);
        let mut all: Vec<usize> = (0..3).chain(learners.iter().copied()).collect();
        assert!(
            c.run_until(20_000, |c| c.converged(&all)),
            "seed {seed}: learners did not catch up"
        );
        c.run_for(10_000);
        let quiet: u64 = (0..3)
            .filter_map(|i| c.nodes[i].node.as_ref())
            .map(|n| n.metrics().quiet_heartbeats)
            .sum();
        assert!(
            quiet > 0,
            "seed {seed}: no heartbeat to an idle learner was skipped"
        );
        // New commits while the learners are quiet still reach them.
        learners.extend(admit_learners(&mut c, 2));
        all = (0..3).chain(learners.iter().copied()).collect();
        let election_ms = c.config.raft_tick_ms * u64::from(c.config.election_ticks);
        assert!(
            c.run_until(4 * election_ms, |c| c.converged(&all)),
            "seed {seed}: a quiet learner missed a commit"
        );
    }
}

/// A listener dies holding a token's admission lease, and the next joiner's first seed is that
/// dead listener (the e2e `kill -9` case). The live listeners refuse it `conflict` with the
/// lease's remaining time; it stays with a seed that answered, asks again when the lease runs
/// out, and is admitted within 250 ms of the lease's end (15–61 ms over cluster seeds 41..71).
/// Before, it went round its seeds, 3 s on the dead one each turn, and slept out whatever
/// backoff it was in when the lease ran out: 182–617 ms late here, about 2.8 s in the e2e test.
#[test]
fn a_join_after_a_listener_died_holding_the_lease_is_admitted_soon_after_the_lease_end() {
    let mut c = ready_cluster(41, Faults::default());
    let leader = c.leader().expect("leader");
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (dead, live) = (followers[0], followers[1]);
    let token = c.issue_token(600_000);
    // A raw client starts an admission at `dead`; `dead` crashes once the lease is committed,
    // and what it had in flight (its `Consume`) is lost with it.
    let client = Client::new(60);
    let peer = c.connect_external(dead, 400, client.key.public(), client.binding);
    c.inject(dead, peer, client.request(&token));
    assert!(
        c.run_until(5_000, |c| lease_until(c, live, &token).is_some()),
        "no lease"
    );
    let lease_until_unix_ms = lease_until(&c, live, &token).expect("checked just above");
    c.crash(dead);
    c.drop_in_flight();

    // Another presenter is refused `conflict`, told how much of the lease is left.
    let asked_unix_ms = c.unix_ms();
    let answer = raw_join(&mut c, live, 401, &Client::new(61), &token);
    let PeerMessage::JoinRejected(JoinRejected {
        reason: RejectReason::Conflict,
        retry_after_ms: Some(retry_after_ms),
    }) = answer
    else {
        panic!("expected a conflict with a hint, got {answer:?}");
    };
    assert!(retry_after_ms > 0 && retry_after_ms <= lease_until_unix_ms - asked_unix_ms);
    assert!(lease_until_unix_ms - c.unix_ms() <= retry_after_ms);

    let seeds = [dead, live, leader];
    let j = c.add_joiner(&seeds);
    c.join(j, token.clone(), &seeds);
    assert!(
        c.run_until(60_000, |c| c.admitted(j).is_some()),
        "not admitted: {:?}",
        c.join_failure(j)
    );
    let admitted_unix_ms = c.unix_ms();
    assert!(
        admitted_unix_ms >= lease_until_unix_ms,
        "admitted while the dead listener's lease held"
    );
    let late_ms = admitted_unix_ms - lease_until_unix_ms;
    assert!(late_ms <= 250, "admitted {late_ms} ms after the lease end");
    assert!(
        refused(&c, live, RejectReason::Conflict) + refused(&c, leader, RejectReason::Conflict) > 0,
        "the join never met the lease"
    );
}

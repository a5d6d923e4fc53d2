//! The hardening table (README, "Hardening: every bad input and what it gets"), one test per
//! row. Each test sends the bad input to a node in the deterministic harness (or to the
//! machine that judges it) and asserts three things:
//!
//! 1. the typed error or outcome the input gets;
//! 2. the metric counter that counts it;
//! 3. that nothing is lost or corrupted: replicated state (ledger digest, governance digest,
//!    members) is unchanged, and valid traffic after it still works.
//!
//! ```text
//!   bad input ─▶ Node::handle ─▶ typed rejection (reply, event or error) ─▶ metric + 1
//!                             └▶ state unchanged ─▶ a valid input afterwards still succeeds
//! ```

use portcullis_core::config::Config;
use portcullis_core::crypto::{Domain, Hash32, PublicKey, SecretKey, Signature};
use portcullis_core::ledger::TokenState;
use portcullis_core::messages::{JoinRequest, PeerMessage, RejectReason, join_proof_message};
use portcullis_core::namespace::governance::{InsertError, OpRejection};
use portcullis_core::namespace::join::{JoinEvent, JoinFailReason};
use portcullis_core::namespace::ops::{
    InvitationError, InvitePolicy, MAX_PARENTS, NamespaceId, Op, OpBody, OpHash, SignedInvitation,
};
use portcullis_core::namespace::readiness::{
    Beacon, BeaconCache, BeaconRejection, ProbeRefused, ReadinessProbe, ReadinessResponder,
};
use portcullis_core::namespace::testkit::Fixture;
use portcullis_core::namespace::{NamespaceConfig, NamespaceMessage};
use portcullis_core::node::{Event, LocalCommand, NodeMetrics, PeerId};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::time::{Instant, Now};
use portcullis_core::token::JoinToken;
use portcullis_core::wire::{BoundedBytes, BoundedVec, DecodeError, HEADER_BYTES};

// ---- helpers -----------------------------------------------------------------------------

fn config() -> Config {
    Config {
        namespace: NamespaceConfig {
            beacon_interval_ms: 1_000,
            beacon_ttl_ms: 3_000,
            probe_answer_interval_ms: 300,
            probe_retry_ms: 200,
            backfill_silence_ms: 300,
            announce_retry_ms: 300,
            subscriptions_refresh_ms: 500,
            ack_wait_ms: 2_000,
            ..NamespaceConfig::default()
        },
        ..Config::default()
    }
}

/// Three founders with a leader.
fn ready_cluster(seed: u64) -> Cluster {
    let mut c = Cluster::new(3, seed, config(), Faults::default());
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");
    c
}

fn metrics(c: &Cluster, i: usize) -> NodeMetrics {
    c.nodes[i].node.as_ref().expect("live").metrics().clone()
}

/// A raw client: a node key and the binding of its connection.
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

    fn request_with_proof(&self, token: &JoinToken, proof: Signature) -> Vec<u8> {
        PeerMessage::JoinRequest(JoinRequest {
            token: BoundedBytes::try_from_vec(token.expose_bytes().to_vec()).unwrap(),
            node_key: self.key.public(),
            addrs: Default::default(),
            proof,
        })
        .encode()
    }

    fn request(&self, token: &JoinToken) -> Vec<u8> {
        let proof = self.key.sign(
            Domain::JoinProof,
            &join_proof_message(&token.hash(), &self.binding),
        );
        self.request_with_proof(token, proof)
    }
}

/// Sends `bytes` from a connected raw client to node `i`; runs until that client gets an
/// answer and returns it.
fn send_and_answer(c: &mut Cluster, i: usize, peer: PeerId, bytes: Vec<u8>) -> PeerMessage {
    let before = c.external_inbox.len();
    c.inject(i, peer, bytes);
    let answered = c.run_until(20_000, |c| {
        c.external_inbox[before..]
            .iter()
            .any(|(_, p, _)| *p == peer)
    });
    assert!(answered, "no answer");
    let (_, _, bytes) = c.external_inbox[before..]
        .iter()
        .find(|(_, p, _)| *p == peer)
        .unwrap()
        .clone();
    PeerMessage::decode(&bytes, &c.config.limits()).unwrap()
}

fn raw_join(
    c: &mut Cluster,
    i: usize,
    ext: u64,
    client: &Client,
    token: &JoinToken,
) -> PeerMessage {
    let peer = c.connect_external(i, ext, client.key.public(), client.binding);
    send_and_answer(c, i, peer, client.request(token))
}

fn rejection(msg: &PeerMessage) -> Option<RejectReason> {
    match msg {
        PeerMessage::JoinRejected(r) => Some(r.reason),
        _ => None,
    }
}

/// Valid traffic still works: a fresh token presented by a fresh client at `i` is admitted.
fn a_valid_join_is_admitted(c: &mut Cluster, i: usize, ext: u64) {
    let token = c.issue_token(600_000);
    // A new presenter per call (one key is admitted once).
    let client = Client::new(150u8.wrapping_add(u8::try_from(ext % 100).unwrap()));
    let answer = raw_join(c, i, ext, &client, &token);
    assert!(
        matches!(answer, PeerMessage::JoinAccepted(_)),
        "valid join after the bad input: {answer:?}"
    );
}

fn rejected_count(c: &Cluster, i: usize, reason: RejectReason) -> u64 {
    metrics(c, i)
        .admissions_rejected
        .get(reason.as_str())
        .copied()
        .unwrap_or(0)
}

/// The number of members in node `i`'s ledger.
fn member_count(c: &Cluster, i: usize) -> usize {
    c.nodes[i].node.as_ref().unwrap().ledger().members().count()
}

// ---- frames ------------------------------------------------------------------------------

/// One bad frame from an authenticated peer: the decoder's typed error, the
/// `frames_rejected{label}` counter, an unchanged ledger, and a valid join on a new connection.
fn bad_frame(seed: u64, bytes: Vec<u8>, expected: DecodeError, label: &str) {
    let mut c = ready_cluster(seed);
    assert_eq!(
        PeerMessage::decode(&bytes, &c.config.limits()),
        Err(expected)
    );
    let before = c.ledger_digests();
    let client = Client::new(1);
    let peer = c.connect_external(0, 1, client.key.public(), client.binding);
    let replies = c.external_inbox.len();
    c.inject(0, peer, bytes);
    assert_eq!(metrics(&c, 0).frames_rejected.get(label), Some(&1));
    assert_eq!(c.external_inbox.len(), replies, "a bad frame gets no reply");
    assert_eq!(c.ledger_digests(), before, "ledger changed");
    a_valid_join_is_admitted(&mut c, 0, 2);
}

fn a_join_request(c: &mut Cluster) -> Vec<u8> {
    let token = c.issue_token(600_000);
    Client::new(1).request(&token)
}

#[test]
fn truncated_frame() {
    let mut c = ready_cluster(101);
    let mut frame = a_join_request(&mut c);
    frame.truncate(frame.len() - 10);
    bad_frame(101, frame, DecodeError::Truncated, "truncated");
    // A frame shorter than the header.
    bad_frame(101, vec![1, 0], DecodeError::Truncated, "truncated");
}

#[test]
fn oversized_frame() {
    let max = config().max_frame_bytes;
    let mut frame = vec![0u8; max + 1];
    frame[..HEADER_BYTES].copy_from_slice(&[1, 0, 22, 0]);
    bad_frame(
        102,
        frame,
        DecodeError::FrameTooLarge { len: max + 1, max },
        "frame_too_large",
    );
}

#[test]
fn version_mismatched_frame() {
    let mut c = ready_cluster(103);
    let mut frame = a_join_request(&mut c);
    frame[..2].copy_from_slice(&2u16.to_le_bytes());
    bad_frame(
        103,
        frame,
        DecodeError::UnsupportedVersion {
            got: 2,
            min: 1,
            max: 1,
        },
        "unsupported_version",
    );
}

#[test]
fn unknown_message_kind() {
    let mut c = ready_cluster(104);
    let mut frame = a_join_request(&mut c);
    frame[2..4].copy_from_slice(&0xbeefu16.to_le_bytes());
    bad_frame(104, frame, DecodeError::UnknownKind(0xbeef), "unknown_kind");
}

#[test]
fn frame_from_an_unauthenticated_connection() {
    let mut c = ready_cluster(105);
    let frame = a_join_request(&mut c);
    let before = c.ledger_digests();
    // The transport never reported this connection as authenticated.
    c.inject(
        0,
        PeerId(portcullis_core::testing::EXTERNAL_PEER_BASE + 77),
        frame,
    );
    assert_eq!(metrics(&c, 0).unauthenticated_frames, 1);
    assert!(c.external_inbox.is_empty());
    assert_eq!(c.ledger_digests(), before);
    a_valid_join_is_admitted(&mut c, 0, 2);
}

// ---- signatures and proofs ---------------------------------------------------------------

#[test]
fn bad_join_proof() {
    let mut c = ready_cluster(111);
    let token = c.issue_token(600_000);
    let client = Client::new(3);
    // A proof over another connection's binding (a proof replayed from elsewhere).
    let proof = client.key.sign(
        Domain::JoinProof,
        &join_proof_message(&token.hash(), &Hash32([0; 32])),
    );
    let peer = c.connect_external(0, 1, client.key.public(), client.binding);
    let answer = send_and_answer(&mut c, 0, peer, client.request_with_proof(&token, proof));
    assert_eq!(rejection(&answer), Some(RejectReason::BadProof));
    assert_eq!(rejected_count(&c, 0, RejectReason::BadProof), 1);
    // Refused before any Raft round trip: the token never reached the ledger.
    for n in &c.nodes {
        assert!(
            n.node
                .as_ref()
                .unwrap()
                .ledger()
                .record(&token.hash())
                .is_none()
        );
    }
    // The same token with a good proof is then admitted: nothing was burnt.
    let answer = raw_join(&mut c, 0, 2, &client, &token);
    assert!(matches!(answer, PeerMessage::JoinAccepted(_)), "{answer:?}");
}

// ---- tokens ------------------------------------------------------------------------------

/// `token` from a raw client at node 0 gets `reason`, counted once; nobody new becomes a
/// member, and a valid join afterwards works.
fn bad_token(c: &mut Cluster, token: &JoinToken, reason: RejectReason) {
    let before = rejected_count(c, 0, reason);
    let members = member_count(c, 0);
    let answer = raw_join(c, 0, 50, &Client::new(9), token);
    assert_eq!(rejection(&answer), Some(reason), "{answer:?}");
    assert_eq!(rejected_count(c, 0, reason), before + 1);
    assert_eq!(
        member_count(c, 0),
        members,
        "a refused token admitted someone"
    );
    a_valid_join_is_admitted(c, 0, 51);
}

#[test]
fn forged_token() {
    let mut c = ready_cluster(121);
    let token = c.forge_token(600_000);
    let before = c.ledger_digests();
    bad_token(&mut c, &token, RejectReason::BadMac);
    assert!(c.token_record(0, &token.hash()).is_none());
    let _ = before;
}

/// An expired token is refused as `Expired` and admits no one. Within its record's retention
/// the ledger judges it (a lagging listener cannot tell "never leased" from "not seen yet"),
/// so its record holds no admission; past retention the listener refuses it at once.
#[test]
fn expired_token() {
    let mut c = ready_cluster(122);
    // Beyond the clock-skew allowance.
    let token = c.expired_token(c.config.token_clock_skew_ms + 60_000);
    bad_token(&mut c, &token, RejectReason::Expired);
    assert!(c.run_until(5_000, |c| c.converged(&[0, 1, 2])));
    assert!(!record_admits(&c, &token));
}

#[test]
fn wrong_cluster_token() {
    let mut c = ready_cluster(123);
    let token = c.wrong_cluster_token(600_000);
    bad_token(&mut c, &token, RejectReason::WrongCluster);
    assert!(c.token_record(0, &token.hash()).is_none());
}

#[test]
fn revoked_token() {
    let mut c = ready_cluster(124);
    let token = c.issue_token(600_000);
    c.command(
        0,
        LocalCommand::RevokeToken {
            hash: token.hash(),
            expires_at_unix_ms: token.body().expires_at_unix_ms,
        },
    );
    assert!(c.run_until(10_000, |c| {
        c.converged(&[0, 1, 2])
            && c.nodes[0]
                .node
                .as_ref()
                .unwrap()
                .ledger()
                .record(&token.hash())
                .is_some()
    }));
    bad_token(&mut c, &token, RejectReason::Revoked);
    let record = *c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .ledger()
        .record(&token.hash())
        .unwrap();
    assert_eq!(
        record.state,
        TokenState::Aborted,
        "a revoked token came back"
    );
}

#[test]
fn consumed_token() {
    let mut c = ready_cluster(125);
    let token = c.issue_token(600_000);
    let owner = Client::new(1);
    let PeerMessage::JoinAccepted(_) = raw_join(&mut c, 0, 1, &owner, &token) else {
        panic!("first presentation refused");
    };
    let consumed = *c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .ledger()
        .record(&token.hash())
        .unwrap();
    assert!(matches!(consumed.state, TokenState::Consumed { .. }));
    bad_token(&mut c, &token, RejectReason::AlreadyConsumed);
    let after = *c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .ledger()
        .record(&token.hash())
        .unwrap();
    assert_eq!(after.state, consumed.state, "the consumed record changed");
}

/// Whether any founder's ledger holds a lease or an admission for `token`.
fn record_admits(c: &Cluster, token: &JoinToken) -> bool {
    (0..3).any(|i| {
        c.token_record(i, &token.hash()).is_some_and(|r| {
            matches!(
                r.state,
                TokenState::Consumed { .. } | TokenState::InFlight { .. }
            )
        })
    })
}

/// Clock skew (tokens): a token past its expiry by more than `token_clock_skew_ms` is refused
/// as `Expired`; one within the allowance goes to the ledger, which judges expiry by the
/// entry's own time, deterministically on every replica. Either way no record holds an
/// admission. Only a token past its record's retention (`record_grace_ms`, plus the skew
/// allowance) is refused before any Raft round trip, with no ledger record: earlier, only the
/// ledger knows whether this presenter consumed it.
#[test]
fn token_clock_skew_beyond_the_bound() {
    let mut c = ready_cluster(126);
    let skew = c.config.token_clock_skew_ms;
    let beyond = c.expired_token(skew + 1_000);
    bad_token(&mut c, &beyond, RejectReason::Expired);
    let within = c.expired_token(skew / 2);
    let answer = raw_join(&mut c, 0, 60, &Client::new(60), &within);
    assert_eq!(rejection(&answer), Some(RejectReason::Expired));
    assert!(c.run_until(5_000, |c| c.converged(&[0, 1, 2])));
    for token in [&beyond, &within] {
        assert!(!record_admits(&c, token));
    }
    let retired =
        c.expired_token(c.config.ledger.record_grace_ms + c.config.token_clock_skew_ms + 1_000);
    let answer = raw_join(&mut c, 0, 61, &Client::new(61), &retired);
    assert_eq!(rejection(&answer), Some(RejectReason::Expired));
    for i in 0..3 {
        assert!(
            c.token_record(i, &retired.hash()).is_none(),
            "refused early"
        );
    }
}

// ---- replays -----------------------------------------------------------------------------

/// A join request replayed after it was served: its owner is served the same admission
/// again (a lost reply), nothing new is written; anyone else replaying the token is refused.
#[test]
fn replayed_join_request() {
    let mut c = ready_cluster(131);
    let token = c.issue_token(600_000);
    let owner = Client::new(1);
    let peer = c.connect_external(0, 1, owner.key.public(), owner.binding);
    let request = owner.request(&token);
    let PeerMessage::JoinAccepted(first) = send_and_answer(&mut c, 0, peer, request.clone()) else {
        panic!("refused");
    };
    assert!(c.run_until(5_000, |c| c.converged(&[0, 1, 2])));
    let members = member_count(&c, 0);
    let record = *c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .ledger()
        .record(&token.hash())
        .unwrap();
    // The very same bytes again, on the same connection.
    let PeerMessage::JoinAccepted(again) = send_and_answer(&mut c, 0, peer, request) else {
        panic!("replay by the owner not served");
    };
    assert_eq!(again.member_id, first.member_id);
    assert_eq!(member_count(&c, 0), members);
    assert_eq!(
        c.nodes[0]
            .node
            .as_ref()
            .unwrap()
            .ledger()
            .record(&token.hash()),
        Some(&record)
    );
    // Another presenter replaying the token: refused and counted.
    bad_token(&mut c, &token, RejectReason::AlreadyConsumed);
}

// ---- namespaces: a member node and an external prober ------------------------------------

/// A namespace admin node (index 0, in no cluster) with a durable identity; returns the
/// namespace and the admin's key in it.
fn namespace_admin(seed: u64) -> (Cluster, NamespaceId, PublicKey) {
    let mut c = Cluster::new(0, seed, config(), Faults::default());
    let a = c.namespace_node(&[]);
    let ns = c.create_namespace(a, [7; 16]);
    let admin = c
        .events(a)
        .iter()
        .find_map(|e| match e {
            Event::NamespaceCreated { admin, .. } => Some(*admin),
            _ => None,
        })
        .unwrap();
    c.run_for(50);
    (c, ns, admin)
}

fn ns_frame(message: NamespaceMessage) -> Vec<u8> {
    PeerMessage::Namespace(Box::new(message)).encode()
}

fn ns_rejected(c: &Cluster, i: usize, message: &str, reason: &str) -> u64 {
    metrics(c, i)
        .namespace_rejected
        .iter()
        .filter(|((m, r), _)| *m == message && *r == reason)
        .map(|(_, n)| *n)
        .sum()
}

/// Beacons node `i` sent to external peer `peer`.
fn beacons_to(c: &Cluster, peer: PeerId) -> usize {
    c.external_inbox
        .iter()
        .filter(|(_, p, bytes)| {
            *p == peer
                && matches!(
                    PeerMessage::decode(bytes, &c.config.limits()),
                    Ok(PeerMessage::Namespace(m)) if matches!(*m, NamespaceMessage::Beacon(_))
                )
        })
        .count()
}

fn governance_digest(c: &Cluster, i: usize, ns: NamespaceId) -> Hash32 {
    c.nodes[i]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .digest()
}

#[test]
fn replayed_probe() {
    // The machine: the second answer within the interval is refused, typed.
    let cfg = config().namespace;
    let (_, ns, _) = namespace_admin(141);
    let mut responder = ReadinessResponder::new(ns, &cfg, Instant::from_millis(0));
    let probe = ReadinessProbe {
        namespace: ns,
        nonce: 5,
    };
    assert_eq!(
        responder.on_probe(Instant::from_millis(10), PeerId(1), &probe),
        Ok(())
    );
    assert_eq!(
        responder.on_probe(Instant::from_millis(20), PeerId(1), &probe),
        Err(ProbeRefused::RateLimited {
            retry_after_ms: cfg.probe_answer_interval_ms - 10
        })
    );

    // The node: the same probe frame twice gets one beacon and one counted refusal.
    let (mut c, ns, _) = namespace_admin(141);
    let peer = c.connect_external(0, 1, Client::new(1).key.public(), Hash32([1; 32]));
    let frame = ns_frame(NamespaceMessage::Probe(probe.clone()));
    let digest = governance_digest(&c, 0, ns);
    c.inject(0, peer, frame.clone());
    c.inject(0, peer, frame.clone());
    assert_eq!(beacons_to(&c, peer), 1);
    assert_eq!(ns_rejected(&c, 0, "probe", "rate_limited"), 1);
    assert_eq!(governance_digest(&c, 0, ns), digest);
    // After the interval the peer is answered again.
    c.run_for(cfg.probe_answer_interval_ms);
    c.inject(0, peer, frame);
    assert_eq!(beacons_to(&c, peer), 2);
}

#[test]
fn probe_flood() {
    let (mut c, ns, _) = namespace_admin(142);
    let flooder = c.connect_external(0, 1, Client::new(1).key.public(), Hash32([1; 32]));
    for nonce in 0..100u64 {
        c.inject(
            0,
            flooder,
            ns_frame(NamespaceMessage::Probe(ReadinessProbe {
                namespace: ns,
                nonce,
            })),
        );
    }
    assert_eq!(
        beacons_to(&c, flooder),
        1,
        "a flood gets one answer per interval"
    );
    assert_eq!(ns_rejected(&c, 0, "probe", "rate_limited"), 99);
    // Another peer is not starved by the flooder.
    let other = c.connect_external(0, 2, Client::new(2).key.public(), Hash32([2; 32]));
    c.inject(
        0,
        other,
        ns_frame(NamespaceMessage::Probe(ReadinessProbe {
            namespace: ns,
            nonce: 1,
        })),
    );
    assert_eq!(beacons_to(&c, other), 1);
}

// ---- namespaces: a joiner facing an external namespace -----------------------------------

/// A standalone node `j` joining the fixture's namespace (admin: the fixture's key 0, played
/// by an external peer connected to `j`).
struct ExternalNamespace {
    c: Cluster,
    f: Fixture,
    j: usize,
    peer: PeerId,
}

impl ExternalNamespace {
    fn new(seed: u64) -> ExternalNamespace {
        let mut c = Cluster::new(0, seed, config(), Faults::default());
        let f = Fixture::new(1);
        let j = c.namespace_node(&[]);
        let peer = c.connect_external(j, 1, Client::new(1).key.public(), Hash32([1; 32]));
        let inv = f.invitation(c.unix_ms() + 3_600_000, [3; 16]);
        c.join_namespace(j, inv, 10_000);
        ExternalNamespace { c, f, j, peer }
    }

    /// Delivers `message` from the external peer, and lets batched verification run.
    fn send(&mut self, message: NamespaceMessage) {
        self.c.inject(self.j, self.peer, ns_frame(message));
        self.c.run_for(1);
    }

    fn beacon_at(&self, unix_ms: u64) -> Beacon {
        self.f.beacon(&self.f.admin, unix_ms)
    }

    fn started(&self) -> bool {
        self.c
            .events(self.j)
            .iter()
            .any(|e| matches!(e, Event::NamespaceJoinStarted { .. }))
    }

    fn rejected(&self, message: &str, reason: &str) -> u64 {
        ns_rejected(&self.c, self.j, message, reason)
    }
}

#[test]
fn bad_beacon_signature() {
    let mut x = ExternalNamespace::new(151);
    let mut forged = x.beacon_at(x.c.unix_ms());
    forged.applied_through += 1; // edited after signing
    assert!(forged.verify().is_err());
    x.send(NamespaceMessage::Beacon(forged));
    assert_eq!(x.rejected("beacon", "bad_signature"), 1);
    assert!(!x.started(), "a forged beacon started the join");
    // A good beacon then starts it.
    let good = x.beacon_at(x.c.unix_ms());
    x.send(NamespaceMessage::Beacon(good));
    assert!(x.started());
}

#[test]
fn replayed_beacon() {
    // The cache: an older beacon than the cached one is a typed replay.
    let cfg = config().namespace;
    let f = Fixture::new(1);
    let mut cache = BeaconCache::new(f.namespace, &cfg);
    let now = Now::new(Instant::from_millis(10_000), 1_700_000_010_000);
    let members = f.member_keys();
    let newer = f.beacon(&f.admin, now.unix_ms);
    let older = f.beacon(&f.admin, now.unix_ms - 500);
    assert!(
        cache
            .insert(now, PeerId(1), newer, |k| members.contains(k))
            .is_ok()
    );
    assert_eq!(
        cache.insert(now, PeerId(1), older.clone(), |k| members.contains(k)),
        Err(BeaconRejection::ReplayedBeacon {
            cached_unix_ms: now.unix_ms,
            got_unix_ms: now.unix_ms - 500
        })
    );

    // The node: counted, and the join that the newer beacon started goes on.
    let mut x = ExternalNamespace::new(152);
    let t = x.c.unix_ms();
    x.send(NamespaceMessage::Beacon(x.beacon_at(t)));
    assert!(x.started());
    x.send(NamespaceMessage::Beacon(x.beacon_at(t - 500)));
    assert_eq!(x.rejected("beacon", "replayed"), 1);
    assert!(x.c.namespace_join_failure(x.j, x.f.namespace).is_none());
}

/// Clock skew (beacons): a beacon signed further ahead than `max_future_skew_ms` is refused
/// and does not start a join; one within the bound does.
#[test]
fn beacon_clock_skew_beyond_the_bound() {
    let cfg = config().namespace;
    let f = Fixture::new(1);
    let mut cache = BeaconCache::new(f.namespace, &cfg);
    let now = Now::new(Instant::from_millis(10_000), 1_700_000_010_000);
    let members = f.member_keys();
    let ahead = cfg.max_future_skew_ms + 1_000;
    assert_eq!(
        cache.insert(
            now,
            PeerId(1),
            f.beacon(&f.admin, now.unix_ms + ahead),
            |k| members.contains(k)
        ),
        Err(BeaconRejection::BeaconFromFuture { ahead_ms: ahead })
    );

    let mut x = ExternalNamespace::new(153);
    let t = x.c.unix_ms();
    x.send(NamespaceMessage::Beacon(x.beacon_at(t + ahead)));
    assert_eq!(x.rejected("beacon", "from_future"), 1);
    assert!(!x.started(), "a beacon from the future started the join");
    // Within the bound (a member whose clock is a little ahead): accepted.
    x.send(NamespaceMessage::Beacon(
        x.beacon_at(t + cfg.max_future_skew_ms / 2),
    ));
    assert!(x.started());
}

/// Acks: a forged ack is refused and counted; a replayed ack is counted and changes nothing
/// (the report lists the member once); the join is Ready on the genuine ack.
#[test]
fn bad_and_replayed_acks() {
    let mut x = ExternalNamespace::new(154);
    let t = x.c.unix_ms();
    x.send(NamespaceMessage::Beacon(x.beacon_at(t)));
    assert!(x.started());
    // Answer the backfill request the joiner sent us.
    let request =
        x.c.external_inbox
            .iter()
            .rev()
            .find_map(|(_, p, bytes)| {
                if *p != x.peer {
                    return None;
                }
                match PeerMessage::decode(bytes, &x.c.config.limits()) {
                    Ok(PeerMessage::Namespace(m)) => match *m {
                        NamespaceMessage::BackfillRequest(r) => Some(r),
                        _ => None,
                    },
                    _ => None,
                }
            })
            .expect("a backfill request");
    let batch = x.f.answer(&request, 256);
    x.send(NamespaceMessage::BackfillBatch(batch));
    let j = x.j;
    assert!(
        x.c.run_until(2_000, |c| announced(c, j).is_some()),
        "not announced"
    );
    let op = announced(&x.c, j).unwrap();

    let mut forged = x.f.ack(&x.f.admin, op);
    forged.op = x.f.create.hash(); // the signature covers the op
    x.send(NamespaceMessage::Ack(forged));
    assert_eq!(x.rejected("ack", "bad_signature"), 1);
    assert!(
        x.c.namespace_ready(j, x.f.namespace).is_none(),
        "ready on a forged ack"
    );

    let ack = x.f.ack(&x.f.admin, op);
    x.send(NamespaceMessage::Ack(ack.clone()));
    let report =
        x.c.namespace_ready(j, x.f.namespace)
            .expect("ready on the genuine ack");
    assert_eq!(report.acked_by, vec![x.f.admin.public()]);
    x.send(NamespaceMessage::Ack(ack));
    assert_eq!(x.rejected("ack", "replayed"), 1);
    let readies =
        x.c.events(j)
            .iter()
            .filter(|e| matches!(e, Event::NamespaceReady(_)))
            .count();
    assert_eq!(readies, 1, "a replayed ack made a second verdict");
}

fn announced(c: &Cluster, j: usize) -> Option<OpHash> {
    c.events(j).iter().find_map(|e| match e {
        Event::NamespaceJoinProgress {
            event: JoinEvent::Announced { op },
            ..
        } => Some(*op),
        _ => None,
    })
}

// ---- namespaces: ops at a member ---------------------------------------------------------

/// `op` sent to admin node 0 of `ns`: the replica's typed rejection (checked on a copy), the
/// `rejected{reason}` counter of the namespace's stats, and an unchanged governance digest.
fn bad_op(c: &mut Cluster, ns: NamespaceId, op: Op, expected: OpRejection) {
    let mut copy = c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .clone();
    assert_eq!(
        copy.insert(op.clone()),
        Err(InsertError::Rejected(expected.clone()))
    );
    let digest = governance_digest(c, 0, ns);
    let label = expected.as_str();
    let before = stats_rejected(c, ns, label);
    let peer = c.connect_external(0, 9, Client::new(9).key.public(), Hash32([9; 32]));
    c.inject(0, peer, ns_frame(NamespaceMessage::Op(op)));
    assert_eq!(stats_rejected(c, ns, label), before + 1);
    assert_eq!(governance_digest(c, 0, ns), digest, "the log changed");
}

fn stats_rejected(c: &Cluster, ns: NamespaceId, label: &str) -> u64 {
    c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .stats()
        .rejected
        .get(label)
        .copied()
        .unwrap_or(0)
}

/// Valid traffic still works: a new node joins the namespace with a genuine invitation.
fn a_valid_namespace_join(c: &mut Cluster, ns: NamespaceId) {
    let inv = c.invite(0, ns, 3_600_000);
    let j = c.namespace_node(&[0]);
    c.join_namespace(j, inv, 10_000);
    assert!(
        c.run_until(10_000, |c| c.namespace_ready(j, ns).is_some()),
        "valid join failed: {:?}",
        c.namespace_join_failure(j, ns)
    );
}

fn heads_of(c: &Cluster, ns: NamespaceId) -> BoundedVec<OpHash, MAX_PARENTS> {
    Op::canonical_parents(c.namespace_heads(0, ns)).unwrap()
}

fn joined_with(c: &Cluster, ns: NamespaceId, member: &SecretKey, inv: SignedInvitation) -> Op {
    Op::sign(
        member,
        ns,
        heads_of(c, ns),
        c.unix_ms(),
        OpBody::MemberJoined {
            member: member.public(),
            invitation: inv,
        },
    )
}

#[test]
fn bad_op_signature() {
    let (mut c, ns, _) = namespace_admin(161);
    let x = SecretKey::from_secret_bytes(&[0x51; 32]);
    let inv = SignedInvitation::issue(
        &x,
        ns,
        c.unix_ms() + 60_000,
        [1; 16],
        InvitePolicy::Reusable,
    );
    let mut op = joined_with(&c, ns, &x, inv);
    op.unix_ms += 1; // edited after signing
    let err = op.verify_signature().unwrap_err();
    bad_op(&mut c, ns, op, OpRejection::BadSignature(err));
    a_valid_namespace_join(&mut c, ns);
}

#[test]
fn forged_invitation() {
    let (mut c, ns, admin) = namespace_admin(162);
    let x = SecretKey::from_secret_bytes(&[0x52; 32]);
    // Claims the admin as inviter, signed by someone else.
    let mut inv = SignedInvitation::issue(
        &x,
        ns,
        c.unix_ms() + 60_000,
        [2; 16],
        InvitePolicy::Reusable,
    );
    inv.invitation.inviter = admin;
    let Err(InvitationError::BadSignature(sig_err)) = inv.verify(c.unix_ms()) else {
        panic!("forged invitation verified");
    };
    // At the log.
    let op = joined_with(&c, ns, &x, inv.clone());
    bad_op(&mut c, ns, op, OpRejection::InvitationBadSignature(sig_err));
    // At a joiner: refused before the inviter is trusted for anything.
    let j = c.namespace_node(&[0]);
    c.join_namespace(j, inv, 10_000);
    let failure = c.namespace_join_failure(j, ns).expect("failed at once");
    assert_eq!(
        failure.reason,
        JoinFailReason::InvalidInvitation(InvitationError::BadSignature(sig_err))
    );
    assert_eq!(ns_rejected(&c, j, "join", "invalid_invitation"), 1);
    a_valid_namespace_join(&mut c, ns);
}

#[test]
fn expired_invitation() {
    let (mut c, ns, _) = namespace_admin(163);
    let expires_at_unix_ms = c.unix_ms() + 10;
    c.command(
        0,
        LocalCommand::IssueInvitation {
            namespace: ns,
            expires_at_unix_ms,
            policy: InvitePolicy::Reusable,
        },
    );
    let inv = c
        .events(0)
        .iter()
        .find_map(|e| match e {
            Event::InvitationIssued(inv) => Some(inv.clone()),
            _ => None,
        })
        .unwrap();
    c.run_for(1_000);
    let now = c.unix_ms();
    let x = SecretKey::from_secret_bytes(&[0x53; 32]);
    let op = joined_with(&c, ns, &x, inv.clone());
    bad_op(
        &mut c,
        ns,
        op,
        OpRejection::InvitationExpired {
            expires_at_unix_ms,
            op_unix_ms: now,
        },
    );
    let j = c.namespace_node(&[0]);
    c.join_namespace(j, inv, 10_000);
    let failure = c.namespace_join_failure(j, ns).expect("failed at once");
    assert_eq!(
        failure.reason,
        JoinFailReason::InvalidInvitation(InvitationError::Expired {
            expires_at_unix_ms,
            at_unix_ms: now
        })
    );
    assert_eq!(ns_rejected(&c, j, "join", "invalid_invitation"), 1);
    a_valid_namespace_join(&mut c, ns);
}

#[test]
fn non_admin_invitation() {
    let (mut c, ns, _) = namespace_admin(164);
    // Properly signed, by a key that is not an admin of the namespace.
    let outsider = SecretKey::from_secret_bytes(&[0x54; 32]);
    let inv = SignedInvitation::issue(
        &outsider,
        ns,
        c.unix_ms() + 60_000,
        [4; 16],
        InvitePolicy::Reusable,
    );
    assert_eq!(inv.verify(c.unix_ms()), Ok(()));
    let x = SecretKey::from_secret_bytes(&[0x55; 32]);
    let op = joined_with(&c, ns, &x, inv);
    bad_op(&mut c, ns, op, OpRejection::InviterNotAdmin);
    let members = c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .members()
        .len();
    assert_eq!(members, 1, "only the admin");
    a_valid_namespace_join(&mut c, ns);
}

/// Ops whose parents are unknown are buffered up to `max_pending_ops`; past it the oldest
/// is dropped and counted (junk ages out, it cannot fill the buffer for good); the applied
/// log is untouched, and valid ops still apply.
#[test]
fn ops_with_unknown_parents() {
    let mut cfg = config();
    cfg.namespace.governance.max_pending_ops = 8;
    let mut c = Cluster::new(0, 171, cfg, Faults::default());
    let a = c.namespace_node(&[]);
    let ns = c.create_namespace(a, [7; 16]);
    c.run_for(50);
    let digest = governance_digest(&c, a, ns);
    let peer = c.connect_external(a, 1, Client::new(1).key.public(), Hash32([1; 32]));
    let orphan = |n: u8| {
        let x = SecretKey::from_secret_bytes(&[0x60 + n; 32]);
        let parents = Op::canonical_parents(vec![OpHash(Hash32([n; 32]))]).unwrap();
        Op::sign(
            &x,
            ns,
            parents,
            1,
            OpBody::MemberRemoved { member: x.public() },
        )
    };
    for n in 0..12u8 {
        c.inject(a, peer, ns_frame(NamespaceMessage::Op(orphan(n))));
    }
    let replica = c.nodes[a].node.as_ref().unwrap().namespace(&ns).unwrap();
    assert_eq!(replica.pending_len(), 8, "buffered up to the bound");
    assert_eq!(
        replica.stats().dropped_pending,
        4,
        "the oldest dropped and counted"
    );
    assert!((0..4).all(|n| !replica.is_pending(&orphan(n).hash())));
    assert!((4..12).all(|n| replica.is_pending(&orphan(n).hash())));
    assert_eq!(governance_digest(&c, a, ns), digest);
    a_valid_namespace_join(&mut c, ns);
}

#[test]
fn replayed_op_is_a_counted_duplicate() {
    let (mut c, ns, _) = namespace_admin(172);
    let create = c.namespace_heads(0, ns);
    let op = c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .get(&create[0])
        .unwrap()
        .clone();
    let digest = governance_digest(&c, 0, ns);
    let peer = c.connect_external(0, 1, Client::new(1).key.public(), Hash32([1; 32]));
    c.inject(0, peer, ns_frame(NamespaceMessage::Op(op)));
    let stats = c.nodes[0]
        .node
        .as_ref()
        .unwrap()
        .namespace(&ns)
        .unwrap()
        .stats()
        .clone();
    assert_eq!(stats.duplicates, 1);
    assert_eq!(governance_digest(&c, 0, ns), digest);
}

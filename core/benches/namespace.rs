//! Namespace benchmark (issue 4), one thread.
//!
//! Run: `cargo bench -p portcullis-core --bench namespace`
//!
//! Prints (and asserts nothing about speed):
//! * readiness beacons verified per second through the core's receive path — framed beacon
//!   messages fed to `Node::handle`, queued and verified on the immediate timer, cached;
//! * this machine's raw ed25519 verify rate measured in the same run, and the ratio (target
//!   ≥ 0.9; each beacon costs one verification, so the ceiling is about 1);
//! * the simulated-time join latency for a 5-member namespace over 1 ms links (target
//!   < 20 ms of virtual time from the join command to `Ready`).
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use portcullis_core::config::Config;
use portcullis_core::crypto::{Domain, Hash32, SecretKey};
use portcullis_core::messages::PeerMessage;
use portcullis_core::namespace::NamespaceMessage;
use portcullis_core::namespace::governance::Governance;
use portcullis_core::namespace::ops::{InvitePolicy, Op, OpBody};
use portcullis_core::namespace::readiness::Beacon;
use portcullis_core::node::{Event, Input, LocalCommand, Node, NodeSetup, Output, PeerId};
use portcullis_core::rng::NodeSeed;
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::time::{Instant as CoreInstant, Now};

const MEMBERS: usize = 64;
const ROUNDS: usize = 9;
const BEACONS_PER_ROUND: usize = 16_384;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn raw_verify_rate() -> f64 {
    let key = SecretKey::from_secret_bytes(&[1; 32]);
    let msgs: Vec<[u8; 160]> = (0..256u32)
        .map(|i| {
            let mut m = [0u8; 160];
            m[..4].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    let sigs: Vec<_> = msgs.iter().map(|m| key.sign(Domain::Beacon, m)).collect();
    let public = key.public();
    let n = 20_000;
    let start = Instant::now();
    for i in 0..n {
        let k = i % msgs.len();
        black_box(public.verify(Domain::Beacon, &msgs[k], &sigs[k]).is_ok());
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn drain(node: &mut Node) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(o) = node.poll_output() {
        if let Output::Event(e) = o {
            events.push(e);
        }
    }
    events
}

/// A node that administers a namespace with `MEMBERS` more members, and beacon frames from
/// those members (`per_member` each, increasing times).
fn setup(per_member: usize) -> (Node, Now, PeerId, Vec<Vec<u8>>) {
    let t0 = 1_700_000_000_000u64;
    let now = Now::new(CoreInstant::from_millis(1), t0);
    let mut node = Node::new_joiner(
        NodeSetup {
            config: Config::default(),
            seed: NodeSeed::from_u64(1),
            node_key: SecretKey::from_secret_bytes(&[9; 32]),
            secrets: None,
        },
        now,
    )
    .expect("valid config");
    drain(&mut node);
    node.handle(
        now,
        Input::Command(LocalCommand::CreateNamespace { salt: [1; 16] }),
    );
    let ns = drain(&mut node)
        .into_iter()
        .find_map(|e| match e {
            Event::NamespaceCreated { namespace, .. } => Some(namespace),
            _ => None,
        })
        .expect("created");
    node.handle(now, Input::Persisted(u64::MAX));
    node.handle(
        now,
        Input::Command(LocalCommand::IssueInvitation {
            namespace: ns,
            expires_at_unix_ms: t0 + 3_600_000,
            policy: InvitePolicy::Reusable,
        }),
    );
    let inv = drain(&mut node)
        .into_iter()
        .find_map(|e| match e {
            Event::InvitationIssued(inv) => Some(inv),
            _ => None,
        })
        .expect("issued");
    let peer = PeerId(1_000);
    node.handle(
        now,
        Input::Connected {
            peer,
            node_key: SecretKey::from_secret_bytes(&[8; 32]).public(),
            binding: Hash32([0; 32]),
        },
    );
    drain(&mut node);
    // Members join by op, delivered directly.
    let mut mirror: Governance = node.namespace(&ns).expect("namespace").clone();
    let members: Vec<SecretKey> = (0..MEMBERS)
        .map(|i| SecretKey::from_secret_bytes(&[u8::try_from(i + 20).unwrap_or(0); 32]))
        .collect();
    for m in &members {
        let parents = Op::canonical_parents(mirror.parents_for_new_op(16)).expect("parents");
        let op = Op::sign(
            m,
            ns,
            parents,
            t0,
            OpBody::MemberJoined {
                member: m.public(),
                invitation: inv.clone(),
            },
        );
        mirror.insert(op.clone()).expect("valid op");
        let frame = PeerMessage::Namespace(Box::new(NamespaceMessage::Op(op))).encode();
        node.handle(
            now,
            Input::Received {
                from: peer,
                bytes: frame,
            },
        );
        drain(&mut node);
    }
    assert_eq!(
        node.namespace(&ns).map(|g| g.members().len()),
        Some(MEMBERS + 1)
    );
    let mut frames = Vec::with_capacity(per_member * MEMBERS);
    for r in 0..per_member {
        for m in &members {
            let b = Beacon::for_replica(m, &mirror, t0 - 14_000 + r as u64);
            frames.push(PeerMessage::Namespace(Box::new(NamespaceMessage::Beacon(b))).encode());
        }
    }
    (node, now, peer, frames)
}

/// Beacons per second through `Node::handle`: every frame received, the immediate timer run
/// whenever the node asks for it (as a driver would after a burst).
fn beacon_rate() -> f64 {
    let per_member = BEACONS_PER_ROUND / MEMBERS;
    let (mut node, now, peer, frames) = setup(per_member);
    let refused_before = node.metrics().namespace_messages_refused;
    let n = frames.len();
    let start = Instant::now();
    for (i, bytes) in frames.into_iter().enumerate() {
        node.handle(now, Input::Received { from: peer, bytes });
        while node.poll_output().is_some() {}
        if i % 64 == 63 {
            node.handle(now, Input::Timer);
            while node.poll_output().is_some() {}
        }
    }
    node.handle(now, Input::Timer);
    while node.poll_output().is_some() {}
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(node.metrics().namespace_messages_refused, refused_before);
    let ns = node.namespace_ids()[0];
    assert_eq!(
        node.cached_beacons(&ns),
        MEMBERS,
        "every member's beacon cached"
    );
    rate
}

/// Virtual time from the join command to `Ready` in a 5-member namespace over 1 ms links.
fn join_latency_ms() -> u64 {
    let mut c = Cluster::new(0, 42, Config::default(), Faults::default());
    c.tracing = false;
    let admin = c.namespace_node(&[]);
    let ns = c.create_namespace(admin, [3; 16]);
    let inv = c.invite(admin, ns, 3_600_000);
    let mut nodes = vec![admin];
    for _ in 1..5 {
        let n = c.namespace_node(&nodes.clone());
        c.join_namespace(n, inv.clone(), 10_000);
        assert!(c.run_until(10_000, |c| c.namespace_ready(n, ns).is_some()));
        nodes.push(n);
    }
    let j = c.namespace_node(&nodes);
    c.run_for(10); // connections and subscription announcements settle
    let started = c.now();
    c.join_namespace(j, inv, 10_000);
    assert!(c.run_until(10_000, |c| c.namespace_ready(j, ns).is_some()));
    let report = c.namespace_ready(j, ns).expect("ready");
    assert_eq!(report.members_learned, 6);
    let by_clock = c.now().saturating_ms_since(started);
    report.elapsed_ms.max(by_clock)
}

fn main() {
    let mut beacons = Vec::new();
    let mut raw = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let b = beacon_rate();
        let r = raw_verify_rate();
        beacons.push(b);
        raw.push(r);
        ratios.push(b / r);
    }
    let latency = join_latency_ms();
    println!("namespace benchmark ({ROUNDS} paired rounds, medians; {MEMBERS} members)");
    println!(
        "  beacons verified via Node::handle: {:>10.0} /s",
        median(beacons)
    );
    println!(
        "  raw ed25519 verify (this machine): {:>10.0} /s",
        median(raw)
    );
    println!(
        "  ratio: {:.2} (target >= 0.9; median of paired rounds)",
        median(ratios)
    );
    println!("  join latency, 5 members, 1 ms links: {latency} ms virtual (target < 20 ms)");
}

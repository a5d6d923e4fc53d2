//! Whole nodes under a fuzzer-chosen schedule: a small cluster in the core's `testing` harness,
//! with tokens presented by joiners and raw clients, and the fuzzer choosing which queued
//! message is delivered early, dropped or duplicated, which node crashes and recovers, where
//! the network partitions and when timers fire. After every step:
//!
//! ```text
//!   op ─▶ Cluster (deliver / drop / duplicate / crash / restart / run timers / present)
//!        └▶ check: a token admits at most one presenter · Consumed never reverts ·
//!                  replicas at equal applied index have equal ledger digests
//! ```
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_core::config::Config;
use portcullis_core::crypto::{Domain, Hash32, SecretKey};
use portcullis_core::ledger::{PresenterId, TokenState};
use portcullis_core::messages::{JoinRequest, PeerMessage, join_proof_message};
use portcullis_core::node::{Event, LocalCommand};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::token::{JoinToken, TokenHash};
use portcullis_core::wire::BoundedBytes;

/// Most ops run from one input.
const MAX_OPS: usize = 48;
/// Most tokens issued.
const MAX_TOKENS: usize = 4;
/// Most joiner nodes added.
const MAX_JOINERS: usize = 3;
/// Founders: enough for a quorum that survives one crash.
const FOUNDERS: usize = 3;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TokenKind {
    Valid,
    Forged,
    Expired,
    WrongCluster,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// Run every event due in the next `ms` (times 10) of virtual time.
    Run {
        ms: u8,
    },
    /// Deliver the `n`th queued message now, out of turn.
    Deliver {
        n: u8,
    },
    /// Drop the `n`th queued message.
    Drop {
        n: u8,
    },
    /// Queue a copy of the `n`th queued message `delay` ms from now (a duplicate or replay).
    Duplicate {
        n: u8,
        delay: u8,
    },
    Crash {
        node: u8,
    },
    Restart {
        node: u8,
    },
    Isolate {
        node: u8,
    },
    Heal,
    Issue {
        kind: TokenKind,
        ttl_s: u8,
    },
    /// A new joiner node presents token `token` through the founders in `seeds` (a bit mask:
    /// bits 0-2), asking first the earlier joiners it names (bits 3-5): a member without the
    /// join secret redirects it, one not yet admitted stays silent. With bit 6 the join
    /// starts on the first seed alone and takes the others with `AddJoinSeeds`, as when the
    /// tokio driver's first dial wins.
    Join {
        token: u8,
        seeds: u8,
    },
    /// A raw client (key `client`) presents token `token` to founder `listener`.
    Present {
        token: u8,
        client: u8,
        listener: u8,
    },
    Revoke {
        token: u8,
        at: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u16,
    loss_percent: u8,
    duplicate_percent: u8,
    max_delay_ms: u8,
    ops: Vec<Op>,
}

struct Checker {
    /// Who consumed each token (the first presenter any replica showed).
    consumed_by: BTreeMap<TokenHash, PresenterId>,
    /// Per node: the applied index at which it first showed each token Consumed, and the
    /// token's expiry (its record is retained until expiry + grace).
    consumed_at: Vec<BTreeMap<TokenHash, (u64, u64)>>,
    /// Which token each joiner node presented.
    joiner_token: BTreeMap<usize, TokenHash>,
}

fuzz_target!(|input: Input| {
    let faults = Faults {
        loss: f64::from(input.loss_percent % 31) / 100.0,
        duplicate: f64::from(input.duplicate_percent % 31) / 100.0,
        min_delay_ms: 1,
        max_delay_ms: 1 + u64::from(input.max_delay_ms % 20),
        fsync_ms: 1,
    };
    let mut c = Cluster::new(FOUNDERS, u64::from(input.seed), Config::default(), faults);
    c.tracing = false;
    // Start from an elected leader, so short inputs already reach admissions.
    c.run_until(10_000, |c| c.leader().is_some());
    let mut tokens: Vec<JoinToken> = Vec::new();
    let mut checker = Checker {
        consumed_by: BTreeMap::new(),
        consumed_at: vec![BTreeMap::new(); FOUNDERS],
        joiner_token: BTreeMap::new(),
    };
    let mut next_external = 0u64;

    for op in input.ops.iter().take(MAX_OPS) {
        match *op {
            Op::Run { ms } => c.run_for(u64::from(ms) * 10),
            Op::Deliver { n } => {
                c.deliver_queued_now(usize::from(n));
            }
            Op::Drop { n } => {
                c.drop_queued(usize::from(n));
            }
            Op::Duplicate { n, delay } => {
                c.duplicate_queued(usize::from(n), u64::from(delay));
            }
            Op::Crash { node } => {
                let i = usize::from(node) % c.nodes.len();
                if c.nodes[i].node.is_some() {
                    c.crash(i);
                }
            }
            Op::Restart { node } => {
                let i = usize::from(node) % c.nodes.len();
                if c.nodes[i].node.is_none() {
                    c.restart(i);
                }
            }
            Op::Isolate { node } => c.isolate(usize::from(node) % c.nodes.len()),
            Op::Heal => c.heal(),
            Op::Issue { kind, ttl_s } => {
                if tokens.len() < MAX_TOKENS {
                    let ttl_ms = 1_000 + u64::from(ttl_s) * 1_000;
                    tokens.push(match kind {
                        TokenKind::Valid => c.issue_token(ttl_ms),
                        TokenKind::Forged => c.forge_token(ttl_ms),
                        TokenKind::Expired => c.expired_token(ttl_ms),
                        TokenKind::WrongCluster => c.wrong_cluster_token(ttl_ms),
                    });
                }
            }
            Op::Join {
                token,
                seeds: mask,
            } => {
                let joiners = c.nodes.len() - FOUNDERS;
                if tokens.is_empty() || joiners >= MAX_JOINERS {
                    continue;
                }
                let token = tokens[usize::from(token) % tokens.len()].clone();
                let earlier: Vec<usize> = (FOUNDERS..FOUNDERS + joiners)
                    .filter(|s| mask & (1 << s) != 0)
                    .collect();
                let founders = (0..FOUNDERS)
                    .filter(|s| mask & (1 << s) != 0 || mask % 8 == 0 && *s == 0);
                let seeds: Vec<usize> = earlier.into_iter().chain(founders).collect();
                let j = c.add_joiner(&seeds);
                checker.joiner_token.insert(j, token.hash());
                checker.consumed_at.push(BTreeMap::new());
                if seeds.len() > 1 && mask & (1 << 6) != 0 {
                    c.join(j, token, &seeds[..1]);
                    c.add_join_seeds(j, &seeds[1..]);
                } else {
                    c.join(j, token, &seeds);
                }
            }
            Op::Present {
                token,
                client,
                listener,
            } => {
                if tokens.is_empty() {
                    continue;
                }
                let token = &tokens[usize::from(token) % tokens.len()];
                let listener = usize::from(listener) % FOUNDERS;
                if c.nodes[listener].node.is_none() {
                    continue;
                }
                let key = SecretKey::from_secret_bytes(&[0xa0 | (client % 4); 32]);
                next_external += 1;
                let binding = Hash32([u8::try_from(next_external % 251).unwrap_or(0); 32]);
                let peer = c.connect_external(listener, next_external, key.public(), binding);
                c.inject(listener, peer, request(&key, &binding, token));
            }
            Op::Revoke { token, at } => {
                if tokens.is_empty() {
                    continue;
                }
                let token = &tokens[usize::from(token) % tokens.len()];
                let at = usize::from(at) % FOUNDERS;
                c.command(
                    at,
                    LocalCommand::RevokeToken {
                        hash: token.hash(),
                        expires_at_unix_ms: token.body().expires_at_unix_ms,
                    },
                );
            }
        }
        check(&c, &mut checker);
    }
    // Let the run settle a little and check once more.
    c.heal();
    c.run_for(2_000);
    check(&c, &mut checker);
});

fn request(key: &SecretKey, binding: &Hash32, token: &JoinToken) -> Vec<u8> {
    let proof = key.sign(
        Domain::JoinProof,
        &join_proof_message(&token.hash(), binding),
    );
    PeerMessage::JoinRequest(JoinRequest {
        token: BoundedBytes::try_from_vec(token.expose_bytes().to_vec())
            .expect("a token fits the bound"),
        node_key: key.public(),
        addrs: Default::default(),
        proof,
    })
    .encode()
}

fn check(c: &Cluster, checker: &mut Checker) {
    let mut digest_at: BTreeMap<u64, (usize, Hash32)> = BTreeMap::new();
    for (i, sim) in c.nodes.iter().enumerate() {
        let Some(node) = sim.node.as_ref() else {
            continue;
        };
        let ledger = node.ledger();
        assert_eq!(ledger.check_invariants(), Ok(()), "node {i}");
        let applied = ledger.applied_index();
        for (hash, record) in &ledger.state().records {
            if let TokenState::Consumed { presenter, .. } = record.state {
                // At most one presenter per token, across every replica and every life.
                let first = *checker.consumed_by.entry(*hash).or_insert(presenter);
                assert_eq!(first, presenter, "token consumed by two presenters");
                checker.consumed_at[i]
                    .entry(*hash)
                    .or_insert((applied, record.expires_at_unix_ms));
            }
        }
        // Consumed never reverts: once node i showed it at index k, every later view of node i
        // at an index ≥ k shows it Consumed, unless its retention ran out and it was purged.
        for (hash, (at, expires_at_unix_ms)) in &checker.consumed_at[i] {
            if applied < *at {
                continue; // recovering from an older snapshot: not there yet
            }
            match ledger.record(hash) {
                Some(record) => assert!(
                    matches!(record.state, TokenState::Consumed { .. }),
                    "node {i}: a Consumed token reverted to {:?}",
                    record.state
                ),
                None => {
                    let grace = ledger.config().record_grace_ms;
                    assert!(
                        ledger.clock_unix_ms() >= expires_at_unix_ms.saturating_add(grace),
                        "node {i}: a Consumed record was purged before its retention ran out"
                    );
                }
            }
        }
        if node.member_id().is_some() {
            match digest_at.get(&applied) {
                Some((j, digest)) => assert_eq!(
                    *digest,
                    ledger.digest(),
                    "nodes {j} and {i} differ at applied index {applied}"
                ),
                None => {
                    digest_at.insert(applied, (i, ledger.digest()));
                }
            }
        }
    }
    // At most one joiner node admitted per token.
    let mut admitted: BTreeMap<TokenHash, usize> = BTreeMap::new();
    for (j, hash) in &checker.joiner_token {
        let was_admitted = c
            .events(*j)
            .iter()
            .any(|e| matches!(e, Event::JoinAdmitted { .. }));
        if was_admitted && let Some(other) = admitted.insert(*hash, *j) {
            panic!("joiners {other} and {j} were both admitted with one token");
        }
    }
}

//! Only admitting nodes may have the leader propose for them.
//!
//! A follower forwards its proposals to the leader, which proposes them as they are. Every
//! ledger command is a token's lifecycle, and `Register` → `BeginInFlight` → `Consume` of a
//! made-up token hash adds any key to the member registry. So a forward MUST prove that its
//! sender holds the cluster key (as every admitting node does): without that, any admitted
//! node (an observer too) could admit whatever keys it liked, with no token at all.

use portcullis_core::config::Config;
use portcullis_core::crypto::{Domain, Hash32, SecretKey};
use portcullis_core::ledger::{
    Command, LeaseId, LogEntry, MemberSpec, NodeId, PresenterId, ProposalId,
};
use portcullis_core::messages::{ForwardProposal, PeerMessage};
use portcullis_core::testing::{Cluster, Faults, addrs_of};
use portcullis_core::token::{Role, TokenHash};
use portcullis_core::wire::BoundedVec;

/// A cluster of 3 founders and one admitted member without the cluster secrets.
fn cluster_with_a_member(seed: u64) -> (Cluster, usize) {
    let mut c = Cluster::new(3, seed, Config::default(), Faults::default());
    assert!(c.run_until(10_000, |c| c.leader().is_some()), "no leader");
    let token = c.issue_token(600_000);
    let j = c.add_joiner(&[0, 1, 2]);
    c.join(j, token, &[0, 1, 2]);
    assert!(
        c.run_until(20_000, |c| c.admitted(j).is_some()),
        "not admitted"
    );
    c.run_for(1_000);
    (c, j)
}

/// The entry a listener proposes for a whole admission, made up by member `proposer`.
fn forged_admission(proposer: u64, unix_ms: u64, newcomer: &SecretKey) -> LogEntry {
    let hash = TokenHash(Hash32([0x5a; 32]));
    let presenter = PresenterId::of(&newcomer.public());
    let lease_id = LeaseId(7);
    LogEntry::new(
        ProposalId {
            node: NodeId(proposer),
            seq: 1 << 40,
        },
        unix_ms,
        vec![
            Command::Register {
                hash,
                expires_at_unix_ms: unix_ms + 600_000,
            },
            Command::BeginInFlight {
                hash,
                presenter,
                lease_id,
                lease_ms: 10_000,
            },
            Command::Consume {
                hash,
                presenter,
                lease_id,
                member: MemberSpec {
                    node_key: newcomer.public(),
                    role: Role::Member,
                    addrs: addrs_of(99),
                },
            },
        ],
    )
    .expect("3 commands fit an entry")
}

/// Member `j` forwards an admission of `newcomer` it made up to the leader, with `proof`.
fn forward_forged_admission(
    c: &mut Cluster,
    j: usize,
    newcomer: &SecretKey,
    admitter_proof: portcullis_core::crypto::Signature,
) -> usize {
    let leader = c.leader().expect("leader");
    let member_id = c.admitted(j).expect("admitted").0;
    let entry = forged_admission(member_id, c.unix_ms(), newcomer);
    let key = c.nodes[j].node_key();
    let peer = c.connect_external(leader, 1, key, Hash32([3; 32]));
    let forward = ForwardProposal {
        entries: BoundedVec::try_from_vec(vec![entry]).expect("one entry fits"),
        admitter_proof,
    };
    c.inject(leader, peer, PeerMessage::Forward(forward).encode());
    c.run_for(2_000);
    leader
}

#[test]
fn a_member_without_the_cluster_key_cannot_have_the_leader_admit_a_key() {
    let (mut c, j) = cluster_with_a_member(31);
    let newcomer = SecretKey::from_secret_bytes(&[0x77; 32]);
    // The best it can do: sign its own key in the admitter domain with its own node key.
    let member_key = SecretKey::from_secret_bytes(&c.node_secret_bytes(j));
    let fake = member_key.sign(Domain::Admitter, &member_key.public().0);
    let leader = forward_forged_admission(&mut c, j, &newcomer, fake);
    for (i, n) in c.nodes.iter().enumerate().take(3) {
        let ledger = n.node.as_ref().expect("founder up").ledger();
        assert!(
            ledger.member_by_key(&newcomer.public()).is_none(),
            "s{i} admitted a key on a forged forward"
        );
    }
    assert_eq!(
        c.nodes[leader]
            .node
            .as_ref()
            .unwrap()
            .metrics()
            .forwards_refused,
        1,
        "the forged forward was not refused"
    );
}

/// The check is on the sender, not the commands: a forward from a key the cluster key vouches
/// for is proposed (here the same made-up admission, to show the proof is what decides).
#[test]
fn a_forward_with_the_cluster_key_admitter_proof_is_proposed() {
    let (mut c, j) = cluster_with_a_member(32);
    let newcomer = SecretKey::from_secret_bytes(&[0x78; 32]);
    let proof = c.admission_secrets().admitter_proof(&c.nodes[j].node_key());
    let leader = forward_forged_admission(&mut c, j, &newcomer, proof);
    let node = c.nodes[leader].node.as_ref().expect("leader up");
    assert!(node.ledger().member_by_key(&newcomer.public()).is_some());
    assert_eq!(node.metrics().forwards_refused, 0);
}

/// Revoking is an admitting node's power too: a member without the secrets refuses at once
/// (its forward could never be proposed).
#[test]
fn a_revoke_on_a_member_without_the_secrets_is_refused() {
    use portcullis_core::node::{CommandError, Event, LocalCommand};
    let (mut c, j) = cluster_with_a_member(33);
    let token = c.issue_token(600_000);
    c.command(
        j,
        LocalCommand::RevokeToken {
            hash: token.hash(),
            expires_at_unix_ms: token.body().expires_at_unix_ms,
        },
    );
    assert!(
        c.events(j)
            .iter()
            .any(|e| matches!(e, Event::CommandRejected(CommandError::NotAdmitting))),
        "{:?}",
        c.events(j)
    );
}

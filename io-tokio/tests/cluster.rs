//! Real nodes in one process: QUIC on 127.0.0.1, redb in temporary directories.

use std::time::Duration;

use portcullis_core::admission::JoinFailure;
use portcullis_core::ledger::MemberId;
use portcullis_core::messages::RejectReason;
use portcullis_core::token::JoinToken;
use portcullis_io_tokio::control::{self, ControlRequest, ControlResponse, FailureKind};
use portcullis_io_tokio::demo::{self, LocalCluster};
use portcullis_io_tokio::driver::JoinError;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

async fn cluster() -> LocalCluster {
    let cluster = LocalCluster::start(3, LocalCluster::fast_config())
        .await
        .expect("3 founders start");
    cluster
        .wait_for_leader(LEADER_TIMEOUT)
        .await
        .expect("the founders elect a leader");
    cluster
}

/// Polls `check` on the node's status until it holds.
async fn eventually(
    node: &portcullis_io_tokio::driver::NodeHandle,
    what: &str,
    check: impl Fn(&portcullis_io_tokio::driver::Status) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.status().await.expect("node running");
        if check(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_founders_admit_a_fourth_node() {
    let mut cluster = cluster().await;
    let token = cluster.issue_token(600_000);
    let joiner = cluster.start_joiner().await.expect("joiner starts");
    // The first seed takes datagrams and never answers: its handshake can only time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let silent_addr = silent.local_addr().expect("bound");
    let member = joiner
        .join_cluster_via(token, &[silent_addr, cluster.founders[1].addr()])
        .await
        .expect("a fresh token admits");
    assert_eq!(member, MemberId(4), "founders are 1..=3");
    let status = joiner.status().await.expect("running");
    assert_eq!(status.member_id, Some(MemberId(4)));
    // The silent seed was dialed, and the join did not wait for its handshake to fail: the
    // join starts on the first seed to connect.
    silent.set_nonblocking(true).expect("a socket option");
    assert!(
        silent.recv(&mut [0; 2048]).is_ok(),
        "the silent seed got an Initial"
    );
    assert_eq!(
        status.transport.handshakes_failed, 0,
        "admitted before the silent seed's handshake timed out"
    );
    // Every founder learns the new member as a learner of the metadata group; the joiner
    // follows the leader.
    for founder in &cluster.founders {
        eventually(founder, "learner 4 everywhere", |s| {
            s.learners.contains(&4) && s.voters == vec![1, 2, 3]
        })
        .await;
    }
    eventually(&joiner, "joiner knows the leader", |s| s.leader.is_some()).await;
    // Each founder fsynced before it reported Persisted: the joiner's own state is on disk
    // too, so a restart is a recovery (checked by the storage crate's tests).
    joiner.shutdown().await.expect("clean stop");
    cluster.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_presented_by_two_joiners_at_once_admits_exactly_one() {
    let mut cluster = cluster().await;
    let token = cluster.issue_token(600_000);
    let a = cluster.start_joiner().await.expect("joiner starts");
    let b = cluster.start_joiner().await.expect("joiner starts");
    let (ra, rb) = tokio::join!(
        a.join_cluster(token.clone(), cluster.founders[0].addr()),
        b.join_cluster(token.clone(), cluster.founders[2].addr())
    );
    let results = [ra, rb];
    let admitted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(admitted.len(), 1, "exactly one admission: {results:?}");
    let refused = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("the other joiner is refused");
    assert!(
        matches!(
            refused,
            JoinError::Failed(JoinFailure::Rejected(
                RejectReason::AlreadyConsumed | RejectReason::Conflict
            ))
        ),
        "refused as consumed or in flight elsewhere: {refused:?}"
    );
    // A replay of the consumed token by a third node is refused as well.
    let c = cluster.start_joiner().await.expect("joiner starts");
    let replay = c.join_cluster(token, cluster.founders[1].addr()).await;
    assert_refused_as_consumed(&replay);
    for node in [a, b, c] {
        node.shutdown().await.expect("clean stop");
    }
    cluster.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_join_across_nodes_reaches_ready() {
    let mut cluster = cluster().await;
    // An admitted node joins a namespace created on a founder.
    let token = cluster.issue_token(600_000);
    let joiner = cluster.start_joiner().await.expect("joiner starts");
    joiner
        .join_cluster(token, cluster.founders[0].addr())
        .await
        .expect("admitted");
    let admin = &cluster.founders[2];
    let (namespace, invitation) = demo::create_namespace_and_invite(admin, [3; 16], 600_000)
        .await
        .expect("namespace and invitation");
    let report = demo::join_namespace(&joiner, admin, invitation, 15_000)
        .await
        .expect("the join reaches Ready");
    assert_eq!(report.namespace, namespace);
    assert!(report.members_learned >= 2, "admin and joiner: {report:?}");
    assert!(
        !report.acked_by.is_empty(),
        "a member acknowledged: {report:?}"
    );
    joiner.shutdown().await.expect("clean stop");
    cluster.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founders_restart_from_their_stores_and_keep_admitting() {
    let mut cluster = cluster().await;
    let token = cluster.issue_token(600_000);
    let joiner = cluster.start_joiner().await.expect("joiner starts");
    let member = joiner
        .join_cluster(token.clone(), cluster.founders[0].addr())
        .await
        .expect("admitted");
    for i in 0..cluster.founders.len() {
        cluster
            .restart_founder(i)
            .await
            .expect("restart from the store");
    }
    cluster
        .wait_for_leader(LEADER_TIMEOUT)
        .await
        .expect("the recovered founders elect a leader");
    for founder in &cluster.founders {
        eventually(founder, "the admission survived the restart", |s| {
            s.learners.contains(&member.0)
        })
        .await;
    }
    // The consumed token stays consumed; a fresh one admits the next member.
    let late = cluster.start_joiner().await.expect("joiner starts");
    let replay = late.join_cluster(token, cluster.founders[1].addr()).await;
    assert_refused_as_consumed(&replay);
    let fresh = cluster.start_joiner().await.expect("joiner starts");
    let next = fresh
        .join_cluster(cluster.issue_token(600_000), cluster.founders[2].addr())
        .await
        .expect("a fresh token admits after the restart");
    assert_eq!(next, MemberId(member.0 + 1));
    for node in [joiner, late, fresh] {
        node.shutdown().await.expect("clean stop");
    }
    cluster.shutdown().await.expect("clean stop");
}

/// The metrics the driver keeps for Prometheus: a namespace join across nodes is timed in
/// total and per phase, and the Raft commit latency is observed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_join_phases_and_raft_commits_are_timed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cluster = cluster().await;
    let admin = &cluster.founders[0];
    let joiner = &cluster.founders[1];
    let server = portcullis_io_tokio::metrics::serve(
        joiner.clone(),
        "127.0.0.1:0".parse().expect("an address"),
    )
    .await
    .expect("metrics endpoint");
    let (_, invitation) = demo::create_namespace_and_invite(admin, [9; 16], 600_000)
        .await
        .expect("namespace and invitation");
    demo::join_namespace(joiner, admin, invitation, 20_000)
        .await
        .expect("joins to Ready");
    // The recorder task sees the Ready event asynchronously: scrape until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        if response.contains("portcullis_namespace_join_duration_ms_count 1")
            || tokio::time::Instant::now() > deadline
        {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let count = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        count("portcullis_namespace_join_duration_ms_count"),
        1.0,
        "{body}"
    );
    for phase in ["probe", "backfill", "acks"] {
        let series = format!("portcullis_namespace_join_{phase}_duration_ms_count");
        assert_eq!(count(&series), 1.0, "{series}: {body}");
    }
    assert!(
        count("portcullis_raft_commit_duration_ms_count") >= 1.0,
        "{body}"
    );
    drop(server);
    cluster.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_client_is_admitted_without_a_node_and_a_replay_is_refused() {
    use portcullis_core::crypto::SecretKey;
    use portcullis_io_tokio::join_client::{self, JoinOptions};
    use portcullis_io_tokio::transport::TransportConfig;
    use rand_core::OsRng;

    let cluster = cluster().await;
    let token = cluster.issue_token(600_000);
    let pin = token.body().cluster_pin;
    let options = |node_key: SecretKey| JoinOptions {
        node_key,
        addrs: portcullis_io_tokio::driver::addrs_of("127.0.0.1:9".parse().expect("an address"))
            .expect("fits the wire"),
        bind: "127.0.0.1:0".parse().expect("an address"),
        config: LocalCluster::fast_config(),
        transport: TransportConfig::default(),
    };
    let key = SecretKey::generate(&mut OsRng);
    let public = key.public();
    // The first seed is a port nobody listens on: the client moves on to the next.
    let nobody = portcullis_io_tokio::driver::reserve_loopback_addr().expect("a free port");
    let accepted = join_client::join(
        token.clone(),
        &[nobody, cluster.founders[1].addr()],
        options(key),
    )
    .await
    .expect("a fresh token admits");
    assert_eq!(accepted.member_id, MemberId(4), "founders are 1..=3");
    assert_eq!(accepted.credential.body.node_key, public);
    assert!(
        accepted
            .credential
            .verify(&accepted.cluster_key, pin, &public)
            .is_ok(),
        "the credential is the cluster's, for our key"
    );
    for founder in &cluster.founders {
        eventually(founder, "learner 4 everywhere", |s| s.learners.contains(&4)).await;
    }
    // The same token from another key, through another seed: consumed.
    let replay = join_client::join(
        token,
        &[cluster.founders[2].addr()],
        options(SecretKey::generate(&mut OsRng)),
    )
    .await;
    assert_refused_as_consumed(&replay);
    cluster.shutdown().await.expect("clean stop");
}

/// A join client given only a member without the join secret follows that member's redirect
/// to the voters it names, and is admitted by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_client_follows_a_redirect_from_a_non_admitting_member() {
    use portcullis_core::crypto::SecretKey;
    use portcullis_io_tokio::join_client::{self, JoinOptions};
    use portcullis_io_tokio::transport::TransportConfig;
    use rand_core::OsRng;

    let mut cluster = cluster().await;
    let member = cluster.start_joiner().await.expect("joiner starts");
    let member_id = member
        .join_cluster_via(cluster.issue_token(600_000), &[cluster.founders[0].addr()])
        .await
        .expect("a fresh token admits");
    let key = SecretKey::generate(&mut OsRng);
    let options = JoinOptions {
        node_key: key,
        addrs: portcullis_io_tokio::driver::addrs_of("127.0.0.1:9".parse().expect("an address"))
            .expect("fits the wire"),
        bind: "127.0.0.1:0".parse().expect("an address"),
        config: LocalCluster::fast_config(),
        transport: TransportConfig::default(),
    };
    let accepted = join_client::join(cluster.issue_token(600_000), &[member.addr()], options)
        .await
        .expect("admitted through a voter the redirect named");
    assert_ne!(accepted.member_id, member_id);
    assert!(accepted.member_id.0 > 3, "founders are 1..=3");
    member.shutdown().await.expect("clean stop");
    cluster.shutdown().await.expect("clean stop");
}

/// A join client whose first seed never answers dials the next one after a short stagger, and
/// is admitted through it before the silent seed's handshake times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_client_does_not_wait_out_a_silent_first_seed() {
    use portcullis_core::crypto::SecretKey;
    use portcullis_io_tokio::join_client::JoinClient;
    use portcullis_io_tokio::transport::TransportConfig;
    use rand_core::OsRng;

    let cluster = cluster().await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let silent_addr = silent.local_addr().expect("bound");
    let config = LocalCluster::fast_config();
    let mut client = JoinClient::bind(
        "127.0.0.1:0".parse().expect("an address"),
        &config,
        TransportConfig::default(),
    )
    .expect("binds");
    let accepted = client
        .join(
            cluster.issue_token(600_000),
            &[silent_addr, cluster.founders[2].addr()],
            &SecretKey::generate(&mut OsRng),
            portcullis_io_tokio::driver::addrs_of("127.0.0.1:9".parse().expect("an address"))
                .expect("fits the wire"),
            &config,
        )
        .await
        .expect("admitted through the second seed");
    assert!(accepted.member_id.0 > 3, "founders are 1..=3");
    silent.set_nonblocking(true).expect("a socket option");
    assert!(
        silent.recv(&mut [0; 2048]).is_ok(),
        "the silent seed got an Initial"
    );
    assert_eq!(
        client.metrics().handshakes_failed,
        0,
        "admitted before the silent seed's handshake timed out"
    );
    client.close().await;
    cluster.shutdown().await.expect("clean stop");
}

/// Asks the founders' control sockets in turn, skipping those that are not the leader.
async fn ask_the_leader(
    sockets: &[tempfile::TempDir],
    request: &ControlRequest,
) -> ControlResponse {
    for _ in 0..100 {
        for dir in sockets {
            let response = control::request(dir.path(), request)
                .await
                .expect("the control socket answers");
            match &response {
                ControlResponse::Failed { message, .. } if message.contains("not the leader") => {}
                _ => return response,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader answered {request:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_consumed_token_is_refused_and_a_fresh_one_is_revoked() {
    let mut cluster = cluster().await;
    let consumed = cluster.issue_token(600_000);
    let joiner = cluster.start_joiner().await.expect("joiner starts");
    joiner
        .join_cluster(consumed.clone(), cluster.founders[0].addr())
        .await
        .expect("a fresh token admits");
    let sockets: Vec<_> = (0..cluster.founders.len())
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let _servers: Vec<_> = cluster
        .founders
        .iter()
        .zip(&sockets)
        .map(|(node, dir)| control::serve(node.clone(), dir.path()).expect("a control socket"))
        .collect();
    let revoke = |token: &JoinToken| ControlRequest::RevokeToken {
        hash: token.hash().0.0,
        expires_at_unix_ms: token.body().expires_at_unix_ms,
    };
    // The ledger refuses (Consumed is final): a refusal, not a success that says so.
    let refused = ask_the_leader(&sockets, &revoke(&consumed)).await;
    assert!(
        matches!(&refused, ControlResponse::Failed { kind: FailureKind::Refused, message }
            if message.contains("already admitted a node")),
        "{refused:?}"
    );
    let fresh = cluster.issue_token(600_000);
    let revoked = ask_the_leader(&sockets, &revoke(&fresh)).await;
    assert!(
        matches!(&revoked, ControlResponse::Done(text) if text.ends_with("revoked")),
        "{revoked:?}"
    );
    joiner.shutdown().await.expect("clean stop");
    cluster.shutdown().await.expect("clean stop");
}

/// A replay of a consumed token is refused as already consumed.
#[track_caller]
fn assert_refused_as_consumed<T: std::fmt::Debug>(replay: &Result<T, JoinError>) {
    assert!(
        matches!(
            replay,
            Err(JoinError::Failed(JoinFailure::Rejected(
                RejectReason::AlreadyConsumed
            )))
        ),
        "{replay:?}"
    );
}

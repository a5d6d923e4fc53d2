//! The QUIC transport on loopback: pinned raw keys, the connection binding, frame limits, and
//! garbage at the UDP port.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::crypto::{Hash32, PublicKey, SecretKey};
use portcullis_core::node::PeerId;
use portcullis_core::rng::SeededRng;
use portcullis_io_tokio::transport::{
    CoreDecides, PeerPolicy, Transport, TransportConfig, TransportError, TransportEvent,
};
use rand_core::{OsRng, RngCore};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(5);

fn keys(seed: u64) -> (SecretKey, SecretKey) {
    let mut rng = SeededRng::from_u64(seed);
    (SecretKey::generate(&mut rng), SecretKey::generate(&mut rng))
}

fn bind(key: &SecretKey, config: TransportConfig) -> (Transport, Receiver<TransportEvent>) {
    bind_with(key, config, Arc::new(CoreDecides))
}

fn bind_with(
    key: &SecretKey,
    config: TransportConfig,
    policy: Arc<dyn PeerPolicy>,
) -> (Transport, Receiver<TransportEvent>) {
    Transport::bind(
        "127.0.0.1:0".parse().expect("literal address"),
        key,
        policy,
        config,
    )
    .expect("binding an ephemeral loopback port")
}

async fn next(events: &mut Receiver<TransportEvent>) -> TransportEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("a transport event in time")
        .expect("the transport is running")
}

async fn connected(events: &mut Receiver<TransportEvent>) -> (PeerId, PublicKey, Hash32) {
    match next(events).await {
        TransportEvent::Connected {
            peer,
            node_key,
            binding,
            ..
        } => (peer, node_key, binding),
        other => panic!("expected Connected, got {other:?}"),
    }
}

#[tokio::test]
async fn pinned_handshake_succeeds_and_both_ends_share_the_binding() {
    let (a_key, b_key) = keys(1);
    let (a, mut a_events) = bind(&a_key, TransportConfig::default());
    let (b, mut b_events) = bind(&b_key, TransportConfig::default());
    let addr = b.local_addr().expect("bound");

    let a_peer = a
        .connect(addr, Some(b_key.public()))
        .await
        .expect("b proves the pinned key");
    let (a_seen_peer, a_seen_key, a_binding) = connected(&mut a_events).await;
    let (b_peer, b_seen_key, b_binding) = connected(&mut b_events).await;
    assert_eq!(a_seen_peer, a_peer);
    assert_eq!(a_seen_key, b_key.public(), "a authenticated b's node key");
    assert_eq!(b_seen_key, a_key.public(), "b authenticated a's node key");
    assert_eq!(a_binding, b_binding, "both ends derive one binding");

    // A second connection between the same two nodes has another binding.
    a.connect(addr, Some(b_key.public()))
        .await
        .expect("second dial");
    let (_, _, second) = connected(&mut a_events).await;
    assert_ne!(second, a_binding);
    let _ = connected(&mut b_events).await;

    // Frames flow both ways, in order.
    for i in 0..100u32 {
        assert!(a.send(a_peer, i.to_be_bytes().to_vec()));
    }
    for i in 0..100u32 {
        match next(&mut b_events).await {
            TransportEvent::Frame { peer, bytes } => {
                assert_eq!(peer, b_peer);
                assert_eq!(bytes, i.to_be_bytes().to_vec());
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }
    assert!(b.send(b_peer, b"back".to_vec()));
    match next(&mut a_events).await {
        TransportEvent::Frame { peer, bytes } => {
            assert_eq!((peer, bytes.as_slice()), (a_peer, &b"back"[..]));
        }
        other => panic!("expected a frame, got {other:?}"),
    }

    // Closing one end reports Disconnected on the other.
    a.close(a_peer);
    loop {
        if let TransportEvent::Disconnected { peer } = next(&mut b_events).await {
            assert_eq!(peer, b_peer);
            break;
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unpinned_dial_accepts_any_key_and_reports_it() {
    let (a_key, b_key) = keys(2);
    let (a, mut a_events) = bind(&a_key, TransportConfig::default());
    let (b, _b_events) = bind(&b_key, TransportConfig::default());
    a.connect(b.local_addr().expect("bound"), None)
        .await
        .expect("a joiner dials a seed without a pinned key");
    let (_, key, _) = connected(&mut a_events).await;
    assert_eq!(key, b_key.public());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn wrong_pinned_key_is_refused() {
    let (a_key, b_key) = keys(3);
    let (_, impostor) = keys(4);
    let (a, mut a_events) = bind(&a_key, TransportConfig::default());
    let (b, mut b_events) = bind(&b_key, TransportConfig::default());
    let result = a
        .connect(b.local_addr().expect("bound"), Some(impostor.public()))
        .await;
    assert!(
        matches!(result, Err(TransportError::Handshake { .. })),
        "b cannot prove the impostor's key: {result:?}"
    );
    assert_eq!(a.metrics().handshakes_failed, 1);
    assert_eq!(a.metrics().peers_connected, 0);
    // Neither side reports a connection.
    assert!(a_events.try_recv().is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b_events.try_recv().is_err());
    a.shutdown().await;
    b.shutdown().await;
}

#[derive(Debug)]
struct Deny(PublicKey);

impl PeerPolicy for Deny {
    fn allow_inbound(&self, key: &PublicKey) -> bool {
        *key != self.0
    }
}

#[tokio::test]
async fn listener_policy_refuses_a_key() {
    let (a_key, b_key) = keys(5);
    let (a, _a_events) = bind(&a_key, TransportConfig::default());
    let (b, mut b_events) = bind_with(
        &b_key,
        TransportConfig::default(),
        Arc::new(Deny(a_key.public())),
    );
    let result = a
        .connect(b.local_addr().expect("bound"), Some(b_key.public()))
        .await;
    assert!(result.is_err(), "b's policy refuses a: {result:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b_events.try_recv().is_err(), "b never reports a");
    assert_eq!(b.metrics().accepted, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_the_connection_and_is_counted() {
    let (a_key, b_key) = keys(6);
    let small = TransportConfig {
        max_frame_bytes: 1024,
        ..TransportConfig::default()
    };
    // a may send up to 1 MiB; b accepts 1 KiB.
    let (a, mut a_events) = bind(&a_key, TransportConfig::default());
    let (b, mut b_events) = bind(&b_key, small);
    let a_peer = a
        .connect(b.local_addr().expect("bound"), Some(b_key.public()))
        .await
        .expect("handshake");
    let _ = connected(&mut a_events).await;
    let (b_peer, _, _) = connected(&mut b_events).await;

    assert!(a.send(a_peer, vec![7; 1024]), "a frame at the limit");
    assert!(
        a.send(a_peer, vec![8; 1025]),
        "a allows it; b must refuse it"
    );
    match next(&mut b_events).await {
        TransportEvent::Frame { bytes, .. } => assert_eq!(bytes.len(), 1024),
        other => panic!("expected the legal frame, got {other:?}"),
    }
    match next(&mut b_events).await {
        TransportEvent::Disconnected { peer } => assert_eq!(peer, b_peer),
        other => panic!("expected the connection to close, got {other:?}"),
    }
    assert_eq!(b.metrics().oversized_frames, 1);
    // a learns the connection is gone too.
    loop {
        if let TransportEvent::Disconnected { peer } = next(&mut a_events).await {
            assert_eq!(peer, a_peer);
            break;
        }
    }
    // And the sender side refuses to send above its own limit.
    assert!(!b.send(b_peer, vec![0; 2048]));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_mebibyte_of_random_datagrams_does_not_crash_the_endpoint() {
    let (a_key, b_key) = keys(7);
    let (b, mut b_events) = bind(&b_key, TransportConfig::default());
    let target = b.local_addr().expect("bound");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("ephemeral socket");
    let mut sent = 0usize;
    let mut datagram = vec![0u8; 1200];
    for i in 0u32.. {
        if sent >= 1 << 20 {
            break;
        }
        OsRng.fill_bytes(&mut datagram);
        // Some datagrams look like QUIC long headers, to reach deeper into the parser.
        if i.is_multiple_of(3) {
            datagram[0] |= 0xc0;
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        socket
            .send_to(&datagram, target)
            .await
            .expect("loopback send");
        sent += datagram.len();
    }
    // The endpoint still serves a real handshake.
    let (a, mut a_events) = bind(&a_key, TransportConfig::default());
    a.connect(target, Some(b_key.public()))
        .await
        .expect("b still accepts connections after the garbage");
    let (_, key, _) = connected(&mut a_events).await;
    assert_eq!(key, b_key.public());
    let (_, key, _) = connected(&mut b_events).await;
    assert_eq!(key, a_key.public(), "no garbage became a connection");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn inbound_connections_beyond_the_limit_are_refused() {
    let (a_key, b_key) = keys(8);
    let (c_key, _) = keys(9);
    let one = TransportConfig {
        max_connections: 1,
        ..TransportConfig::default()
    };
    let (b, mut b_events) = bind(&b_key, one);
    let addr = b.local_addr().expect("bound");
    let (a, _a_events) = bind(&a_key, TransportConfig::default());
    let (c, _c_events) = bind(&c_key, TransportConfig::default());
    a.connect(addr, Some(b_key.public()))
        .await
        .expect("the first connection fits");
    let _ = connected(&mut b_events).await;
    let second = c.connect(addr, Some(b_key.public())).await;
    assert!(second.is_err(), "the second is refused: {second:?}");
    assert_eq!(b.metrics().refused_at_limit, 1);
    assert_eq!(b.metrics().peers_connected, 1);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

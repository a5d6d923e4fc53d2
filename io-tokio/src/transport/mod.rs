//! QUIC transport between nodes: quinn 0.11 + rustls 0.23 (ring), raw Ed25519 public keys.
//!
//! Every connection carries **one long-lived bidirectional stream**, opened by the dialer, of
//! length-delimited frames ([`frame`]). The transport numbers connections with
//! [`PeerId`]s and reports, in order per connection, `Connected` → `Frame`* → `Disconnected`
//! on one bounded channel that the driver reads.
//!
//! ```text
//!  dial(addr, pinned key?) ──QUIC+TLS(RPK)──▶ accept: PeerPolicy(key)?
//!        open_bi + PREAMBLE ───────────────▶ accept_bi, read PREAMBLE
//!        read PREAMBLE echo ◀─────────────── echo PREAMBLE
//!  Connected{peer,key,binding}                Connected{peer,key,binding}
//!        writer task ◀── send(peer, frame)    reader task ──▶ Frame{peer,bytes} (≤ max_frame_bytes)
//!        reader task ──▶ Frame ...            oversize / error / idle ──▶ close ──▶ Disconnected
//! ```
//!
//! **Binding.** Both ends derive the connection binding from the TLS exporter
//! (`export_keying_material`, RFC 5705/8446 §7.5), hashed to a [`Hash32`]: identical on both
//! ends, unique per TLS session, unknown to anyone else. A joiner's proof signs it, so a proof
//! cannot be relayed over another connection.
//!
//! **Who may connect.** TLS proves possession of a node key (see [`tls`]): a dialer that knows
//! whom it wants (a member, from the core's `Output::Connect`) pins that key; a joiner dialing a
//! seed accepts any key and lets the core check the cluster pin in the first frames. A listener
//! asks its [`PeerPolicy`].
//!
//! **Limits.** `max_frame_bytes` per frame (the connection is closed and counted on oversize),
//! `max_connections`, `send_queue_frames` per connection (beyond it frames are dropped and
//! counted: the core tolerates loss), `event_queue` events waiting for the driver (readers
//! wait: QUIC flow control pushes back on the peer), handshake and idle timeouts.

pub mod frame;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use portcullis_core::crypto::{Hash32, PublicKey, SecretKey};
use portcullis_core::node::PeerId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;

pub use tls::{CoreDecides, PeerPolicy};

/// The first bytes the dialer writes on its stream (it makes the stream visible to the
/// listener, and names the framing version); the listener echoes them once it has accepted
/// the dialer's key, so a dial succeeds only when both ends hold the connection.
pub const PREAMBLE: [u8; 8] = *b"PCUL\x00\x00\x00\x01";

/// Exporter label of the connection binding.
const BINDING_LABEL: &[u8] = b"EXPORTER-portcullis-binding-v1";

/// QUIC application close codes.
const CLOSE_NORMAL: u32 = 0;
const CLOSE_FRAME_TOO_LARGE: u32 = 0x10;
const CLOSE_BAD_PREAMBLE: u32 = 0x11;
const CLOSE_SHUTDOWN: u32 = 0x12;

/// Limits and timeouts of a [`Transport`].
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame accepted or sent (take it from the core's `Config::max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Most open connections, both directions; more inbound ones are refused.
    pub max_connections: usize,
    /// Frames queued per connection before new ones are dropped.
    pub send_queue_frames: usize,
    /// Transport events waiting for the driver before readers wait.
    pub event_queue: usize,
    /// A handshake (QUIC + TLS + preamble) must finish within this.
    pub handshake_timeout_ms: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval (must be below `idle_timeout_ms`).
    pub keep_alive_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: 1 << 20,
            max_connections: 1024,
            send_queue_frames: 4096,
            event_queue: 8192,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 2_000,
        }
    }
}

/// What happened on the network, in order per connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A connection is authenticated and its stream is open.
    Connected {
        /// Its number.
        peer: PeerId,
        /// The key the peer proved.
        node_key: PublicKey,
        /// The connection binding (same on both ends).
        binding: Hash32,
        /// Where it comes from.
        remote: SocketAddr,
        /// Whether we dialed it.
        outbound: bool,
    },
    /// A frame arrived.
    Frame {
        /// The connection.
        peer: PeerId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// The connection is gone (closed by either side, lost, or refused for misbehaviour).
    Disconnected {
        /// The connection.
        peer: PeerId,
    },
}

/// Why the transport could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The UDP socket could not be bound (the caller's address, or the OS).
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS configuration failed (a bug or an unusable key).
    #[error("tls config: {0}")]
    Tls(String),
    /// The dial could not start (bad address, endpoint closed).
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The handshake failed: the peer is unreachable, refused us, or proved the wrong key.
    #[error("handshake with {addr}: {reason}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} timed out")]
    Timeout {
        /// The address.
        addr: SocketAddr,
    },
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// Counters of the transport (exported as metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportMetrics {
    /// Connections currently open.
    pub peers_connected: u64,
    /// Inbound connections authenticated.
    pub accepted: u64,
    /// Outbound connections authenticated.
    pub dialed: u64,
    /// Inbound connections refused at the connection limit.
    pub refused_at_limit: u64,
    /// Handshakes that failed (wrong key, policy, timeout, garbage).
    pub handshakes_failed: u64,
    /// Connections closed because the peer announced a frame above `max_frame_bytes`.
    pub oversized_frames: u64,
    /// Frames we did not send: queue full, connection gone, or above the limit.
    pub frames_dropped: u64,
    /// Frames received.
    pub frames_received: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    dialed: AtomicU64,
    refused_at_limit: AtomicU64,
    handshakes_failed: AtomicU64,
    oversized_frames: AtomicU64,
    frames_dropped: AtomicU64,
    frames_received: AtomicU64,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    connection: quinn::Connection,
    node_key: PublicKey,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    /// The node key as a TLS signer, built once for every dial under it.
    certified: Arc<rustls::sign::CertifiedKey>,
    config: TransportConfig,
    quic: Arc<quinn::TransportConfig>,
    events: mpsc::Sender<TransportEvent>,
    conns: Mutex<BTreeMap<PeerId, Conn>>,
    /// Inbound handshakes under way (they count against `max_connections` too).
    handshaking: AtomicUsize,
    next_peer: AtomicU64,
    counters: Counters,
}

/// A node's QUIC endpoint: it listens, dials, and moves frames. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Binds `listen` and starts accepting. Events arrive on the returned receiver, which the
    /// caller must keep reading.
    ///
    /// # Example
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use portcullis_core::crypto::SecretKey;
    /// use portcullis_core::rng::SeededRng;
    /// use portcullis_io_tokio::transport::{CoreDecides, Transport, TransportConfig, TransportEvent};
    ///
    /// let mut rng = SeededRng::from_u64(1);
    /// let (a_key, b_key) = (SecretKey::generate(&mut rng), SecretKey::generate(&mut rng));
    /// let policy = Arc::new(CoreDecides);
    /// let (a, _a_events) = Transport::bind("127.0.0.1:0".parse()?, &a_key, policy.clone(), TransportConfig::default())?;
    /// let (b, mut b_events) = Transport::bind("127.0.0.1:0".parse()?, &b_key, policy, TransportConfig::default())?;
    /// let peer = a.connect(b.local_addr()?, Some(b_key.public())).await?;
    /// assert!(a.send(peer, b"hello".to_vec()));
    /// # let mut got = None;
    /// while let Some(event) = b_events.recv().await {
    ///     if let TransportEvent::Frame { bytes, .. } = event { got = Some(bytes); break; }
    /// }
    /// assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    /// # a.shutdown().await; b.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn bind(
        listen: SocketAddr,
        node_key: &SecretKey,
        policy: Arc<dyn PeerPolicy>,
        config: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<TransportEvent>), TransportError> {
        let server_tls =
            tls::server_config(node_key, policy).map_err(|e| TransportError::Tls(e.to_string()))?;
        let server_crypto = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let quic = Arc::new(quic_transport_config(&config));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(quic.clone());
        let endpoint =
            quinn::Endpoint::server(server, listen).map_err(|source| TransportError::Bind {
                addr: listen,
                source,
            })?;
        let (events, rx) = mpsc::channel(config.event_queue.max(1));
        let inner = Arc::new(Inner {
            endpoint,
            certified: tls::certified_key(node_key)
                .map_err(|e| TransportError::Tls(e.to_string()))?,
            config,
            quic,
            events,
            conns: Mutex::new(BTreeMap::new()),
            handshaking: AtomicUsize::new(0),
            next_peer: AtomicU64::new(1),
            counters: Counters::default(),
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok((Transport { inner }, rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Dials `addr`; the listener must prove `pinned` (any key when `None`: a joiner dialing a
    /// seed, whose cluster the core checks next). Returns once `Connected` has been queued.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        pinned: Option<PublicKey>,
    ) -> Result<PeerId, TransportError> {
        let client_tls = tls::client_config_for(self.inner.certified.clone(), pinned)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        self.dial(addr, client_tls).await
    }

    /// Like [`Transport::connect`], but proves `key` instead of this endpoint's node key: one
    /// client endpoint can dial for many identities (the join client presents each new node
    /// key over its own connection).
    pub async fn connect_as(
        &self,
        addr: SocketAddr,
        pinned: Option<PublicKey>,
        key: &SecretKey,
    ) -> Result<PeerId, TransportError> {
        let client_tls =
            tls::client_config(key, pinned).map_err(|e| TransportError::Tls(e.to_string()))?;
        self.dial(addr, client_tls).await
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        client_tls: rustls::ClientConfig,
    ) -> Result<PeerId, TransportError> {
        let inner = &self.inner;
        let client_crypto = QuicClientConfig::try_from(client_tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(inner.quic.clone());
        let connecting = inner
            .endpoint
            .connect_with(client, addr, "portcullis")
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let timeout = Duration::from_millis(inner.config.handshake_timeout_ms);
        let handshake = async {
            let connection = connecting.await.map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&PREAMBLE).await.map_err(|e| e.to_string())?;
            // In TLS 1.3 the client finishes before the server has checked its key: the
            // echoed preamble says the listener accepted us.
            let mut echo = [0u8; PREAMBLE.len()];
            recv.read_exact(&mut echo)
                .await
                .map_err(|e| e.to_string())?;
            if echo != PREAMBLE {
                connection.close(CLOSE_BAD_PREAMBLE.into(), b"bad preamble");
                return Err("bad preamble".to_string());
            }
            Ok::<_, String>((connection, send, recv))
        };
        let (connection, send, recv) = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(reason)) => {
                inner
                    .counters
                    .handshakes_failed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(TransportError::Handshake { addr, reason });
            }
            Err(_) => {
                inner
                    .counters
                    .handshakes_failed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(TransportError::Timeout { addr });
            }
        };
        inner.counters.dialed.fetch_add(1, Ordering::Relaxed);
        established(inner.clone(), connection, send, recv, true)
            .await
            .ok_or(TransportError::Closed)
    }

    /// Queues `bytes` for `peer`. Returns `false` (and counts it) if the frame was dropped:
    /// unknown connection, queue full, or above `max_frame_bytes`.
    pub fn send(&self, peer: PeerId, bytes: Vec<u8>) -> bool {
        let inner = &self.inner;
        let sent = bytes.len() <= inner.config.max_frame_bytes
            && inner
                .conns
                .lock()
                .get(&peer)
                .is_some_and(|c| c.tx.try_send(bytes).is_ok());
        if !sent {
            inner
                .counters
                .frames_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Closes a connection (its `Disconnected` follows).
    pub fn close(&self, peer: PeerId) {
        if let Some(c) = self.inner.conns.lock().get(&peer) {
            c.connection.close(CLOSE_NORMAL.into(), b"closed");
        }
    }

    /// An open connection authenticated as `key`, if any (the newest).
    pub fn peer_for_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.inner
            .conns
            .lock()
            .iter()
            .rev()
            .find(|(_, c)| c.node_key == *key)
            .map(|(p, _)| *p)
    }

    /// Counters.
    pub fn metrics(&self) -> TransportMetrics {
        let c = &self.inner.counters;
        TransportMetrics {
            peers_connected: u64::try_from(self.inner.conns.lock().len()).unwrap_or(u64::MAX),
            accepted: c.accepted.load(Ordering::Relaxed),
            dialed: c.dialed.load(Ordering::Relaxed),
            refused_at_limit: c.refused_at_limit.load(Ordering::Relaxed),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            oversized_frames: c.oversized_frames.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and the endpoint, waiting up to a second for peers to learn it.
    pub async fn shutdown(&self) {
        self.inner
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

fn quic_transport_config(config: &TransportConfig) -> quinn::TransportConfig {
    let mut quic = quinn::TransportConfig::default();
    // One stream per connection, opened by the dialer; nobody may open more.
    quic.max_concurrent_bidi_streams(1u32.into());
    quic.max_concurrent_uni_streams(0u32.into());
    quic.max_idle_timeout(
        quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms)).ok(),
    );
    quic.keep_alive_interval(Some(Duration::from_millis(config.keep_alive_ms)));
    quic
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let busy = inner.conns.lock().len() + inner.handshaking.load(Ordering::Relaxed);
        if busy >= inner.config.max_connections {
            inner
                .counters
                .refused_at_limit
                .fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        inner.handshaking.fetch_add(1, Ordering::Relaxed);
        let inner = inner.clone();
        tokio::spawn(async move {
            accept_one(inner.clone(), incoming).await;
            inner.handshaking.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let timeout = Duration::from_millis(inner.config.handshake_timeout_ms);
    let handshake = async {
        let connection = incoming
            .accept()
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let mut preamble = [0u8; PREAMBLE.len()];
        recv.read_exact(&mut preamble)
            .await
            .map_err(|e| e.to_string())?;
        if preamble != PREAMBLE {
            connection.close(CLOSE_BAD_PREAMBLE.into(), b"bad preamble");
            return Err("bad preamble".to_string());
        }
        send.write_all(&PREAMBLE).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((connection, send, recv))
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok((connection, send, recv))) => {
            inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = established(inner, connection, send, recv, false).await;
        }
        Ok(Err(reason)) => {
            inner
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, %reason, "inbound handshake failed");
        }
        Err(_) => {
            inner
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "inbound handshake timed out");
        }
    }
}

/// The authenticated key of a connection.
fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    match certs.as_slice() {
        [one] => tls::key_from_spki(one.as_ref()),
        _ => None,
    }
}

/// The connection binding: the TLS exporter, hashed.
fn binding(connection: &quinn::Connection) -> Option<Hash32> {
    let mut ekm = [0u8; 32];
    connection
        .export_keying_material(&mut ekm, BINDING_LABEL, b"")
        .ok()?;
    Some(Hash32::of(&[b"portcullis.binding.v1", &ekm]))
}

/// Registers an authenticated connection, reports `Connected`, and starts its reader and
/// writer. `None` if the connection cannot be used (then it is closed).
async fn established(
    inner: Arc<Inner>,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    outbound: bool,
) -> Option<PeerId> {
    let (Some(node_key), Some(binding)) = (peer_key(&connection), binding(&connection)) else {
        // The verifiers only let Ed25519 raw keys through, and quinn exports after any
        // completed handshake; anything else is a peer we will not talk to.
        inner
            .counters
            .handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        connection.close(CLOSE_NORMAL.into(), b"no identity");
        return None;
    };
    let peer = PeerId(inner.next_peer.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(inner.config.send_queue_frames.max(1));
    inner.conns.lock().insert(
        peer,
        Conn {
            tx,
            connection: connection.clone(),
            node_key,
        },
    );
    let remote = connection.remote_address();
    tracing::debug!(peer = peer.0, key = %node_key.hash(), %remote, outbound, "connected");
    let connected = TransportEvent::Connected {
        peer,
        node_key,
        binding,
        remote,
        outbound,
    };
    if inner.events.send(connected).await.is_err() {
        inner.conns.lock().remove(&peer);
        connection.close(CLOSE_SHUTDOWN.into(), b"shutdown");
        return None;
    }
    tokio::spawn(write_loop(send, rx));
    tokio::spawn(read_loop(inner, peer, connection, recv));
    Some(peer)
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = rx.recv().await {
        if frame::write_frame(&mut send, &bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_loop(
    inner: Arc<Inner>,
    peer: PeerId,
    connection: quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    loop {
        match frame::read_frame(&mut recv, inner.config.max_frame_bytes).await {
            Ok(bytes) => {
                inner
                    .counters
                    .frames_received
                    .fetch_add(1, Ordering::Relaxed);
                if inner
                    .events
                    .send(TransportEvent::Frame { peer, bytes })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(frame::FrameError::TooLarge { len, max }) => {
                inner
                    .counters
                    .oversized_frames
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = peer.0,
                    len,
                    max,
                    "oversized frame: closing the connection"
                );
                connection.close(CLOSE_FRAME_TOO_LARGE.into(), b"frame too large");
                break;
            }
            Err(e) => {
                tracing::debug!(peer = peer.0, error = %e, "connection ended");
                break;
            }
        }
    }
    connection.close(CLOSE_NORMAL.into(), b"closed");
    // Dropping the entry drops the writer's sender, which finishes the stream.
    inner.conns.lock().remove(&peer);
    let _ = inner
        .events
        .send(TransportEvent::Disconnected { peer })
        .await;
}

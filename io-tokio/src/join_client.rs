//! A join client: presents a join token to a cluster **without starting a node**.
//!
//! Joining through a running node ([`crate::driver::NodeHandle::join_cluster_via`]) first
//! opens a redb store (fsync), binds the node's endpoint and dials every seed at once. None of
//! that is needed to be admitted: the cluster checks a token, a proof of possession of a node
//! key over one authenticated connection, and commits the admission. This client does only
//! that, with the core's own [`Joiner`] machine (the same checks: cluster pin, credential for
//! our key), and hands back the [`JoinAccepted`]; the caller starts its node once admitted
//! (with the key it joined with, and the member id and credential it was given).
//!
//! ```text
//!   bind a client endpoint (refuses inbound)
//!     └▶ dial seeds in order, the next one SEED_STAGGER_MS after the last (or at once when
//!        it failed), until one handshake succeeds; the join uses that connection alone
//!          └▶ Joiner: ClusterInfoRequest ─▶ ClusterInfo (pin + credential check)
//!                     ─▶ JoinRequest (proof over this connection's binding)
//!                     ─▶ JoinAccepted (credential for our key) ─▶ close it ─▶ Ok(accepted)
//!          seed closes ─▶ next seed, within the same join deadline
//!          seed redirects our request (no join secret) ─▶ the members it names join the seed
//!                        list (pinned to their keys) and are tried before it
//!          final rejection or deadline ─▶ Err
//!     └▶ endpoint closed (waits for the seed to learn it; see `Transport::shutdown`)
//! ```
//!
//! [`join`] does all of that once. A [`JoinClient`] keeps the endpoint for joins one after
//! another, each under its own node key and over its own connection (`Transport::connect_as`):
//! a tool that admits many nodes binds one socket, not one per node.
//!
//! Limits: at most [`MAX_SEEDS`] seeds, given and learned from redirects together, are tried
//! per round, the whole join is bounded by
//! `config.join_deadline_ms`, and frames are decoded under `config.limits()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::admission::{
    JoinFailure, Joiner, JoinerAction, JoinerCtx, members_to_follow, seeds_in_turn,
};
use portcullis_core::config::Config;
use portcullis_core::crypto::{Hash32, PublicKey, SecretKey};
use portcullis_core::ledger::Addrs;
use portcullis_core::messages::{JoinAccepted, MemberInfo, PeerMessage};
use portcullis_core::node::PeerId;
use portcullis_core::rng::{NodeSeed, SeededRng};
use portcullis_core::time::{Instant, Now};
use portcullis_core::token::JoinToken;
use rand_core::OsRng;
use tokio::sync::mpsc;

use crate::driver::{
    JoinError, MAX_SEEDS, SeedDial, StopReason, dialed, no_seed_reached, socket_addrs, unix_ms,
};
use crate::transport::{PeerPolicy, Transport, TransportConfig, TransportError, TransportEvent};

/// How to join.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The key the node will be admitted with (its identity once it runs).
    pub node_key: SecretKey,
    /// Where the node will be reachable once admitted (recorded in the ledger).
    pub addrs: Addrs,
    /// Local UDP address of the client endpoint (port 0: any).
    pub bind: SocketAddr,
    /// Core configuration: join deadline, request timeout, resend interval, frame limits.
    pub config: Config,
    /// Transport limits; `max_frame_bytes` is always taken from `config`.
    pub transport: TransportConfig,
}

/// A joiner accepts no inbound connection: it only dials seeds.
#[derive(Debug)]
struct RefuseInbound;

impl PeerPolicy for RefuseInbound {
    fn allow_inbound(&self, _key: &PublicKey) -> bool {
        false
    }
}

/// Presents `token` to the cluster through `seeds` (tried in order) and returns the
/// [`JoinAccepted`] (member id, credential for `opts.node_key`, cluster key, voters).
///
/// Must be called inside a tokio runtime.
///
/// # Example
/// ```no_run
/// use portcullis_core::config::Config;
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::token::JoinToken;
/// use portcullis_io_tokio::join_client::{JoinOptions, join};
/// use portcullis_io_tokio::transport::TransportConfig;
///
/// # async fn example(token_text: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let token = JoinToken::parse(token_text)?;
/// let opts = JoinOptions {
///     node_key: SecretKey::from_secret_bytes(&[7; 32]), // keep it: it is the node's identity
///     addrs: Default::default(),
///     bind: "0.0.0.0:0".parse()?,
///     config: Config::default(),
///     transport: TransportConfig::default(),
/// };
/// let accepted = join(token, &["127.0.0.1:7000".parse()?], opts).await?;
/// println!("admitted as member {}", accepted.member_id.0);
/// # Ok(())
/// # }
/// ```
pub async fn join(
    token: JoinToken,
    seeds: &[SocketAddr],
    opts: JoinOptions,
) -> Result<JoinAccepted, JoinError> {
    let (outcome, closing) = join_detached(token, seeds, opts).await;
    // The close task never panics; a failed join of it changes nothing for the caller.
    let _ = closing.await;
    outcome
}

/// Like [`join`], but returns as soon as the verdict is in: the client endpoint closes in a
/// spawned task, whose handle is returned (a node about to start need not wait for it).
pub async fn join_detached(
    token: JoinToken,
    seeds: &[SocketAddr],
    opts: JoinOptions,
) -> (Result<JoinAccepted, JoinError>, tokio::task::JoinHandle<()>) {
    let mut client = match JoinClient::bind(opts.bind, &opts.config, opts.transport.clone()) {
        Ok(client) => client,
        Err(e) => return (Err(e), tokio::spawn(async {})),
    };
    let outcome = client
        .join(
            token,
            seeds,
            &opts.node_key,
            opts.addrs.clone(),
            &opts.config,
        )
        .await;
    (outcome, tokio::spawn(client.close()))
}

/// A client endpoint that presents tokens, one join at a time, each under the node key it is
/// given (every join is its own connection, authenticated with its own key): a tool that admits
/// many nodes, such as the admission benchmark, binds one socket instead of one per node.
#[derive(Debug)]
pub struct JoinClient {
    transport: Transport,
    events: mpsc::Receiver<TransportEvent>,
    start: std::time::Instant,
    rng: SeededRng,
}

impl JoinClient {
    /// Binds the client endpoint on `bind` (port 0: any); `max_frame_bytes` comes from
    /// `config`. Must be called inside a tokio runtime.
    pub fn bind(
        bind: SocketAddr,
        config: &Config,
        transport: TransportConfig,
    ) -> Result<JoinClient, JoinError> {
        let transport_config = TransportConfig {
            max_frame_bytes: config.max_frame_bytes,
            ..transport
        };
        // The endpoint's own key only backs its (refusing) server side; joins prove theirs.
        let endpoint_key = SecretKey::generate(&mut OsRng);
        let (transport, events) = Transport::bind(
            bind,
            &endpoint_key,
            Arc::new(RefuseInbound),
            transport_config,
        )
        .map_err(JoinError::Local)?;
        Ok(JoinClient {
            transport,
            events,
            start: std::time::Instant::now(),
            // Full 256 bits, like a node's seed: the joiner draws its nonces from it.
            rng: NodeSeed::generate(&mut OsRng).rng(),
        })
    }

    /// Presents `token` through `seeds` (tried in order; the first whose handshake succeeds
    /// is used, the next on close; a redirect adds the members it names, tried before the
    /// seeds that redirected) as `node_key`, which the node will be reachable
    /// at `addrs`; returns the [`JoinAccepted`] with a credential for `node_key`.
    pub async fn join(
        &mut self,
        token: JoinToken,
        seeds: &[SocketAddr],
        node_key: &SecretKey,
        addrs: Addrs,
        config: &Config,
    ) -> Result<JoinAccepted, JoinError> {
        let mut session = Session {
            client: self,
            node_key,
            addrs,
            config,
        };
        session.run(token, seeds).await
    }

    /// The endpoint's transport counters (handshakes, frames).
    pub fn metrics(&self) -> crate::transport::TransportMetrics {
        self.transport.metrics()
    }

    /// Closes the endpoint, waiting (up to a second) for the seeds to learn it.
    pub async fn close(self) {
        self.transport.shutdown().await;
    }

    fn now(&self) -> Now {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Now::new(Instant::from_nanos(nanos), unix_ms())
    }

    fn tokio_deadline(&self, at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start) + Duration::from_nanos(at.as_nanos())
    }
}

/// What one connection to a seed ended with.
enum Round {
    Done(Box<Result<JoinAccepted, JoinError>>),
    /// The seed closed the connection: try the next one.
    NextSeed,
    /// The seed holds no join secret and named these members instead.
    Redirected(Vec<MemberInfo>),
}

/// A seed to dial: its address, and the key it must prove when a redirect named it.
type Seed = (SocketAddr, Option<PublicKey>);

/// How long a seed's handshake may run before the next seed is dialed alongside it (RFC 8305's
/// "connection attempt delay"): well above a loopback or LAN handshake, well below
/// `TransportConfig::handshake_timeout_ms`.
const SEED_STAGGER_MS: u64 = 250;

/// One join on a client.
struct Session<'a> {
    client: &'a mut JoinClient,
    node_key: &'a SecretKey,
    addrs: Addrs,
    config: &'a Config,
}

impl Session<'_> {
    fn now(&self) -> Now {
        self.client.now()
    }

    async fn run(
        &mut self,
        token: JoinToken,
        seeds: &[SocketAddr],
    ) -> Result<JoinAccepted, JoinError> {
        let mut seeds: Vec<Seed> = seeds.iter().take(MAX_SEEDS).map(|a| (*a, None)).collect();
        // Seeds that redirected us: skipped while another seed is left.
        let mut redirected = std::collections::BTreeSet::new();
        if seeds.is_empty() {
            return Err(JoinError::Failed(JoinFailure::NoSeeds));
        }
        let deadline_ms = self.config.join_deadline_ms;
        let deadline = self.now().instant.saturating_add_ms(deadline_ms);
        let mut next_seed = 0usize;
        let mut last_error = None;
        while self.now().instant < deadline {
            // One connection: the first seed, from `next_seed` on, whose handshake succeeds.
            let candidates = seeds_in_turn(seeds.len(), next_seed, |k| redirected.contains(&k));
            let connected = self
                .connect_first(candidates, &seeds, &mut last_error)
                .await;
            let Some((k, peer)) = connected else {
                return Err(no_seed_reached(last_error));
            };
            next_seed = k.wrapping_add(1);
            let remaining_ms = deadline.saturating_ms_since(self.now().instant);
            let round = self.round(token.clone(), peer, remaining_ms).await;
            // Done with this connection either way: an admitted node connects again once it
            // runs, and until then the leader must not take it for the new member's.
            self.client.transport.close(peer);
            match round {
                Round::Done(outcome) => return *outcome,
                Round::NextSeed => {}
                Round::Redirected(members) => {
                    redirected.insert(k);
                    for member in members {
                        if seeds.len() >= MAX_SEEDS {
                            break;
                        }
                        let Some(&addr) = socket_addrs(&member.addrs).first() else {
                            continue;
                        };
                        let seed = (addr, Some(member.node_key));
                        if !seeds.contains(&seed) {
                            seeds.push(seed);
                        }
                    }
                    if redirected.len() >= seeds.len() {
                        // Every seed redirects: going round them again at once would be a
                        // handshake loop until the deadline.
                        let left_ms = deadline.saturating_ms_since(self.now().instant);
                        let wait_ms = self.config.join_retry_max_ms.min(left_ms);
                        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    }
                }
            }
        }
        Err(JoinError::Timeout(deadline_ms))
    }

    /// The first of `candidates` (places in `seeds`, in the order to try them) whose
    /// handshake succeeds. Each is dialed [`SEED_STAGGER_MS`] after the one before it, or at
    /// once when that one failed, so a dead seed costs the stagger rather than a handshake
    /// timeout, and a live first seed is usually the only one dialed. Dials still going when
    /// one wins finish in the background, and any that connects is closed. Each failure is
    /// logged and kept in `last_error`.
    async fn connect_first(
        &mut self,
        candidates: impl IntoIterator<Item = usize>,
        seeds: &[Seed],
        last_error: &mut Option<TransportError>,
    ) -> Option<(usize, PeerId)> {
        let mut waiting: std::collections::VecDeque<usize> = candidates.into_iter().collect();
        let mut dials = tokio::task::JoinSet::new();
        let mut winner = None;
        while winner.is_none() {
            if dials.is_empty() {
                let Some(k) = waiting.pop_front() else {
                    break;
                };
                self.dial(&mut dials, k, seeds[k]);
            }
            let stagger = tokio::time::sleep(Duration::from_millis(SEED_STAGGER_MS));
            tokio::select! {
                Some(done) = dials.join_next() => winner = dialed(done, last_error),
                () = stagger, if !waiting.is_empty() => {
                    if let Some(k) = waiting.pop_front() {
                        self.dial(&mut dials, k, seeds[k]);
                    }
                }
            }
        }
        if !dials.is_empty() {
            // Not aborted: a dial dropped between registering its connection and returning
            // would leave that connection open with nobody to close it.
            let transport = self.client.transport.clone();
            tokio::spawn(async move {
                while let Some(done) = dials.join_next().await {
                    if let Ok((_, _, Ok(peer))) = done {
                        transport.close(peer);
                    }
                }
            });
        }
        winner
    }

    /// Starts dialing `seeds[k]` as our node key, in `dials`.
    fn dial(&self, dials: &mut tokio::task::JoinSet<SeedDial>, k: usize, (addr, pinned): Seed) {
        let (transport, key) = (self.client.transport.clone(), self.node_key.clone());
        dials.spawn(async move { (k, addr, transport.connect_as(addr, pinned, &key).await) });
    }

    /// Runs the core's joiner over the connection `peer` for at most `budget_ms`.
    async fn round(&mut self, token: JoinToken, peer: PeerId, budget_ms: u64) -> Round {
        // `connect` returns once `Connected` is queued: it comes first for this connection.
        let Some((seed_key, binding)) = self.wait_connected(peer).await else {
            return Round::NextSeed;
        };
        let config = Config {
            join_deadline_ms: budget_ms,
            ..self.config.clone()
        };
        let mut joiner = Joiner::new(token, self.addrs.clone(), vec![peer], &config, self.now());
        // Set once the joiner sent its request, which it does only after the seed proved the
        // cluster: a redirect before that is not followed (as in the core's joiner).
        let mut request_sent = false;
        loop {
            let due = joiner.next_deadline();
            // What the joiner handles this turn: its timer, or a message from the seed.
            let message = if due.is_some_and(|at| at <= self.now().instant) {
                None
            } else {
                let sleep_until = due.map(|at| self.client.tokio_deadline(at));
                let sleep = async {
                    match sleep_until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let event = tokio::select! {
                    event = self.client.events.recv() => event,
                    () = sleep => continue,
                };
                match event {
                    Some(TransportEvent::Frame { peer: from, bytes }) if from == peer => {
                        let Ok(message) = PeerMessage::decode(&bytes, &config.limits()) else {
                            tracing::debug!("undecodable frame from the seed");
                            continue;
                        };
                        if let PeerMessage::Redirect(redirect) = message {
                            if !request_sent {
                                continue;
                            }
                            // This seed does not admit; the members it names may.
                            let ours = self.node_key.public();
                            return Round::Redirected(
                                members_to_follow(&redirect, ours, seed_key)
                                    .cloned()
                                    .collect(),
                            );
                        }
                        Some(message)
                    }
                    Some(TransportEvent::Disconnected { peer: gone }) if gone == peer => {
                        return Round::NextSeed;
                    }
                    Some(_) => continue, // An earlier connection's leftovers.
                    None => {
                        return Round::Done(Box::new(Err(JoinError::Stopped(
                            StopReason::TransportClosed,
                        ))));
                    }
                }
            };
            let mut actions = Vec::new();
            let mut ctx = JoinerCtx {
                now: self.now(),
                config: &config,
                node_key: self.node_key,
                rng: &mut self.client.rng,
                actions: &mut actions,
            };
            match message {
                None => joiner.on_timer(&mut ctx),
                Some(message) => {
                    joiner.on_message(&mut ctx, peer, &seed_key, &binding, &message);
                }
            }
            for action in actions {
                match action {
                    JoinerAction::Send(to, message) => {
                        request_sent |= matches!(message, PeerMessage::JoinRequest(_));
                        self.client.transport.send(to, message.encode());
                    }
                    JoinerAction::Admitted(accepted) => return Round::Done(Box::new(Ok(accepted))),
                    JoinerAction::Failed(failure) => {
                        return Round::Done(Box::new(Err(JoinError::Failed(failure))));
                    }
                    // Redirects are taken above, before the joiner sees them.
                    JoinerAction::Follow(members) => return Round::Redirected(members),
                }
            }
        }
    }

    /// The key and binding of the connection `peer`, from its `Connected` event.
    async fn wait_connected(&mut self, peer: PeerId) -> Option<(PublicKey, Hash32)> {
        while let Some(event) = self.client.events.recv().await {
            match event {
                TransportEvent::Connected {
                    peer: p,
                    node_key,
                    binding,
                    ..
                } if p == peer => return Some((node_key, binding)),
                TransportEvent::Disconnected { peer: p } if p == peer => return None,
                _ => {}
            }
        }
        None
    }
}

//! `portcullis demo`: both protocols on a real 3-node cluster, in one process, on loopback.
//!
//! Every node is a full [`crate::driver`] node: QUIC with raw public keys between nodes, redb
//! storage with fsync (in a temporary directory that is removed at the end), and the same core
//! the simulator tests.
//!
//! ```text
//!   secrets ─▶ 3 founders (QUIC, redb) ─▶ leader elected
//!   token A ─▶ joiner 4 ─▶ admitted (learner)
//!   token B ─┬▶ joiner 5 ─┐ exactly one is admitted,
//!            └▶ joiner 6 ─┘ the other is refused
//!   leader: create namespace ─▶ invitation ─▶ joiner 4: probe, backfill, announce ─▶ Ready
//! ```
//!
//! [`LocalCluster`] is the reusable part: the integration tests and the embedding example start
//! their clusters with it too.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_core::config::Config;
use portcullis_core::crypto::{JoinSecret, SecretKey};
use portcullis_core::identity::AdmissionSecrets;
use portcullis_core::ledger::{MemberId, MemberSpec};
use portcullis_core::namespace::NamespaceConfig;
use portcullis_core::namespace::join::ReadyReport;
use portcullis_core::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
use portcullis_core::node::{Event, LocalCommand};
use portcullis_core::token::{JoinToken, Role, TokenHash};
use rand_core::OsRng;
use tokio::sync::broadcast;

use crate::driver::{self, DriverError, JoinError, NodeHandle, NodeOptions, unix_ms};

/// How long any single demo step may take before the demo gives up.
const STEP_TIMEOUT_MS: u64 = 20_000;

/// Binds tried, 20 ms apart, when a restarted founder's address is still held by its old
/// endpoint.
const RESTART_BIND_ATTEMPTS: u32 = 250;

/// Why the demo (or a [`LocalCluster`] operation) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A node failed to start or stopped.
    #[error("node: {0}")]
    Driver(#[from] DriverError),
    /// A join that should have succeeded failed.
    #[error("join: {0}")]
    Join(#[from] JoinError),
    /// Temporary directory, ports or output.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A step did not finish in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The cluster did something the demo did not expect.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

/// A cluster of in-process nodes on 127.0.0.1, each with its own data directory under one
/// temporary directory (removed on drop).
#[derive(Debug)]
pub struct LocalCluster {
    /// The cluster key and join secret (every founder is an admitting node).
    pub secrets: AdmissionSecrets,
    /// The founders, in member-id order (member `i + 1` is `founders[i]`).
    pub founders: Vec<NodeHandle>,
    config: Config,
    dir: tempfile::TempDir,
    next_dir: usize,
    /// Each founder's data directory and address, for restarts.
    founder_places: Vec<(PathBuf, SocketAddr)>,
}

impl LocalCluster {
    /// A configuration with short timers, for loopback: elections in 200–400 ms, beacons every
    /// 500 ms.
    pub fn fast_config() -> Config {
        Config {
            raft_tick_ms: 20,
            election_ticks: 10,
            heartbeat_ticks: 2,
            connect_retry_ms: 200,
            join_deadline_ms: 15_000,
            namespace: NamespaceConfig {
                beacon_interval_ms: 500,
                beacon_ttl_ms: 2_000,
                probe_answer_interval_ms: 200,
                probe_retry_ms: 200,
                backfill_silence_ms: 500,
                announce_retry_ms: 300,
                subscriptions_refresh_ms: 500,
                ack_wait_ms: 2_000,
                retry_initial_ms: 300,
                retry_max_ms: 2_000,
                ..NamespaceConfig::default()
            },
            ..Config::default()
        }
    }

    /// Starts `founders` founding nodes with fresh cluster secrets.
    pub async fn start(founders: usize, config: Config) -> Result<LocalCluster, DemoError> {
        let secrets = AdmissionSecrets {
            cluster_key: SecretKey::generate(&mut OsRng),
            join_secret: JoinSecret::generate(&mut OsRng),
        };
        let dir = tempfile::Builder::new().prefix("portcullis-").tempdir()?;
        let mut cluster = LocalCluster {
            secrets,
            founders: Vec::new(),
            config,
            dir,
            next_dir: 0,
            founder_places: Vec::new(),
        };
        let mut plan = Vec::new();
        for _ in 0..founders {
            let data_dir = cluster.fresh_dir();
            let key = driver::node_public_key(&data_dir)?;
            let addr = driver::reserve_loopback_addr()?;
            plan.push((data_dir, addr, key));
        }
        let specs = plan
            .iter()
            .map(|(_, addr, key)| {
                Ok(MemberSpec {
                    node_key: *key,
                    role: Role::Member,
                    addrs: driver::addrs_of(*addr)?,
                })
            })
            .collect::<Result<Vec<_>, DriverError>>()?;
        for (data_dir, addr, _) in plan {
            cluster.founder_places.push((data_dir.clone(), addr));
            let mut opts = NodeOptions::new(addr, data_dir);
            opts.config = cluster.config.clone();
            opts.secrets = Some(cluster.secrets.clone());
            opts.founders = specs.clone();
            cluster.founders.push(driver::start(opts).await?);
        }
        Ok(cluster)
    }

    /// Stops founder `index` gracefully and starts it again from its data directory, on the
    /// same address (the core recovers from the store).
    pub async fn restart_founder(&mut self, index: usize) -> Result<(), DemoError> {
        let (data_dir, addr) = self
            .founder_places
            .get(index)
            .cloned()
            .ok_or_else(|| DemoError::Unexpected(format!("no founder {index}")))?;
        self.founders[index].clone().shutdown().await?;
        // The old endpoint keeps its socket until its closed connections have drained
        // (3 PTOs: up to ~2 s on a young connection whose RTT variance is still the initial
        // guess), so the new bind may have to wait for it.
        let mut attempts = 0;
        loop {
            let mut opts = NodeOptions::new(addr, data_dir.clone());
            opts.config = self.config.clone();
            opts.secrets = Some(self.secrets.clone());
            match driver::start(opts).await {
                Ok(node) => {
                    self.founders[index] = node;
                    return Ok(());
                }
                Err(DriverError::Transport(crate::transport::TransportError::Bind { .. }))
                    if attempts < RESTART_BIND_ATTEMPTS =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn fresh_dir(&mut self) -> PathBuf {
        self.next_dir += 1;
        self.dir.path().join(format!("node-{}", self.next_dir))
    }

    /// A single-use member token valid for `ttl_ms`.
    pub fn issue_token(&self, ttl_ms: u64) -> JoinToken {
        JoinToken::issue_random(
            &self.secrets.join_secret,
            self.secrets.pin(),
            &mut OsRng,
            unix_ms().saturating_add(ttl_ms),
            Role::Member,
        )
    }

    /// Starts a fresh node that is not yet in any cluster.
    pub async fn start_joiner(&mut self) -> Result<NodeHandle, DemoError> {
        let mut opts = NodeOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), self.fresh_dir());
        opts.config = self.config.clone();
        Ok(driver::start(opts).await?)
    }

    /// Waits until every founder agrees on one leader; returns its index in `founders`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize, DemoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for node in &self.founders {
                leaders.push(node.status().await?.leader);
            }
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
            {
                let index = usize::try_from(leader.0.saturating_sub(1)).unwrap_or(usize::MAX);
                if index < self.founders.len() {
                    return Ok(index);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DemoError::Timeout("a leader"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every founder (all at once).
    pub async fn shutdown(self) -> Result<(), DemoError> {
        shutdown_all(self.founders).await
    }
}

/// Stops nodes concurrently (each waits up to a second for its peers to learn of it).
pub async fn shutdown_all(nodes: Vec<NodeHandle>) -> Result<(), DemoError> {
    let mut stopping = tokio::task::JoinSet::new();
    for node in nodes {
        stopping.spawn(node.shutdown());
    }
    while let Some(done) = stopping.join_next().await {
        done.map_err(|_| DriverError::Stopped)??;
    }
    Ok(())
}

/// Waits for the first event of `node` (`events` is a subscription to it) that `pick`
/// accepts; ends at once if the node stops.
pub async fn wait_for<T>(
    node: &NodeHandle,
    events: &mut broadcast::Receiver<Event>,
    what: &'static str,
    timeout: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> Result<T, DemoError> {
    let found = async {
        loop {
            let event = node
                .next_event(events)
                .await
                .map_err(|reason| DemoError::Driver(DriverError::Died(reason)))?;
            if let Some(t) = pick(&event) {
                return Ok(t);
            }
        }
    };
    tokio::time::timeout(timeout, found)
        .await
        .map_err(|_| DemoError::Timeout(what))?
}

/// Creates a namespace on `admin` and issues a reusable invitation valid for `ttl_ms`.
pub async fn create_namespace_and_invite(
    admin: &NodeHandle,
    salt: [u8; 16],
    ttl_ms: u64,
) -> Result<(NamespaceId, SignedInvitation), DemoError> {
    let timeout = Duration::from_millis(STEP_TIMEOUT_MS);
    let mut events = admin.subscribe();
    admin
        .command(LocalCommand::CreateNamespace { salt })
        .await?;
    let namespace = wait_for(admin, &mut events, "the namespace", timeout, |e| match e {
        Event::NamespaceCreated { namespace, .. } => Some(Ok(*namespace)),
        Event::CommandRejected(r) => Some(Err(DemoError::Unexpected(r.to_string()))),
        _ => None,
    })
    .await??;
    admin
        .command(LocalCommand::IssueInvitation {
            namespace,
            expires_at_unix_ms: unix_ms().saturating_add(ttl_ms),
            policy: InvitePolicy::Reusable,
        })
        .await?;
    let invitation = wait_for(admin, &mut events, "the invitation", timeout, |e| match e {
        Event::InvitationIssued(inv) => Some(Ok(inv.clone())),
        Event::CommandRejected(r) => Some(Err(DemoError::Unexpected(r.to_string()))),
        _ => None,
    })
    .await??;
    Ok((namespace, invitation))
}

/// Connects `joiner` to `member` and joins the namespace of `invitation`; waits for `Ready`.
pub async fn join_namespace(
    joiner: &NodeHandle,
    member: &NodeHandle,
    invitation: SignedInvitation,
    deadline_ms: u64,
) -> Result<ReadyReport, DemoError> {
    let namespace = invitation.invitation.namespace;
    let mut events = joiner.subscribe();
    joiner
        .connect_peer(member.addr())
        .await
        .map_err(|e| DemoError::Join(JoinError::Seed(e)))?;
    joiner
        .command(LocalCommand::JoinNamespaceWithRetry {
            invitation,
            max_total_ms: deadline_ms,
        })
        .await?;
    wait_for(
        joiner,
        &mut events,
        "namespace Ready",
        Duration::from_millis(deadline_ms.saturating_add(2_000)),
        |e| match e {
            Event::NamespaceReady(report) if report.namespace == namespace => {
                Some(Ok(report.clone()))
            }
            Event::NamespaceJoinFailed(f) if f.report.namespace == namespace => Some(Err(
                DemoError::Unexpected(format!("namespace join failed: {:?}", f.reason)),
            )),
            Event::CommandRejected(r) => Some(Err(DemoError::Unexpected(r.to_string()))),
            _ => None,
        },
    )
    .await?
}

/// One line of the demo's summary.
#[derive(Clone, Debug)]
pub struct DemoStep {
    /// What was done.
    pub name: String,
    /// What came out.
    pub outcome: String,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// What the demo did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DemoSummary {
    /// The steps, in order.
    pub steps: Vec<DemoStep>,
    /// The leader's member id.
    pub leader: MemberId,
    /// Member ids granted by tokens.
    pub admitted: Vec<MemberId>,
    /// Refusals of the contested token (one expected).
    pub refused: Vec<String>,
    /// The namespace created.
    pub namespace: NamespaceId,
    /// The namespace join's report.
    pub namespace_ready: ReadyReport,
    /// The whole run.
    pub total_ms: u64,
}

struct Recorder<W: Write> {
    out: W,
    steps: Vec<DemoStep>,
    started: std::time::Instant,
}

impl<W: Write> Recorder<W> {
    fn begin(&mut self, name: &str) -> Result<std::time::Instant, DemoError> {
        write!(self.out, "  {name} ... ")?;
        self.out.flush()?;
        Ok(std::time::Instant::now())
    }

    fn done(
        &mut self,
        started: std::time::Instant,
        name: &str,
        outcome: String,
    ) -> Result<(), DemoError> {
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        writeln!(self.out, "{outcome} ({elapsed_ms} ms)")?;
        self.steps.push(DemoStep {
            name: name.to_owned(),
            outcome,
            elapsed_ms,
        });
        Ok(())
    }
}

fn short(hash: &TokenHash) -> String {
    hash.to_string()
}

/// Runs the demo, printing each step with its timing and a final table to `out`.
///
/// Needs a tokio runtime with the `rt-multi-thread` flavour or a current-thread one; it binds
/// UDP ports on 127.0.0.1 and writes under the system's temporary directory.
pub async fn run_demo(out: impl Write) -> Result<DemoSummary, DemoError> {
    let mut rec = Recorder {
        out,
        steps: Vec::new(),
        started: std::time::Instant::now(),
    };
    let step_timeout = Duration::from_millis(STEP_TIMEOUT_MS);
    writeln!(
        rec.out,
        "portcullis demo: a 3-node cluster on 127.0.0.1 (QUIC, raw-key TLS, redb with fsync)\n"
    )?;

    let name = "start 3 founders";
    let t = rec.begin(name)?;
    let mut cluster = LocalCluster::start(3, LocalCluster::fast_config()).await?;
    let addrs: Vec<String> = cluster
        .founders
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    rec.done(t, name, format!("listening on {}", addrs.join(", ")))?;

    let name = "elect a leader";
    let t = rec.begin(name)?;
    let leader_index = cluster.wait_for_leader(step_timeout).await?;
    let leader = MemberId(u64::try_from(leader_index).unwrap_or(0) + 1);
    rec.done(t, name, format!("member {}", leader.0))?;

    let name = "issue 2 tokens";
    let t = rec.begin(name)?;
    let token_a = cluster.issue_token(3_600_000);
    let token_b = cluster.issue_token(3_600_000);
    rec.done(
        t,
        name,
        format!(
            "hashes {} and {} (tokens are never printed)",
            short(&token_a.hash()),
            short(&token_b.hash())
        ),
    )?;

    let name = "admit node 4 with token A";
    let t = rec.begin(name)?;
    let node4 = cluster.start_joiner().await?;
    let seed = cluster.founders[0].addr();
    let member4 = node4.join_cluster(token_a, seed).await?;
    rec.done(t, name, format!("member {}", member4.0))?;

    let name = "token B presented by nodes 5 and 6 at once";
    let t = rec.begin(name)?;
    let node5 = cluster.start_joiner().await?;
    let node6 = cluster.start_joiner().await?;
    let (seed5, seed6) = (cluster.founders[1].addr(), cluster.founders[2].addr());
    let (r5, r6) = tokio::join!(
        node5.join_cluster(token_b.clone(), seed5),
        node6.join_cluster(token_b, seed6)
    );
    let mut admitted = vec![member4];
    let mut refused = Vec::new();
    let mut outcomes = Vec::new();
    for (who, result) in [("node 5", r5), ("node 6", r6)] {
        match result {
            Ok(member) => {
                admitted.push(member);
                outcomes.push(format!("{who}: admitted as member {}", member.0));
            }
            Err(JoinError::Failed(failure)) => {
                refused.push(failure.to_string());
                outcomes.push(format!("{who}: refused ({failure})"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if admitted.len() != 2 || refused.len() != 1 {
        return Err(DemoError::Unexpected(format!(
            "the contested token must admit exactly one node: {outcomes:?}"
        )));
    }
    rec.done(t, name, outcomes.join("; "))?;

    let leader_node = &cluster.founders[leader_index];
    let name = "create a namespace and invite";
    let t = rec.begin(name)?;
    let (namespace, invitation) =
        create_namespace_and_invite(leader_node, *b"portcullis-demo!", 3_600_000).await?;
    rec.done(
        t,
        name,
        format!("namespace {namespace} on member {}", leader.0),
    )?;

    let name = "node 4 joins the namespace";
    let t = rec.begin(name)?;
    let report = join_namespace(&node4, leader_node, invitation, STEP_TIMEOUT_MS).await?;
    rec.done(
        t,
        name,
        format!(
            "Ready: {} members known, acked by {}",
            report.members_learned,
            report.acked_by.len()
        ),
    )?;

    let name = "shut down";
    let t = rec.begin(name)?;
    let mut everyone = vec![node4, node5, node6];
    everyone.append(&mut cluster.founders);
    shutdown_all(everyone).await?;
    drop(cluster);
    rec.done(t, name, "all 6 nodes stopped, storage removed".into())?;

    let total_ms = u64::try_from(rec.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    writeln!(rec.out, "\n  {:<44} {:>8}  outcome", "step", "ms")?;
    writeln!(rec.out, "  {:-<44} {:->8}  {:-<40}", "", "", "")?;
    for step in &rec.steps {
        writeln!(
            rec.out,
            "  {:<44} {:>8}  {}",
            step.name, step.elapsed_ms, step.outcome
        )?;
    }
    writeln!(rec.out, "  {:<44} {:>8}", "total", total_ms)?;
    writeln!(
        rec.out,
        "\n  admitted: {} node(s); contested token: 1 admitted, {} refused; namespace Ready in {} ms",
        admitted.len(),
        refused.len(),
        report.elapsed_ms
    )?;
    Ok(DemoSummary {
        steps: rec.steps,
        leader,
        admitted,
        refused,
        namespace,
        namespace_ready: report,
        total_ms,
    })
}

//! The control socket: how `portcullis` commands reach a running node.
//!
//! A node started by `portcullis node run` listens on a Unix socket in its data directory
//! (mode `0600`: only the node's user may command it; the filesystem is the authentication).
//! Each connection carries one request and one response, each a 4-byte big-endian length and
//! a borsh value, with bounded sizes. The server turns a request into calls on the running
//! [`NodeHandle`] and waits (bounded) for the event that completes it.
//!
//! ```text
//!   portcullis status ──connect DATA_DIR/control.sock──▶ [len|borsh ControlRequest]
//!                                                        server: NodeHandle::command / status
//!                                                        wait for the completing Event
//!                     ◀──────────────────────────────── [len|borsh ControlResponse]
//! ```
//!
//! The server also keeps the node's admission audit trail (the last [`MAX_AUDIT_RECORDS`]
//! `Event::Admission` records since start), which `token list` shows.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use borsh::{BorshDeserialize, BorshSerialize};
use portcullis_core::crypto::Hash32;
use portcullis_core::ledger::{MemberId, Outcome, Refusal};
use portcullis_core::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
use portcullis_core::node::{Event, LocalCommand};
use portcullis_core::token::TokenHash;
use portcullis_core::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::driver::{NodeHandle, unix_ms};

/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Largest request accepted by the server.
pub const MAX_REQUEST_BYTES: u32 = 64 << 10;
/// Largest response accepted by the client.
pub const MAX_RESPONSE_BYTES: u32 = 4 << 20;
/// Admission records kept for `token list`.
pub const MAX_AUDIT_RECORDS: usize = 1024;
/// Most namespace members' addresses a join request may name.
pub const MAX_JOIN_PEERS: usize = 16;
/// How long the server waits for a command's completing event (namespace joins use their own
/// deadline plus this).
pub const COMMAND_WAIT_MS: u64 = 10_000;
/// How long a client waits for a connection to read or write.
pub const CLIENT_IO_TIMEOUT_MS: u64 = 120_000;
/// The longest Unix socket path: `sun_path` (108 bytes on Linux, 104 elsewhere) less its NUL.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// The longest Unix socket path: `sun_path` (108 bytes on Linux, 104 elsewhere) less its NUL.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const MAX_SOCKET_PATH_BYTES: usize = 103;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next, so the
/// failure is not a busy loop.
pub(crate) const ACCEPT_BACKOFF_MS: u64 = 100;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum ControlRequest {
    /// The node's state.
    Status,
    /// Promote a learner to voter (send to the leader).
    PromoteMember {
        /// The learner.
        member_id: u64,
    },
    /// Revoke a token.
    RevokeToken {
        /// Its hash.
        hash: [u8; 32],
        /// Its expiry.
        expires_at_unix_ms: u64,
    },
    /// Create a namespace administered by this node.
    CreateNamespace {
        /// Salt of the namespace id.
        salt: [u8; 16],
    },
    /// Issue an invitation to a namespace this node administers.
    Invite {
        /// The namespace.
        namespace: [u8; 32],
        /// Validity from now.
        ttl_ms: u64,
        /// Reusable (else single-use).
        reusable: bool,
    },
    /// Join a namespace: connect to `peers` (members), then join within `deadline_ms`.
    JoinNamespace {
        /// The borsh-encoded `SignedInvitation`.
        invitation: Vec<u8>,
        /// Members to connect to first.
        peers: Vec<String>,
        /// Whole budget.
        deadline_ms: u64,
    },
    /// The admission audit trail since the node started.
    Admissions,
    /// The members of a namespace, as this node's replica sees them.
    NamespaceMembers {
        /// The namespace.
        namespace: [u8; 32],
    },
}

/// The node's state, as the CLI shows it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct StatusReport {
    /// Our member id.
    pub member_id: Option<u64>,
    /// Our node key (hex).
    pub node_key: String,
    /// The leader we know of.
    pub leader: Option<u64>,
    /// Raft term.
    pub term: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Where the node listens.
    pub listen: String,
    /// Connected peers.
    pub peers_connected: u64,
    /// Admissions granted at this listener.
    pub admissions_granted: u64,
    /// Admissions refused at this listener, by reason.
    pub admissions_rejected: Vec<(String, u64)>,
    /// The sticky fatal error.
    pub fatal: Option<String>,
}

/// One admission record.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct AuditLine {
    /// First bytes of the token hash.
    pub token: String,
    /// Presenter key hash prefix.
    pub presenter: String,
    /// Member id, or the refusal reason.
    pub result: String,
    /// Ledger index.
    pub log_index: u64,
    /// Wall-clock time.
    pub at_unix_ms: u64,
    /// Time taken at this listener.
    pub elapsed_ms: u64,
}

/// Who is at fault when a request fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// The request is malformed or names something unknown (the caller).
    BadRequest,
    /// The node refused the command (policy: not leader, not admin, ...).
    Refused,
    /// The command did not complete in time (transient).
    Timeout,
    /// The node has stopped.
    Stopped,
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum ControlResponse {
    /// The node's state.
    Status(StatusReport),
    /// Done.
    Done(String),
    /// A namespace was created.
    NamespaceCreated {
        /// Its id.
        namespace: [u8; 32],
    },
    /// An invitation (borsh-encoded `SignedInvitation`).
    Invitation(Vec<u8>),
    /// A namespace join reached `Ready`.
    NamespaceReady {
        /// Members in our replica.
        members: u64,
        /// Acks held.
        acked_by: u64,
        /// Time taken.
        elapsed_ms: u64,
    },
    /// The audit trail.
    Admissions(Vec<AuditLine>),
    /// A namespace's members and admins (keys, hex), as this node's replica sees them.
    NamespaceMembers {
        /// Whether this node is a member.
        member: bool,
        /// Members.
        members: Vec<String>,
        /// Admins.
        admins: Vec<String>,
        /// Ops applied.
        applied_through: u64,
    },
    /// The request failed.
    Failed {
        /// Who is at fault.
        kind: FailureKind,
        /// What happened.
        message: String,
    },
}

/// Why talking to the control socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket could not be reached: the node is probably not running.
    #[error("{path}: {source} (is the node running with this data directory?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The running node could not create its socket (the data directory, or the OS).
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket's path is longer than a Unix socket address holds (the data directory's
    /// path is too long: the operator's choice).
    #[error(
        "control socket path {path} is {len} bytes, over the {max}-byte limit of Unix sockets: use a data directory with a shorter path"
    )]
    PathTooLong {
        /// The socket.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The most a Unix socket path may have.
        max: usize,
    },
    /// Reading or writing failed mid-request.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A frame was larger than allowed.
    #[error("control frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A frame did not decode.
    #[error("control frame does not decode: {0}")]
    Decode(#[from] portcullis_core::wire::DecodeError),
}

async fn read_frame<T: BorshDeserialize>(
    stream: &mut (impl AsyncReadExt + Unpin),
    max: u32,
) -> Result<T, ControlError> {
    let len = stream.read_u32().await?;
    if len > max {
        return Err(ControlError::TooLarge { len, max });
    }
    let mut bytes = vec![0u8; len as usize];
    stream.read_exact(&mut bytes).await?;
    Ok(wire::decode_exact(&bytes)?)
}

async fn write_frame<T: BorshSerialize>(
    stream: &mut (impl AsyncWriteExt + Unpin),
    value: &T,
) -> Result<(), ControlError> {
    let bytes = wire::encode(value);
    let len = u32::try_from(bytes.len()).map_err(|_| ControlError::TooLarge {
        len: u32::MAX,
        max: MAX_RESPONSE_BYTES,
    })?;
    stream.write_u32(len).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Sends one request to the node whose data directory is `data_dir` and returns its answer.
pub async fn request(
    data_dir: &Path,
    request: &ControlRequest,
) -> Result<ControlResponse, ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let mut stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.clone(),
            source,
        })?;
    let exchange = async {
        write_frame(&mut stream, request).await?;
        read_frame(&mut stream, MAX_RESPONSE_BYTES).await
    };
    tokio::time::timeout(Duration::from_millis(CLIENT_IO_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| {
            ControlError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the node",
            ))
        })?
}

/// A running control server; dropping it stops accepting and removes nothing (the socket
/// file is replaced at the next start).
#[derive(Debug)]
pub struct ControlServer {
    task: tokio::task::JoinHandle<()>,
    audit_task: tokio::task::JoinHandle<()>,
    /// The socket's path.
    pub path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        self.audit_task.abort();
    }
}

type Audit = Arc<parking_lot::Mutex<VecDeque<AuditLine>>>;

/// Binds `DATA_DIR/control.sock` (an old socket file is replaced), mode `0600`.
fn bind(data_dir: &Path) -> Result<(tokio::net::UnixListener, PathBuf), ControlError> {
    let path = data_dir.join(SOCKET_FILE);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(ControlError::PathTooLong {
            path,
            len,
            max: MAX_SOCKET_PATH_BYTES,
        });
    }
    let bind_error = |source| ControlError::Bind {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(bind_error(source)),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(bind_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
    }
    Ok((listener, path))
}

/// Logs a failed `accept` and waits before the next: the failures that last (out of file
/// descriptors) would otherwise spin a core.
pub(crate) async fn accept_failed(what: &'static str, error: &std::io::Error) {
    tracing::warn!(%error, backoff_ms = ACCEPT_BACKOFF_MS, "{what}: accept failed");
    tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
}

/// Starts serving `node` on `DATA_DIR/control.sock` (an old socket file is replaced).
pub fn serve(node: NodeHandle, data_dir: &Path) -> Result<ControlServer, ControlError> {
    let (listener, path) = bind(data_dir)?;
    let audit: Audit = Arc::default();
    let audit_task = tokio::spawn(record_admissions(node.subscribe(), audit.clone()));
    // One command at a time: each waits for "its" completion event, which another command
    // running at once could otherwise take.
    let serial = Arc::new(tokio::sync::Mutex::new(()));
    let task = tokio::spawn(async move {
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed("control socket", &e).await;
                    continue;
                }
            };
            let node = node.clone();
            let audit = audit.clone();
            let serial = serial.clone();
            tokio::spawn(async move {
                let response = match read_frame(&mut stream, MAX_REQUEST_BYTES).await {
                    Ok(request) => {
                        let _one = serial.lock().await;
                        handle(&node, &audit, request).await
                    }
                    Err(e) => failed(FailureKind::BadRequest, e),
                };
                if let Err(e) = write_frame(&mut stream, &response).await {
                    tracing::debug!(error = %e, "control client went away");
                }
            });
        }
    });
    Ok(ControlServer {
        task,
        audit_task,
        path,
    })
}

async fn record_admissions(mut events: broadcast::Receiver<Event>, audit: Audit) {
    loop {
        match events.recv().await {
            Ok(Event::Admission(record)) => {
                let mut lines = audit.lock();
                if lines.len() == MAX_AUDIT_RECORDS {
                    lines.pop_front();
                }
                lines.push_back(AuditLine {
                    token: record.token.to_string(),
                    presenter: record.presenter_key.hash().short(),
                    result: match record.result {
                        Ok(member) => format!("admitted member {}", member.0),
                        Err(reason) => format!("refused: {}", reason.as_str()),
                    },
                    log_index: record.log_index,
                    at_unix_ms: record.at_unix_ms,
                    elapsed_ms: record.elapsed_ms,
                });
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn failed(kind: FailureKind, message: impl ToString) -> ControlResponse {
    ControlResponse::Failed {
        kind,
        message: message.to_string(),
    }
}

/// Sends `command` and waits for the event `pick` accepts (or a rejection).
async fn command_and_wait(
    node: &NodeHandle,
    command: LocalCommand,
    wait_ms: u64,
    mut pick: impl FnMut(&Event) -> Option<ControlResponse>,
) -> ControlResponse {
    let mut events = node.subscribe();
    let stopped = |reason| failed(FailureKind::Stopped, format!("the node stopped: {reason}"));
    if node.command(command).await.is_err() {
        return stopped(node.stopped().await);
    }
    let wait = async {
        loop {
            match node.next_event(&mut events).await {
                Ok(Event::CommandRejected(e)) => return failed(FailureKind::Refused, e),
                Ok(event) => {
                    if let Some(response) = pick(&event) {
                        return response;
                    }
                }
                Err(reason) => return stopped(reason),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(wait_ms), wait)
        .await
        .unwrap_or_else(|_| failed(FailureKind::Timeout, format!("no answer in {wait_ms} ms")))
}

async fn handle(node: &NodeHandle, audit: &Audit, request: ControlRequest) -> ControlResponse {
    match request {
        ControlRequest::Status => match node.status().await {
            Ok(s) => ControlResponse::Status(StatusReport {
                member_id: s.member_id.map(|m| m.0),
                node_key: s.node_key.hash().to_hex(),
                leader: s.leader.map(|m| m.0),
                term: s.term,
                voters: s.voters,
                learners: s.learners,
                listen: s.listen.to_string(),
                peers_connected: s.peers_connected as u64,
                admissions_granted: s.metrics.admissions_granted,
                admissions_rejected: s
                    .metrics
                    .admissions_rejected
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                fatal: s.fatal,
            }),
            Err(e) => failed(FailureKind::Stopped, e),
        },
        ControlRequest::PromoteMember { member_id } => {
            command_and_wait(
                node,
                LocalCommand::PromoteMember {
                    member_id: MemberId(member_id),
                },
                COMMAND_WAIT_MS,
                |e| match e {
                    Event::ConfChanged { voters, .. } if voters.contains(&member_id) => Some(
                        ControlResponse::Done(format!("member {member_id} is a voter")),
                    ),
                    _ => None,
                },
            )
            .await
        }
        ControlRequest::RevokeToken {
            hash,
            expires_at_unix_ms,
        } => {
            let hash = TokenHash(Hash32(hash));
            command_and_wait(
                node,
                LocalCommand::RevokeToken {
                    hash,
                    expires_at_unix_ms,
                },
                COMMAND_WAIT_MS,
                |e| match e {
                    Event::TokenRevoked { hash: h, outcome } if *h == hash => {
                        Some(revoke_response(hash, *outcome))
                    }
                    _ => None,
                },
            )
            .await
        }
        ControlRequest::CreateNamespace { salt } => {
            command_and_wait(
                node,
                LocalCommand::CreateNamespace { salt },
                COMMAND_WAIT_MS,
                |e| match e {
                    Event::NamespaceCreated { namespace, .. } => {
                        Some(ControlResponse::NamespaceCreated {
                            namespace: namespace.0.0,
                        })
                    }
                    _ => None,
                },
            )
            .await
        }
        ControlRequest::Invite {
            namespace,
            ttl_ms,
            reusable,
        } => {
            let namespace = NamespaceId(Hash32(namespace));
            command_and_wait(
                node,
                LocalCommand::IssueInvitation {
                    namespace,
                    expires_at_unix_ms: unix_ms().saturating_add(ttl_ms),
                    policy: if reusable {
                        InvitePolicy::Reusable
                    } else {
                        InvitePolicy::SingleUse
                    },
                },
                COMMAND_WAIT_MS,
                |e| match e {
                    Event::InvitationIssued(inv) if inv.invitation.namespace == namespace => {
                        Some(ControlResponse::Invitation(wire::encode(inv)))
                    }
                    _ => None,
                },
            )
            .await
        }
        ControlRequest::JoinNamespace {
            invitation,
            peers,
            deadline_ms,
        } => join_namespace(node, &invitation, &peers, deadline_ms).await,
        ControlRequest::Admissions => {
            ControlResponse::Admissions(audit.lock().iter().cloned().collect())
        }
        ControlRequest::NamespaceMembers { namespace } => {
            let namespace = NamespaceId(Hash32(namespace));
            match node.status().await {
                Err(_) => ControlResponse::Failed {
                    kind: FailureKind::Stopped,
                    message: "the node has stopped".into(),
                },
                Ok(status) => match status
                    .namespaces
                    .into_iter()
                    .find(|n| n.namespace == namespace)
                {
                    None => ControlResponse::Failed {
                        kind: FailureKind::BadRequest,
                        message: format!("this node holds no namespace {namespace}"),
                    },
                    Some(ns) => ControlResponse::NamespaceMembers {
                        member: ns.member,
                        members: ns.members.iter().map(|k| k.hash().to_hex()).collect(),
                        admins: ns.admins.iter().map(|k| k.hash().to_hex()).collect(),
                        applied_through: ns.applied_through,
                    },
                },
            }
        }
    }
}

/// A revoke the ledger applied: done, or refused with the reason in words.
fn revoke_response(hash: TokenHash, outcome: Outcome) -> ControlResponse {
    let reason = match outcome {
        Outcome::Refused(Refusal::ConsumedIsFinal) => {
            "it already admitted a node (a consumed token stays consumed)".to_owned()
        }
        Outcome::Refused(Refusal::LedgerFull) => {
            "the ledger holds its most token records (max_token_records)".to_owned()
        }
        Outcome::Refused(Refusal::PastRetention) => {
            "it is past its expiry and retention: no node can present it".to_owned()
        }
        Outcome::Refused(other) => format!("{other:?}"),
        Outcome::Aborted => return ControlResponse::Done(format!("token {hash}: revoked")),
        other => return ControlResponse::Done(format!("token {hash}: {other:?}")),
    };
    failed(
        FailureKind::Refused,
        format!("token {hash} not revoked: {reason}"),
    )
}

async fn join_namespace(
    node: &NodeHandle,
    invitation: &[u8],
    peers: &[String],
    deadline_ms: u64,
) -> ControlResponse {
    let invitation: SignedInvitation = match wire::decode_exact(invitation) {
        Ok(inv) => inv,
        Err(e) => return failed(FailureKind::BadRequest, format!("invitation: {e}")),
    };
    if peers.len() > MAX_JOIN_PEERS {
        return failed(
            FailureKind::BadRequest,
            format!("at most {MAX_JOIN_PEERS} peers"),
        );
    }
    for peer in peers {
        let addr: SocketAddr = match peer.parse() {
            Ok(addr) => addr,
            Err(_) => return failed(FailureKind::BadRequest, format!("bad address {peer}")),
        };
        if let Err(e) = node.connect_peer(addr).await {
            return failed(FailureKind::Refused, format!("connect {addr}: {e}"));
        }
    }
    let namespace = invitation.invitation.namespace;
    command_and_wait(
        node,
        LocalCommand::JoinNamespaceWithRetry {
            invitation,
            max_total_ms: deadline_ms,
        },
        deadline_ms.saturating_add(COMMAND_WAIT_MS),
        |e| match e {
            Event::NamespaceReady(r) if r.namespace == namespace => {
                Some(ControlResponse::NamespaceReady {
                    members: r.members_learned,
                    acked_by: r.acked_by.len() as u64,
                    elapsed_ms: r.elapsed_ms,
                })
            }
            Event::NamespaceJoinFailed(f) if f.report.namespace == namespace => Some(failed(
                FailureKind::Refused,
                format!("namespace join failed: {:?}", f.reason),
            )),
            _ => None,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_typed_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_u32(MAX_REQUEST_BYTES + 1).await.unwrap();
        let err = read_frame::<ControlRequest>(&mut b, MAX_REQUEST_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::TooLarge { .. }), "{err:?}");

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_u32(3).await.unwrap();
        a.write_all(&[0xee, 1, 2]).await.unwrap();
        let err = read_frame::<ControlRequest>(&mut b, MAX_REQUEST_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Decode(_)), "{err:?}");
    }

    #[test]
    fn a_refused_revoke_is_a_failure_and_a_revoke_is_done() {
        let hash = TokenHash(Hash32([3; 32]));
        for refusal in [
            Refusal::ConsumedIsFinal,
            Refusal::LedgerFull,
            Refusal::PastRetention,
        ] {
            let response = revoke_response(hash, Outcome::Refused(refusal));
            assert!(
                matches!(&response, ControlResponse::Failed { kind: FailureKind::Refused, message }
                    if message.contains("not revoked")),
                "{refusal:?}: {response:?}"
            );
        }
        assert_eq!(
            revoke_response(hash, Outcome::Aborted),
            ControlResponse::Done(format!("token {hash}: revoked"))
        );
    }

    #[test]
    fn a_socket_path_over_the_limit_is_refused_before_binding() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let long = dir.path().join("d".repeat(MAX_SOCKET_PATH_BYTES));
        let err = bind(&long).expect_err("too long for a Unix socket");
        assert!(
            matches!(err, ControlError::PathTooLong { max: MAX_SOCKET_PATH_BYTES, len, .. }
                if len > MAX_SOCKET_PATH_BYTES),
            "{err:?}"
        );
        assert!(err.to_string().contains("shorter path"), "{err}");
    }

    #[test]
    fn a_socket_that_cannot_be_bound_is_a_bind_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let err = bind(&dir.path().join("missing")).expect_err("no such directory");
        assert!(matches!(err, ControlError::Bind { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_command_waiting_on_a_node_that_dies_ends_as_stopped() {
        use crate::driver::tests::{founder_options, until};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let opts = founder_options(dir.path());
        let faults = opts.faults.clone();
        let node = crate::driver::start(opts)
            .await
            .expect("the founder starts");
        until(&node, "the founder leads", |s| s.leader.is_some()).await;
        // The namespace's keys are persisted: that commit fails and the node stops.
        faults
            .fail_commits
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let command = LocalCommand::CreateNamespace { salt: [1; 16] };
        // Waits for an event that never comes: only the node's death ends it before its 60 s.
        let response = command_and_wait(&node, command, 60_000, |_| None).await;
        assert!(
            matches!(&response, ControlResponse::Failed { kind: FailureKind::Stopped, message }
                if message.contains("storage")),
            "{response:?}"
        );
        assert!(node.shutdown().await.is_err(), "the node had died");
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let request = ControlRequest::Invite {
            namespace: [7; 32],
            ttl_ms: 60_000,
            reusable: true,
        };
        write_frame(&mut a, &request).await.unwrap();
        let back: ControlRequest = read_frame(&mut b, MAX_REQUEST_BYTES).await.unwrap();
        assert_eq!(back, request);
    }
}

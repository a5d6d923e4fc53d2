//! The admission machines: the listener (an admitting member) and the joiner.
//!
//! Both are pure: they read their context, and push [`ListenerAction`]s / [`JoinerAction`]s that
//! the [`crate::node::Node`] carries out (proposals through Raft, replies to peers, events).
//!
//! ## Listener
//! ```text
//!  JoinRequest ─▶ key == transport key? ─▶ token parses? ─▶ pin, MAC, expiry ─▶ proof ─▶ fast path
//!                 (all checked before any Raft round trip; each failure has its own reason,
//!                  but an expired token is refused at once only past its record's retention:
//!                  before that only the ledger knows whether this presenter consumed it)
//!  fast path: the local ledger already says Consumed/Aborted/Expired ─▶ answer at once
//!  otherwise: propose [Register, BeginInFlight] ─▶ LeaseBegun ─▶ propose [Consume + member]
//!             ─▶ Consumed ─▶ sign credential ─▶ JoinAccepted
//!  any failure after the lease was taken ─▶ propose Revert(lease) ─▶ JoinRejected
//!  another presenter's lease holds the token ─▶ JoinRejected(conflict, time the lease has left)
//! ```
//!
//! ## Joiner
//! ```text
//!  seed ─▶ ClusterInfoRequest ─▶ ClusterInfo: pin + credential check ─▶ JoinRequest (proof)
//!       ─▶ JoinAccepted: credential for our key ─▶ Admitted
//!       ─▶ retryable rejection / redirect / silence ─▶ backoff with jitter, next seed
//!       ─▶ conflict ─▶ the same seed again, at the lease's end if that comes before the backoff
//!       ─▶ redirect (the seed holds no join secret) ─▶ Follow: connect to the members it
//!          names; each connection becomes a seed, tried before the seeds that redirected
//!       ─▶ final rejection or deadline ─▶ Failed
//! ```

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;

use crate::config::Config;
use crate::crypto::{Domain, Hash32, PublicKey, SecretKey, Signature};
use crate::identity::{AdmissionSecrets, Credential, CredentialBody};
use crate::ledger::{
    Addrs, Command, LeaseId, Ledger, MemberId, MemberSpec, Outcome, PresenterId, Refusal,
    TokenState,
};
use crate::messages::{
    ClusterInfo, ClusterInfoRequest, JoinAccepted, JoinRejected, JoinRequest, MAX_LISTED_MEMBERS,
    MemberInfo, PeerMessage, Redirect, RejectReason, join_proof_message,
};
use crate::node::PeerId;
use crate::rng::SeededRng;
use crate::time::{Instant, Now};
use crate::token::{ClusterPin, JoinToken, Role, TokenError, TokenHash};
use crate::wire::BoundedVec;

/// Identifies one admission at a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdmissionId(pub u64);

/// Which proposal of an admission an outcome belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionStep {
    /// `[Register, BeginInFlight]`.
    Begin,
    /// `[Consume]`.
    Consume,
}

/// What the listener asks the node to do.
#[derive(Clone, Debug)]
pub enum ListenerAction {
    /// Propose for an admission; route the outcomes back with `on_outcomes`.
    Propose {
        /// The admission.
        admission: AdmissionId,
        /// Which step.
        step: AdmissionStep,
        /// The commands.
        commands: Vec<Command>,
    },
    /// Propose and forget (a revert: the sweeper covers it if it is lost).
    ProposeDetached(Vec<Command>),
    /// Send to a peer.
    Reply(PeerId, PeerMessage),
    /// An admission finished (for the audit trail and metrics); `None` when it was refused
    /// before any admission state existed.
    Finished(Option<AdmissionId>, AdmissionRecord),
}

/// The audit record of one admission attempt at this listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// First bytes of the token hash (never the token).
    pub token: TokenHash,
    /// The presenter's node key.
    pub presenter_key: PublicKey,
    /// The lease this listener took, if any.
    pub lease: Option<LeaseId>,
    /// The result.
    pub result: Result<MemberId, RejectReason>,
    /// Ledger index at which the result was known.
    pub log_index: u64,
    /// Wall-clock time of the result.
    pub at_unix_ms: u64,
    /// Time the admission took at this listener.
    pub elapsed_ms: u64,
}

/// What a listener needs to decide.
#[derive(Debug)]
pub struct ListenerCtx<'a> {
    /// Now.
    pub now: Now,
    /// Node configuration.
    pub config: &'a Config,
    /// The admitting secrets (None: this node redirects).
    pub secrets: Option<&'a AdmissionSecrets>,
    /// The local ledger replica.
    pub ledger: &'a Ledger,
    /// The metadata group's voters (listed to new members).
    pub voters: &'a [u64],
    /// Members this node was told of at its own admission (fallback for the list above).
    pub known: &'a [MemberInfo],
    /// Randomness for lease ids.
    pub rng: &'a mut SeededRng,
    /// Where actions go.
    pub actions: &'a mut Vec<ListenerAction>,
}

#[derive(Clone, Debug)]
struct Admission {
    peer: PeerId,
    token_hash: TokenHash,
    expires_at_unix_ms: u64,
    presenter: PresenterId,
    node_key: PublicKey,
    role: Role,
    addrs: Addrs,
    lease_id: LeaseId,
    step: AdmissionStep,
    started: Instant,
    deadline: Instant,
}

/// A request whose cheap checks passed, waiting for its proof to be verified.
#[derive(Debug)]
struct ProofCheck {
    peer: PeerId,
    /// The token is past its expiry (plus the skew allowance).
    expired: bool,
    token: JoinToken,
    token_hash: TokenHash,
    node_key: PublicKey,
    binding: Hash32,
    addrs: Addrs,
    proof: crate::crypto::Signature,
}

/// Refuses a request before any admission state exists, with its audit record.
fn early_reject(
    ctx: &mut ListenerCtx<'_>,
    peer: PeerId,
    token: Option<TokenHash>,
    presenter_key: PublicKey,
    reason: RejectReason,
) {
    ctx.actions.push(ListenerAction::Reply(
        peer,
        PeerMessage::JoinRejected(JoinRejected::new(reason)),
    ));
    ctx.actions.push(ListenerAction::Finished(
        None,
        AdmissionRecord {
            token: token.unwrap_or_default(),
            presenter_key,
            lease: None,
            result: Err(reason),
            log_index: ctx.ledger.applied_index(),
            at_unix_ms: ctx.now.unix_ms,
            elapsed_ms: 0,
        },
    ));
}

/// The listener side of admission: every admission in flight at this node.
#[derive(Debug, Default)]
pub struct Listener {
    admissions: BTreeMap<AdmissionId, Admission>,
    proof_queue: Vec<ProofCheck>,
    next_id: u64,
    /// Proofs verified recently, by the hash of everything the signature covers plus the
    /// signature: a joiner's resends on one connection are byte-identical, and verifying each
    /// again was most of a listener's CPU under load. Bounded (FIFO).
    verified_proofs: VerifiedProofs,
}

/// Most verified proofs remembered.
const VERIFIED_PROOFS_MAX: usize = 1_024;

#[derive(Debug, Default)]
struct VerifiedProofs {
    set: std::collections::BTreeSet<Hash32>,
    fifo: std::collections::VecDeque<Hash32>,
}

impl VerifiedProofs {
    fn key(check: &ProofCheck) -> Hash32 {
        Hash32::of(&[
            &check.node_key.0,
            &check.binding.0,
            &check.token_hash.0.0,
            &check.proof.0,
        ])
    }

    fn contains(&self, key: &Hash32) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: Hash32) {
        if !self.set.insert(key) {
            return;
        }
        self.fifo.push_back(key);
        if self.fifo.len() > VERIFIED_PROOFS_MAX
            && let Some(old) = self.fifo.pop_front()
        {
            self.set.remove(&old);
        }
    }
}

fn reject_for_token_error(e: &TokenError) -> RejectReason {
    match e {
        TokenError::Malformed(_) => RejectReason::Malformed,
        TokenError::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
        TokenError::WrongCluster { .. } => RejectReason::WrongCluster,
        TokenError::BadMac => RejectReason::BadMac,
        TokenError::Expired { .. } => RejectReason::Expired,
    }
}

/// The members to hand a new node: the voters (who lead and replicate), bounded. The rest it
/// learns from the ledger once the leader has caught it up. A node that has not caught up
/// itself yet falls back to the voters it was given at its own admission (`known`).
pub fn member_list(
    ledger: &Ledger,
    voters: &[u64],
    known: &[MemberInfo],
) -> BoundedVec<MemberInfo, MAX_LISTED_MEMBERS> {
    let mut out = BoundedVec::new();
    let from_ledger = voters.iter().filter_map(|id| {
        ledger.member(MemberId(*id)).map(|m| MemberInfo {
            member_id: m.member_id,
            node_key: m.node_key,
            addrs: m.addrs.clone(),
        })
    });
    let listed: Vec<MemberInfo> = from_ledger.collect();
    let source = if listed.is_empty() {
        known.to_vec()
    } else {
        listed
    };
    for info in source {
        if out.try_push(info).is_err() {
            break;
        }
    }
    out
}

impl Listener {
    /// Admissions in flight.
    pub fn in_flight(&self) -> usize {
        self.admissions.len()
    }

    /// The earliest admission deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.admissions.values().map(|a| a.deadline).min()
    }

    /// Handles a join request from `peer`, whose node key and connection binding the
    /// transport authenticated. The cheap checks (key, token format, pin, MAC, expiry) run at
    /// once; the proof of possession is queued and verified with the others queued by
    /// [`Listener::flush_proofs`] — all before any Raft round trip. (An expired token within
    /// its record's retention then still goes to the ledger: see the module docs.)
    pub fn on_join_request(
        &mut self,
        ctx: &mut ListenerCtx<'_>,
        peer: PeerId,
        peer_key: &PublicKey,
        binding: &Hash32,
        req: &JoinRequest,
    ) {
        if ctx.secrets.is_none() {
            ctx.actions.push(ListenerAction::Reply(
                peer,
                PeerMessage::Redirect(Redirect {
                    admitting: member_list(ctx.ledger, ctx.voters, ctx.known),
                }),
            ));
            return;
        }
        let token = JoinToken::from_bytes(&req.token);
        let token_hash = token.as_ref().ok().map(|t| t.hash());
        // The key in the request must be the one the transport authenticated.
        if req.node_key != *peer_key {
            return early_reject(ctx, peer, token_hash, req.node_key, RejectReason::BadProof);
        }
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                return early_reject(ctx, peer, None, req.node_key, reject_for_token_error(&e));
            }
        };
        let verified = ctx.secrets.map(|secrets| {
            token.verify(
                &secrets.join_secret,
                secrets.pin(),
                ctx.now.unix_ms,
                ctx.config.token_clock_skew_ms,
            )
        });
        // An expired token may still have been consumed by this very presenter, whose reply was
        // lost: the ledger decides after the proof (found by the simulator:
        // consumer-refused-expired-instead-of-served-again).
        let expired = matches!(verified, Some(Err(TokenError::Expired { .. })));
        if let Some(Err(e)) = verified
            && !expired
        {
            return early_reject(
                ctx,
                peer,
                token_hash,
                req.node_key,
                reject_for_token_error(&e),
            );
        }
        if self.proof_queue.len() + self.admissions.len()
            >= usize::try_from(ctx.config.max_inflight_admissions).unwrap_or(usize::MAX)
        {
            return early_reject(
                ctx,
                peer,
                token_hash,
                req.node_key,
                RejectReason::Overloaded,
            );
        }
        let Some(token_hash) = token_hash else {
            return; // Unreachable: a parsed token always has a hash.
        };
        self.proof_queue.push(ProofCheck {
            peer,
            expired,
            token,
            token_hash,
            node_key: req.node_key,
            binding: *binding,
            addrs: req.addrs.clone(),
            proof: req.proof,
        });
    }

    /// How many proofs wait for [`Listener::flush_proofs`] (the node then asks for an
    /// immediate timer).
    pub fn proofs_pending(&self) -> usize {
        self.proof_queue.len()
    }

    /// Verifies every queued proof, then starts (or answers) each admission.
    pub fn flush_proofs(&mut self, ctx: &mut ListenerCtx<'_>) {
        let queue = std::mem::take(&mut self.proof_queue);
        if queue.is_empty() {
            return;
        }
        let keys: Vec<Hash32> = queue.iter().map(VerifiedProofs::key).collect();
        let to_verify: Vec<usize> = (0..queue.len())
            .filter(|i| !self.verified_proofs.contains(&keys[*i]))
            .collect();
        let messages: Vec<[u8; 64]> = to_verify
            .iter()
            .map(|i| join_proof_message(&queue[*i].token_hash, &queue[*i].binding))
            .collect();
        let items: Vec<(PublicKey, &[u8], crate::crypto::Signature)> = to_verify
            .iter()
            .zip(&messages)
            .map(|(i, m)| (queue[*i].node_key, m.as_slice(), queue[*i].proof))
            .collect();
        let mut ok_by_index = vec![true; queue.len()];
        for (i, ok) in to_verify
            .iter()
            .zip(crate::crypto::verify_each(Domain::JoinProof, &items))
        {
            ok_by_index[*i] = ok;
            if ok {
                self.verified_proofs.insert(keys[*i]);
            }
        }
        for (check, ok) in queue.into_iter().zip(ok_by_index) {
            if ok {
                self.start_admission(ctx, check);
            } else {
                let hash = check.token.hash();
                early_reject(
                    ctx,
                    check.peer,
                    Some(hash),
                    check.node_key,
                    RejectReason::BadProof,
                );
            }
        }
    }

    /// A presenter whose token and proof verified: answer from the ledger if the token is in a
    /// final state, else take a lease through Raft.
    fn start_admission(&mut self, ctx: &mut ListenerCtx<'_>, check: ProofCheck) {
        let Some(secrets) = ctx.secrets else {
            return;
        };
        let token_hash = check.token_hash;
        let peer = check.peer;
        let presenter = PresenterId::of(&check.node_key);
        // Fast path: final states need no Raft round trip. Consumed is final, so a local
        // replica that shows it is never wrong about it.
        if let Some(record) = ctx.ledger.record(&token_hash) {
            let final_answer = match record.state {
                TokenState::Consumed {
                    presenter: consumer,
                    member_id,
                    ..
                } if consumer == presenter => {
                    // A voter must never come back with an empty log under its old id (an
                    // amnesiac voter can vote twice); a learner whose reply was lost is fine.
                    if ctx.voters.contains(&member_id.0) {
                        return early_reject(
                            ctx,
                            peer,
                            Some(token_hash),
                            check.node_key,
                            RejectReason::AlreadyMember,
                        );
                    }
                    return self.accept_now(ctx, peer, secrets, member_id, &check.node_key);
                }
                TokenState::Consumed { .. } => Some(RejectReason::AlreadyConsumed),
                TokenState::Aborted => Some(RejectReason::Revoked),
                TokenState::Expired => Some(RejectReason::Expired),
                _ => None,
            };
            if let Some(reason) = final_answer {
                return early_reject(ctx, peer, Some(token_hash), check.node_key, reason);
            }
        }
        // An expired token whose record, if it ever had one, is past retention everywhere:
        // refused without a Raft round trip (the ledger would say `PastRetention`). Any other
        // expired token goes through Raft, record or not: this presenter's Consume from an
        // earlier attempt may be in the log but not yet in this replica (a lagging listener),
        // and only the ledger's answer at a log position is linearized (`AlreadyConsumed` by
        // this presenter, `LeaseHeldByOther` while a lease runs, `TokenExpired`). Answering
        // Expired from the local replica left members that never learned they were admitted
        // (found by the simulator: late-consume-of-expired-token-never-served; and in review:
        // a_lagging_listener_does_not_refuse_an_admitted_presenter_as_expired).
        // The ledger purges by its entries' time, which may run behind our clock by up to the
        // skew allowance.
        let past_retention = check
            .token
            .body()
            .expires_at_unix_ms
            .saturating_add(ctx.config.ledger.record_grace_ms)
            .saturating_add(ctx.config.token_clock_skew_ms)
            <= ctx.now.unix_ms;
        if check.expired && past_retention && ctx.ledger.record(&token_hash).is_none() {
            return early_reject(
                ctx,
                peer,
                Some(token_hash),
                check.node_key,
                RejectReason::Expired,
            );
        }
        // A retry of an admission already in flight here: answer the newest connection.
        if let Some(existing) = self
            .admissions
            .values_mut()
            .find(|a| a.token_hash == token_hash && a.presenter == presenter)
        {
            existing.peer = peer;
            return;
        }
        let id = AdmissionId(self.next_id);
        self.next_id += 1;
        let lease_id = LeaseId(ctx.rng.r#gen());
        let admission = Admission {
            peer,
            token_hash,
            expires_at_unix_ms: check.token.body().expires_at_unix_ms,
            presenter,
            node_key: check.node_key,
            role: check.token.body().role,
            addrs: check.addrs,
            lease_id,
            step: AdmissionStep::Begin,
            started: ctx.now.instant,
            deadline: ctx
                .now
                .instant
                .saturating_add_ms(ctx.config.admission_lease_ms),
        };
        tracing::debug!(token = %token_hash, lease = lease_id.0, "admission begins");
        #[cfg_attr(not(feature = "canaries"), allow(unused_mut))]
        let mut commands = vec![
            Command::Register {
                hash: token_hash,
                expires_at_unix_ms: admission.expires_at_unix_ms,
            },
            Command::BeginInFlight {
                hash: token_hash,
                presenter,
                lease_id,
                lease_ms: ctx.config.admission_lease_ms,
            },
        ];
        #[cfg(feature = "canaries")]
        if ctx.config.ledger.canary == crate::config::Canary::SkipBeginInFlight {
            // Planted bug: no lease. The step's outcome handler treats the missing lease
            // outcome as taken and goes straight to Consume.
            commands.truncate(1);
        }
        ctx.actions.push(ListenerAction::Propose {
            admission: id,
            step: AdmissionStep::Begin,
            commands,
        });
        self.admissions.insert(id, admission);
    }

    /// Serves an admission the ledger already shows as consumed by this presenter.
    fn accept_now(
        &mut self,
        ctx: &mut ListenerCtx<'_>,
        peer: PeerId,
        secrets: &AdmissionSecrets,
        member_id: MemberId,
        node_key: &PublicKey,
    ) {
        if let Some(accepted) =
            accepted_message(ctx.ledger, ctx.voters, secrets, member_id, node_key)
        {
            ctx.actions.push(ListenerAction::Reply(
                peer,
                PeerMessage::JoinAccepted(accepted),
            ));
        }
    }

    /// Routes the outcomes of an admission's proposal.
    pub fn on_outcomes(
        &mut self,
        ctx: &mut ListenerCtx<'_>,
        id: AdmissionId,
        step: AdmissionStep,
        outcomes: &[Outcome],
    ) {
        let Some(adm) = self.admissions.get(&id).cloned() else {
            return; // Timed out already; the sweeper reverts any lease left behind.
        };
        if adm.step != step {
            return;
        }
        match step {
            AdmissionStep::Begin => {
                let register = outcomes.first().copied();
                let begin = outcomes.get(1).copied();
                #[cfg(feature = "canaries")]
                let begin = if ctx.config.ledger.canary == crate::config::Canary::SkipBeginInFlight
                {
                    Some(Outcome::LeaseAlreadyHeld)
                } else {
                    begin
                };
                match (register, begin) {
                    (_, Some(Outcome::LeaseBegun { .. } | Outcome::LeaseAlreadyHeld)) => {
                        let member = MemberSpec {
                            node_key: adm.node_key,
                            role: adm.role,
                            addrs: adm.addrs.clone(),
                        };
                        if let Some(a) = self.admissions.get_mut(&id) {
                            a.step = AdmissionStep::Consume;
                        }
                        ctx.actions.push(ListenerAction::Propose {
                            admission: id,
                            step: AdmissionStep::Consume,
                            commands: vec![Command::Consume {
                                hash: adm.token_hash,
                                presenter: adm.presenter,
                                lease_id: adm.lease_id,
                                member,
                            }],
                        });
                    }
                    (_, Some(Outcome::Refused(Refusal::AlreadyConsumed))) => {
                        // Consumed by us (a lost reply) or by someone else.
                        match ctx.ledger.record(&adm.token_hash).map(|r| r.state) {
                            Some(TokenState::Consumed {
                                presenter,
                                member_id,
                                ..
                            }) if presenter == adm.presenter => {
                                self.finish_accepted(ctx, id, member_id);
                            }
                            _ => {
                                self.finish_rejected(ctx, id, RejectReason::AlreadyConsumed, false)
                            }
                        }
                    }
                    (Some(Outcome::Refused(Refusal::PastRetention)), _)
                    | (_, Some(Outcome::Refused(Refusal::TokenExpired))) => {
                        self.finish_rejected(ctx, id, RejectReason::Expired, false);
                    }
                    (Some(Outcome::Refused(Refusal::LedgerFull)), _) => {
                        self.finish_rejected(ctx, id, RejectReason::Overloaded, false);
                    }
                    (_, Some(Outcome::Refused(Refusal::TokenAborted))) => {
                        self.finish_rejected(ctx, id, RejectReason::Revoked, false);
                    }
                    (
                        _,
                        Some(Outcome::Refused(Refusal::LeaseHeldByOther {
                            lease_until_unix_ms,
                        })),
                    ) => {
                        // Bounded by the lease length: a clock far behind the proposer's
                        // must not tell a joiner to wait longer than any lease lasts.
                        let retry_after_ms = lease_until_unix_ms
                            .saturating_sub(ctx.now.unix_ms)
                            .min(ctx.config.admission_lease_ms);
                        let rejected = JoinRejected {
                            reason: RejectReason::Conflict,
                            retry_after_ms: Some(retry_after_ms),
                        };
                        self.finish_rejected_with(ctx, id, rejected, false);
                    }
                    _ => self.finish_rejected(ctx, id, RejectReason::Unavailable, false),
                }
            }
            AdmissionStep::Consume => match outcomes.first().copied() {
                Some(
                    Outcome::Consumed { member_id } | Outcome::AlreadyConsumedBySame { member_id },
                ) => self.finish_accepted(ctx, id, member_id),
                Some(Outcome::Refused(Refusal::AlreadyConsumed)) => {
                    self.finish_rejected(ctx, id, RejectReason::AlreadyConsumed, false);
                }
                Some(Outcome::Refused(Refusal::NodeAlreadyMember { .. })) => {
                    self.finish_rejected(ctx, id, RejectReason::AlreadyMember, true);
                }
                Some(Outcome::Refused(Refusal::MembershipFull)) => {
                    self.finish_rejected(ctx, id, RejectReason::ClusterFull, true);
                }
                Some(Outcome::Refused(Refusal::TokenAborted)) => {
                    self.finish_rejected(ctx, id, RejectReason::Revoked, false);
                }
                Some(Outcome::Refused(Refusal::TokenExpired)) => {
                    self.finish_rejected(ctx, id, RejectReason::Expired, false);
                }
                _ => self.finish_rejected(ctx, id, RejectReason::Unavailable, true),
            },
        }
    }

    /// Fails admissions past their deadline (their lease is about to run out).
    pub fn on_timer(&mut self, ctx: &mut ListenerCtx<'_>) {
        let due: Vec<AdmissionId> = self
            .admissions
            .iter()
            .filter(|(_, a)| a.deadline <= ctx.now.instant)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_rejected(ctx, id, RejectReason::Unavailable, true);
        }
    }

    fn finish_accepted(&mut self, ctx: &mut ListenerCtx<'_>, id: AdmissionId, member_id: MemberId) {
        let Some(adm) = self.admissions.remove(&id) else {
            return;
        };
        let Some(secrets) = ctx.secrets else {
            return;
        };
        if let Some(accepted) =
            accepted_message(ctx.ledger, ctx.voters, secrets, member_id, &adm.node_key)
        {
            ctx.actions.push(ListenerAction::Reply(
                adm.peer,
                PeerMessage::JoinAccepted(accepted),
            ));
        }
        tracing::info!(token = %adm.token_hash, member = member_id.0, "admitted");
        ctx.actions.push(ListenerAction::Finished(
            Some(id),
            AdmissionRecord {
                token: adm.token_hash,
                presenter_key: adm.node_key,
                lease: Some(adm.lease_id),
                result: Ok(member_id),
                log_index: ctx.ledger.applied_index(),
                at_unix_ms: ctx.now.unix_ms,
                elapsed_ms: ctx.now.instant.saturating_ms_since(adm.started),
            },
        ));
    }

    fn finish_rejected(
        &mut self,
        ctx: &mut ListenerCtx<'_>,
        id: AdmissionId,
        reason: RejectReason,
        revert: bool,
    ) {
        self.finish_rejected_with(ctx, id, JoinRejected::new(reason), revert);
    }

    fn finish_rejected_with(
        &mut self,
        ctx: &mut ListenerCtx<'_>,
        id: AdmissionId,
        rejected: JoinRejected,
        revert: bool,
    ) {
        let reason = rejected.reason;
        let Some(adm) = self.admissions.remove(&id) else {
            return;
        };
        if revert || adm.step == AdmissionStep::Consume {
            // The lease may be held: give it back (a stale revert is a no-op in the ledger).
            ctx.actions
                .push(ListenerAction::ProposeDetached(vec![Command::Revert {
                    hash: adm.token_hash,
                    lease_id: adm.lease_id,
                }]));
        }
        ctx.actions.push(ListenerAction::Reply(
            adm.peer,
            PeerMessage::JoinRejected(rejected),
        ));
        tracing::info!(token = %adm.token_hash, reason = reason.as_str(), "admission refused");
        ctx.actions.push(ListenerAction::Finished(
            Some(id),
            AdmissionRecord {
                token: adm.token_hash,
                presenter_key: adm.node_key,
                lease: Some(adm.lease_id),
                result: Err(reason),
                log_index: ctx.ledger.applied_index(),
                at_unix_ms: ctx.now.unix_ms,
                elapsed_ms: ctx.now.instant.saturating_ms_since(adm.started),
            },
        ));
    }
}

/// Builds `JoinAccepted` for `member_id`, signing its credential.
fn accepted_message(
    ledger: &Ledger,
    voters: &[u64],
    secrets: &AdmissionSecrets,
    member_id: MemberId,
    node_key: &PublicKey,
) -> Option<JoinAccepted> {
    let member = ledger.member(member_id)?;
    if member.node_key != *node_key {
        return None;
    }
    let credential = Credential::issue(
        &secrets.cluster_key,
        CredentialBody {
            member_id,
            node_key: *node_key,
            role: member.role,
            cluster_pin: secrets.pin(),
            issued_at_unix_ms: member.admitted_at_unix_ms,
        },
    );
    Some(JoinAccepted {
        member_id,
        credential,
        cluster_key: secrets.cluster_key.public(),
        members: member_list(ledger, voters, &[]),
    })
}

/// Answers a `ClusterInfoRequest` with our credential, if we have one.
pub fn cluster_info(
    req: &ClusterInfoRequest,
    cluster_key: Option<PublicKey>,
    credential: Option<&Credential>,
) -> Option<PeerMessage> {
    Some(PeerMessage::ClusterInfo(ClusterInfo {
        nonce: req.nonce,
        cluster_key: cluster_key?,
        credential: credential?.clone(),
    }))
}

/// Why a join finally failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinFailure {
    /// A listener refused the token for good.
    #[error("rejected: {}", .0.as_str())]
    Rejected(RejectReason),
    /// No admission within the join deadline.
    #[error("no admission after {attempts} attempts within the deadline")]
    TimedOut {
        /// Requests sent.
        attempts: u32,
    },
    /// The command named no seed.
    #[error("no seed peers given")]
    NoSeeds,
}

/// What the joiner asks the node to do.
#[derive(Clone, Debug)]
pub enum JoinerAction {
    /// Send to a seed.
    Send(PeerId, PeerMessage),
    /// Admitted: the node persists and becomes a learner.
    Admitted(JoinAccepted),
    /// Failed for good.
    Failed(JoinFailure),
    /// A seed without the join secret named these members (the voters it knows) as the ones
    /// that admit: connect to each, pinned to its key, and report every connection to it with
    /// [`Joiner::on_seed_connected`]. Never our own key or the redirecting seed's; at most
    /// [`MAX_JOINER_SEEDS`] keys over the whole join.
    Follow(Vec<MemberInfo>),
}

/// Most seeds a joiner tries: those it was given plus those redirects named. Bounds the
/// connections a (possibly lying) redirect can make a joiner open.
pub const MAX_JOINER_SEEDS: usize = 16;

/// The order to try `n` seeds in, by index: in turn from `next`, leaving out those that
/// `redirected` names; when it names them all, every one in turn. A joiner asks the first; a
/// client that dials tries them in this order until a handshake succeeds.
///
/// # Example
/// ```
/// use portcullis_core::admission::seeds_in_turn;
///
/// // From seed 1 on, seed 2 redirected us.
/// assert_eq!(seeds_in_turn(4, 1, |k| k == 2), vec![1, 3, 0]);
/// // All redirected: go round them all again.
/// assert_eq!(seeds_in_turn(3, 5, |_| true), vec![2, 0, 1]);
/// assert!(seeds_in_turn(0, 0, |_| false).is_empty());
/// ```
pub fn seeds_in_turn(n: usize, next: usize, redirected: impl Fn(usize) -> bool) -> Vec<usize> {
    // Never evaluated when `n` is 0 (the range is empty).
    let in_turn = (0..n).map(|k| (next % n + k) % n);
    let open: Vec<usize> = in_turn.clone().filter(|k| !redirected(*k)).collect();
    if open.is_empty() {
        in_turn.collect()
    } else {
        open
    }
}

/// The members a redirect names that are worth a connection: never the joiner itself (`ours`)
/// nor the seed that sent the redirect (`seed`). Both the joiner and a client that dials for
/// itself follow these.
pub fn members_to_follow<'a>(
    redirect: &'a Redirect,
    ours: PublicKey,
    seed: PublicKey,
) -> impl Iterator<Item = &'a MemberInfo> + 'a {
    redirect
        .admitting
        .iter()
        .filter(move |m| m.node_key != ours && m.node_key != seed)
}

/// What the joiner needs to decide.
#[derive(Debug)]
pub struct JoinerCtx<'a> {
    /// Now.
    pub now: Now,
    /// Node configuration.
    pub config: &'a Config,
    /// Our node key.
    pub node_key: &'a SecretKey,
    /// Randomness for jitter and nonces.
    pub rng: &'a mut SeededRng,
    /// Where actions go.
    pub actions: &'a mut Vec<JoinerAction>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum JoinerPhase {
    /// Waiting to (re)try at `at`.
    Backoff { at: Instant },
    /// Asked `peer` for cluster info.
    AwaitInfo {
        peer: PeerId,
        nonce: u64,
        until: Instant,
    },
    /// Sent the join request to `peer`, its proof signed over `binding`.
    AwaitReply {
        peer: PeerId,
        cluster_key: PublicKey,
        binding: Hash32,
        until: Instant,
    },
    /// Finished.
    Done,
}

/// The request of the current attempt, sent again every `join_resend_ms` until the attempt
/// times out: both requests are idempotent at the listener, so one lost datagram costs a resend
/// interval instead of a whole attempt.
#[derive(Clone, Debug)]
struct Resend {
    peer: PeerId,
    message: PeerMessage,
    at: Instant,
}

/// The joiner side: one join attempt sequence for one token.
#[derive(Debug)]
pub struct Joiner {
    token: JoinToken,
    addrs: Addrs,
    seeds: Vec<PeerId>,
    next_seed: usize,
    attempts: u32,
    backoff_ms: u64,
    phase: JoinerPhase,
    deadline: Instant,
    /// Seeds that proved to be a *different* cluster (a coherent credential under a key that
    /// does not match the token's pin). When every seed has, the token is for another cluster.
    other_cluster_seeds: std::collections::BTreeSet<PeerId>,
    resend: Option<Resend>,
    /// Seed credentials already verified, as (seed key, cluster key, credential): a joiner
    /// retrying against the same seeds checks each signature once. At most
    /// [`MAX_VERIFIED_SEEDS`], oldest dropped first.
    verified_seeds: VecDeque<(PublicKey, PublicKey, Credential)>,
    /// Seeds that answered `Redirect` (they hold no join secret): skipped while another seed
    /// is left to try.
    redirected: std::collections::BTreeSet<PeerId>,
    /// Keys of the members redirects named, asked for with [`JoinerAction::Follow`]: a
    /// connection to one of them becomes a seed. At most [`MAX_JOINER_SEEDS`].
    following: std::collections::BTreeSet<PublicKey>,
    /// The last join proof signed, and the connection binding it signs: a retry on the same
    /// connection sends the same (deterministic) signature without signing again.
    last_proof: Option<(Hash32, Signature)>,
}

/// Most seed credentials a joiner remembers as verified.
const MAX_VERIFIED_SEEDS: usize = 8;

impl Joiner {
    /// A joiner for `token`, trying `seeds` in turn until `config.join_deadline_ms`.
    pub fn new(
        token: JoinToken,
        addrs: Addrs,
        seeds: Vec<PeerId>,
        config: &Config,
        now: Now,
    ) -> Joiner {
        Joiner {
            token,
            addrs,
            seeds,
            next_seed: 0,
            attempts: 0,
            backoff_ms: config.join_retry_initial_ms,
            phase: JoinerPhase::Backoff { at: now.instant },
            deadline: now.instant.saturating_add_ms(config.join_deadline_ms),
            other_cluster_seeds: std::collections::BTreeSet::new(),
            resend: None,
            verified_seeds: VecDeque::new(),
            redirected: std::collections::BTreeSet::new(),
            following: std::collections::BTreeSet::new(),
            last_proof: None,
        }
    }

    /// A connection to `node_key` is up as `peer`: if a redirect named that key, the
    /// connection becomes a seed (tried before the seeds that redirected).
    pub fn on_seed_connected(&mut self, peer: PeerId, node_key: &PublicKey) {
        if self.following.contains(node_key) {
            self.add_seed(peer);
        }
    }

    /// Adds connected `seeds`, tried after the seeds the join has (see
    /// [`crate::node::LocalCommand::AddJoinSeeds`]).
    pub fn add_seeds(&mut self, seeds: &[PeerId]) {
        for peer in seeds {
            self.add_seed(*peer);
        }
    }

    /// Adds one seed unless the join has it already or holds [`MAX_JOINER_SEEDS`].
    fn add_seed(&mut self, peer: PeerId) {
        if !self.seeds.contains(&peer) && self.seeds.len() < MAX_JOINER_SEEDS {
            self.seeds.push(peer);
        }
    }

    /// Whether `credential` from the seed authenticated as `peer_key` proves the cluster the
    /// token pins (remembered once verified).
    fn seed_proves_cluster(
        &mut self,
        peer_key: &PublicKey,
        cluster_key: &PublicKey,
        credential: &Credential,
    ) -> bool {
        let known = self
            .verified_seeds
            .iter()
            .any(|(k, c, cred)| k == peer_key && c == cluster_key && cred == credential);
        if known {
            return true;
        }
        let pin = self.token.body().cluster_pin;
        if credential.verify(cluster_key, pin, peer_key).is_err() {
            return false;
        }
        if self.verified_seeds.len() >= MAX_VERIFIED_SEEDS {
            self.verified_seeds.pop_front();
        }
        self.verified_seeds
            .push_back((*peer_key, *cluster_key, credential.clone()));
        true
    }

    /// The join proof for `token_hash` over `binding`, signed once per binding.
    fn join_proof(&mut self, node_key: &SecretKey, binding: &Hash32) -> Signature {
        if let Some((b, proof)) = &self.last_proof
            && b == binding
        {
            return *proof;
        }
        let proof = node_key.sign(
            Domain::JoinProof,
            &join_proof_message(&self.token.hash(), binding),
        );
        self.last_proof = Some((*binding, proof));
        proof
    }

    /// The token's hash (for logs).
    pub fn token_hash(&self) -> TokenHash {
        self.token.hash()
    }

    /// Whether the join has finished (either way).
    pub fn is_done(&self) -> bool {
        self.phase == JoinerPhase::Done
    }

    /// When the joiner next needs a timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        let resend = self.resend.as_ref().map(|r| r.at);
        match self.phase {
            JoinerPhase::Backoff { at } => Some(at),
            JoinerPhase::AwaitInfo { until, .. } | JoinerPhase::AwaitReply { until, .. } => {
                let next = until.min(self.deadline);
                Some(resend.map_or(next, |r| r.min(next)))
            }
            JoinerPhase::Done => None,
        }
    }

    /// Sends `message` to `peer` now and arms its resend.
    fn send(&mut self, ctx: &mut JoinerCtx<'_>, peer: PeerId, message: PeerMessage) {
        self.resend = Some(Resend {
            peer,
            message: message.clone(),
            at: ctx.now.instant.saturating_add_ms(ctx.config.join_resend_ms),
        });
        ctx.actions.push(JoinerAction::Send(peer, message));
    }

    fn fail(&mut self, ctx: &mut JoinerCtx<'_>, failure: JoinFailure) {
        self.phase = JoinerPhase::Done;
        self.resend = None;
        ctx.actions.push(JoinerAction::Failed(failure));
    }

    /// Waits, then tries the next seed.
    fn retry_later(&mut self, ctx: &mut JoinerCtx<'_>) {
        self.retry_within(ctx, None);
    }

    /// Waits the backoff, or only until `hint_ms` if that is sooner, then tries the next seed.
    ///
    /// The hint never lengthens the wait, so a peer's hint cannot stall a join beyond its own
    /// backoff; nor does it shorten it below `join_retry_initial_ms`, so a hint of 0 (a listener
    /// whose clock is ahead of the one that judges the lease) cannot make the joiner spin.
    fn retry_within(&mut self, ctx: &mut JoinerCtx<'_>, hint_ms: Option<u64>) {
        self.resend = None;
        let initial_ms = ctx.config.join_retry_initial_ms;
        // Jitter from the seeded RNG, so joiners that failed together spread out: up to 25% of
        // the backoff, or of the first retry delay when the hint decides. Why not 25% of the
        // hint: a wait for a lease to run out would then end up to a quarter of the lease late.
        let (base_ms, spread_ms) = match hint_ms.filter(|h| *h < self.backoff_ms) {
            Some(hint_ms) => (hint_ms.max(initial_ms), initial_ms / 4),
            None => (self.backoff_ms, self.backoff_ms / 4),
        };
        let wait = base_ms.saturating_add(ctx.rng.gen_range(0..=spread_ms));
        self.backoff_ms = (self.backoff_ms * 2).min(ctx.config.join_retry_max_ms);
        let at = ctx.now.instant.saturating_add_ms(wait);
        if at >= self.deadline {
            let attempts = self.attempts;
            return self.fail(ctx, JoinFailure::TimedOut { attempts });
        }
        self.phase = JoinerPhase::Backoff { at };
    }

    fn try_next_seed(&mut self, ctx: &mut JoinerCtx<'_>) {
        if self.seeds.is_empty() {
            return self.fail(ctx, JoinFailure::NoSeeds);
        }
        let n = self.seeds.len();
        let pick = seeds_in_turn(n, self.next_seed, |k| {
            self.redirected.contains(&self.seeds[k])
        })
        .first()
        .copied()
        .unwrap_or(self.next_seed % n);
        let peer = self.seeds[pick];
        self.next_seed = pick.wrapping_add(1);
        self.attempts += 1;
        let nonce = ctx.rng.r#gen();
        self.phase = JoinerPhase::AwaitInfo {
            peer,
            nonce,
            until: ctx
                .now
                .instant
                .saturating_add_ms(ctx.config.join_request_timeout_ms),
        };
        self.send(
            ctx,
            peer,
            PeerMessage::ClusterInfoRequest(ClusterInfoRequest { nonce }),
        );
    }

    /// The transport (re)connected `peer` with `binding`: a join request waiting on it whose
    /// proof names another connection is started again over this one.
    pub fn on_connected(&mut self, ctx: &mut JoinerCtx<'_>, peer: PeerId, binding: &Hash32) {
        let stale = matches!(
            self.phase,
            JoinerPhase::AwaitReply { peer: p, binding: signed, .. } if p == peer && signed != *binding
        );
        if stale {
            self.resend = None;
            self.next_seed = self.next_seed.wrapping_sub(1); // Try the same seed again.
            self.phase = JoinerPhase::Backoff {
                at: ctx.now.instant,
            };
        }
    }

    /// Timer: start, retry after backoff, or give up on a silent seed.
    pub fn on_timer(&mut self, ctx: &mut JoinerCtx<'_>) {
        if self.phase != JoinerPhase::Done && ctx.now.instant >= self.deadline {
            let attempts = self.attempts;
            return self.fail(ctx, JoinFailure::TimedOut { attempts });
        }
        if let Some(resend) = self.resend.as_mut()
            && resend.at <= ctx.now.instant
        {
            resend.at = ctx.now.instant.saturating_add_ms(ctx.config.join_resend_ms);
            ctx.actions
                .push(JoinerAction::Send(resend.peer, resend.message.clone()));
        }
        match self.phase {
            JoinerPhase::Backoff { at } if at <= ctx.now.instant => self.try_next_seed(ctx),
            JoinerPhase::AwaitInfo { until, .. } | JoinerPhase::AwaitReply { until, .. }
                if until <= ctx.now.instant =>
            {
                self.retry_later(ctx);
            }
            _ => {}
        }
    }

    /// A message from `peer` (authenticated as `peer_key`, connection binding `binding`).
    pub fn on_message(
        &mut self,
        ctx: &mut JoinerCtx<'_>,
        peer: PeerId,
        peer_key: &PublicKey,
        binding: &Hash32,
        msg: &PeerMessage,
    ) {
        match (&self.phase, msg) {
            (JoinerPhase::AwaitInfo { peer: p, nonce, .. }, PeerMessage::ClusterInfo(info))
                if *p == peer && info.nonce == *nonce =>
            {
                let pin: ClusterPin = self.token.body().cluster_pin;
                // Authenticate the cluster before revealing the token.
                if !self.seed_proves_cluster(peer_key, &info.cluster_key, &info.credential) {
                    let their_pin = ClusterPin::of(&info.cluster_key);
                    let coherent = info
                        .credential
                        .verify(&info.cluster_key, their_pin, peer_key)
                        .is_ok();
                    if their_pin != pin && coherent {
                        self.other_cluster_seeds.insert(peer);
                        let distinct: std::collections::BTreeSet<&PeerId> =
                            self.seeds.iter().collect();
                        if self.other_cluster_seeds.len() >= distinct.len() {
                            tracing::warn!(token = %self.token.hash(), "every seed is another cluster");
                            return self
                                .fail(ctx, JoinFailure::Rejected(RejectReason::WrongCluster));
                        }
                    }
                    tracing::warn!(token = %self.token.hash(), "seed failed the cluster pin check");
                    return self.retry_later(ctx);
                }
                let proof = self.join_proof(ctx.node_key, binding);
                let token_bytes = self.token.expose_bytes();
                let Ok(token) = crate::wire::BoundedBytes::try_from_vec(token_bytes.to_vec())
                else {
                    return self.fail(ctx, JoinFailure::Rejected(RejectReason::Malformed));
                };
                self.phase = JoinerPhase::AwaitReply {
                    peer,
                    cluster_key: info.cluster_key,
                    binding: *binding,
                    until: ctx
                        .now
                        .instant
                        .saturating_add_ms(ctx.config.join_request_timeout_ms),
                };
                self.send(
                    ctx,
                    peer,
                    PeerMessage::JoinRequest(JoinRequest {
                        token,
                        node_key: ctx.node_key.public(),
                        addrs: self.addrs.clone(),
                        proof,
                    }),
                );
            }
            (
                JoinerPhase::AwaitReply {
                    peer: p,
                    cluster_key,
                    ..
                },
                PeerMessage::JoinAccepted(acc),
            ) if *p == peer => {
                let pin = self.token.body().cluster_pin;
                let ok = acc.cluster_key == *cluster_key
                    && acc
                        .credential
                        .verify(cluster_key, pin, &ctx.node_key.public())
                        .is_ok()
                    && acc.credential.body.member_id == acc.member_id;
                if !ok {
                    tracing::warn!(token = %self.token.hash(), "JoinAccepted with a bad credential");
                    return self.retry_later(ctx);
                }
                self.phase = JoinerPhase::Done;
                self.resend = None;
                ctx.actions.push(JoinerAction::Admitted(acc.clone()));
            }
            (
                JoinerPhase::AwaitReply {
                    peer: p,
                    binding: signed,
                    ..
                },
                PeerMessage::JoinRejected(rej),
            ) if *p == peer => {
                // A proof signed over a connection that has since been replaced is refused
                // BadProof through no fault of ours: sign again over the new one (found by the
                // simulator: stale-join-proof-after-reconnect).
                let stale_proof = rej.reason == RejectReason::BadProof && signed != binding;
                if rej.reason.is_retryable() || stale_proof {
                    // Say why the join waits: a `conflict` (the token is in flight at a listener
                    // that may have died) lasts until that listener's admission lease runs out.
                    tracing::info!(
                        token = %self.token.hash(),
                        reason = rej.reason.as_str(),
                        retry_after_ms = rej.retry_after_ms,
                        "refused for now: retrying"
                    );
                    if rej.reason == RejectReason::Conflict {
                        // This seed answered and admits; the token is held elsewhere, perhaps
                        // by a listener that died. Ask this seed again when the lease runs out
                        // rather than a seed in turn that may be that dead listener.
                        if let Some(k) = self.seeds.iter().position(|s| s == p) {
                            self.next_seed = k;
                        }
                        self.retry_within(ctx, rej.retry_after_ms);
                    } else {
                        self.retry_later(ctx);
                    }
                } else {
                    self.fail(ctx, JoinFailure::Rejected(rej.reason));
                }
            }
            (JoinerPhase::AwaitReply { peer: p, .. }, PeerMessage::Redirect(redirect))
                if *p == peer =>
            {
                // The seed proved the cluster (ClusterInfo) before we sent the request, so the
                // members it names are worth a connection each; each must still prove the
                // cluster itself before it sees the token.
                self.redirected.insert(peer);
                let mut follow = Vec::new();
                for member in members_to_follow(redirect, ctx.node_key.public(), *peer_key) {
                    if self.following.len() >= MAX_JOINER_SEEDS {
                        break;
                    }
                    if self.following.insert(member.node_key) {
                        follow.push(member.clone());
                    }
                }
                if !follow.is_empty() {
                    tracing::info!(token = %self.token.hash(), members = follow.len(), "redirected: following");
                    ctx.actions.push(JoinerAction::Follow(follow));
                }
                self.retry_later(ctx);
            }
            _ => {} // Late, duplicated or unrelated: ignore.
        }
    }
}

/// Member id of a node key in the ledger, or in the list a joiner was given.
pub fn lookup_member(ledger: &Ledger, extra: &[MemberInfo], key: &PublicKey) -> Option<MemberId> {
    ledger.member_by_key(key).map(|m| m.member_id).or_else(|| {
        extra
            .iter()
            .find(|m| m.node_key == *key)
            .map(|m| m.member_id)
    })
}

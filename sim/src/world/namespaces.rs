//! The namespace workload (Protocol B) and its checkers.
//!
//! Founders of the healed core create namespaces; the other founders join them with valid
//! invitations, and some with bad ones (forged, expired, signed by a non-admin), while the
//! safety phase's faults run. The world tells this module what the cores emit; it judges:
//!
//! ```text
//!   t ≈ 1 s   admin ──CreateNamespace──▶ NamespaceCreated ──IssueInvitation ×2──▶ valid, expiring
//!   planned   joiner ──JoinNamespace{inv, ns_join_deadline_ms}──▶ NamespaceReady | JoinFailed
//!   every tick / event:
//!     ns-deadline    no join ends (or is still open) after start + its deadline
//!     ns-invitation  a forged, non-admin or (by the joiner's clock) expired invitation never
//!                    makes its joiner Ready; every applied MemberJoined, on every node, carries
//!                    an invitation the admin issued, signed, and unexpired at the op's time
//!   every transmit:
//!     ns-vouch       a node's own beacon or ack (a joiner clears its durable outbox on either)
//!                    covers only ops already on that node's simulated disk
//!   liveness  every valid (core founder, namespace) pair ends a member; joins that failed
//!             during the faults are re-issued, as an application would
//! ```
//!
//! Joins run between founders only: they are a full mesh whenever they are up, which is what
//! pubsub needs (admitted joiners only know their seeds).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use portcullis_core::crypto::{Hash32, PublicKey, SecretKey};
use portcullis_core::messages::PeerMessage;
use portcullis_core::namespace::NamespaceMessage;
use portcullis_core::namespace::ops::{
    InvitePolicy, NamespaceId, OpBody, OpHash, SignedInvitation,
};
use portcullis_core::node::{CommandError, Event, Input, LocalCommand};
use portcullis_core::rng::SeededRng;
use portcullis_core::time::Instant;
use portcullis_core::wire::{Envelope, MessageKind};
use rand::Rng;
use rand::seq::SliceRandom;

use super::World;
use crate::check::Violation;
use crate::options::Options;

/// Where a publish's framed message starts in its payload: after the topic (32 bytes) and
/// borsh's u32 length of the bytes.
const PUBLISHED_FRAME_AT: usize = 32 + 4;
/// When the admins create their namespaces (after the warm-up, so founders are durable).
const CREATE_AT_MS: u64 = 1_000;
/// Lifetime of the "expiring" invitation: it is expired for every joiner whose clock is not
/// far behind the admin's.
const EXPIRING_TTL_MS: u64 = 1;
/// Lifetime of valid invitations: longer than any run.
const VALID_TTL_MS: u64 = 24 * 3_600 * 1_000;
/// The core fires a join's deadline timer at the deadline exactly; the driver wakes at the
/// core's `poll_timeout`, so no slack is needed beyond the supervisor's own observation.
const DEADLINE_SLACK_MS: u64 = 0;

/// What kind of invitation a join presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum InviteKind {
    /// Issued by the admin, long-lived.
    Valid,
    /// Issued by the admin, one signature byte flipped.
    Forged,
    /// Issued by the admin, expired (judged against the joiner's clock at the start).
    Expired,
    /// Correctly signed by a key that is not the namespace's admin.
    NonAdmin,
}

impl InviteKind {
    fn as_str(self) -> &'static str {
        match self {
            InviteKind::Valid => "valid",
            InviteKind::Forged => "forged",
            InviteKind::Expired => "expired",
            InviteKind::NonAdmin => "non-admin",
        }
    }
}

/// How a join attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NsOutcome {
    /// Not handled by its node yet, or running.
    Pending,
    /// `NamespaceReady`.
    Ready,
    /// `NamespaceJoinFailed`, with the reason's name.
    Failed(&'static str),
    /// The node refused the command (e.g. already joining).
    Refused(CommandError),
    /// The node crashed first.
    Crashed,
}

/// One namespace.
#[derive(Clone, Debug)]
pub(crate) struct NsFacts {
    /// The founder that creates and administers it.
    pub admin_node: usize,
    salt: [u8; 16],
    create_sent: bool,
    pub id: Option<NamespaceId>,
    pub admin_key: Option<PublicKey>,
    valid: Option<SignedInvitation>,
    expiring: Option<SignedInvitation>,
    /// Hashes of every invitation the admin issued.
    issued: BTreeSet<Hash32>,
}

/// One join attempt.
#[derive(Clone, Debug)]
pub(crate) struct NsJoin {
    pub node: usize,
    pub ns: usize,
    pub kind: InviteKind,
    pub deadline_ms: u64,
    /// When the node's core handled the command (the deadline runs from here).
    pub started_at: Option<Instant>,
    /// The joiner's wall clock then.
    started_unix_ms: u64,
    expires_at_unix_ms: u64,
    pub outcome: NsOutcome,
    pub ended_at: Option<Instant>,
    /// Issued in the liveness phase (a retry of a valid pair).
    pub retry: bool,
}

/// A planned join.
#[derive(Clone, Copy, Debug)]
struct Planned {
    at_ms: u64,
    node: usize,
    ns: usize,
    kind: InviteKind,
}

/// The namespace workload's plan and everything it observed.
#[derive(Debug)]
pub(crate) struct NsWork {
    rng: SeededRng,
    deadline_ms: u64,
    pub namespaces: Vec<NsFacts>,
    plan: Vec<Planned>,
    next: usize,
    pub joins: Vec<NsJoin>,
    /// Per node: join commands pushed and not yet handled, in order.
    queued: BTreeMap<usize, VecDeque<usize>>,
    /// Per node: invitations requested and not yet issued (namespace, kind), in order.
    invites_queued: BTreeMap<usize, VecDeque<(usize, InviteKind)>>,
    /// The join whose command the world is handing to a core right now.
    handling: Option<usize>,
    /// The valid (node, namespace) pairs: liveness owes each of them membership.
    valid_pairs: BTreeSet<(usize, usize)>,
}

impl NsWork {
    /// Draws the plan: admins from the core, joins over the other founders.
    pub(crate) fn plan(mut rng: SeededRng, opts: &Options, core: &BTreeSet<usize>) -> NsWork {
        let mut admins: Vec<usize> = core.iter().copied().collect();
        admins.shuffle(&mut rng);
        let count = if admins.is_empty() {
            0
        } else {
            opts.namespaces
        };
        let namespaces: Vec<NsFacts> = (0..count)
            .map(|k| NsFacts {
                admin_node: admins[k % admins.len()],
                salt: rng.r#gen(),
                create_sent: false,
                id: None,
                admin_key: None,
                valid: None,
                expiring: None,
                issued: BTreeSet::new(),
            })
            .collect();
        // Every (joiner, namespace) pair once: two joins of one node into one namespace would
        // only test the core's "already joining" refusal.
        let mut pairs: Vec<(usize, usize)> = (0..namespaces.len())
            .flat_map(|ns| {
                let admin = namespaces[ns].admin_node;
                (0..opts.founders)
                    .filter(move |n| *n != admin)
                    .map(move |n| (n, ns))
            })
            .collect();
        pairs.shuffle(&mut rng);
        let first_ms = CREATE_AT_MS + 500;
        let last_ms = opts.safety_ms.saturating_sub(500).max(first_ms + 1);
        let bad = [
            InviteKind::Forged,
            InviteKind::Expired,
            InviteKind::NonAdmin,
        ];
        let kinds = std::iter::repeat_n(InviteKind::Valid, opts.ns_joins)
            .chain((0..opts.ns_bad_joins).map(|k| bad[k % bad.len()]));
        let mut plan: Vec<Planned> = pairs
            .into_iter()
            .zip(kinds)
            .map(|((node, ns), kind)| Planned {
                at_ms: rng.gen_range(first_ms..last_ms),
                node,
                ns,
                kind,
            })
            .collect();
        plan.sort_by_key(|p| (p.at_ms, p.node, p.ns));
        let valid_pairs = plan
            .iter()
            .filter(|p| p.kind == InviteKind::Valid)
            .map(|p| (p.node, p.ns))
            .collect();
        NsWork {
            rng,
            deadline_ms: opts.ns_join_deadline_ms.max(1),
            namespaces,
            plan,
            next: 0,
            joins: Vec::new(),
            queued: BTreeMap::new(),
            invites_queued: BTreeMap::new(),
            handling: None,
            valid_pairs,
        }
    }

    /// One label per join, `ns:<invitation kind>[:retry]:<outcome>`, for run summaries.
    pub(crate) fn outcome_labels(&self) -> Vec<String> {
        self.joins
            .iter()
            .map(|j| {
                let outcome = match &j.outcome {
                    NsOutcome::Pending => "pending".to_owned(),
                    NsOutcome::Ready => "ready".to_owned(),
                    NsOutcome::Failed(reason) => format!("failed_{reason}"),
                    NsOutcome::Refused(_) => "refused".to_owned(),
                    NsOutcome::Crashed => "crashed".to_owned(),
                };
                let retry = if j.retry { ":retry" } else { "" };
                format!("ns:{}{retry}:{outcome}", j.kind.as_str())
            })
            .collect()
    }

    fn invitation(&mut self, ns: usize, kind: InviteKind) -> Option<SignedInvitation> {
        let facts = &self.namespaces[ns];
        let id = facts.id?;
        match kind {
            InviteKind::Valid => facts.valid.clone(),
            InviteKind::Expired => facts.expiring.clone(),
            InviteKind::Forged => {
                let mut inv = facts.valid.clone()?;
                let at = self.rng.gen_range(0..inv.signature.0.len());
                inv.signature.0[at] ^= 1 << self.rng.gen_range(0..8u32);
                Some(inv)
            }
            InviteKind::NonAdmin => {
                let stranger = SecretKey::generate(&mut self.rng);
                let nonce = self.rng.r#gen();
                let expires = facts.valid.as_ref()?.invitation.expires_at_unix_ms;
                Some(SignedInvitation::issue(
                    &stranger,
                    id,
                    expires,
                    nonce,
                    InvitePolicy::Reusable,
                ))
            }
        }
    }
}

impl World {
    /// The workload's step at each supervisor tick of the safety phase.
    pub(super) fn ns_tick(&mut self, now: Instant) {
        self.ns_create_due(now);
        while let Some(p) = self.ns.plan.get(self.ns.next).copied() {
            if p.at_ms > now.as_millis() {
                break;
            }
            self.ns.next += 1;
            self.ns_issue_join(now, p.node, p.ns, p.kind, false);
        }
        self.ns_check_open(now);
    }

    /// Asks namespace `k`'s admin for a valid and an expiring invitation.
    fn ns_request_invitations(&mut self, k: usize, now: Instant) {
        let f = &self.ns.namespaces[k];
        let (Some(namespace), i) = (f.id, f.admin_node) else {
            return;
        };
        let unix = self.now_for(i, now).unix_ms;
        let q = self.ns.invites_queued.entry(i).or_default();
        q.push_back((k, InviteKind::Valid));
        q.push_back((k, InviteKind::Expired));
        for expires in [VALID_TTL_MS, EXPIRING_TTL_MS] {
            self.push_control(
                i,
                Input::Command(LocalCommand::IssueInvitation {
                    namespace,
                    expires_at_unix_ms: unix.saturating_add(expires),
                    policy: InvitePolicy::Reusable,
                }),
            );
        }
    }

    /// Asks each admin that is up to create its namespace, if it has not been asked yet (or
    /// crashed before it answered).
    fn ns_create_due(&mut self, now: Instant) {
        // Created, but the admin crashed before it issued the invitations.
        for k in 0..self.ns.namespaces.len() {
            let f = &self.ns.namespaces[k];
            let admin = f.admin_node;
            let asked = self
                .ns
                .invites_queued
                .get(&admin)
                .is_some_and(|q| !q.is_empty());
            if f.id.is_some()
                && f.valid.is_none()
                && !asked
                && self.slots[admin].up
                && !self.ns_lost(k)
            {
                self.ns_request_invitations(k, now);
            }
        }
        if now.as_millis() >= CREATE_AT_MS {
            for k in 0..self.ns.namespaces.len() {
                let f = &self.ns.namespaces[k];
                if f.create_sent || !self.slots[f.admin_node].up {
                    continue;
                }
                let (admin, salt) = (f.admin_node, f.salt);
                self.ns.namespaces[k].create_sent = true;
                self.push_control(
                    admin,
                    Input::Command(LocalCommand::CreateNamespace { salt }),
                );
                self.trace
                    .record(now, Some(admin), "work.ns_create", &salt, || {
                        format!("namespace #{k}")
                    });
            }
        }
    }

    /// Pushes one join command to `node` (skipped, and traced, if it cannot be made now).
    fn ns_issue_join(
        &mut self,
        now: Instant,
        node: usize,
        ns: usize,
        kind: InviteKind,
        retry: bool,
    ) {
        let invitation = if self.slots[node].up {
            self.ns.invitation(ns, kind)
        } else {
            None
        };
        let Some(invitation) = invitation else {
            self.trace
                .record(now, Some(node), "work.ns_join_skipped", &[], || {
                    format!("namespace #{ns} ({})", kind.as_str())
                });
            return;
        };
        let j = self.ns.joins.len();
        self.ns.joins.push(NsJoin {
            node,
            ns,
            kind,
            deadline_ms: self.ns.deadline_ms,
            started_at: None,
            started_unix_ms: 0,
            expires_at_unix_ms: invitation.invitation.expires_at_unix_ms,
            outcome: NsOutcome::Pending,
            ended_at: None,
            retry,
        });
        self.ns.queued.entry(node).or_default().push_back(j);
        let deadline_ms = self.ns.deadline_ms;
        self.push_control(
            node,
            Input::Command(LocalCommand::JoinNamespace {
                invitation,
                deadline_ms,
            }),
        );
        self.trace.record(
            now,
            Some(node),
            "work.ns_join",
            &(j as u64).to_le_bytes(),
            || format!("join #{j}: namespace #{ns}, {} invitation", kind.as_str()),
        );
    }

    /// Called before `input` reaches slot `i`'s core: stamps the start of a join command.
    pub(super) fn ns_before_input(&mut self, i: usize, now: Instant, input: &Input) {
        if let Input::Command(LocalCommand::JoinNamespace { .. }) = input
            && let Some(j) = self.ns.queued.get_mut(&i).and_then(VecDeque::pop_front)
        {
            let unix = self.now_for(i, now).unix_ms;
            let join = &mut self.ns.joins[j];
            join.started_at = Some(now);
            join.started_unix_ms = unix;
            self.ns.handling = Some(j);
        }
    }

    /// Called after the core handled that input and its outputs were drained.
    pub(super) fn ns_after_input(&mut self) {
        self.ns.handling = None;
    }

    /// A node's event that concerns namespaces. Returns true if it was consumed here.
    pub(super) fn ns_on_event(&mut self, i: usize, now: Instant, event: &Event) -> bool {
        match event {
            Event::NamespaceCreated { namespace, admin } => {
                let Some(k) = self
                    .ns
                    .namespaces
                    .iter()
                    .position(|f| f.admin_node == i && f.id.is_none())
                else {
                    return true;
                };
                let f = &mut self.ns.namespaces[k];
                f.id = Some(*namespace);
                f.admin_key = Some(*admin);
                self.ns_request_invitations(k, now);
                true
            }
            Event::InvitationIssued(inv) => {
                let Some((k, kind)) = self
                    .ns
                    .invites_queued
                    .get_mut(&i)
                    .and_then(VecDeque::pop_front)
                else {
                    return true;
                };
                let f = &mut self.ns.namespaces[k];
                f.issued.insert(inv.hash());
                match kind {
                    InviteKind::Expired => f.expiring = Some(inv.clone()),
                    _ => f.valid = Some(inv.clone()),
                }
                true
            }
            Event::NamespaceReady(report) => {
                self.ns_end(i, now, report.namespace, NsOutcome::Ready);
                true
            }
            Event::NamespaceJoinFailed(f) => {
                self.ns_end(
                    i,
                    now,
                    f.report.namespace,
                    NsOutcome::Failed(f.reason.as_str()),
                );
                true
            }
            Event::CommandRejected(e) => {
                let Some(j) = self.ns.handling.take() else {
                    return false;
                };
                let join = &mut self.ns.joins[j];
                join.outcome = NsOutcome::Refused(e.clone());
                join.ended_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Ends the open join of node `i` into namespace `id`, judging it.
    fn ns_end(&mut self, i: usize, now: Instant, id: NamespaceId, outcome: NsOutcome) {
        let Some(ns) = self.ns.namespaces.iter().position(|f| f.id == Some(id)) else {
            return;
        };
        let Some(j) = self
            .ns
            .joins
            .iter()
            .rposition(|j| j.node == i && j.ns == ns && j.outcome == NsOutcome::Pending)
        else {
            return;
        };
        let name = self.name(i);
        self.ns.joins[j].outcome = outcome.clone();
        self.ns.joins[j].ended_at = Some(now);
        let join = self.ns.joins[j].clone();
        if let Some(start) = join.started_at {
            let took_ms = now.saturating_ms_since(start);
            if took_ms > join.deadline_ms + DEADLINE_SLACK_MS {
                return self.fail(Violation::safety(
                    "ns-deadline",
                    format!(
                        "{name}: namespace join #{j} ended {outcome:?} after {took_ms} ms, past \
                         its deadline of {} ms",
                        join.deadline_ms
                    ),
                ));
            }
        }
        if outcome == NsOutcome::Ready {
            let must_fail = match join.kind {
                InviteKind::Valid => false,
                InviteKind::Forged | InviteKind::NonAdmin => true,
                InviteKind::Expired => join.started_unix_ms >= join.expires_at_unix_ms,
            };
            if must_fail {
                let kind = join.kind.as_str();
                self.fail(Violation::safety(
                    "ns-invitation",
                    format!("{name}: namespace join #{j} with a {kind} invitation ended Ready"),
                ));
            }
        }
    }

    /// Slot `i` crashed: its queued and open joins end.
    pub(super) fn ns_on_crash(&mut self, i: usize, now: Instant) {
        self.ns.queued.remove(&i);
        self.ns.invites_queued.remove(&i);
        for f in self.ns.namespaces.iter_mut() {
            if f.admin_node == i && f.id.is_none() {
                f.create_sent = false; // Its command died in the inbox: ask again.
            }
        }
        for join in self.ns.joins.iter_mut() {
            if join.node == i && join.outcome == NsOutcome::Pending {
                join.outcome = NsOutcome::Crashed;
                join.ended_at = Some(now);
            }
        }
    }

    /// No join is still open past its deadline.
    fn ns_check_open(&mut self, now: Instant) {
        let late = self.ns.joins.iter().enumerate().find(|(_, j)| {
            j.outcome == NsOutcome::Pending
                && j.started_at
                    .is_some_and(|s| now.saturating_ms_since(s) > j.deadline_ms + DEADLINE_SLACK_MS)
        });
        if let Some((k, j)) = late {
            let message = format!(
                "{}: namespace join #{k} still open {} ms after it started, past its deadline of \
                 {} ms",
                self.name(j.node),
                j.started_at.map_or(0, |s| now.saturating_ms_since(s)),
                j.deadline_ms
            );
            self.fail(Violation::safety("ns-deadline", message));
        }
    }

    /// Every applied `MemberJoined`, on every live node, carries an invitation the admin
    /// issued, correctly signed and unexpired at the op's time.
    pub(super) fn ns_check_replicas(&mut self) {
        let mut bad = None;
        'nodes: for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = slot.node.as_ref() else {
                continue;
            };
            for f in &self.ns.namespaces {
                let (Some(id), Some(admin)) = (f.id, f.admin_key) else {
                    continue;
                };
                let Some(gov) = node.namespace(&id) else {
                    continue;
                };
                for op in gov.applied_ops() {
                    let OpBody::MemberJoined { member, invitation } = &op.body else {
                        continue;
                    };
                    let why = if invitation.verify_signature().is_err() {
                        Some("a bad signature")
                    } else if invitation.invitation.inviter != admin {
                        Some("an inviter that is not the admin")
                    } else if invitation.invitation.namespace != id {
                        Some("another namespace")
                    } else if !f.issued.contains(&invitation.hash()) {
                        Some("an invitation the admin never issued")
                    } else if op.unix_ms >= invitation.invitation.expires_at_unix_ms {
                        Some("an invitation expired at the op's time")
                    } else if *member != op.author {
                        Some("a member other than its author")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        bad = Some(format!(
                            "{} applied a MemberJoined of {} in {id} with {why}",
                            self.name(i),
                            member.hash().short()
                        ));
                        break 'nodes;
                    }
                }
            }
        }
        if let Some(message) = bad {
            self.fail(Violation::safety("ns-invitation", message));
        }
    }

    /// A beacon or ack that node `i` signed vouches that its ops survive `i`'s crash: each op
    /// it covers must already be on `i`'s simulated disk. Others' messages that `i` forwards
    /// are judged when their signer sends them.
    pub(super) fn ns_check_vouch(&mut self, i: usize, bytes: &[u8]) {
        if self.ns.namespaces.is_empty() {
            return;
        }
        // Only beacons and acks, direct or published, are decoded: most frames are Raft's.
        let Ok(env) = Envelope::parse(bytes, &self.limits) else {
            return;
        };
        // A publish is borsh `(Topic, payload)`: its frame is read in place, not copied. (The
        // `vouch-before-durable` canary's acks are all published: a layout change shows there.)
        let inner = match env.kind {
            MessageKind::Publish => {
                let Some(inner) = env.payload.get(PUBLISHED_FRAME_AT..) else {
                    return;
                };
                inner
            }
            _ => bytes,
        };
        let Ok(inner_env) = Envelope::parse(inner, &self.limits) else {
            return;
        };
        if !matches!(
            inner_env.kind,
            MessageKind::Beacon | MessageKind::NamespaceAck
        ) {
            return;
        }
        let (ns, signer, covered, what): (NamespaceId, PublicKey, Vec<OpHash>, &str) =
            match PeerMessage::decode(inner, &self.limits) {
                Ok(PeerMessage::Namespace(m)) => match *m {
                    NamespaceMessage::Beacon(b) => {
                        (b.namespace, b.member_key, b.heads.to_vec(), "a beacon")
                    }
                    NamespaceMessage::Ack(a) => (a.namespace, a.member_key, vec![a.op], "an ack"),
                    _ => return,
                },
                _ => return,
            };
        let slot = &self.slots[i];
        let Some(node) = slot.node.as_ref() else {
            return;
        };
        if node.namespace_identity(&ns) != Some(signer) {
            return;
        }
        // Newest first: what a beacon or ack covers is almost always among the last ops
        // written, so few ops are hashed.
        let mut missing: BTreeSet<OpHash> = covered.into_iter().collect();
        if let Some(d) = slot.disk.durable.namespaces.get(&ns) {
            for op in d.ops.iter().rev() {
                if missing.is_empty() {
                    break;
                }
                missing.remove(&op.hash());
            }
        }
        if let Some(op) = missing.first() {
            let message = format!(
                "{} sent {what} in {ns} covering op {} before it was on its disk",
                self.name(i),
                op.0.short()
            );
            self.fail(Violation::safety("ns-vouch", message));
        }
    }

    /// Liveness: every valid pair of the healed part ends a member. Re-issues joins that are
    /// over without success. Returns what is still pending.
    pub(super) fn ns_liveness(&mut self, now: Instant) -> Vec<String> {
        self.ns_create_due(now);
        self.ns_check_open(now);
        self.ns_check_replicas();
        let mut pending = Vec::new();
        let pairs: Vec<(usize, usize)> = self.ns.valid_pairs.iter().copied().collect();
        for (node, ns) in pairs {
            if !self.core_set.contains(&node) {
                continue; // Kept outside the healed part.
            }
            let f = &self.ns.namespaces[ns];
            let Some(id) = f.id else {
                // Never created (the admin was down throughout, or lost the create in a
                // crash before it was durable and has not been asked again).
                pending.push(format!("namespace #{ns} not created yet"));
                continue;
            };
            if self.ns_lost(ns) || self.ns_clock_too_far_ahead(node, ns) {
                continue;
            }
            let member = self.slots[node]
                .node
                .as_ref()
                .is_some_and(|n| n.is_namespace_member(&id));
            if member {
                continue;
            }
            let open = self
                .ns
                .joins
                .iter()
                .any(|j| j.node == node && j.ns == ns && j.outcome == NsOutcome::Pending);
            pending.push(format!(
                "{} not a member of namespace #{ns}",
                self.name(node)
            ));
            if !open && self.slots[node].up {
                self.ns_issue_join(now, node, ns, InviteKind::Valid, true);
            }
        }
        pending
    }

    /// A joiner whose clock runs ahead of the admin's by more than a beacon's lifetime (less
    /// a second for delivery) sees every beacon as stale: by design it cannot join (clock skew
    /// beyond the bound), so liveness is not owed to it.
    fn ns_clock_too_far_ahead(&self, node: usize, ns: usize) -> bool {
        let admin = self.ns.namespaces[ns].admin_node;
        let ahead_ms = self.slots[node]
            .skew_ms
            .saturating_sub(self.slots[admin].skew_ms);
        let bound_ms = self.config.namespace.beacon_ttl_ms.saturating_sub(1_000);
        ahead_ms > i64::try_from(bound_ms).unwrap_or(i64::MAX)
    }

    /// The admin lost its namespace (a crash before the create was durable): nobody can join.
    fn ns_lost(&self, ns: usize) -> bool {
        let f = &self.ns.namespaces[ns];
        let Some(id) = f.id else {
            return false;
        };
        let admin = &self.slots[f.admin_node];
        admin.up
            && admin
                .node
                .as_ref()
                .is_some_and(|n| n.namespace(&id).is_none())
    }

    /// At the end: the replica check once more.
    pub(super) fn ns_final(&mut self) {
        let now = self.now();
        self.ns_check_open(now);
        self.ns_check_replicas();
    }
}

//! Test fixtures for the namespace protocol (behind the `testing` feature): a namespace with
//! an admin and members, op builders, and a harness that drives one join against a scripted
//! partner. Used by the core's tests; available to the simulator and fuzzers.

use crate::crypto::{PublicKey, SecretKey};
use crate::node::PeerId;
use crate::rng::SeededRng;
use crate::time::{Instant, Now};
use crate::wire::BoundedVec;

use super::NamespaceConfig;
use super::NamespaceMessage;
use super::backfill::{self, BackfillBatch, BackfillRequest};
use super::governance::Governance;
use super::join::{
    JoinAction, JoinCtx, JoinEvent, JoinInput, JoinMachine, JoinParams, NamespaceIdentity,
    RetryingJoin,
};
use super::ops::{InvitePolicy, NamespaceId, Op, OpBody, OpHash, SignedInvitation};
use super::readiness::{Ack, Beacon, BeaconCache, MAX_BEACON_HEADS};

/// A deterministic key numbered `n`.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_secret_bytes(&[n.wrapping_add(1); 32])
}

/// Wall-clock time of the fixture's epoch (`Instant::ZERO`).
pub const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;

/// `Now` at `ms` milliseconds after the fixture's epoch (wall clock in step).
pub fn now_at(ms: u64) -> Now {
    Now::new(Instant::from_millis(ms), EPOCH_UNIX_MS + ms)
}

/// A namespace with an admin (key 0) and `members` more members (keys 1..=members), as held
/// by a fully caught-up member.
#[derive(Debug)]
pub struct Fixture {
    /// The admin.
    pub admin: SecretKey,
    /// Members besides the admin.
    pub members: Vec<SecretKey>,
    /// The genesis op.
    pub create: Op,
    /// The namespace.
    pub namespace: NamespaceId,
    /// A caught-up replica (the partner's log).
    pub log: Governance,
}

impl Fixture {
    /// A namespace with `members` joined members besides the admin.
    pub fn new(members: u8) -> Fixture {
        let admin = key(0);
        let create = Op::create(&admin, [9; 16], EPOCH_UNIX_MS - 100_000);
        let namespace = create.namespace;
        let mut log = Governance::new(namespace, NamespaceConfig::default().governance);
        // A fresh replica with a valid genesis applies it.
        let _ = log.insert(create.clone());
        let mut fixture = Fixture {
            admin,
            members: Vec::new(),
            create,
            namespace,
            log,
        };
        for i in 0..members {
            let member = key(i + 1);
            let inv = fixture.invitation(EPOCH_UNIX_MS + 3_600_000, [i; 16]);
            let op = fixture.joined_op(&member, inv, EPOCH_UNIX_MS - 50_000 + u64::from(i));
            let _ = fixture.log.insert(op);
            fixture.members.push(member);
        }
        fixture
    }

    /// An invitation from the admin.
    pub fn invitation(&self, expires_at_unix_ms: u64, nonce: [u8; 16]) -> SignedInvitation {
        SignedInvitation::issue(
            &self.admin,
            self.namespace,
            expires_at_unix_ms,
            nonce,
            InvitePolicy::Reusable,
        )
    }

    /// A `MemberJoined` by `member` on the log's current heads.
    pub fn joined_op(&self, member: &SecretKey, invitation: SignedInvitation, unix_ms: u64) -> Op {
        self.op_on_heads(
            member,
            unix_ms,
            OpBody::MemberJoined {
                member: member.public(),
                invitation,
            },
        )
    }

    /// An op by `author` on the log's current heads.
    pub fn op_on_heads(&self, author: &SecretKey, unix_ms: u64, body: OpBody) -> Op {
        let parents = Op::canonical_parents(self.log.parents_for_new_op(16)).unwrap_or_default();
        Op::sign(author, self.namespace, parents, unix_ms, body)
    }

    /// A beacon by `signer` describing the log, at `unix_ms`.
    pub fn beacon(&self, signer: &SecretKey, unix_ms: u64) -> Beacon {
        Beacon::for_replica(signer, &self.log, unix_ms)
    }

    /// A beacon by `signer` with explicit heads and count.
    pub fn beacon_with(
        &self,
        signer: &SecretKey,
        heads: Vec<OpHash>,
        applied: u64,
        unix_ms: u64,
    ) -> Beacon {
        let heads: BoundedVec<OpHash, MAX_BEACON_HEADS> =
            BoundedVec::try_from_vec(heads).unwrap_or_default();
        Beacon::sign(signer, self.namespace, heads, applied, unix_ms)
    }

    /// The log's answer to `request`.
    pub fn answer(&self, request: &BackfillRequest, max_ops: usize) -> BackfillBatch {
        backfill::answer(&self.log, request, max_ops).unwrap_or(BackfillBatch {
            request_id: request.request_id,
            ops: BoundedVec::new(),
            more: false,
            applied_through: 0,
        })
    }

    /// `member`'s ack of `op`.
    pub fn ack(&self, member: &SecretKey, op: OpHash) -> Ack {
        Ack::sign(member, self.namespace, op)
    }

    /// Every member key, admin first.
    pub fn member_keys(&self) -> Vec<PublicKey> {
        std::iter::once(self.admin.public())
            .chain(self.members.iter().map(SecretKey::public))
            .collect()
    }
}

/// Either kind of join, driven the same way.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AnyJoin {
    /// One attempt.
    Single(JoinMachine),
    /// The retry wrapper.
    Retrying(RetryingJoin),
}

/// Drives one join with a scripted environment, recording every action with its time.
#[derive(Debug)]
pub struct JoinHarness {
    /// Configuration.
    pub config: NamespaceConfig,
    /// The join's RNG.
    pub rng: SeededRng,
    /// The namespace's beacon cache.
    pub beacons: BeaconCache,
    /// The join.
    pub join: Option<AnyJoin>,
    /// Every action so far, with the time (ms since the epoch) it was emitted at.
    pub log: Vec<(u64, JoinAction)>,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

impl JoinHarness {
    /// A harness for `namespace` at time 0.
    pub fn new(namespace: NamespaceId, config: NamespaceConfig, seed: u64) -> JoinHarness {
        JoinHarness {
            beacons: BeaconCache::new(namespace, &config),
            config,
            rng: SeededRng::from_u64(seed),
            join: None,
            log: Vec::new(),
            now_ms: 0,
        }
    }

    fn run<R>(&mut self, f: impl FnOnce(&mut JoinCtx<'_>, &mut Option<AnyJoin>) -> R) -> R {
        let mut actions = Vec::new();
        let out = {
            let mut ctx = JoinCtx {
                now: now_at(self.now_ms),
                config: &self.config,
                rng: &mut self.rng,
                beacons: &mut self.beacons,
                actions: &mut actions,
            };
            f(&mut ctx, &mut self.join)
        };
        let t = self.now_ms;
        self.log.extend(actions.into_iter().map(|a| (t, a)));
        out
    }

    /// Starts a single attempt with `invitation` and `identity` at the current time.
    pub fn start(&mut self, invitation: SignedInvitation, identity: NamespaceIdentity) {
        self.run(|ctx, join| {
            let params = JoinParams::new(invitation, identity, ctx.config);
            *join = Some(AnyJoin::Single(JoinMachine::start(ctx, params)));
        });
    }

    /// Starts a retrying join at the current time.
    pub fn start_retrying(&mut self, invitation: SignedInvitation, identity: NamespaceIdentity) {
        self.run(|ctx, join| {
            *join = Some(AnyJoin::Retrying(RetryingJoin::start(
                ctx, invitation, identity,
            )));
        });
    }

    /// Feeds `input` at `at_ms` (time never goes back).
    pub fn input(&mut self, at_ms: u64, input: JoinInput) {
        self.now_ms = self.now_ms.max(at_ms);
        self.run(|ctx, join| match join {
            Some(AnyJoin::Single(m)) => m.handle(ctx, input),
            Some(AnyJoin::Retrying(r)) => r.handle(ctx, input),
            None => {}
        });
    }

    /// The join's next timer, in ms since the epoch.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let t = match &self.join {
            Some(AnyJoin::Single(m)) => m.next_deadline(),
            Some(AnyJoin::Retrying(r)) => r.next_deadline(),
            None => None,
        };
        t.map(Instant::as_millis)
    }

    /// Fires timers until `until_ms` (inclusive), in order.
    pub fn run_timers_until(&mut self, until_ms: u64) {
        for _ in 0..100_000 {
            match self.next_deadline_ms() {
                Some(t) if t <= until_ms => self.input(t, JoinInput::Timer),
                _ => break,
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// The single attempt (panics if the harness runs a retrying join: test misuse).
    pub fn machine(&self) -> &JoinMachine {
        match &self.join {
            Some(AnyJoin::Single(m)) => m,
            Some(AnyJoin::Retrying(r)) => r.machine().expect("test misuse: no attempt yet"),
            None => panic!("test misuse: join not started"),
        }
    }

    /// Events so far, with their times.
    pub fn events(&self) -> Vec<(u64, JoinEvent)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                JoinAction::Event(e) => Some((*t, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// The terminal event (`Ready` or `Failed`) and its time, if any.
    pub fn verdict(&self) -> Option<(u64, JoinEvent)> {
        self.events()
            .into_iter()
            .find(|(_, e)| matches!(e, JoinEvent::Ready(_) | JoinEvent::Failed(_)))
    }

    /// The last backfill request sent, with its destination.
    pub fn last_request(&self) -> Option<(PeerId, BackfillRequest)> {
        self.log.iter().rev().find_map(|(_, a)| match a {
            JoinAction::Send(p, NamespaceMessage::BackfillRequest(r)) => Some((*p, r.clone())),
            _ => None,
        })
    }

    /// The op persisted to the outbox, if any.
    pub fn persisted_outbox(&self) -> Option<Op> {
        self.log.iter().find_map(|(_, a)| match a {
            JoinAction::PersistOutbox(op) => Some(op.clone()),
            _ => None,
        })
    }

    /// How many times the announce was published.
    pub fn announce_publishes(&self) -> usize {
        self.log
            .iter()
            .filter(|(_, a)| matches!(a, JoinAction::Publish(_, NamespaceMessage::Op(_))))
            .count()
    }

    /// Marks `peers` connected and subscribed at the current time.
    pub fn connect_mesh(&mut self, peers: &[PeerId]) {
        let t = self.now_ms;
        for p in peers {
            self.input(t, JoinInput::PeerConnected(*p));
            self.input(t, JoinInput::PeerSubscribed(*p));
        }
    }
}

//! The joiner machine on its own: how it follows a redirect from a seed without the join secret,
//! and how it takes seeds added to a join under way (`add_seeds`).
//!
//! ```text
//!   seed ─▶ ClusterInfo (pin checked) ─▶ JoinRequest ─▶ Redirect { members }
//!        ─▶ Follow(members but us, the seed, ones already followed; at most MAX_JOINER_SEEDS)
//!        ─▶ on_seed_connected(peer, key of a followed member) ─▶ next attempt goes there
//! ```

use portcullis_core::admission::{Joiner, JoinerAction, JoinerCtx, MAX_JOINER_SEEDS};
use portcullis_core::config::Config;
use portcullis_core::crypto::{Hash32, JoinSecret, PublicKey, SecretKey};
use portcullis_core::identity::{Credential, CredentialBody};
use portcullis_core::ledger::{Addrs, MemberId};
use portcullis_core::messages::{
    ClusterInfo, JoinRejected, MemberInfo, PeerMessage, Redirect, RejectReason,
};
use portcullis_core::node::PeerId;
use portcullis_core::rng::SeededRng;
use portcullis_core::time::{Instant, Now};
use portcullis_core::token::{ClusterPin, JoinToken, Role};
use portcullis_core::wire::BoundedVec;

const SEED: PeerId = PeerId(1);
const BINDING: Hash32 = Hash32([9; 32]);

/// A joiner of one cluster, its key, and the seed it was given (a member of that cluster).
struct Fixture {
    config: Config,
    cluster_key: SecretKey,
    node_key: SecretKey,
    seed_key: SecretKey,
    rng: SeededRng,
    joiner: Joiner,
    now_ms: u64,
}

fn key(n: u8) -> SecretKey {
    SecretKey::from_secret_bytes(&[n; 32])
}

fn member(n: u8) -> MemberInfo {
    MemberInfo {
        member_id: MemberId(u64::from(n)),
        node_key: key(n).public(),
        addrs: Addrs::new(),
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_config(Config::default())
    }

    fn with_config(config: Config) -> Fixture {
        let cluster_key = key(200);
        let pin = ClusterPin::of(&cluster_key.public());
        let token = JoinToken::issue(
            &JoinSecret::from_bytes([7; 32]),
            pin,
            [1; 16],
            10_000_000,
            Role::Member,
        );
        let now = Now::new(Instant::ZERO, 1_000);
        let joiner = Joiner::new(token, Addrs::new(), vec![SEED], &config, now);
        Fixture {
            config,
            cluster_key,
            node_key: key(201),
            seed_key: key(202),
            rng: SeededRng::from_u64(5),
            joiner,
            now_ms: 0,
        }
    }

    /// Runs `f` on the joiner at the fixture's time; returns the actions it asked for.
    fn with(&mut self, f: impl FnOnce(&mut Joiner, &mut JoinerCtx<'_>)) -> Vec<JoinerAction> {
        let mut actions = Vec::new();
        let mut ctx = JoinerCtx {
            now: Now::new(Instant::from_millis(self.now_ms), 1_000 + self.now_ms),
            config: &self.config,
            node_key: &self.node_key,
            rng: &mut self.rng,
            actions: &mut actions,
        };
        f(&mut self.joiner, &mut ctx);
        actions
    }

    fn timer(&mut self) -> Vec<JoinerAction> {
        self.with(|j, ctx| j.on_timer(ctx))
    }

    fn message_from(
        &mut self,
        peer: PeerId,
        peer_key: PublicKey,
        msg: PeerMessage,
    ) -> Vec<JoinerAction> {
        self.with(|j, ctx| j.on_message(ctx, peer, &peer_key, &BINDING, &msg))
    }

    /// The seed's answer to the pending ClusterInfoRequest: the cluster key and a valid
    /// credential for the seed's key.
    fn cluster_info(&self, request: &[JoinerAction]) -> PeerMessage {
        let nonce = request
            .iter()
            .find_map(|a| match a {
                JoinerAction::Send(_, PeerMessage::ClusterInfoRequest(r)) => Some(r.nonce),
                _ => None,
            })
            .expect("a ClusterInfoRequest");
        let credential = Credential::issue(
            &self.cluster_key,
            CredentialBody {
                member_id: MemberId(1),
                node_key: self.seed_key.public(),
                role: Role::Member,
                cluster_pin: ClusterPin::of(&self.cluster_key.public()),
                issued_at_unix_ms: 1_000,
            },
        );
        PeerMessage::ClusterInfo(ClusterInfo {
            nonce,
            cluster_key: self.cluster_key.public(),
            credential,
        })
    }

    /// Answers the ClusterInfoRequest in `asked` as the seed; the joiner must send it the join
    /// request.
    fn answer_cluster_info(&mut self, asked: &[JoinerAction]) {
        let info = self.cluster_info(asked);
        let sent = self.message_from(SEED, self.seed_key.public(), info);
        assert!(
            sent.iter()
                .any(|a| matches!(a, JoinerAction::Send(SEED, PeerMessage::JoinRequest(_)))),
            "{sent:?}"
        );
    }

    /// Starts the next attempt (its timer is due) and takes it to the point where the seed
    /// has the join request.
    fn request_sent(&mut self) {
        let asked = self.timer();
        self.answer_cluster_info(&asked);
    }
}

fn redirect(members: impl IntoIterator<Item = MemberInfo>) -> PeerMessage {
    let mut admitting = BoundedVec::new();
    for m in members {
        admitting.try_push(m).expect("under the bound");
    }
    PeerMessage::Redirect(Redirect { admitting })
}

fn followed(actions: &[JoinerAction]) -> Vec<PublicKey> {
    actions
        .iter()
        .flat_map(|a| match a {
            JoinerAction::Follow(members) => members.iter().map(|m| m.node_key).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_redirect_is_followed_to_the_members_it_names_but_us_and_the_seed() {
    let mut f = Fixture::new();
    f.request_sent();
    let ours = member(201);
    let seed = member(202);
    let actions = f.message_from(
        SEED,
        f.seed_key.public(),
        redirect([ours, seed, member(10), member(11)]),
    );
    assert_eq!(followed(&actions), vec![key(10).public(), key(11).public()]);
    assert!(!f.joiner.is_done(), "a redirect is no reason to give up");
}

#[test]
fn a_connection_to_a_followed_member_is_tried_next_and_the_redirecting_seed_is_skipped() {
    let mut f = Fixture::new();
    f.request_sent();
    f.message_from(SEED, f.seed_key.public(), redirect([member(10)]));
    // A connection to a key nobody named is no seed; one to the named member is.
    f.joiner.on_seed_connected(PeerId(7), &key(99).public());
    f.joiner.on_seed_connected(PeerId(8), &key(10).public());
    // Past the backoff, the next attempt asks the followed member, not the seed again.
    f.now_ms = 10_000;
    // The nonce of an attempt that asks the member (a resend repeats its attempt's nonce).
    let member_nonce = |actions: &[JoinerAction]| {
        actions.iter().find_map(|a| match a {
            JoinerAction::Send(PeerId(8), PeerMessage::ClusterInfoRequest(r)) => Some(r.nonce),
            _ => None,
        })
    };
    let next = f.timer();
    let first = member_nonce(&next).unwrap_or_else(|| panic!("{next:?}"));
    // The member stays silent: the attempt after it is the member's again, since the seed in
    // turn redirected (in turn alone, it would be the seed's).
    let mut asked_again = false;
    for _ in 0..100 {
        f.now_ms += 500;
        let actions = f.timer();
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, JoinerAction::Send(SEED, _))),
            "the redirecting seed was asked again: {actions:?}"
        );
        if member_nonce(&actions).is_some_and(|n| n != first) {
            asked_again = true;
            break;
        }
    }
    assert!(asked_again, "no second attempt within 50 s");
}

#[test]
fn redirects_never_make_a_joiner_follow_more_than_the_bound() {
    let mut f = Fixture::new();
    f.request_sent();
    let many: Vec<MemberInfo> = (10..50).map(member).collect();
    let first = f.message_from(SEED, f.seed_key.public(), redirect(many.clone()));
    assert_eq!(followed(&first).len(), MAX_JOINER_SEEDS);
    // The same or other names later add nothing.
    f.now_ms = 10_000;
    f.request_sent();
    let again = f.message_from(SEED, f.seed_key.public(), redirect((50..60).map(member)));
    assert!(followed(&again).is_empty(), "{again:?}");
}

#[test]
fn a_redirect_before_the_seed_proved_the_cluster_is_ignored() {
    let mut f = Fixture::new();
    let asked = f.timer();
    assert!(!asked.is_empty());
    // Still waiting for ClusterInfo: a redirect now comes from a seed we know nothing about.
    let actions = f.message_from(SEED, f.seed_key.public(), redirect([member(10)]));
    assert!(actions.is_empty(), "{actions:?}");
    // The attempt goes on as if it never came: the seed's ClusterInfo gets the join request.
    f.answer_cluster_info(&asked);
}

#[test]
fn added_seeds_are_asked_in_turn_once_each_and_never_beyond_the_bound() {
    // Long enough to go round every seed the bound allows, more than once.
    let mut f = Fixture::with_config(Config {
        join_deadline_ms: 3_600_000,
        ..Config::default()
    });
    // A repeat, the seed the join has, and more than the bound allows.
    let added: Vec<PeerId> = [PeerId(100), SEED]
        .into_iter()
        .chain((100..140).map(PeerId))
        .collect();
    f.joiner.add_seeds(&added);
    let allowed: Vec<PeerId> = std::iter::once(SEED)
        .chain((100..).map(PeerId))
        .take(MAX_JOINER_SEEDS)
        .collect();
    // Nobody answers: the joiner goes round its seeds until its deadline. An attempt is one
    // nonce (its resends repeat it).
    let mut attempts: Vec<(PeerId, u64)> = Vec::new();
    while !f.joiner.is_done() && f.now_ms < 4_000_000 {
        for action in f.timer() {
            if let JoinerAction::Send(peer, PeerMessage::ClusterInfoRequest(r)) = action
                && !attempts.contains(&(peer, r.nonce))
            {
                attempts.push((peer, r.nonce));
            }
        }
        f.now_ms += 100;
    }
    assert!(f.joiner.is_done(), "the deadline ends the join");
    let asked: Vec<PeerId> = attempts.iter().map(|(peer, _)| *peer).collect();
    let in_turn: Vec<PeerId> = allowed.iter().copied().cycle().take(asked.len()).collect();
    assert_eq!(
        asked, in_turn,
        "the given seed, then the added ones once each, in turn"
    );
    assert!(
        asked.len() > 2 * MAX_JOINER_SEEDS,
        "went round every seed twice: {asked:?}"
    );
}

fn rejected(reason: RejectReason, retry_after_ms: Option<u64>) -> PeerMessage {
    PeerMessage::JoinRejected(JoinRejected {
        reason,
        retry_after_ms,
    })
}

impl Fixture {
    /// Moves the clock to the joiner's next timer; returns how far that was.
    fn wait_for_timer(&mut self) -> u64 {
        let next = self
            .joiner
            .next_deadline()
            .expect("a join under way has a timer");
        let wait_ms = next.as_millis() - self.now_ms;
        self.now_ms = next.as_millis();
        wait_ms
    }
}

#[test]
fn a_conflict_is_asked_again_at_the_same_seed_no_later_than_the_lease_hint() {
    let mut f = Fixture::new();
    // Seeds after SEED that a rotation would go to next; they never answer.
    f.joiner.add_seeds(&[PeerId(2), PeerId(3)]);
    let seed_key = f.seed_key.public();
    // Conflicts with a hint beyond the backoff: the backoff (200 ms doubling to 5 s, plus up
    // to 25% jitter) decides, and each retry asks SEED again (answer_cluster_info asserts it).
    let mut backoff_ms = f.config.join_retry_initial_ms;
    for _ in 0..6 {
        f.request_sent();
        f.message_from(
            SEED,
            seed_key,
            rejected(RejectReason::Conflict, Some(10_000)),
        );
        let wait_ms = f.wait_for_timer();
        assert!(
            (backoff_ms..=backoff_ms + backoff_ms / 4).contains(&wait_ms),
            "waited {wait_ms} ms at a backoff of {backoff_ms} ms"
        );
        backoff_ms = (backoff_ms * 2).min(f.config.join_retry_max_ms);
    }
    assert_eq!(backoff_ms, f.config.join_retry_max_ms);
    // The lease runs out in 300 ms: the joiner asks again then, plus a jitter of at most a
    // quarter of its first retry delay, not after its 5 s backoff.
    let initial_ms = f.config.join_retry_initial_ms;
    f.request_sent();
    f.message_from(SEED, seed_key, rejected(RejectReason::Conflict, Some(300)));
    let wait_ms = f.wait_for_timer();
    assert!(
        (300..=300 + initial_ms / 4).contains(&wait_ms),
        "waited {wait_ms} ms for a lease that ran out in 300 ms"
    );
    // A hint of 0 (the listener's clock is ahead) never makes it spin: it waits at least its
    // first retry delay.
    f.request_sent();
    f.message_from(SEED, seed_key, rejected(RejectReason::Conflict, Some(0)));
    let wait_ms = f.wait_for_timer();
    assert!(
        (initial_ms..=initial_ms + initial_ms / 4).contains(&wait_ms),
        "waited {wait_ms} ms on a hint of 0"
    );
    f.request_sent();
}

#[test]
fn a_refusal_other_than_conflict_moves_on_to_the_next_seed_at_its_backoff() {
    let mut f = Fixture::new();
    f.joiner.add_seeds(&[PeerId(2)]);
    let seed_key = f.seed_key.public();
    f.request_sent();
    // A hint on another reason (no listener sends one) changes nothing.
    f.message_from(SEED, seed_key, rejected(RejectReason::Unavailable, Some(0)));
    let wait_ms = f.wait_for_timer();
    let initial_ms = f.config.join_retry_initial_ms;
    assert!((initial_ms..=initial_ms + initial_ms / 4).contains(&wait_ms));
    let asked = f.timer();
    assert!(
        asked.iter().any(|a| matches!(
            a,
            JoinerAction::Send(PeerId(2), PeerMessage::ClusterInfoRequest(_))
        )),
        "{asked:?}"
    );
}

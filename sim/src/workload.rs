//! Workloads: what the simulated operators and joiners do, and when.
//!
//! A workload is drawn up front from the seed ([`AdmissionWorkload::plan`]) and then hands the
//! world [`Action`]s as simulated time reaches them; the world carries them out (starts a
//! joiner's node, sends a command) and records the operations in the [`Facts`]. Keeping the
//! *what* here and the *how* in the world is what lets later workloads (namespaces) plug in:
//! implement [`Workload`], add `Action` variants if needed.
//!
//! The admission workload (Protocol A):
//!
//! ```text
//!   valid token T ──▶ k presenters (joiners), start within 300 ms of each other, each with its own
//!                     seeds (at least one core founder) ──▶ concurrent JoinCluster at several listeners
//!   short-TTL token ─▶ expires around its presentation (races the sweeper's Expire)
//!   expired / forged / wrong-cluster token ──▶ one presenter, must be refused for its reason
//!   revoked token ──▶ presenters + RevokeToken to some founder shortly before or after
//!   late replay ────▶ a new key presents a valid token after it was (likely) consumed
//!   disk wipe ──────▶ an admitted joiner loses its disk and presents its token again, same key
//!   member seed ────▶ (knob `member_seed_rate`) an earlier joiner is asked first: a member
//!                     without the join secret redirects to the voters, which the joiner follows
//!   late seeds ─────▶ (knob `late_seed_rate`) the join starts on the first seeds alone; the rest
//!                     follow 0–2 s later by AddJoinSeeds, as when the production driver's dials
//!                     finish one by one (the join may be over, or the node down, by then)
//! ```

use std::collections::BTreeSet;

use portcullis_core::crypto::{Hash32, JoinSecret, SecretKey};
use portcullis_core::ledger::PresenterId;
use portcullis_core::rng::SeededRng;
use portcullis_core::token::{ClusterPin, JoinToken, Role};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::facts::{EPOCH_UNIX_MS, Facts, JoinerFacts, TokenFacts, TokenKind};
use crate::options::Options;

/// Something the workload wants done now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start this joiner slot's node; it presents its token once booted.
    StartJoiner(usize),
    /// The operator revokes token `0` (an index into `Facts::tokens`).
    Revoke(usize),
    /// An admitted joiner (the world picks one) loses its disk and presents again.
    WipeAndRejoin,
    /// The joiner in this slot learns of the seeds it held back (`JoinerFacts::late_seeds`):
    /// they join the join under way, and every later one.
    AddSeeds(usize),
}

/// A source of actions over simulated time.
pub(crate) trait Workload: Send + core::fmt::Debug {
    /// Actions due at or before `now_ms`, in the order they are due.
    fn due(&mut self, now_ms: u64) -> Vec<Action>;
}

/// A planned action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Planned {
    at_ms: u64,
    seq: usize,
    action: ActionKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ActionKey {
    Start(usize),
    Revoke(usize),
    Wipe,
    AddSeeds(usize),
}

/// The cluster-admission workload.
#[derive(Debug)]
pub(crate) struct AdmissionWorkload {
    plan: Vec<Planned>,
    next: usize,
}

/// What planning produced: the workload and the joiner slots it needs.
#[derive(Debug)]
pub(crate) struct WorkloadPlan {
    pub workload: AdmissionWorkload,
    /// Key bytes of each joiner, in slot order after the founders.
    pub joiner_keys: Vec<SecretKey>,
}

impl AdmissionWorkload {
    /// Draws the plan. Tokens and joiner keys come from `keys`, times and choices from `rng`;
    /// the facts receive every token and joiner.
    pub(crate) fn plan(
        rng: &mut SeededRng,
        keys: &mut SeededRng,
        opts: &Options,
        join_secret: &JoinSecret,
        pin: ClusterPin,
        core: &BTreeSet<usize>,
        facts: &mut Facts,
    ) -> WorkloadPlan {
        let founders = opts.founders;
        let mut plan = Vec::new();
        let mut joiner_keys = Vec::new();
        let mut seq = 0usize;
        let window = opts.workload_window_ms.max(1);
        let latest_start = opts.safety_ms.saturating_sub(1_000).max(1_000);
        let mut kinds: Vec<TokenKind> = Vec::new();
        kinds.extend(std::iter::repeat_n(TokenKind::Valid, opts.valid_tokens));
        kinds.extend(std::iter::repeat_n(
            TokenKind::ShortTtl,
            opts.short_ttl_tokens,
        ));
        kinds.extend(std::iter::repeat_n(TokenKind::Expired, opts.expired_tokens));
        kinds.extend(std::iter::repeat_n(TokenKind::Forged, opts.forged_tokens));
        kinds.extend(std::iter::repeat_n(
            TokenKind::WrongCluster,
            opts.wrong_cluster_tokens,
        ));
        kinds.extend(std::iter::repeat_n(TokenKind::Revoked, opts.revoked_tokens));
        let mut new_joiner = |facts: &mut Facts,
                              plan: &mut Vec<Planned>,
                              seq: &mut usize,
                              rng: &mut SeededRng,
                              keys: &mut SeededRng,
                              token: usize,
                              at_ms: u64| {
            let slot = founders + joiner_keys.len();
            let secret = SecretKey::from_secret_bytes(&keys.bytes32());
            let key = secret.public();
            joiner_keys.push(secret);
            facts.joiners.insert(
                slot,
                JoinerFacts {
                    token,
                    key,
                    presenter: PresenterId::of(&key),
                    seeds: draw_seeds(rng, founders, core),
                    late_seeds: 0,
                },
            );
            plan.push(Planned {
                at_ms: at_ms.min(latest_start),
                seq: *seq,
                action: ActionKey::Start(slot),
            });
            *seq += 1;
        };
        for kind in kinds {
            let t0 = 1_000 + rng.gen_range(0..window);
            let expires = match kind {
                TokenKind::ShortTtl => {
                    (EPOCH_UNIX_MS + t0).saturating_add_signed(rng.gen_range(-15_000i64..=8_000))
                }
                TokenKind::Expired => EPOCH_UNIX_MS + t0 - 3_600_000,
                _ => EPOCH_UNIX_MS + t0 + 3_600_000,
            };
            let token = match kind {
                TokenKind::Forged => {
                    let other = JoinSecret::generate(keys);
                    JoinToken::issue_random(&other, pin, keys, expires, Role::Member)
                }
                TokenKind::WrongCluster => {
                    let other = ClusterPin(Hash32(keys.bytes32()));
                    JoinToken::issue_random(join_secret, other, keys, expires, Role::Member)
                }
                _ => JoinToken::issue_random(join_secret, pin, keys, expires, Role::Member),
            };
            let index = facts.tokens.len();
            let hash = token.hash();
            facts.token_by_hash.insert(hash, index);
            facts.tokens.push(TokenFacts {
                kind,
                token,
                hash,
                expires_at_unix_ms: expires,
            });
            let presenters = if kind.may_admit() {
                if opts.exact_presenters {
                    opts.max_presenters.max(1)
                } else {
                    rng.gen_range(1..=opts.max_presenters.max(1))
                }
            } else {
                1
            };
            for _ in 0..presenters {
                let at = t0 + rng.gen_range(0..=300);
                new_joiner(facts, &mut plan, &mut seq, rng, keys, index, at);
            }
            if kind == TokenKind::Revoked {
                let at = (t0 + 1_000).saturating_add_signed(rng.gen_range(-1_500i64..=2_000));
                plan.push(Planned {
                    at_ms: at.max(500),
                    seq,
                    action: ActionKey::Revoke(index),
                });
                seq += 1;
            }
        }
        let valid: Vec<usize> = facts
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == TokenKind::Valid)
            .map(|(i, _)| i)
            .collect();
        for _ in 0..opts.late_replays {
            let Some(token) = valid.choose(rng).copied() else {
                break;
            };
            let at = 4_000 + rng.gen_range(0..=window + 5_000);
            new_joiner(facts, &mut plan, &mut seq, rng, keys, token, at);
        }
        for _ in 0..opts.disk_wipes {
            let lo = (window / 2 + 3_000).min(latest_start);
            let at = rng.gen_range(lo..=latest_start.max(lo));
            plan.push(Planned {
                at_ms: at,
                seq,
                action: ActionKey::Wipe,
            });
            seq += 1;
        }
        plan.sort_unstable();
        if opts.member_seed_rate > 0.0 {
            // Its own stream (a child does not advance its parent): every other choice of the
            // seed stays what it was.
            put_members_first(
                &mut rng.child("member-seeds"),
                opts.member_seed_rate,
                founders,
                facts,
            );
        }
        if opts.late_seed_rate > 0.0 {
            // After the member seeds, so a member put first can be the one asked alone; its
            // own stream, for the same reason as theirs.
            hold_seeds_back(
                &mut rng.child("late-seeds"),
                opts.late_seed_rate,
                facts,
                &mut plan,
            );
        }
        WorkloadPlan {
            workload: AdmissionWorkload { plan, next: 0 },
            joiner_keys,
        }
    }
}

/// One to three distinct founders, at least one of them in the core (so every joiner can
/// finish once the core is healed).
fn draw_seeds(rng: &mut SeededRng, founders: usize, core: &BTreeSet<usize>) -> Vec<usize> {
    let mut all: Vec<usize> = (0..founders).collect();
    all.shuffle(rng);
    let k = rng.gen_range(1..=founders.min(3));
    let mut seeds: Vec<usize> = all[..k].to_vec();
    if !seeds.iter().any(|s| core.contains(s)) {
        let core_list: Vec<usize> = core.iter().copied().collect();
        if let Some(c) = core_list.choose(rng) {
            seeds[0] = *c;
        }
    }
    seeds
}

/// For a share `rate` of joiners, puts an earlier joiner's slot first in their seeds: a member
/// by the time it is asked (it redirects), or not yet one (it stays silent). The founders they
/// had stay after it, so every joiner can still finish once the core is healed.
fn put_members_first(rng: &mut SeededRng, rate: f64, founders: usize, facts: &mut Facts) {
    let slots: Vec<usize> = facts.joiners.keys().copied().collect();
    for (n, slot) in slots.iter().enumerate() {
        if n == 0 || !rng.gen_bool(rate.clamp(0.0, 1.0)) {
            continue;
        }
        let earlier = slots[rng.gen_range(0..n)];
        debug_assert!(earlier >= founders, "joiner slots come after the founders");
        if let Some(j) = facts.joiners.get_mut(slot)
            && !j.seeds.contains(&earlier)
        {
            j.seeds.insert(0, earlier);
        }
    }
}

/// For a share `rate` of joiners with two or more seeds, holds the last 1..n-1 of them back and
/// plans their hand-over 0–2 s after the joiner starts (its boot may not be over by then, nor
/// may its join be). Keeps `plan` sorted.
fn hold_seeds_back(rng: &mut SeededRng, rate: f64, facts: &mut Facts, plan: &mut Vec<Planned>) {
    /// Late enough to outlast a boot and a first round of requests, early enough to land
    /// inside most safety phases.
    const MAX_SEED_DELAY_MS: u64 = 2_000;
    let starts: Vec<(usize, u64)> = plan
        .iter()
        .filter_map(|p| match p.action {
            ActionKey::Start(slot) => Some((slot, p.at_ms)),
            _ => None,
        })
        .collect();
    let mut seq = plan.len();
    for (slot, start_ms) in starts {
        let Some(j) = facts.joiners.get_mut(&slot) else {
            continue;
        };
        if j.seeds.len() < 2 || !rng.gen_bool(rate.clamp(0.0, 1.0)) {
            continue;
        }
        j.late_seeds = rng.gen_range(1..j.seeds.len());
        plan.push(Planned {
            at_ms: start_ms + rng.gen_range(0..=MAX_SEED_DELAY_MS),
            seq,
            action: ActionKey::AddSeeds(slot),
        });
        seq += 1;
    }
    plan.sort_unstable();
}

impl Workload for AdmissionWorkload {
    fn due(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(p) = self.plan.get(self.next) {
            if p.at_ms > now_ms {
                break;
            }
            self.next += 1;
            out.push(match p.action {
                ActionKey::Start(slot) => Action::StartJoiner(slot),
                ActionKey::Revoke(t) => Action::Revoke(t),
                ActionKey::Wipe => Action::WipeAndRejoin,
                ActionKey::AddSeeds(slot) => Action::AddSeeds(slot),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Profile;

    fn plan(seed: u64, late_seed_rate: f64) -> (Vec<Planned>, Facts) {
        let mut opts = Options::draw(seed, Profile::Default);
        opts.late_seed_rate = late_seed_rate;
        let mut keys = SeededRng::from_u64(seed);
        let join_secret = JoinSecret::generate(&mut keys);
        let pin = ClusterPin(Hash32(keys.bytes32()));
        let core: BTreeSet<usize> = (0..opts.core_size).collect();
        let mut facts = Facts::default();
        let planned = AdmissionWorkload::plan(
            &mut SeededRng::from_u64(seed ^ 1),
            &mut keys,
            &opts,
            &join_secret,
            pin,
            &core,
            &mut facts,
        );
        (planned.workload.plan, facts)
    }

    #[test]
    fn late_seeds_are_a_proper_tail_handed_over_within_two_seconds_of_the_start() {
        let mut held = 0;
        for seed in 0..50 {
            let (planned, facts) = plan(seed, 1.0);
            assert!(planned.is_sorted(), "the plan stays in time order");
            let start = |slot| {
                planned
                    .iter()
                    .find(|p| p.action == ActionKey::Start(slot))
                    .map(|p| p.at_ms)
            };
            for (slot, j) in &facts.joiners {
                let hand_over: Vec<u64> = planned
                    .iter()
                    .filter(|p| p.action == ActionKey::AddSeeds(*slot))
                    .map(|p| p.at_ms)
                    .collect();
                if j.seeds.len() < 2 {
                    assert_eq!(
                        (j.late_seeds, hand_over.len()),
                        (0, 0),
                        "one seed: none late"
                    );
                    continue;
                }
                held += 1;
                assert!((1..j.seeds.len()).contains(&j.late_seeds), "{j:?}");
                assert_eq!(
                    j.seeds_known(false).len() + j.late_seeds().len(),
                    j.seeds.len()
                );
                assert_eq!(j.seeds_known(true), &j.seeds[..]);
                let start_ms = start(*slot).expect("every joiner is started");
                assert!(
                    matches!(hand_over[..], [at] if (start_ms..=start_ms + 2_000).contains(&at)),
                    "one hand-over, 0–2 s after the start at {start_ms}: {hand_over:?}"
                );
            }
        }
        assert!(held > 100, "only {held} joiners had two or more seeds");
    }

    #[test]
    fn the_knob_off_changes_nothing_and_its_draws_leave_the_rest_of_the_plan_alone() {
        for seed in 0..50 {
            let (off, off_facts) = plan(seed, 0.0);
            let (on, on_facts) = plan(seed, 1.0);
            assert!(off_facts.joiners.values().all(|j| j.late_seeds == 0));
            let without_hand_overs: Vec<Planned> = on
                .iter()
                .filter(|p| !matches!(p.action, ActionKey::AddSeeds(_)))
                .copied()
                .collect();
            assert_eq!(without_hand_overs, off);
            for (slot, j) in &on_facts.joiners {
                assert_eq!(j.seeds, off_facts.joiners[slot].seeds);
            }
        }
    }
}

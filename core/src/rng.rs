//! Seeded randomness.
//!
//! Every random choice the core makes (election timeouts, jitter, nonces, lease ids) is drawn
//! from one seed given to the node at construction, so a simulation seed or a flight recording
//! replays bit for bit.
//!
//! Sub-machines get *child* generators derived from the parent's seed and a label, not from the
//! parent's stream: adding a draw in one machine never shifts the numbers another one sees.
//!
//! ```text
//!   node seed ──sha256(seed ‖ "raft")──────▶ raft timeouts
//!             ├─sha256(seed ‖ "admission")──▶ lease ids, joiner jitter
//!             └─sha256(seed ‖ "namespace")──▶ nonces, retry jitter
//! ```
//!
//! A node's seed is a [`NodeSeed`] of 256 bits: it decides the secret keys the node generates
//! (namespace admin and identity keys), so it must be as hard to guess as a key. The simulator
//! and tests derive theirs from a `u64` ([`NodeSeed::from_u64`]), which is fine for them only.

use core::fmt;
use core::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{Hash32, from_hex, to_hex};

/// Domain prefix of child-seed derivation; versioned so a change is deliberate.
const CHILD_SEED_DOMAIN: &[u8] = b"portcullis.rng.child.v1";
/// Domain prefix of the `u64` expansion; changing it would change every simulator trace.
const U64_SEED_DOMAIN: &[u8] = b"portcullis.rng.u64.v1";
/// Longest decimal `u64` (`18446744073709551615`).
const MAX_U64_DIGITS: usize = 20;

/// A node's 256-bit seed: every random choice it makes, its generated secret keys included,
/// derives from it. Secret, wiped on drop; `Debug` and `Display` show only its fingerprint
/// ([`NodeSeed::fingerprint`]), [`NodeSeed::expose_hex`] gives the 64 hex characters.
///
/// Parses from 64 hex characters, or from a decimal `u64` meaning [`NodeSeed::from_u64`] (so
/// simulator seeds and old command lines keep working).
///
/// # Example
/// ```
/// use portcullis_core::rng::{NodeSeed, SeededRng};
/// use rand::RngCore;
///
/// let seed: NodeSeed = format!("{}2a", "00".repeat(31)).parse()?;
/// assert_eq!(seed.expose()[31], 0x2a);
/// assert_eq!(seed.expose_hex().len(), 64);
/// // Logs see the fingerprint, never the bytes.
/// assert!(!format!("{seed:?} {seed}").contains(&*seed.expose_hex()));
///
/// // A decimal u64 is the simulator's seed, expanded exactly as `SeededRng::from_u64`.
/// let small: NodeSeed = "7".parse()?;
/// assert_eq!(small, NodeSeed::from_u64(7));
/// assert_eq!(small.rng().next_u64(), SeededRng::from_u64(7).next_u64());
/// # Ok::<(), portcullis_core::rng::ParseSeedError>(())
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop, BorshSerialize, BorshDeserialize)]
pub struct NodeSeed([u8; 32]);

impl NodeSeed {
    /// Wraps 32 seed bytes (in production: drawn from the OS).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeSeed(bytes)
    }

    /// A 64-bit seed (the simulator's, tests') expanded by SHA-256: gives the same stream as
    /// [`SeededRng::from_u64`]. Only 64 bits of entropy: never for a production node.
    pub fn from_u64(seed: u64) -> Self {
        NodeSeed(
            Sha256::new()
                .chain_update(U64_SEED_DOMAIN)
                .chain_update(seed.to_le_bytes())
                .finalize()
                .into(),
        )
    }

    /// A fresh seed drawn from `rng` (a driver passes the OS generator).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        NodeSeed(bytes)
    }

    /// The seed bytes. Secret: for the node's generator and the replay tooling only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters that [`FromStr`] reads back. Secret: for the seed note
    /// kept beside a node's data, never for a log.
    pub fn expose_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(to_hex(&self.0))
    }

    /// The generator a node seeded with this runs on.
    pub fn rng(&self) -> SeededRng {
        SeededRng::from_seed(self.0)
    }

    /// Domain-separated SHA-256 of the seed: what logs and recording headers show instead of
    /// it (256 random bits: the hash reveals nothing). See
    /// [`crate::recording::seed_fingerprint`].
    pub fn fingerprint(&self) -> Hash32 {
        crate::recording::seed_fingerprint(self)
    }
}

impl PartialEq for NodeSeed {
    // Constant time: a seed is a secret.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for NodeSeed {}

impl fmt::Debug for NodeSeed {
    // The seed decides every secret key the node generates: show its fingerprint only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSeed(fingerprint {}…)", self.fingerprint().short())
    }
}

impl fmt::Display for NodeSeed {
    // Like `JoinToken`: `Display` may reach a log, so it is redacted; `expose_hex` is explicit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<seed, fingerprint {}>", self.fingerprint().short())
    }
}

/// Why text is not a seed. The operator (who typed it) is at fault. The text is never echoed:
/// it may be most of a seed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseSeedError {
    /// Neither 64 hex characters nor a decimal `u64`.
    #[error(
        "a seed is 64 hex characters (32 bytes) or a decimal number below 2^64; got {len} characters"
    )]
    Malformed {
        /// Length of the (trimmed) text.
        len: usize,
    },
}

impl FromStr for NodeSeed {
    type Err = ParseSeedError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let malformed = ParseSeedError::Malformed { len: text.len() };
        // At most 20 characters for a u64, exactly 64 for hex: the two never overlap.
        if text.len() <= MAX_U64_DIGITS && text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().map(NodeSeed::from_u64).map_err(|_| malformed);
        }
        if text.len() != 64 {
            return Err(malformed);
        }
        let bytes = Zeroizing::new(from_hex(text).ok_or_else(|| malformed.clone())?);
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed)?;
        Ok(NodeSeed(bytes))
    }
}

/// A deterministic, seeded ChaCha20 generator.
///
/// # Example
/// ```
/// use portcullis_core::rng::SeededRng;
/// use rand::{Rng, RngCore};
/// let mut a = SeededRng::from_u64(7);
/// let mut b = SeededRng::from_u64(7);
/// assert_eq!(a.gen_range(0..1000u32), b.gen_range(0..1000u32));
/// // Children depend on the seed and label only, not on draws already made.
/// assert_eq!(a.child("raft").next_u64(), SeededRng::from_u64(7).child("raft").next_u64());
/// ```
#[derive(Clone)]
pub struct SeededRng {
    seed: [u8; 32],
    inner: ChaCha20Rng,
}

impl SeededRng {
    /// A generator from 32 seed bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SeededRng {
            seed,
            inner: ChaCha20Rng::from_seed(seed),
        }
    }

    /// A generator from a 64-bit seed (the simulator's seeds), expanded by SHA-256.
    pub fn from_u64(seed: u64) -> Self {
        NodeSeed::from_u64(seed).rng()
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// A child generator for the sub-machine named `label`.
    ///
    /// Labels MUST be unique among one parent's children; use [`SeededRng::child_indexed`] for
    /// several children of one kind.
    pub fn child(&self, label: &str) -> SeededRng {
        self.child_indexed(label, 0)
    }

    /// A child generator for the `index`-th sub-machine named `label`.
    pub fn child_indexed(&self, label: &str, index: u64) -> SeededRng {
        let label_len = u64::try_from(label.len()).unwrap_or(u64::MAX);
        let seed: [u8; 32] = Sha256::new()
            .chain_update(CHILD_SEED_DOMAIN)
            .chain_update(self.seed)
            .chain_update(label_len.to_le_bytes())
            .chain_update(label.as_bytes())
            .chain_update(index.to_le_bytes())
            .finalize()
            .into();
        SeededRng::from_seed(seed)
    }

    /// 32 random bytes (key seeds, nonces).
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.inner.fill_bytes(&mut out);
        out
    }
}

impl fmt::Debug for SeededRng {
    // The seed decides every secret key the node generates: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededRng { .. }")
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.inner.try_fill_bytes(dest)
    }
}

/// ChaCha20 is a CSPRNG; key generation from it is sound as long as the seed is secret.
impl CryptoRng for SeededRng {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_seed_same_stream() {
        let mut a = SeededRng::from_u64(42);
        let mut b = SeededRng::from_u64(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn children_are_independent_of_parent_draws_and_of_each_other() {
        let mut parent = SeededRng::from_u64(1);
        let before = parent.child("x").next_u64();
        let _ = parent.gen_range(0..10u8);
        assert_eq!(parent.child("x").next_u64(), before);
        assert_ne!(parent.child("x").next_u64(), parent.child("y").next_u64());
        assert_ne!(
            parent.child_indexed("x", 1).next_u64(),
            parent.child_indexed("x", 2).next_u64()
        );
    }

    #[test]
    fn debug_hides_the_seed() {
        assert_eq!(format!("{:?}", SeededRng::from_u64(3)), "SeededRng { .. }");
    }

    /// The expansion `SeededRng::from_u64` had before `NodeSeed` existed, frozen here: every
    /// simulator trace and snapshot depends on it.
    fn old_from_u64(seed: u64) -> SeededRng {
        let expanded: [u8; 32] = Sha256::new()
            .chain_update(b"portcullis.rng.u64.v1")
            .chain_update(seed.to_le_bytes())
            .finalize()
            .into();
        SeededRng::from_seed(expanded)
    }

    #[test]
    fn a_u64_node_seed_gives_the_old_u64_stream() {
        for n in [0, 1, 42, u64::MAX] {
            let (mut new, mut via_rng, mut old) = (
                NodeSeed::from_u64(n).rng(),
                SeededRng::from_u64(n),
                old_from_u64(n),
            );
            assert_eq!(new.seed(), old.seed());
            for _ in 0..64 {
                let expected = old.next_u64();
                assert_eq!(new.next_u64(), expected);
                assert_eq!(via_rng.next_u64(), expected);
            }
            assert_eq!(
                NodeSeed::from_u64(n).rng().child("raft").next_u64(),
                old_from_u64(n).child("raft").next_u64()
            );
        }
        // Golden: SHA-256("portcullis.rng.u64.v1" ‖ 42u64 LE), computed outside Rust.
        assert_eq!(
            NodeSeed::from_u64(42).expose_hex().as_str(),
            "606bc7e377288019924243a25829a8708228b1312cb098e6cfa5c6bb0bc940f8"
        );
    }

    #[test]
    fn seeds_differing_in_their_last_byte_give_different_streams() {
        let a = [0x5a; 32];
        let mut b = a;
        b[31] ^= 1;
        let (mut ra, mut rb) = (NodeSeed::from_bytes(a).rng(), NodeSeed::from_bytes(b).rng());
        let (sa, sb): (Vec<u64>, Vec<u64>) = (0..4).map(|_| (ra.next_u64(), rb.next_u64())).unzip();
        assert_ne!(sa, sb);
        assert_ne!(
            NodeSeed::from_bytes(a).rng().child("namespace").bytes32(),
            NodeSeed::from_bytes(b).rng().child("namespace").bytes32()
        );
    }

    #[test]
    fn parses_hex_and_decimal_and_round_trips() {
        let seed = NodeSeed::from_bytes(core::array::from_fn(|i| u8::try_from(i).unwrap_or(0)));
        let hex = seed.expose_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<NodeSeed>(), Ok(seed.clone()));
        assert_eq!(hex.to_uppercase().parse::<NodeSeed>(), Ok(seed.clone()));
        assert_eq!(format!(" {} \n", &*hex).parse::<NodeSeed>(), Ok(seed));
        assert_eq!("42".parse::<NodeSeed>(), Ok(NodeSeed::from_u64(42)));
        assert_eq!(
            "18446744073709551615".parse::<NodeSeed>(),
            Ok(NodeSeed::from_u64(u64::MAX))
        );
        for bad in [
            "",
            "18446744073709551616",
            "-1",
            "0x2a",
            &"0".repeat(63),
            &"0".repeat(65),
            &"g".repeat(64),
        ] {
            assert_eq!(
                bad.parse::<NodeSeed>(),
                Err(ParseSeedError::Malformed { len: bad.len() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_and_display_show_the_fingerprint_never_the_seed() {
        let seed = NodeSeed::from_bytes([0xab; 32]);
        let hex = seed.expose_hex();
        for shown in [format!("{seed:?}"), format!("{seed}"), format!("{seed:#?}")] {
            assert!(!shown.contains(&hex[..8]), "{shown}");
            assert!(!shown.contains("171, 171"), "{shown}"); // 0xab as a byte list
            assert!(shown.contains(&seed.fingerprint().short()), "{shown}");
        }
        // A decimal seed is not shown either.
        let small = NodeSeed::from_u64(0x1234_5678_9abc_def0);
        let shown = format!("{small:?} {small}");
        assert!(
            !shown.contains(&0x1234_5678_9abc_def0_u64.to_string()),
            "{shown}"
        );
        assert!(!shown.contains(&small.expose_hex()[..8]), "{shown}");
    }
}

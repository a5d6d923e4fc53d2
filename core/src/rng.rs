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

use core::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Domain prefix of child-seed derivation; versioned so a change is deliberate.
const CHILD_SEED_DOMAIN: &[u8] = b"portcullis.rng.child.v1";

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
        let expanded: [u8; 32] = Sha256::new()
            .chain_update(b"portcullis.rng.u64.v1")
            .chain_update(seed.to_le_bytes())
            .finalize()
            .into();
        Self::from_seed(expanded)
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
}

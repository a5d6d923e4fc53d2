//! Keys, hashes and domain-separated signatures.
//!
//! Every signature portcullis makes is over `domain ‖ 0x00 ‖ message`, where `domain` names
//! what is being signed (`portcullis.beacon.v1`, ...). No domain contains a zero byte, so a
//! signature made for one purpose can never be replayed as another — a beacon signature is not
//! an ack, a join proof is not an op.
//!
//! Secret material ([`SecretKey`], [`JoinSecret`]) is wiped on drop and never printed: `Debug`
//! shows the public half or nothing. Logs name things by the first bytes of a hash
//! ([`Hash32::short`]).

use core::cmp::Ordering;
use core::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// How many signature operations this process has done (feature `op-counts`): what the
/// simulator's benchmark multiplies by this machine's cost of each, to show how much of a seed
/// public-key cryptography alone takes.
///
/// Counting only: no clock and no output of the core depends on these, so turning the feature
/// on changes no behaviour. Process-wide (relaxed atomics): read them around work that runs
/// alone, as the benchmark runs one seed at a time.
///
/// # Example
/// ```
/// # #[cfg(feature = "op-counts")] {
/// use portcullis_core::crypto::{op_counts, Domain, SecretKey};
/// use portcullis_core::rng::SeededRng;
/// let before = op_counts::snapshot();
/// let key = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let sig = key.sign(Domain::Beacon, b"hello");
/// assert!(key.public().verify(Domain::Beacon, b"hello", &sig).is_ok());
/// let done = op_counts::snapshot().since(&before);
/// assert!(done.signs >= 1 && done.verifies >= 1 && done.keys_derived >= 1);
/// # }
/// ```
#[cfg(feature = "op-counts")]
pub mod op_counts {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

    static SIGNS: AtomicU64 = AtomicU64::new(0);
    static VERIFIES: AtomicU64 = AtomicU64::new(0);
    static KEYS_DERIVED: AtomicU64 = AtomicU64::new(0);

    /// Operation counts at one moment, or between two ([`OpCounts::since`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct OpCounts {
        /// ed25519 signatures made.
        pub signs: u64,
        /// ed25519 verifications (`verify_strict`).
        pub verifies: u64,
        /// Public keys derived from secret keys (one scalar multiplication each).
        pub keys_derived: u64,
    }

    impl OpCounts {
        /// What was done between `earlier` and `self`.
        pub fn since(&self, earlier: &OpCounts) -> OpCounts {
            OpCounts {
                signs: self.signs.saturating_sub(earlier.signs),
                verifies: self.verifies.saturating_sub(earlier.verifies),
                keys_derived: self.keys_derived.saturating_sub(earlier.keys_derived),
            }
        }
    }

    /// The counts so far.
    pub fn snapshot() -> OpCounts {
        OpCounts {
            signs: SIGNS.load(Relaxed),
            verifies: VERIFIES.load(Relaxed),
            keys_derived: KEYS_DERIVED.load(Relaxed),
        }
    }

    pub(super) fn sign() {
        SIGNS.fetch_add(1, Relaxed);
    }

    pub(super) fn verify() {
        VERIFIES.fetch_add(1, Relaxed);
    }

    pub(super) fn key_derived() {
        KEYS_DERIVED.fetch_add(1, Relaxed);
    }
}

/// Counts one operation when the `op-counts` feature is on; nothing otherwise.
macro_rules! count_op {
    ($op:ident $(, $arg:expr)?) => {
        #[cfg(feature = "op-counts")]
        op_counts::$op($($arg)?);
    };
}

/// What a signature is for. Each purpose has its own prefix, so signatures never cross over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Domain {
    /// An admin's signature over a namespace invitation.
    Invitation,
    /// A member's signature over a namespace governance op.
    Op,
    /// A member's readiness beacon.
    Beacon,
    /// A member's acknowledgement of a `MemberJoined` op.
    Ack,
    /// A joiner's proof that it holds the node key it presents with a token.
    JoinProof,
    /// The cluster key's signature over a membership credential.
    Credential,
    /// The cluster key's signature over an admitting node's key (see
    /// [`crate::identity::AdmissionSecrets::admitter_proof`]).
    Admitter,
}

impl Domain {
    /// The byte prefix signed before every message of this domain.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            Domain::Invitation => b"portcullis.invitation.v1",
            Domain::Op => b"portcullis.op.v1",
            Domain::Beacon => b"portcullis.beacon.v1",
            Domain::Ack => b"portcullis.ack.v1",
            Domain::JoinProof => b"portcullis.join-proof.v1",
            Domain::Credential => b"portcullis.credential.v1",
            Domain::Admitter => b"portcullis.admitter.v1",
        }
    }

    /// Every domain, for tests that check the prefixes stay distinct.
    pub const ALL: [Domain; 7] = [
        Domain::Invitation,
        Domain::Op,
        Domain::Beacon,
        Domain::Ack,
        Domain::JoinProof,
        Domain::Credential,
        Domain::Admitter,
    ];
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes hex (either case); `None` on an odd length or a non-hex character.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// The order `[u8; 32]`'s own `Ord` gives (lexicographic), compared eight bytes at a time.
///
/// Why: the derived order calls `memcmp` for every comparison, and the ledger's and the
/// checkers' maps keyed by hashes and keys search millions of times per simulated minute; this
/// compiles to four inlined integer compares. Big-endian words keep the byte order, so every
/// map iterates, encodes and digests exactly as before.
#[inline]
fn cmp_32_bytes(a: &[u8; 32], b: &[u8; 32]) -> Ordering {
    let (a_words, _) = a.as_chunks::<8>();
    let (b_words, _) = b.as_chunks::<8>();
    for (x, y) in a_words.iter().zip(b_words) {
        let order = u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        if order.is_ne() {
            return order;
        }
    }
    Ordering::Equal
}

/// `Ord` and `PartialOrd` by [`cmp_32_bytes`] for a newtype over `[u8; 32]`.
macro_rules! ord_by_32_bytes {
    ($newtype:ty) => {
        impl Ord for $newtype {
            fn cmp(&self, other: &Self) -> Ordering {
                cmp_32_bytes(&self.0, &other.0)
            }
        }

        impl PartialOrd for $newtype {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
    };
}

/// A SHA-256 digest.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Hash32(pub [u8; 32]);

ord_by_32_bytes!(Hash32);

impl Hash32 {
    /// SHA-256 of the concatenation of `parts`.
    ///
    /// Callers that hash variable-length parts MUST make the encoding unambiguous themselves
    /// (fixed sizes, or length prefixes); this function only concatenates.
    pub fn of(parts: &[&[u8]]) -> Hash32 {
        let mut h = Sha256::new();
        for part in parts {
            h.update(part);
        }
        Hash32(h.finalize().into())
    }

    /// The first 4 bytes in hex: what logs and listings show instead of a secret.
    pub fn short(&self) -> String {
        to_hex(&self.0[..4])
    }

    /// All 32 bytes in hex.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.short())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// An ed25519 signature, as carried on the wire.
#[derive(Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", to_hex(&self.0[..4]))
    }
}

/// Why a signature did not verify. The peer is at fault in both cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("malformed public key")]
    MalformedKey,
    /// The signature does not match the key, domain and message.
    #[error("signature does not verify")]
    Invalid,
}

/// An ed25519 public key, as carried on the wire (32 bytes, not yet validated).
///
/// Validation happens at verification time, so decoding peer bytes never fails on a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct PublicKey(pub [u8; 32]);

ord_by_32_bytes!(PublicKey);

impl PublicKey {
    /// Verifies `signature` over `domain ‖ 0x00 ‖ message`.
    ///
    /// Uses `verify_strict`: rejects small-order keys and non-canonical signatures, so one
    /// message has one valid signature per key (no malleability for replay checks to trip on).
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        count_op!(verify);
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::MalformedKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&signed_bytes(domain, message), &sig)
            .map_err(|_| SignatureError::Invalid)
    }

    /// SHA-256 of the key: the stable short name of a node (e.g. a token presenter).
    pub fn hash(&self) -> Hash32 {
        Hash32::of(&[&self.0])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", to_hex(&self.0[..4]))
    }
}

/// Verifies each of `items` (all of one domain) with [`PublicKey::verify`]; `result[i]` says
/// whether item `i` verifies.
///
/// Deliberately not ed25519 batch verification. A batch is checked cofactorless under random
/// coefficients, so it accepts signatures `verify_strict` refuses (an `R` of small order, and
/// with some probability one with a torsion component), and which ones can depend on the rest
/// of the batch. Validity MUST be a function of the signature alone: a governance op applied
/// when it arrives in a backfill batch but refused when it arrives alone would split replicas.
pub fn verify_each(domain: Domain, items: &[(PublicKey, &[u8], Signature)]) -> Vec<bool> {
    items
        .iter()
        .map(|(key, msg, sig)| key.verify(domain, msg, sig).is_ok())
        .collect()
}

/// The exact bytes a signature of `domain` covers.
fn signed_bytes(domain: Domain, message: &[u8]) -> Vec<u8> {
    let prefix = domain.prefix();
    let mut out = Vec::with_capacity(prefix.len() + 1 + message.len());
    out.extend_from_slice(prefix);
    out.push(0);
    out.extend_from_slice(message);
    out
}

/// An ed25519 secret key. Wiped on drop; `Debug` shows only the public key.
///
/// # Example
/// ```
/// use portcullis_core::crypto::{Domain, SecretKey};
/// use portcullis_core::rng::SeededRng;
/// let key = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let sig = key.sign(Domain::Beacon, b"hello");
/// assert!(key.public().verify(Domain::Beacon, b"hello", &sig).is_ok());
/// // The same bytes under another domain do not verify.
/// assert!(key.public().verify(Domain::Ack, b"hello", &sig).is_err());
/// assert!(!format!("{key:?}").contains(&format!("{:?}", key.secret_bytes().as_slice())));
/// ```
#[derive(Clone, ZeroizeOnDrop)]
pub struct SecretKey {
    inner: SigningKey,
}

impl SecretKey {
    /// A fresh key drawn from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        count_op!(key_derived);
        SecretKey {
            inner: SigningKey::generate(rng),
        }
    }

    /// A key from its 32 secret bytes (as stored durably).
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        count_op!(key_derived);
        SecretKey {
            inner: SigningKey::from_bytes(bytes),
        }
    }

    /// The 32 secret bytes, in a buffer that wipes itself. Only storage should call this.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.inner.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.inner.verifying_key().to_bytes())
    }

    /// Signs `domain ‖ 0x00 ‖ message`.
    pub fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        count_op!(sign);
        Signature(self.inner.sign(&signed_bytes(domain, message)).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// The cluster's join secret: the HMAC key that issues and verifies join tokens.
///
/// Held by admitting nodes and the operator's token tool only; never replicated, never sent to
/// joiners, never printed. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct JoinSecret([u8; 32]);

impl JoinSecret {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        JoinSecret(bytes)
    }

    /// A fresh secret drawn from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        JoinSecret(bytes)
    }

    /// The secret bytes. Only token MAC code and storage should call this.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    proptest::proptest! {
        /// Hashes and keys order exactly as their bytes do: maps keyed by them iterate, encode
        /// and digest as they did with the derived order. Pairs share a random-length prefix,
        /// so every word position decides some of them.
        #[test]
        fn hash_and_key_order_is_byte_order(
            a in proptest::array::uniform32(proptest::num::u8::ANY),
            b in proptest::array::uniform32(proptest::num::u8::ANY),
            shared in 0usize..=32,
        ) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            proptest::prop_assert_eq!(Hash32(a).cmp(&Hash32(b)), a.cmp(&b));
            proptest::prop_assert_eq!(PublicKey(a).cmp(&PublicKey(b)), a.cmp(&b));
            proptest::prop_assert_eq!(Hash32(b).partial_cmp(&Hash32(a)), Some(b.cmp(&a)));
        }
    }

    #[test]
    fn domain_prefixes_are_distinct_and_zero_free() {
        for (i, a) in Domain::ALL.iter().enumerate() {
            assert!(!a.prefix().contains(&0), "{a:?} prefix contains 0x00");
            for b in &Domain::ALL[i + 1..] {
                assert_ne!(a.prefix(), b.prefix());
            }
        }
    }

    #[test]
    fn signatures_do_not_cross_domains() {
        let key = SecretKey::generate(&mut SeededRng::from_u64(9));
        for d in Domain::ALL {
            let sig = key.sign(d, b"msg");
            for other in Domain::ALL {
                let ok = key.public().verify(other, b"msg", &sig).is_ok();
                assert_eq!(ok, d == other, "{d:?} signature under {other:?}");
            }
        }
    }

    #[cfg(feature = "op-counts")]
    #[test]
    fn op_counts_count_each_kind_of_operation() {
        // Other tests sign and verify concurrently: the counts can only have grown by more.
        let before = op_counts::snapshot();
        let mut rng = SeededRng::from_u64(12);
        let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate(&mut rng)).collect();
        let items: Vec<(PublicKey, &[u8], Signature)> = keys
            .iter()
            .map(|k| (k.public(), &b"m"[..], k.sign(Domain::Ack, b"m")))
            .collect();
        assert_eq!(verify_each(Domain::Ack, &items), vec![true; 3]);
        let done = op_counts::snapshot().since(&before);
        assert!(done.keys_derived >= 3, "{done:?}");
        assert!(done.signs >= 3, "{done:?}");
        assert!(done.verifies >= 3, "{done:?}");
    }

    #[test]
    fn verify_each_checks_each_signature_on_its_own() {
        let mut rng = SeededRng::from_u64(11);
        let keys: Vec<SecretKey> = (0..8).map(|_| SecretKey::generate(&mut rng)).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 40]).collect();
        let mut items: Vec<(PublicKey, &[u8], Signature)> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| (k.public(), m.as_slice(), k.sign(Domain::JoinProof, m)))
            .collect();
        assert_eq!(verify_each(Domain::JoinProof, &items), vec![true; 8]);
        // One forged signature and one malformed key: only those fail.
        items[3].2 = keys[4].sign(Domain::JoinProof, &msgs[3]);
        items[5].0 = PublicKey([0xff; 32]);
        let expected: Vec<bool> = (0..8).map(|i| i != 3 && i != 5).collect();
        assert_eq!(verify_each(Domain::JoinProof, &items), expected);
        // Another domain: nothing verifies.
        assert_eq!(verify_each(Domain::Ack, &items[..2]), vec![false; 2]);
        assert!(verify_each(Domain::Ack, &[]).is_empty());
    }

    /// A signature whose `R` is the identity point and whose `s` is `H(R ‖ A ‖ M)·a` satisfies
    /// the cofactorless equation whatever coefficient a batch gives it. `verify_strict` refuses
    /// it (small-order `R`); ed25519 batch verification accepted it beside any valid signature,
    /// so a governance op with it applied when backfilled in a batch and was refused when
    /// gossiped alone (found in review). Every path now verifies strictly.
    #[test]
    fn a_signature_with_a_small_order_r_is_refused_alone_and_beside_others() {
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let key = SecretKey::generate(&mut SeededRng::from_u64(21));
        let public = key.public();
        let message = b"an op";
        let mut r = [0u8; 32];
        r[0] = 1; // the identity point, compressed (y = 1)
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(public.0)
                .chain_update(signed_bytes(Domain::Op, message))
                .finalize()
                .into(),
        );
        let a = ed25519_dalek::SigningKey::from_bytes(&key.secret_bytes()).to_scalar();
        let mut odd = [0u8; 64];
        odd[..32].copy_from_slice(&r);
        odd[32..].copy_from_slice((k * a).as_bytes());
        let odd = Signature(odd);
        let good = key.sign(Domain::Op, b"another op");
        assert!(public.verify(Domain::Op, message, &odd).is_err());
        let items = [
            (public, &b"another op"[..], good),
            (public, &message[..], odd),
        ];
        // The old batch verification said [true, true] here.
        assert_eq!(verify_each(Domain::Op, &items), vec![true, false]);
        let batch: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
        let signed: Vec<Vec<u8>> = batch.iter().map(|m| signed_bytes(Domain::Op, m)).collect();
        let signed: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
        let sigs: Vec<_> = items
            .iter()
            .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
            .collect();
        let keys: Vec<_> = items
            .iter()
            .map(|(k, _, _)| VerifyingKey::from_bytes(&k.0).expect("a real key"))
            .collect();
        assert!(
            ed25519_dalek::verify_batch(&signed, &sigs, &keys).is_ok(),
            "batch verification accepts it: why no path may use it"
        );
    }

    #[test]
    fn tampered_message_or_key_fails() {
        let key = SecretKey::generate(&mut SeededRng::from_u64(9));
        let sig = key.sign(Domain::Op, b"msg");
        assert_eq!(
            key.public().verify(Domain::Op, b"msh", &sig),
            Err(SignatureError::Invalid)
        );
        let other = SecretKey::generate(&mut SeededRng::from_u64(10)).public();
        assert_eq!(
            other.verify(Domain::Op, b"msg", &sig),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn secrets_never_print() {
        let key = SecretKey::generate(&mut SeededRng::from_u64(9));
        let secret_hex = to_hex(key.secret_bytes().as_slice());
        assert!(!format!("{key:?}").contains(&secret_hex));
        let js = JoinSecret::from_bytes([7; 32]);
        assert_eq!(format!("{js:?}"), "JoinSecret(<redacted>)");
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("ABcd"), Some(vec![0xab, 0xcd]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}

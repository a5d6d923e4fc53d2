//! Namespace ids, signed invitations and governance ops.
//!
//! Everything here is a *value*: it can be built, signed, encoded, hashed and checked on its
//! own, without any replica state. Whether an op is valid in a namespace is decided by
//! [`super::governance::Governance`], from the op and its causal past.
//!
//! ```text
//!   admin key ──derive(admin, salt)──▶ NamespaceId ◀── every op and invitation names it
//!   admin ──signs (portcullis.invitation.v1)──▶ SignedInvitation ──out of band──▶ joiner
//!   author ──signs (portcullis.op.v1)──▶ Op { namespace, parents, author, unix_ms, body }
//!   OpHash = SHA-256("portcullis.op-hash.v1" ‖ 0x00 ‖ borsh(op incl. signature))
//! ```
//!
//! Why the namespace id is derived from the admin key: a replica must know which `Create` is
//! the real one without trusting whoever delivered it. Because the id commits to the admin key,
//! a `Create` signed by anyone else simply names another namespace, and every valid `Create` of
//! one namespace names the same admin (short of a SHA-256 collision).

use core::fmt;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{Domain, Hash32, PublicKey, SecretKey, Signature, SignatureError};
use crate::wire::{self, BoundedVec, TooMany};

/// Most parents one op may name. An author with more heads merges the newest ones.
pub const MAX_PARENTS: usize = 16;

/// Domain prefix of namespace-id derivation (hashing, not signing).
const NAMESPACE_ID_DOMAIN: &[u8] = b"portcullis.namespace-id.v1";

/// Domain prefix of op hashing.
const OP_HASH_DOMAIN: &[u8] = b"portcullis.op-hash.v1";

/// Domain prefix of invitation hashing (for logs and listings).
const INVITATION_HASH_DOMAIN: &[u8] = b"portcullis.invitation-hash.v1";

/// Names one namespace: SHA-256 over the admin key and a creation salt.
///
/// # Example
/// ```
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::ops::NamespaceId;
/// use portcullis_core::rng::SeededRng;
/// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let a = NamespaceId::derive(&admin.public(), &[1; 16]);
/// assert_eq!(a, NamespaceId::derive(&admin.public(), &[1; 16]));
/// assert_ne!(a, NamespaceId::derive(&admin.public(), &[2; 16]));
/// ```
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct NamespaceId(pub Hash32);

impl NamespaceId {
    /// The id of the namespace created by `admin` with `salt`.
    pub fn derive(admin: &PublicKey, salt: &[u8; 16]) -> NamespaceId {
        NamespaceId(Hash32::of(&[NAMESPACE_ID_DOMAIN, &[0], &admin.0, salt]))
    }

    /// The first 4 bytes in hex, for logs.
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl fmt::Debug for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns:{}…", self.0.short())
    }
}

impl fmt::Display for NamespaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns:{}", self.0.short())
    }
}

/// The hash of one governance op (see [`Op::hash`]).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct OpHash(pub Hash32);

impl OpHash {
    /// The first 4 bytes in hex, for logs.
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl fmt::Debug for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op:{}…", self.0.short())
    }
}

impl fmt::Display for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op:{}", self.0.short())
    }
}

/// How often an invitation may be used.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
#[non_exhaustive]
pub enum InvitePolicy {
    /// Any number of joins until it expires or is revoked.
    Reusable,
    /// One join. The governance log refuses a second use in the causal past of the first;
    /// two *concurrent* uses can only be told apart by consuming the invitation through the
    /// cluster ledger (DESIGN.md, Protocol B), which is the integrator's job.
    SingleUse,
}

/// What an admin signs to let someone join a namespace.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Invitation {
    /// The namespace the invitation is for.
    pub namespace: NamespaceId,
    /// The signing admin. The joiner trusts this key (for beacons) only after the signature
    /// verifies; peers trust it only if the causal past shows it is an admin.
    pub inviter: PublicKey,
    /// Wall-clock expiry. Peers judge it against the `unix_ms` of the `MemberJoined` op that
    /// carries it, never against their own clock at apply time.
    pub expires_at_unix_ms: u64,
    /// Unique per invitation; revocation names it.
    pub nonce: [u8; 16],
    /// How often it may be used.
    pub policy: InvitePolicy,
}

/// An [`Invitation`] with the inviter's signature (domain `portcullis.invitation.v1`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedInvitation {
    /// What is signed.
    pub invitation: Invitation,
    /// The inviter's signature over `borsh(invitation)`.
    pub signature: Signature,
}

/// Why an invitation is not usable. The inviter (or whoever handed it over) is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvitationError {
    /// The signature does not verify under the named inviter key (forged or corrupted).
    #[error("invitation signature: {0}")]
    BadSignature(SignatureError),
    /// The invitation expired before the moment it is judged at.
    #[error("invitation expired at {expires_at_unix_ms} (judged at {at_unix_ms})")]
    Expired {
        /// Its expiry.
        expires_at_unix_ms: u64,
        /// The time it was judged at.
        at_unix_ms: u64,
    },
}

impl SignedInvitation {
    /// `admin` invites to `namespace` until `expires_at_unix_ms`.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::crypto::SecretKey;
    /// use portcullis_core::namespace::ops::{InvitePolicy, NamespaceId, SignedInvitation};
    /// use portcullis_core::rng::SeededRng;
    /// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
    /// let ns = NamespaceId::derive(&admin.public(), &[0; 16]);
    /// let inv = SignedInvitation::issue(&admin, ns, 10_000, [7; 16], InvitePolicy::Reusable);
    /// assert!(inv.verify(9_999).is_ok());
    /// assert!(inv.verify(10_000).is_err()); // expired at its expiry instant
    /// ```
    pub fn issue(
        admin: &SecretKey,
        namespace: NamespaceId,
        expires_at_unix_ms: u64,
        nonce: [u8; 16],
        policy: InvitePolicy,
    ) -> SignedInvitation {
        let invitation = Invitation {
            namespace,
            inviter: admin.public(),
            expires_at_unix_ms,
            nonce,
            policy,
        };
        let signature = admin.sign(Domain::Invitation, &wire::encode(&invitation));
        SignedInvitation {
            invitation,
            signature,
        }
    }

    /// Checks the signature under `invitation.inviter`. Call this before trusting the
    /// inviter key for anything.
    pub fn verify_signature(&self) -> Result<(), InvitationError> {
        self.check_signature()
            .map_err(InvitationError::BadSignature)
    }

    /// [`SignedInvitation::verify_signature`] with the bare signature error.
    pub fn check_signature(&self) -> Result<(), SignatureError> {
        self.invitation.inviter.verify(
            Domain::Invitation,
            &wire::encode(&self.invitation),
            &self.signature,
        )
    }

    /// Checks the signature, then that the invitation has not expired at `at_unix_ms`.
    pub fn verify(&self, at_unix_ms: u64) -> Result<(), InvitationError> {
        self.verify_signature()?;
        if at_unix_ms >= self.invitation.expires_at_unix_ms {
            return Err(InvitationError::Expired {
                expires_at_unix_ms: self.invitation.expires_at_unix_ms,
                at_unix_ms,
            });
        }
        Ok(())
    }

    /// A stable name for logs (the signature is not secret, but a hash prefix is shorter).
    pub fn hash(&self) -> Hash32 {
        Hash32::of(&[INVITATION_HASH_DOMAIN, &[0], &wire::encode(self)])
    }
}

/// What an op does.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[non_exhaustive]
pub enum OpBody {
    /// The genesis op: `admin` creates the namespace `derive(admin, salt)`. No parents; signed
    /// by `admin`.
    Create {
        /// The namespace's admin.
        admin: PublicKey,
        /// The salt the namespace id was derived with.
        salt: [u8; 16],
    },
    /// `member` joined with `invitation`. Signed by `member` itself.
    MemberJoined {
        /// The new member's namespace key.
        member: PublicKey,
        /// The admin's invitation.
        invitation: SignedInvitation,
    },
    /// An admin removed `member`.
    MemberRemoved {
        /// The removed member.
        member: PublicKey,
    },
    /// An admin revoked the invitation with `nonce`; later uses are invalid.
    InvitationRevoked {
        /// The revoked invitation's nonce.
        nonce: [u8; 16],
    },
}

impl OpBody {
    /// A stable lowercase name, for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            OpBody::Create { .. } => "create",
            OpBody::MemberJoined { .. } => "member_joined",
            OpBody::MemberRemoved { .. } => "member_removed",
            OpBody::InvitationRevoked { .. } => "invitation_revoked",
        }
    }
}

/// One signed governance op, a node of the namespace's DAG.
///
/// The signature (domain `portcullis.op.v1`) covers every other field, including `unix_ms`:
/// the author's clock reading is part of the op, so every replica judges time-dependent
/// validity (invitation expiry) against the same number.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Op {
    /// The namespace.
    pub namespace: NamespaceId,
    /// Hashes of the ops this one follows, strictly increasing (canonical).
    pub parents: BoundedVec<OpHash, MAX_PARENTS>,
    /// The signer.
    pub author: PublicKey,
    /// The author's wall clock when it signed.
    pub unix_ms: u64,
    /// What it does.
    pub body: OpBody,
    /// The author's signature over all the fields above.
    pub signature: Signature,
}

impl Op {
    /// Signs an op with `key` as author, exactly as given (parents are not reordered; use
    /// [`Op::canonical_parents`] to build them).
    pub fn sign(
        key: &SecretKey,
        namespace: NamespaceId,
        parents: BoundedVec<OpHash, MAX_PARENTS>,
        unix_ms: u64,
        body: OpBody,
    ) -> Op {
        let author = key.public();
        let signature = key.sign(
            Domain::Op,
            &signed_bytes(&namespace, &parents, &author, unix_ms, &body),
        );
        Op {
            namespace,
            parents,
            author,
            unix_ms,
            body,
            signature,
        }
    }

    /// The genesis op of the namespace `admin` creates with `salt`.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::crypto::SecretKey;
    /// use portcullis_core::namespace::ops::{NamespaceId, Op};
    /// use portcullis_core::rng::SeededRng;
    /// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
    /// let create = Op::create(&admin, [3; 16], 1_000);
    /// assert_eq!(create.namespace, NamespaceId::derive(&admin.public(), &[3; 16]));
    /// assert!(create.verify_signature().is_ok());
    /// ```
    pub fn create(admin: &SecretKey, salt: [u8; 16], unix_ms: u64) -> Op {
        let namespace = NamespaceId::derive(&admin.public(), &salt);
        Op::sign(
            admin,
            namespace,
            BoundedVec::new(),
            unix_ms,
            OpBody::Create {
                admin: admin.public(),
                salt,
            },
        )
    }

    /// Sorts and deduplicates `parents` into the canonical form validation requires.
    pub fn canonical_parents(
        mut parents: Vec<OpHash>,
    ) -> Result<BoundedVec<OpHash, MAX_PARENTS>, TooMany> {
        parents.sort_unstable();
        parents.dedup();
        BoundedVec::try_from_vec(parents)
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(
            &self.namespace,
            &self.parents,
            &self.author,
            self.unix_ms,
            &self.body,
        )
    }

    /// Checks the author's signature.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        self.author
            .verify(Domain::Op, &self.signed_bytes(), &self.signature)
    }

    /// SHA-256 over a domain prefix and the whole signed op. Signatures are strict (no
    /// malleability), so one op has one hash.
    pub fn hash(&self) -> OpHash {
        OpHash(Hash32::of(&[OP_HASH_DOMAIN, &[0], &wire::encode(self)]))
    }

    /// Whether `parents` is strictly increasing (sorted, no duplicates).
    pub fn parents_are_canonical(&self) -> bool {
        self.parents.windows(2).all(|w| w[0] < w[1])
    }
}

fn signed_bytes(
    namespace: &NamespaceId,
    parents: &BoundedVec<OpHash, MAX_PARENTS>,
    author: &PublicKey,
    unix_ms: u64,
    body: &OpBody,
) -> Vec<u8> {
    wire::encode(&(namespace, parents, author, unix_ms, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn key(n: u64) -> SecretKey {
        SecretKey::generate(&mut SeededRng::from_u64(n))
    }

    #[test]
    fn op_hash_covers_every_field() {
        let admin = key(1);
        let create = Op::create(&admin, [0; 16], 5);
        let mut other = create.clone();
        other.unix_ms = 6;
        assert_ne!(create.hash(), other.hash());
        assert!(other.verify_signature().is_err());
        let decoded: Op = wire::decode_exact(&wire::encode(&create)).unwrap();
        assert_eq!(decoded.hash(), create.hash());
    }

    #[test]
    fn forged_invitation_does_not_verify() {
        let admin = key(1);
        let ns = NamespaceId::derive(&admin.public(), &[0; 16]);
        let mut inv = SignedInvitation::issue(&admin, ns, 100, [1; 16], InvitePolicy::Reusable);
        inv.invitation.expires_at_unix_ms = 1_000_000;
        assert!(matches!(
            inv.verify(50),
            Err(InvitationError::BadSignature(_))
        ));
    }

    #[test]
    fn canonical_parents_sort_and_dedup() {
        let a = OpHash(Hash32([1; 32]));
        let b = OpHash(Hash32([2; 32]));
        let p = Op::canonical_parents(vec![b, a, b]).unwrap();
        assert_eq!(&*p, &[a, b]);
        assert!(Op::canonical_parents(vec![a; 0]).unwrap().is_empty());
        let many: Vec<OpHash> = (0..17u8).map(|i| OpHash(Hash32([i; 32]))).collect();
        assert!(Op::canonical_parents(many).is_err());
    }
}

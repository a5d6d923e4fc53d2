//! Cluster identity: the cluster key, the join secret, and membership credentials.
//!
//! At bootstrap the operator creates the **cluster key** (ed25519) and the **join secret**. The
//! cluster's *pin* is SHA-256 of the cluster public key; every token carries it. Every admitted
//! node receives a [`Credential`]: the cluster key's signature over (member id, node key, role,
//! cluster pin, issued-at). Peers prove membership by showing a credential for the node key the
//! transport authenticated.
//!
//! ```text
//!   operator ──▶ cluster key + join secret ──▶ admitting nodes (never replicated, never sent)
//!   admitting node ──signs──▶ Credential{member, node key, role, pin, issued_at} ──▶ new member
//!   any peer ──verifies──▶ credential.signature under the cluster key, node key == transport key
//! ```

use core::fmt;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::{Domain, JoinSecret, PublicKey, SecretKey, Signature, SignatureError};
use crate::ledger::MemberId;
use crate::token::{ClusterPin, Role};
use crate::wire;

/// The secrets an admitting node holds. Provisioned by the operator; never replicated.
#[derive(Clone)]
pub struct AdmissionSecrets {
    /// Signs membership credentials.
    pub cluster_key: SecretKey,
    /// Verifies join tokens.
    pub join_secret: JoinSecret,
}

impl AdmissionSecrets {
    /// The cluster's pin.
    pub fn pin(&self) -> ClusterPin {
        ClusterPin::of(&self.cluster_key.public())
    }

    /// Proof that `node_key` is an admitting node's: the cluster key's signature over it and
    /// the cluster's pin. A follower's forwarded proposals carry it, because the leader
    /// proposes them as they are and every ledger command is a token's lifecycle; without it
    /// any member could have the leader admit keys of its choosing with no token.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::crypto::{JoinSecret, SecretKey};
    /// use portcullis_core::identity::{AdmissionSecrets, verify_admitter_proof};
    /// use portcullis_core::rng::SeededRng;
    ///
    /// let mut rng = SeededRng::from_u64(1);
    /// let secrets = AdmissionSecrets {
    ///     cluster_key: SecretKey::generate(&mut rng),
    ///     join_secret: JoinSecret::generate(&mut rng),
    /// };
    /// let node = SecretKey::generate(&mut rng).public();
    /// let other = SecretKey::generate(&mut rng).public();
    /// let proof = secrets.admitter_proof(&node);
    /// let cluster = secrets.cluster_key.public();
    /// assert!(verify_admitter_proof(&cluster, &node, &proof).is_ok());
    /// assert!(verify_admitter_proof(&cluster, &other, &proof).is_err());
    /// ```
    pub fn admitter_proof(&self, node_key: &PublicKey) -> Signature {
        self.cluster_key
            .sign(Domain::Admitter, &admitter_message(node_key, self.pin()))
    }
}

/// What an admitter proof signs.
fn admitter_message(node_key: &PublicKey, pin: ClusterPin) -> Vec<u8> {
    wire::encode(&(node_key, pin))
}

/// Checks that `proof` is `cluster_key`'s admitter proof for `node_key` (see
/// [`AdmissionSecrets::admitter_proof`]).
pub fn verify_admitter_proof(
    cluster_key: &PublicKey,
    node_key: &PublicKey,
    proof: &Signature,
) -> Result<(), SignatureError> {
    cluster_key.verify(
        Domain::Admitter,
        &admitter_message(node_key, ClusterPin::of(cluster_key)),
        proof,
    )
}

impl fmt::Debug for AdmissionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionSecrets")
            .field("cluster", &self.cluster_key.public())
            .finish_non_exhaustive()
    }
}

/// The signed body of a credential.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CredentialBody {
    /// The member's id.
    pub member_id: MemberId,
    /// The member's node key.
    pub node_key: PublicKey,
    /// What it was admitted as.
    pub role: Role,
    /// The cluster it belongs to.
    pub cluster_pin: ClusterPin,
    /// When it was issued (ledger time of admission).
    pub issued_at_unix_ms: u64,
}

/// A membership credential: the cluster key's signature over a [`CredentialBody`].
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Credential {
    /// What is attested.
    pub body: CredentialBody,
    /// The cluster key's signature (domain `portcullis.credential.v1`).
    pub signature: Signature,
}

/// Why a credential was refused. The peer presenting it is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The cluster key does not hash to the expected pin.
    #[error("cluster key does not match the pin")]
    WrongCluster,
    /// The credential is for another node key than the one the transport authenticated.
    #[error("credential is for another node key")]
    WrongKey,
    /// The signature does not verify under the cluster key.
    #[error("credential signature: {0}")]
    Signature(#[from] SignatureError),
}

impl Credential {
    /// Signs a credential for `body` with the cluster key.
    pub fn issue(cluster_key: &SecretKey, body: CredentialBody) -> Credential {
        let signature = cluster_key.sign(Domain::Credential, &wire::encode(&body));
        Credential { body, signature }
    }

    /// Checks that the credential was signed by `cluster_key`, is for the cluster `pin`, and
    /// names `node_key`.
    ///
    /// # Example
    /// ```
    /// use portcullis_core::crypto::SecretKey;
    /// use portcullis_core::identity::{Credential, CredentialBody};
    /// use portcullis_core::ledger::MemberId;
    /// use portcullis_core::rng::SeededRng;
    /// use portcullis_core::token::{ClusterPin, Role};
    ///
    /// let mut rng = SeededRng::from_u64(1);
    /// let cluster = SecretKey::generate(&mut rng);
    /// let node = SecretKey::generate(&mut rng);
    /// let pin = ClusterPin::of(&cluster.public());
    /// let cred = Credential::issue(&cluster, CredentialBody {
    ///     member_id: MemberId(2), node_key: node.public(), role: Role::Member,
    ///     cluster_pin: pin, issued_at_unix_ms: 0,
    /// });
    /// assert!(cred.verify(&cluster.public(), pin, &node.public()).is_ok());
    /// assert!(cred.verify(&cluster.public(), pin, &cluster.public()).is_err());
    /// ```
    pub fn verify(
        &self,
        cluster_key: &PublicKey,
        pin: ClusterPin,
        node_key: &PublicKey,
    ) -> Result<(), CredentialError> {
        if ClusterPin::of(cluster_key) != pin || self.body.cluster_pin != pin {
            return Err(CredentialError::WrongCluster);
        }
        if self.body.node_key != *node_key {
            return Err(CredentialError::WrongKey);
        }
        cluster_key.verify(
            Domain::Credential,
            &wire::encode(&self.body),
            &self.signature,
        )?;
        Ok(())
    }
}

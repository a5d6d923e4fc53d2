//! Single-use join tokens: issue offline, parse, verify.
//!
//! A token is a fixed 58-byte body and a 32-byte HMAC-SHA256 tag, printed as one
//! copy-pasteable string:
//!
//! ```text
//!   PCJT-<hex of body ‖ tag>
//!
//!   body = version:u8 ‖ cluster_pin:[u8;32] ‖ token_id:[u8;16] ‖ expires_at_unix_ms:u64le ‖ role:u8
//!   tag  = HMAC-SHA256(join_secret, "portcullis.token.v1" ‖ 0x00 ‖ body)
//! ```
//!
//! * The body carries the **cluster pin** (SHA-256 of the cluster public key), so a joiner can
//!   authenticate the cluster *before* revealing the token to it.
//! * Only [`TokenHash`] (SHA-256 of body ‖ tag) is ever stored, replicated or logged — and logs
//!   show only its first bytes. `Debug` and `Display` of a [`JoinToken`] never show the tag.
//! * The tag is compared in constant time.
//!
//! Verification order is fixed and each failure has its own [`TokenError`]:
//! prefix/encoding → version → length → cluster pin → MAC → expiry (with a skew allowance).

use core::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{Hash32, JoinSecret, PublicKey, from_hex, to_hex};

/// The recognisable prefix of every printed token.
pub const TOKEN_PREFIX: &str = "PCJT-";
/// The token format version this build issues and accepts.
pub const TOKEN_VERSION: u8 = 1;
/// Bytes of a version-1 body.
pub const TOKEN_BODY_BYTES: usize = 1 + 32 + 16 + 8 + 1;
/// Bytes of the MAC tag.
pub const TOKEN_TAG_BYTES: usize = 32;
/// Bytes of a whole version-1 token.
pub const TOKEN_BYTES: usize = TOKEN_BODY_BYTES + TOKEN_TAG_BYTES;
/// Longest text [`JoinToken::parse`] looks at; longer input is refused before any decoding.
pub const MAX_TOKEN_TEXT_BYTES: usize = 512;

const MAC_DOMAIN: &[u8] = b"portcullis.token.v1";

/// The role a token admits its presenter to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[repr(u8)]
#[non_exhaustive]
pub enum Role {
    /// A full member: joins the metadata group as a learner and may be promoted to voter.
    Member = 0,
    /// An observer: joins as a learner and is never promoted.
    Observer = 1,
}

impl Role {
    fn from_u8(raw: u8) -> Option<Role> {
        match raw {
            0 => Some(Role::Member),
            1 => Some(Role::Observer),
            _ => None,
        }
    }
}

/// SHA-256 of the cluster public key: what a token pins.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct ClusterPin(pub Hash32);

impl ClusterPin {
    /// The pin of `cluster_key`.
    pub fn of(cluster_key: &PublicKey) -> ClusterPin {
        ClusterPin(cluster_key.hash())
    }
}

/// SHA-256 of a token's bytes: the only form in which a token is stored or replicated.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct TokenHash(pub Hash32);

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The signed part of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenBody {
    /// Format version ([`TOKEN_VERSION`]).
    pub version: u8,
    /// The cluster this token admits into.
    pub cluster_pin: ClusterPin,
    /// Random id (128 bits), so two tokens never collide.
    pub token_id: [u8; 16],
    /// Wall-clock expiry, Unix milliseconds.
    pub expires_at_unix_ms: u64,
    /// What the presenter is admitted as.
    pub role: Role,
}

impl TokenBody {
    fn to_bytes(self) -> [u8; TOKEN_BODY_BYTES] {
        let mut out = [0u8; TOKEN_BODY_BYTES];
        out[0] = self.version;
        out[1..33].copy_from_slice(&self.cluster_pin.0.0);
        out[33..49].copy_from_slice(&self.token_id);
        out[49..57].copy_from_slice(&self.expires_at_unix_ms.to_le_bytes());
        out[57] = self.role as u8;
        out
    }
}

impl fmt::Debug for TokenBody {
    // The id is half of what makes a token unguessable: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBody")
            .field("version", &self.version)
            .field("cluster_pin", &self.cluster_pin)
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What exactly is wrong with a token's text or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedToken {
    /// The text does not start with [`TOKEN_PREFIX`].
    #[error("it does not start with `{TOKEN_PREFIX}`")]
    MissingPrefix,
    /// The text is longer than any token.
    #[error("it is longer than {MAX_TOKEN_TEXT_BYTES} bytes")]
    TooLong,
    /// The part after the prefix is not hex.
    #[error("the part after the prefix is not hex")]
    NotHex,
    /// An odd number of hex digits: the text was most likely cut off while copying.
    #[error(
        "it ends in the middle of a byte (odd number of hex digits); was it cut off while copying?"
    )]
    OddLength,
    /// The decoded bytes have the wrong length for their version.
    #[error("it is {got} bytes long, a version-1 token is {expected}")]
    WrongLength {
        /// Bytes decoded.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The role byte names no role.
    #[error("unknown role {0}")]
    UnknownRole(u8),
}

/// Why a token was refused. Every case is the presenter's fault (or the operator's, for a token
/// issued for another cluster).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token text or bytes do not parse.
    #[error("malformed token: {0}")]
    Malformed(#[from] MalformedToken),
    /// The token was made by a format version this build does not accept.
    #[error("unsupported token version {got} (this build accepts {supported})")]
    UnsupportedVersion {
        /// The version in the token.
        got: u8,
        /// The version accepted.
        supported: u8,
    },
    /// The token is for another cluster.
    #[error("token is for cluster {token_pin:?}, this is cluster {cluster_pin:?}")]
    WrongCluster {
        /// The pin inside the token.
        token_pin: ClusterPin,
        /// This cluster's pin.
        cluster_pin: ClusterPin,
    },
    /// The MAC does not verify: forged, corrupted, or issued with another secret.
    #[error("token MAC does not verify")]
    BadMac,
    /// The token expired (beyond the allowed clock skew).
    #[error(
        "token expired at {expires_at_unix_ms} (now {now_unix_ms}, skew allowance {skew_ms} ms)"
    )]
    Expired {
        /// The token's expiry.
        expires_at_unix_ms: u64,
        /// The verifier's clock.
        now_unix_ms: u64,
        /// The skew allowed.
        skew_ms: u64,
    },
}

/// A parsed join token. Wiped on drop; `Debug`/`Display` show only its hash prefix and expiry.
///
/// # Example
/// ```
/// use portcullis_core::crypto::{JoinSecret, SecretKey};
/// use portcullis_core::rng::SeededRng;
/// use portcullis_core::token::{ClusterPin, JoinToken, Role, TokenError};
///
/// let mut rng = SeededRng::from_u64(1);
/// let cluster_key = SecretKey::generate(&mut rng);
/// let pin = ClusterPin::of(&cluster_key.public());
/// let secret = JoinSecret::generate(&mut rng);
///
/// let token = JoinToken::issue_random(&secret, pin, &mut rng, 10_000, Role::Member);
/// let text = token.expose_text();
/// assert!(text.starts_with("PCJT-"));
///
/// let parsed = JoinToken::parse(&text)?;
/// parsed.verify(&secret, pin, 5_000, 0)?;
/// assert!(matches!(parsed.verify(&secret, pin, 20_000, 0), Err(TokenError::Expired { .. })));
/// assert!(!format!("{parsed:?}").contains(&text[5..]));
/// # Ok::<(), TokenError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    body: TokenBody,
    tag: [u8; TOKEN_TAG_BYTES],
}

impl Drop for JoinToken {
    fn drop(&mut self) {
        self.tag.zeroize();
        self.body.token_id.zeroize();
    }
}

impl ZeroizeOnDrop for JoinToken {}

fn mac(secret: &JoinSecret, body: &[u8; TOKEN_BODY_BYTES]) -> [u8; TOKEN_TAG_BYTES] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail on 32 bytes.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose())
        .expect("invariant: HMAC takes keys of any length");
    m.update(MAC_DOMAIN);
    m.update(&[0]);
    m.update(body);
    m.finalize().into_bytes().into()
}

impl JoinToken {
    /// Issues a token with a caller-chosen id (the CLI draws it from the OS).
    pub fn issue(
        secret: &JoinSecret,
        cluster_pin: ClusterPin,
        token_id: [u8; 16],
        expires_at_unix_ms: u64,
        role: Role,
    ) -> JoinToken {
        let body = TokenBody {
            version: TOKEN_VERSION,
            cluster_pin,
            token_id,
            expires_at_unix_ms,
            role,
        };
        let tag = mac(secret, &body.to_bytes());
        JoinToken { body, tag }
    }

    /// Issues a token with a 128-bit id drawn from `rng`.
    pub fn issue_random<R: RngCore + CryptoRng>(
        secret: &JoinSecret,
        cluster_pin: ClusterPin,
        rng: &mut R,
        expires_at_unix_ms: u64,
        role: Role,
    ) -> JoinToken {
        let mut token_id = [0u8; 16];
        rng.fill_bytes(&mut token_id);
        Self::issue(secret, cluster_pin, token_id, expires_at_unix_ms, role)
    }

    /// The body (version, pin, expiry, role).
    pub fn body(&self) -> &TokenBody {
        &self.body
    }

    /// The token's bytes (body ‖ tag). Secret: this is what admits a node.
    pub fn expose_bytes(&self) -> Zeroizing<[u8; TOKEN_BYTES]> {
        let mut out = Zeroizing::new([0u8; TOKEN_BYTES]);
        out[..TOKEN_BODY_BYTES].copy_from_slice(&self.body.to_bytes());
        out[TOKEN_BODY_BYTES..].copy_from_slice(&self.tag);
        out
    }

    /// The printable token. Secret: hand it to the operator, never to a log.
    pub fn expose_text(&self) -> Zeroizing<String> {
        let bytes = self.expose_bytes();
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        text.push_str(TOKEN_PREFIX);
        text.push_str(&to_hex(bytes.as_slice()));
        Zeroizing::new(text)
    }

    /// SHA-256 of the token's bytes.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Hash32::of(&[self.expose_bytes().as_slice()]))
    }

    /// Parses printed token text (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        if text.len() > MAX_TOKEN_TEXT_BYTES {
            return Err(MalformedToken::TooLong.into());
        }
        let hex = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(MalformedToken::MissingPrefix)?;
        if !hex.len().is_multiple_of(2) {
            return Err(MalformedToken::OddLength.into());
        }
        let bytes = Zeroizing::new(from_hex(hex).ok_or(MalformedToken::NotHex)?);
        Self::from_bytes(&bytes)
    }

    /// Parses token bytes (body ‖ tag), as carried inside a join request.
    pub fn from_bytes(bytes: &[u8]) -> Result<JoinToken, TokenError> {
        // Version first: a future format may have another length.
        let version = *bytes.first().ok_or(MalformedToken::WrongLength {
            got: 0,
            expected: TOKEN_BYTES,
        })?;
        if version != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion {
                got: version,
                supported: TOKEN_VERSION,
            });
        }
        let bytes: &[u8; TOKEN_BYTES] =
            bytes.try_into().map_err(|_| MalformedToken::WrongLength {
                got: bytes.len(),
                expected: TOKEN_BYTES,
            })?;
        let role = Role::from_u8(bytes[57]).ok_or(MalformedToken::UnknownRole(bytes[57]))?;
        let mut pin = [0u8; 32];
        pin.copy_from_slice(&bytes[1..33]);
        let mut token_id = [0u8; 16];
        token_id.copy_from_slice(&bytes[33..49]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&bytes[49..57]);
        let mut tag = [0u8; TOKEN_TAG_BYTES];
        tag.copy_from_slice(&bytes[TOKEN_BODY_BYTES..]);
        Ok(JoinToken {
            body: TokenBody {
                version,
                cluster_pin: ClusterPin(Hash32(pin)),
                token_id,
                expires_at_unix_ms: u64::from_le_bytes(expires),
                role,
            },
            tag,
        })
    }

    /// Checks the cluster pin, the MAC (constant time) and expiry.
    ///
    /// A token is accepted while `now_unix_ms <= expires_at_unix_ms + skew_ms`: the allowance
    /// absorbs clock differences between the operator's machine and the listener. The ledger
    /// still judges expiry by its own entry time.
    pub fn verify(
        &self,
        secret: &JoinSecret,
        cluster_pin: ClusterPin,
        now_unix_ms: u64,
        skew_ms: u64,
    ) -> Result<(), TokenError> {
        if self.body.cluster_pin != cluster_pin {
            return Err(TokenError::WrongCluster {
                token_pin: self.body.cluster_pin,
                cluster_pin,
            });
        }
        let expected = Zeroizing::new(mac(secret, &self.body.to_bytes()));
        if !bool::from(expected.ct_eq(&self.tag)) {
            return Err(TokenError::BadMac);
        }
        if now_unix_ms > self.body.expires_at_unix_ms.saturating_add(skew_ms) {
            return Err(TokenError::Expired {
                expires_at_unix_ms: self.body.expires_at_unix_ms,
                now_unix_ms,
                skew_ms,
            });
        }
        Ok(())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("hash", &self.hash().0)
            .field("expires_at_unix_ms", &self.body.expires_at_unix_ms)
            .field("role", &self.body.role)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}<redacted, hash {}>", self.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::rng::SeededRng;

    fn setup() -> (JoinSecret, ClusterPin, JoinToken) {
        let mut rng = SeededRng::from_u64(5);
        let pin = ClusterPin::of(&SecretKey::generate(&mut rng).public());
        let secret = JoinSecret::generate(&mut rng);
        let token = JoinToken::issue_random(&secret, pin, &mut rng, 1_000_000, Role::Member);
        (secret, pin, token)
    }

    #[test]
    fn round_trip_text_and_bytes() {
        let (secret, pin, token) = setup();
        let parsed = JoinToken::parse(&format!("  {}\n", token.expose_text().as_str())).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.hash(), token.hash());
        assert_eq!(
            JoinToken::from_bytes(token.expose_bytes().as_slice()).unwrap(),
            token
        );
        assert_eq!(parsed.verify(&secret, pin, 1_000_000, 0), Ok(()));
        assert_eq!(
            token.expose_text().len(),
            TOKEN_PREFIX.len() + 2 * TOKEN_BYTES
        );
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let (secret, pin, token) = setup();
        let text = token.expose_text();

        assert_eq!(
            JoinToken::parse("XXXX-00"),
            Err(TokenError::Malformed(MalformedToken::MissingPrefix))
        );
        assert_eq!(
            JoinToken::parse(&"P".repeat(600)),
            Err(TokenError::Malformed(MalformedToken::TooLong))
        );
        assert_eq!(
            JoinToken::parse("PCJT-zz"),
            Err(TokenError::Malformed(MalformedToken::NotHex))
        );
        assert_eq!(
            JoinToken::parse(&text[..text.len() - 1]),
            Err(TokenError::Malformed(MalformedToken::OddLength))
        );
        assert_eq!(
            JoinToken::parse(&text[..text.len() - 2]),
            Err(TokenError::Malformed(MalformedToken::WrongLength {
                got: TOKEN_BYTES - 1,
                expected: TOKEN_BYTES
            }))
        );
        let mut bytes = *token.expose_bytes();
        bytes[0] = 2;
        assert_eq!(
            JoinToken::from_bytes(&bytes),
            Err(TokenError::UnsupportedVersion {
                got: 2,
                supported: 1
            })
        );
        let mut bytes = *token.expose_bytes();
        bytes[57] = 9;
        assert_eq!(
            JoinToken::from_bytes(&bytes),
            Err(TokenError::Malformed(MalformedToken::UnknownRole(9)))
        );

        // Flip one tag bit: bad MAC.
        let mut bytes = *token.expose_bytes();
        bytes[TOKEN_BYTES - 1] ^= 1;
        let forged = JoinToken::from_bytes(&bytes).unwrap();
        assert_eq!(forged.verify(&secret, pin, 0, 0), Err(TokenError::BadMac));

        // Another secret: bad MAC.
        let other = JoinSecret::from_bytes([1; 32]);
        assert_eq!(token.verify(&other, pin, 0, 0), Err(TokenError::BadMac));

        // Another cluster.
        let other_pin = ClusterPin(Hash32([9; 32]));
        assert!(matches!(
            token.verify(&secret, other_pin, 0, 0),
            Err(TokenError::WrongCluster { .. })
        ));

        // Expiry with skew: accepted up to expiry + skew, refused after.
        assert_eq!(token.verify(&secret, pin, 1_000_500, 500), Ok(()));
        assert!(matches!(
            token.verify(&secret, pin, 1_000_501, 500),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn never_prints_the_secret_part() {
        let (_, _, token) = setup();
        let text = token.expose_text();
        let tag_hex = to_hex(&token.tag);
        let id_hex = to_hex(&token.body.token_id);
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{:?}", token.body()),
        ] {
            assert!(!shown.contains(&tag_hex), "{shown}");
            assert!(!shown.contains(&id_hex), "{shown}");
            assert!(!shown.contains(&text[TOKEN_PREFIX.len()..]), "{shown}");
        }
    }
}

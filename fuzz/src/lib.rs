//! Fixtures shared by the fuzz targets and by `examples/make_corpus.rs`, so the seed corpus is
//! built from exactly the keys, secret and tokens the targets check against.

use std::sync::LazyLock;

use portcullis_core::config::LedgerConfig;
use portcullis_core::crypto::{Hash32, JoinSecret, PublicKey, SecretKey};
use portcullis_core::ledger::PresenterId;
use portcullis_core::token::{ClusterPin, JoinToken, Role, TokenHash};

/// The join secret `token_parse` verifies against.
pub fn join_secret() -> JoinSecret {
    JoinSecret::from_bytes([0x5e; 32])
}

/// The cluster pin `token_parse` verifies against.
pub fn cluster_pin() -> ClusterPin {
    *CLUSTER_PIN
}

static CLUSTER_PIN: LazyLock<ClusterPin> =
    LazyLock::new(|| ClusterPin::of(&SecretKey::from_secret_bytes(&[0xc1; 32]).public()));

/// Number of presenters (joiner node keys) in `ledger_commands`.
pub const PRESENTERS: usize = 3;

/// Presenter `n`'s node key: the public half of `SecretKey::from_secret_bytes(&[n + 1; 32])`.
pub fn node_key(n: usize) -> PublicKey {
    NODE_KEYS[n % PRESENTERS]
}

/// Presenter `n`'s id (the hash of [`node_key`]).
pub fn presenter(n: usize) -> PresenterId {
    PresenterId::of(&node_key(n))
}

static NODE_KEYS: LazyLock<[PublicKey; PRESENTERS]> = LazyLock::new(|| {
    core::array::from_fn(|n| {
        let seed = u8::try_from(n + 1).expect("few presenters");
        SecretKey::from_secret_bytes(&[seed; 32]).public()
    })
});

/// The ledger clock `ledger_commands` starts at (Unix ms).
pub const START_UNIX_MS: u64 = 1_000_000;

/// Number of tokens in `ledger_commands`.
pub const TOKENS: usize = 4;

/// Expiry of token `n`. An honest proposer always registers a hash with the same expiry (a
/// token's hash covers its body): the table binds them. Tokens 0 and 1 share an expiry, token
/// 3 never expires (`u64::MAX`, to exercise the saturating arithmetic).
pub const TOKEN_EXPIRY_UNIX_MS: [u64; TOKENS] = [
    START_UNIX_MS + 2_000,
    START_UNIX_MS + 2_000,
    START_UNIX_MS + 20_000,
    u64::MAX,
];

/// The ledger's expiry indices key records by `(expiry, first 8 hash bytes)`; tokens 0..=2
/// share those 8 bytes (and 0 and 1 their expiry too), so colliding keys are exercised.
const SHARED_PREFIX: [u8; 8] = [0xa1; 8];

/// Token `n` (any `n`; taken modulo [`TOKENS`]) as the ledger knows it: its hash. Tokens 0..=2
/// are made-up hashes with a shared prefix; token 3 is the hash of a real token ([`token`]).
pub fn token_hash(n: usize) -> TokenHash {
    TOKEN_HASHES[n % TOKENS]
}

static TOKEN_HASHES: LazyLock<[TokenHash; TOKENS]> = LazyLock::new(|| {
    core::array::from_fn(|n| {
        if n == TOKENS - 1 {
            return token(n).hash();
        }
        let mut bytes = [u8::try_from(n).expect("few tokens"); 32];
        bytes[..8].copy_from_slice(&SHARED_PREFIX);
        TokenHash(Hash32(bytes))
    })
});

/// A real token issued under [`join_secret`] and [`cluster_pin`], expiring at
/// `TOKEN_EXPIRY_UNIX_MS[n % TOKENS]`; token 2 is an observer's.
pub fn token(n: usize) -> JoinToken {
    let n = n % TOKENS;
    let id = u8::try_from(n).expect("few tokens");
    let role = if n == 2 { Role::Observer } else { Role::Member };
    JoinToken::issue(
        &join_secret(),
        cluster_pin(),
        [id; 16],
        TOKEN_EXPIRY_UNIX_MS[n],
        role,
    )
}

/// The small ledger `ledger_commands` runs: tight enough that purging, `LedgerFull`,
/// `MembershipFull` and stale proposals all happen within a short input.
pub fn small_ledger_config() -> LedgerConfig {
    LedgerConfig {
        max_token_records: 3,
        max_members: 2,
        record_grace_ms: 10_000,
        max_lease_ms: 5_000,
        max_purge_per_entry: 1,
        proposal_window: 4,
    }
}

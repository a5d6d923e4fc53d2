//! Hostile token bytes and text: parsing must never panic, a parsed token must round-trip, and
//! `verify` must give exactly the answer the token's contents call for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::crypto::to_hex;
use portcullis_core::token::{JoinToken, TOKEN_PREFIX, TokenError};
use portcullis_fuzz::{cluster_pin, join_secret};

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = JoinToken::from_bytes(data) {
        // Version-1 tokens have one length, so the bytes are the token.
        assert_eq!(&token.expose_bytes()[..], data);
        check(&token);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = JoinToken::parse(text)
    {
        check(&token);
    }
});

fn check(token: &JoinToken) {
    let again = JoinToken::from_bytes(&token.expose_bytes()[..]).expect("own bytes must parse");
    assert_eq!(&again, token);
    assert_eq!(again.hash(), token.hash());
    let text = token.expose_text();
    assert_eq!(JoinToken::parse(&text).as_ref(), Ok(token));

    // The oracle: a token verifies iff it names our cluster and carries the MAC our secret
    // gives its body; a token that fails both is refused for the cluster first.
    let secret = join_secret();
    let pin = cluster_pin();
    let body = *token.body();
    let reissued = JoinToken::issue(
        &secret,
        body.cluster_pin,
        body.token_id,
        body.expires_at_unix_ms,
        body.role,
    );
    let expected = if body.cluster_pin != pin {
        Err(TokenError::WrongCluster {
            token_pin: body.cluster_pin,
            cluster_pin: pin,
        })
    } else if reissued != *token {
        Err(TokenError::BadMac)
    } else {
        Ok(())
    };
    assert_eq!(token.verify(&secret, pin, 0, 0), expected);
    let late = token.verify(&secret, pin, u64::MAX, 1_000);
    match expected {
        Ok(()) if body.expires_at_unix_ms.saturating_add(1_000) < u64::MAX => {
            assert!(matches!(late, Err(TokenError::Expired { .. })), "{late:?}");
        }
        other => assert_eq!(late, other),
    }

    // Debug and Display never show the secret part.
    let secret_hex = &text[TOKEN_PREFIX.len()..];
    let tag_hex = to_hex(&token.expose_bytes()[portcullis_core::token::TOKEN_BODY_BYTES..]);
    for shown in [
        format!("{token:?}"),
        format!("{token}"),
        format!("{body:?}"),
    ] {
        assert!(!shown.contains(secret_hex), "{shown}");
        assert!(!shown.contains(&tag_hex), "{shown}");
    }
}

//! The flight recording's byte format is pinned: a recording written today must read the same
//! way tomorrow. A change in this snapshot (a new `Config` field, a new input variant, ...) is
//! a format change: bump `recording::FORMAT_VERSION`, then accept with
//! `INSTA_UPDATE=always cargo test -p portcullis-core --test recording_format`.
//! (The crate version inside the header is masked: a release is not a format change. Builds
//! with the test-only `canaries` feature carry an extra config field and skip this test.)
#![cfg(not(feature = "canaries"))]

use portcullis_core::config::Config;
use portcullis_core::crypto::{Hash32, SecretKey, to_hex};
use portcullis_core::node::{Input, NodeSetup, PeerId};
use portcullis_core::recording::{self, NodeStart, Recorder, RecorderOptions, SeedPolicy};
use portcullis_core::rng::{NodeSeed, SeededRng};
use portcullis_core::time::{Instant, Now};

/// A joiner's recording of three inputs, one record per line in hex.
fn recording_lines() -> String {
    let setup = NodeSetup {
        config: Config::default(),
        seed: NodeSeed::from_u64(9),
        node_key: SecretKey::generate(&mut SeededRng::from_u64(9)),
        secrets: None,
    };
    let options = RecorderOptions {
        seed: SeedPolicy::Included,
        ..RecorderOptions::default()
    };
    let now = |ms: u64| Now::new(Instant::from_millis(ms), 1_700_000_000_000 + ms);
    let (mut node, mut recorder, _) =
        Recorder::start_node(setup, now(0), NodeStart::Joiner, options).expect("valid setup");
    let peer_key = SecretKey::generate(&mut SeededRng::from_u64(10)).public();
    let inputs = [
        Input::Connected {
            peer: PeerId(1),
            node_key: peer_key,
            binding: Hash32([3; 32]),
        },
        Input::Received {
            from: PeerId(1),
            bytes: vec![1, 0, 99, 0],
        },
        Input::Persisted(1),
    ];
    for (ms, input) in (1..).zip(inputs) {
        let _ = recorder.handle(&mut node, now(ms), input);
    }
    let header = recorder.header_bytes().to_vec();
    let mut lines = vec![format!("header {}", to_hex(&header))];
    let mut file = header;
    while let Some(record) = recorder.poll_record() {
        lines.push(format!("record {}", to_hex(&record)));
        file.extend_from_slice(&record);
    }
    // What was written reads back.
    assert_eq!(recording::read(&file).expect("reads").records.len(), 4);
    let version_hex = to_hex(env!("CARGO_PKG_VERSION").as_bytes());
    lines
        .join("\n")
        .replacen(&version_hex, "<crate version>", 1)
}

#[test]
fn recording_format_is_pinned() {
    insta::assert_snapshot!(recording_lines());
}

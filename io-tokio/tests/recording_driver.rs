//! The flight recorder wired into the driver: a real node joining over QUIC with recording on
//! writes a decodable recording of its whole life, without the token, plus its seed note.
//! (Replaying recordings is tested in `sim/tests/replay_recording.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portcullis_core::recording::{self, Record, RecordedInput, RecordedSeed};
use portcullis_core::rng::NodeSeed;
use portcullis_io_tokio::demo::LocalCluster;
use portcullis_io_tokio::driver::{self, NodeOptions};
use portcullis_io_tokio::recording::RecordingWriterConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_joiner_writes_its_life_without_its_token() {
    let cluster = LocalCluster::start(3, LocalCluster::fast_config())
        .await
        .expect("3 founders start");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let token = cluster.issue_token(600_000);
    let token_text = token.expose_text().to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("joiner");
    let record_dir = dir.path().join("recording");
    let mut opts = NodeOptions::new(([127, 0, 0, 1], 0).into(), &data_dir);
    opts.config = LocalCluster::fast_config();
    opts.recording = Some(RecordingWriterConfig::new(&record_dir, "unused"));
    let joiner = driver::start(opts).await.expect("recorded joiner starts");
    let key = joiner.node_key();
    joiner
        .join_cluster_via(token, &[cluster.founders[0].addr()])
        .await
        .expect("the token admits");
    joiner.shutdown().await.expect("graceful stop");
    cluster.shutdown().await.expect("founders stop");

    let mut files: Vec<_> = std::fs::read_dir(&record_dir)
        .expect("recording dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no recording files");
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    for b in &bytes {
        let hay = String::from_utf8_lossy(b);
        assert!(
            !hay.contains(&token_text),
            "the raw token is in a recording"
        );
    }
    let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let rec = recording::read_files(&slices).expect("a decodable recording");
    assert_eq!(rec.header.node_key, key);
    assert!(matches!(rec.records.first(), Some(Record::Start { .. })));
    for (i, r) in rec.records.iter().enumerate() {
        assert_eq!(r.index(), i as u64, "records are contiguous");
    }
    let inputs: Vec<&RecordedInput> = rec
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Handle { input, .. } => Some(input),
            _ => None,
        })
        .collect();
    assert!(
        inputs
            .iter()
            .any(|i| matches!(i, RecordedInput::Command(_)))
    );
    assert!(
        inputs
            .iter()
            .any(|i| matches!(i, RecordedInput::Received { .. }))
    );
    assert!(
        inputs
            .iter()
            .any(|i| matches!(i, RecordedInput::Persisted(_)))
    );

    let seeds = data_dir.join("recording-seeds");
    let mode = std::fs::metadata(&seeds)
        .expect("seed note")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the seed note is private");
    let note = std::fs::read_to_string(&seeds).expect("seed note");
    assert!(note.starts_with("life-"), "{note}");
    // `NAME HEX`: the 32-byte seed whose fingerprint the (withheld) header holds.
    let hex = note.split_whitespace().nth(1).expect("`NAME SEED`");
    assert_eq!(hex.len(), 64, "{note}");
    let seed: NodeSeed = hex.parse().expect("the noted seed parses");
    assert_eq!(rec.header.seed, RecordedSeed::Withheld(seed.fingerprint()));
}

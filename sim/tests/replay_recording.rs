//! Flight recorder acceptance (issue 7): a recorded 3-node cluster doing admissions and a
//! namespace join replays with identical outputs (library and binary); an edited input is
//! reported at exactly its record; recordings hold no secret; a version mismatch is a typed
//! error.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_core::config::Config;
use portcullis_core::namespace::ops::NamespaceId;
use portcullis_core::node::Event;
use portcullis_core::recording::{
    self, FORMAT_VERSION, MAGIC, RebuildError, Record, RecordedCommand, RecordedInput,
    RecordedStart, RecordingError,
};
use portcullis_core::testing::{Cluster, Faults};
use portcullis_core::token::{JoinToken, TOKEN_BODY_BYTES};
use portcullis_sim::replay_recording::{self, ReplayError, load_secrets, replay_files};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-sim");

fn config() -> Config {
    portcullis_core::testing::quick_namespace_config()
}

/// A fresh directory under the system temp dir, unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-recording-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

struct Scenario {
    cluster: Cluster,
    tokens: Vec<JoinToken>,
    joiners: Vec<usize>,
    namespace: NamespaceId,
}

/// Three founders; two joiners admitted with tokens (one presented at two listeners, one
/// expired token refused); founder 0 creates a namespace, invites, founder 1 joins it; then
/// founder 1 crashes and restarts (its second recording starts from its durable state).
fn run_scenario(seed: u64) -> Scenario {
    let mut c = Cluster::new_recorded(3, seed, config(), Faults::default());
    assert!(c.run_until(20_000, |c| c.leader().is_some()), "no leader");
    let good = c.issue_token(600_000);
    let second = c.issue_token(600_000);
    let expired = c.expired_token(120_000);
    let a = c.add_joiner(&[0, 1, 2]);
    let b = c.add_joiner(&[0, 1, 2]);
    let late = c.add_joiner(&[0, 1, 2]);
    c.join(a, good.clone(), &[0, 1, 2]);
    c.join(b, second.clone(), &[2, 1, 0]);
    c.join(late, expired.clone(), &[1]);
    assert!(
        c.run_until(30_000, |c| c.admitted(a).is_some()
            && c.admitted(b).is_some()
            && c.join_failure(late).is_some()),
        "admissions did not settle"
    );

    let ns = c.create_namespace(0, [9; 16]);
    let invitation = c.invite(0, ns, 3_600_000);
    c.join_namespace(1, invitation, 10_000);
    assert!(
        c.run_until(10_000, |c| c.namespace_ready(1, ns).is_some()),
        "namespace join: {:?}",
        c.namespace_join_failure(1, ns)
    );
    c.run_for(2_000);
    c.crash(1);
    c.run_for(500);
    c.restart(1);
    assert!(c.run_until(10_000, |c| c.converged(&[0, 1, 2])));
    c.run_for(1_000);
    Scenario {
        cluster: c,
        tokens: vec![good, second, expired],
        joiners: vec![a, b, late],
        namespace: ns,
    }
}

/// Writes every recording to `dir/node-I-boot-B.rec`; returns `(node, boot, path)`.
fn write_recordings(c: &Cluster, dir: &Path) -> Vec<(usize, u64, PathBuf)> {
    let mut out = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for (boot, bytes) in node.recordings.iter().enumerate() {
            let path = dir.join(format!("node-{i}-boot-{boot}.rec"));
            std::fs::write(&path, bytes).expect("write recording");
            out.push((i, boot as u64, path));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn recorded_cluster_replays_identically_through_the_library() {
    let s = run_scenario(11);
    let c = &s.cluster;
    assert!(c.nodes[1].recordings.len() == 2, "founder 1 restarted once");
    let dir = scratch("library");
    let files = write_recordings(c, &dir);
    assert_eq!(files.len(), 3 + 3 + 1);
    let mut total = 0;
    for (i, boot, path) in &files {
        let report = replay_files(std::slice::from_ref(path), &c.replay_secrets(*i, *boot))
            .unwrap_or_else(|e| panic!("node {i} boot {boot}: {e}"));
        assert!(
            report.identical(),
            "node {i} boot {boot}: {}",
            report
                .divergence
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(
            report.notes.is_empty(),
            "every token was rebuilt: {:?}",
            report.notes
        );
        let records = recording::read(&std::fs::read(path).unwrap())
            .unwrap()
            .records
            .len();
        assert_eq!(report.records, records as u64);
        total += report.records;
    }
    // Hundreds of handles across 7 lives (lazy ticks leave few timer records: ~400 today).
    assert!(total > 300, "a real run was recorded ({total} records)");

    // The restarted founder's second life starts from its durable state, namespace identity
    // key redacted and rebuilt from the supplied key.
    let second = recording::read(&c.nodes[1].recordings[1]).unwrap();
    match &second.records[0] {
        Record::Start {
            start: RecordedStart::Recover { namespace_keys, .. },
            ..
        } => assert_eq!(namespace_keys.len(), 1),
        other => panic!("expected a Recover start, got {other:?}"),
    }
    // Missing that key is a typed error, not a divergence.
    let mut secrets = c.replay_secrets(1, 1);
    secrets.namespace_keys.clear();
    match replay_recording::replay(&second, &secrets) {
        Err(ReplayError::Rebuild {
            index: 0,
            source: RebuildError::MissingNamespaceKey(_),
        }) => {}
        other => panic!("expected a missing namespace key, got {other:?}"),
    }
    // A wrong node key is refused before anything runs.
    let first = recording::read(&c.nodes[0].recordings[0]).unwrap();
    match replay_recording::replay(&first, &c.replay_secrets(2, 0)) {
        Err(ReplayError::Rebuild {
            index: 0,
            source: RebuildError::WrongSecret("node key"),
        }) => {}
        other => panic!("expected a wrong node key, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_secret_files(c: &Cluster, dir: &Path, i: usize) -> (PathBuf, PathBuf) {
    let secrets_dir = dir.join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let admission = c.admission_secrets();
    std::fs::write(
        secrets_dir.join(replay_recording::CLUSTER_KEY_FILE),
        *admission.cluster_key.secret_bytes(),
    )
    .unwrap();
    std::fs::write(
        secrets_dir.join(replay_recording::JOIN_SECRET_FILE),
        admission.join_secret.expose(),
    )
    .unwrap();
    let key = dir.join(format!("node-{i}.key"));
    std::fs::write(&key, c.node_secret_bytes(i)).unwrap();
    (secrets_dir, key)
}

fn run_bin(file: &Path, secrets: &Path, key: &Path, seed: &str) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("replay-recording")
        .arg(file)
        .arg("--secrets")
        .arg(secrets)
        .arg("--node-key")
        .arg(key)
        .arg("--seed")
        .arg(seed)
        .output()
        .expect("run portcullis-sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Index of the `CreateNamespace` command in a recording.
fn create_namespace_record(rec: &recording::Recording) -> usize {
    rec.records
        .iter()
        .position(|r| {
            matches!(
                r,
                Record::Handle {
                    input: RecordedInput::Command(RecordedCommand::CreateNamespace { .. }),
                    ..
                }
            )
        })
        .expect("founder 0 created a namespace")
}

#[test]
fn the_binary_replays_identically_and_reports_an_edited_input_at_its_record() {
    let s = run_scenario(12);
    let c = &s.cluster;
    let dir = scratch("binary");
    let files = write_recordings(c, &dir);
    let (secrets_dir, key0) = write_secret_files(c, &dir, 0);
    // As the driver notes it in `recording-seeds`: 64 hex characters.
    let seed0 = c.replay_secrets(0, 0).seed.unwrap().expose_hex();
    assert_eq!(seed0.len(), 64);

    // Founder 0 admitted nodes and created the namespace: replay it through the binary.
    let (_, _, path0) = files.iter().find(|(i, b, _)| *i == 0 && *b == 0).unwrap();
    let (code, stdout, stderr) = run_bin(path0, &secrets_dir, &key0, &seed0);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("identical: "), "{stdout}");

    // A joiner (its token tag rebuilt from the join secret in the secrets dir).
    let a = s.joiners[0];
    let key_a = dir.join("joiner.key");
    std::fs::write(&key_a, c.node_secret_bytes(a)).unwrap();
    let (_, _, path_a) = files.iter().find(|(i, _, _)| *i == a).unwrap();
    let (code, stdout, stderr) = run_bin(
        path_a,
        &secrets_dir,
        &key_a,
        &c.replay_secrets(a, 0).seed.unwrap().expose_hex(),
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");

    // Founder 1's second life, recovered from its disk: its namespace identity key is
    // supplied as a file.
    let (_, _, path1) = files.iter().find(|(i, b, _)| *i == 1 && *b == 1).unwrap();
    let (_, key1) = write_secret_files(c, &dir, 1);
    let secrets1 = c.replay_secrets(1, 1);
    let ns_key = dir.join("ns.key");
    std::fs::write(&ns_key, *secrets1.namespace_keys[0].secret_bytes()).unwrap();
    let run1 = |extra: &[&Path]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("replay-recording")
            .arg(path1)
            .arg("--secrets")
            .arg(&secrets_dir)
            .arg("--node-key")
            .arg(&key1)
            .arg("--seed")
            .arg(&*secrets1.seed.as_ref().unwrap().expose_hex());
        for p in extra {
            cmd.arg("--namespace-key").arg(p);
        }
        cmd.output().expect("run portcullis-sim")
    };
    let out = run1(&[&ns_key]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run1(&[]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no namespace key"));

    // Edit one input: the namespace salt of founder 0's CreateNamespace command.
    let mut rec = recording::read(&std::fs::read(path0).unwrap()).unwrap();
    let at = create_namespace_record(&rec);
    if let Record::Handle {
        input: RecordedInput::Command(RecordedCommand::CreateNamespace { salt }),
        ..
    } = &mut rec.records[at]
    {
        salt[0] ^= 0xff;
    }
    let edited = dir.join("edited.rec");
    std::fs::write(&edited, rec.to_bytes()).unwrap();

    // The library names exactly that record, with a readable diff.
    let report = replay_files(std::slice::from_ref(&edited), &c.replay_secrets(0, 0)).unwrap();
    let d = report.divergence.expect("the edit diverges");
    assert_eq!(d.index, at as u64);
    assert_eq!(
        report.records,
        at as u64 + 1,
        "replay stops at the divergence"
    );
    assert!(d.input.contains("CreateNamespace"), "{}", d.input);
    // The new namespace's batch (admin key, create op) differs; `NamespaceCreated` waits for
    // that batch to be durable, a later record.
    assert!(
        d.diff
            .iter()
            .any(|l| l.contains("Persist(") && l.contains("Identity {")),
        "{:?}",
        d.diff
    );
    assert_ne!(d.expected, d.actual);

    // So does the binary, with its own exit code.
    let (code, stdout, _) = run_bin(&edited, &secrets_dir, &key0, &seed0);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.starts_with(&format!("first divergence at record {at}\n")),
        "{stdout}"
    );

    // A recording of another format version: typed error, exit code 6.
    let mut bytes = std::fs::read(path0).unwrap();
    bytes[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(
        recording::read(&bytes),
        Err(RecordingError::UnsupportedVersion {
            got: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        })
    );
    let future = dir.join("future.rec");
    std::fs::write(&future, &bytes).unwrap();
    let (code, _, stderr) = run_bin(&future, &secrets_dir, &key0, &seed0);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("format version"), "{stderr}");

    // A wrong seed (its last byte changed) is a secrets error, exit code 7; one that is not a
    // seed at all is refused by the argument parser.
    let mut wrong = seed0[..62].to_owned();
    wrong.push_str(if seed0.ends_with("00") { "01" } else { "00" });
    let (code, _, stderr) = run_bin(path0, &secrets_dir, &key0, &wrong);
    assert_eq!(code, 7, "{stderr}");
    let (code, _, stderr) = run_bin(path0, &secrets_dir, &key0, &seed0[..63]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("64 hex characters"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recordings_hold_no_secret_key_token_or_namespace_key() {
    let s = run_scenario(13);
    let c = &s.cluster;
    let admission = c.admission_secrets();
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        (
            "cluster key".into(),
            admission.cluster_key.secret_bytes().to_vec(),
        ),
        (
            "join secret".into(),
            admission.join_secret.expose().to_vec(),
        ),
    ];
    for i in 0..c.nodes.len() {
        secrets.push((format!("node {i} key"), c.node_secret_bytes(i).to_vec()));
        for (ns, d) in &c.nodes[i].disk.namespaces {
            if let Some(identity) = &d.identity {
                secrets.push((format!("node {i} key in {ns}"), identity.0.to_vec()));
            }
        }
    }
    // The admin's key of the namespace and founder 1's identity in it are among them.
    let ns_keys = secrets.iter().filter(|(n, _)| n.contains(" in ")).count();
    assert!(ns_keys >= 2, "namespace keys found on disk: {ns_keys}");
    for token in &s.tokens {
        let bytes = token.expose_bytes();
        secrets.push(("token".into(), bytes.to_vec()));
        secrets.push(("token tag".into(), bytes[TOKEN_BODY_BYTES..].to_vec()));
        secrets.push(("token text".into(), token.expose_text().as_bytes().to_vec()));
        // Hex of the tag, in case some text form slipped in.
        let text = token.expose_text();
        secrets.push((
            "token tag hex".into(),
            text.as_bytes()[text.len() - 64..].to_vec(),
        ));
    }

    let mut joiner_tokens_seen = 0;
    for (i, node) in c.nodes.iter().enumerate() {
        for (boot, bytes) in node.recordings.iter().enumerate() {
            for (name, secret) in &secrets {
                assert!(
                    !contains(bytes, secret),
                    "node {i} boot {boot}'s recording holds the {name}"
                );
            }
            // What replaces the tokens is there: each joiner's command holds its token's body
            // and hash.
            let rec = recording::read(bytes).unwrap();
            for r in &rec.records {
                if let Record::Handle {
                    input: RecordedInput::Command(RecordedCommand::JoinCluster { token, .. }),
                    ..
                } = r
                {
                    assert!(s.joiners.contains(&i));
                    assert!(s.tokens.iter().any(|t| t.hash() == token.hash));
                    joiner_tokens_seen += 1;
                }
            }
        }
    }
    assert_eq!(joiner_tokens_seen, 3);
    // The seed is withheld by default (it derives the namespace keys).
    let header = recording::read(&c.nodes[0].recordings[0]).unwrap().header;
    assert!(matches!(header.seed, recording::RecordedSeed::Withheld(_)));
    // Sanity: the scenario did what it claims.
    assert!(
        c.events(0)
            .iter()
            .any(|e| matches!(e, Event::NamespaceCreated { .. }))
    );
    assert!(c.namespace_ready(1, s.namespace).is_some());
}

#[test]
fn unreadable_recordings_are_typed_errors() {
    assert_eq!(
        recording::read(b"not a recording at all"),
        Err(RecordingError::NotARecording)
    );
    let s = run_scenario(14);
    let bytes = &s.cluster.nodes[0].recordings[0];
    // Cut inside the last record.
    assert!(matches!(
        recording::read(&bytes[..bytes.len() - 3]),
        Err(RecordingError::Truncated { .. })
    ));
    // A rotated-away first file: the rest starts mid-run.
    let rec = recording::read(bytes).unwrap();
    let mut tail = rec.clone();
    tail.records.drain(..10);
    assert_eq!(
        recording::read(&tail.to_bytes()),
        Err(RecordingError::NoStart)
    );
    // A dropped record in the middle.
    let mut gap = rec;
    gap.records.remove(5);
    assert_eq!(
        recording::read(&gap.to_bytes()),
        Err(RecordingError::Gap {
            expected: 5,
            found: 6
        })
    );
    // Files of different recordings do not mix.
    let other = &s.cluster.nodes[2].recordings[0];
    assert_eq!(
        recording::read_files(&[bytes.as_slice(), other.as_slice()]),
        Err(RecordingError::HeaderMismatch { file: 1 })
    );
    // Secrets loading: a secret file of the wrong length is refused.
    let dir = scratch("secrets");
    std::fs::write(dir.join(replay_recording::JOIN_SECRET_FILE), [1u8; 7]).unwrap();
    assert!(matches!(
        load_secrets(Some(&dir), None, None),
        Err(ReplayError::SecretLength { len: 7, .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

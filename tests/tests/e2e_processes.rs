//! End-to-end tests of real `portcullis` processes on 127.0.0.1.
//!
//! The processes run `portcullis-e2e`, this crate's build of the `portcullis` command line
//! (`portcullis_io_tokio::app::main`, the very function the `portcullis` binary runs): Cargo
//! gives the path of a freshly built binary only to the tests of the package that defines it.
//! Every node binds port 0 and prints `listening on ADDR` first; waits are generous and
//! nothing asserts on timing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
/// Longest wait for one line of a node's output (a join, a start).
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a process to exit: a joiner that cannot be admitted exits at its join
/// deadline (60 s by default), and waiting just 60 s raced that exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

/// Core overrides that make elections and namespace joins quick on loopback.
const FAST_CORE: &str = r#"
[core]
raft_tick_ms = 20
election_ticks = 10
heartbeat_ticks = 2
connect_retry_ms = 200
join_deadline_ms = 20000
token_clock_skew_ms = 0

[core.namespace]
beacon_interval_ms = 500
beacon_ttl_ms = 2000
probe_answer_interval_ms = 200
probe_retry_ms = 200
backfill_silence_ms = 500
announce_retry_ms = 300
subscriptions_refresh_ms = 500
ack_wait_ms = 2000
retry_initial_ms = 300
retry_max_ms = 2000
"#;

/// A running node process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(name: &str, root: &Path, args: &[&str]) -> Proc {
        let stderr = root.join(format!("{name}.stderr"));
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn portcullis");
        let mut child = child;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            name: name.to_owned(),
            stderr,
        }
    }

    /// The rest of the first line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{}: no `{prefix}` line (exit {status:?}); stderr:\n{}",
                        self.name,
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
            }
        }
    }

    fn addr(&mut self) -> SocketAddr {
        self.wait_line("listening on ")
            .parse()
            .expect("listening on ADDR")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    fn exit_code(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not exit",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run portcullis")
}

fn stdout_of(args: &[&str]) -> String {
    let out = portcullis(args);
    assert!(
        out.status.success(),
        "portcullis {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A cluster's secrets and the directory tree of one test.
struct Setup {
    root: tempfile::TempDir,
    secrets: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().expect("tempdir");
        let secrets = root.path().join("secrets");
        stdout_of(&["cluster", "init", "--dir", s(&secrets)]);
        Setup { root, secrets }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn token(&self, ttl: &str) -> String {
        stdout_of(&["token", "create", "--dir", s(&self.secrets), "--ttl", ttl])
    }

    /// Writes `NAME.toml` for a node (admitting when `admitting`) and returns its path.
    fn config(&self, name: &str, bootstrap: bool, admitting: bool) -> PathBuf {
        let mut text =
            format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{name}\"\nbootstrap = {bootstrap}\n");
        if admitting {
            text.push_str(&format!("secrets_dir = \"{}\"\n", s(&self.secrets)));
        }
        text.push_str(FAST_CORE);
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn bootstrap(&self, name: &str) -> (Proc, SocketAddr) {
        let config = self.config(name, true, true);
        let mut p = Proc::spawn(
            name,
            self.root.path(),
            &["node", "run", "--config", s(&config)],
        );
        let addr = p.addr();
        (p, addr)
    }

    /// Starts `node join` for `name`; `extra` adds flags (e.g. `--exit-after-join`).
    fn join(&self, name: &str, token: &str, seed: SocketAddr, admitting: bool) -> Proc {
        let config = self.config(name, false, admitting);
        let seed = seed.to_string();
        Proc::spawn(
            name,
            self.root.path(),
            &[
                "node",
                "join",
                "--config",
                s(&config),
                "--token",
                token,
                "--seed",
                &seed,
            ],
        )
    }

    fn join_once(&self, name: &str, token: &str, seed: SocketAddr) -> Proc {
        self.join_once_via(name, token, &[seed])
    }

    /// `node join --exit-after-join` with every address of `seeds` as a `--seed`, in order.
    fn join_once_via(&self, name: &str, token: &str, seeds: &[SocketAddr]) -> Proc {
        let dir = self.path(name);
        let mut args = vec![
            "node".to_owned(),
            "join".to_owned(),
            "--data-dir".to_owned(),
            s(&dir).to_owned(),
            "--token".to_owned(),
            token.to_owned(),
            "--exit-after-join".to_owned(),
        ];
        for seed in seeds {
            args.push("--seed".to_owned());
            args.push(seed.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(name, self.root.path(), &args)
    }

    fn status(&self, name: &str) -> String {
        stdout_of(&["status", "--data-dir", s(&self.path(name))])
    }
}

/// The ids on a `status` line such as `voters       [1, 2]`.
fn ids(status: &str, field: &str) -> Vec<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    line[line.find('[').expect("[") + 1..line.find(']').expect("]")]
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// Promotes `members` through `name` (the leader), once each is a learner there. The leader
/// takes one membership change at a time and refuses another while one is in progress (the
/// previous promotion, or a learner being added): that refusal is retried.
fn promote(setup: &Setup, name: &str, members: &[u64]) {
    for id in members {
        eventually(setup, name, "the joiner is a learner", |st| {
            ids(st, "learners").contains(id)
        });
        let (dir, id) = (setup.path(name), id.to_string());
        let args = ["member", "promote", "--data-dir", s(&dir), &id];
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        loop {
            let out = portcullis(&args);
            if out.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("membership change is in progress")
                    && std::time::Instant::now() < deadline,
                "portcullis {args:?} failed: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Retries `check` on `name`'s status until it holds.
fn eventually(setup: &Setup, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    loop {
        let status = setup.status(name);
        if check(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last status of {name}:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_processes_form_a_cluster_admit_a_fourth_and_join_a_namespace() {
    let setup = Setup::new();
    let (_a, a_addr) = setup.bootstrap("a");
    let mut b = setup.join("b", &setup.token("10m"), a_addr, true);
    let b_addr = b.addr();
    let b_id: u64 = b.wait_line("admitted as member ").parse().unwrap();
    let mut c = setup.join("c", &setup.token("10m"), a_addr, true);
    c.addr();
    let c_id: u64 = c.wait_line("admitted as member ").parse().unwrap();
    assert_ne!(b_id, c_id);
    promote(&setup, "a", &[b_id, c_id]);
    eventually(&setup, "a", "three voters", |st| {
        ids(st, "voters").len() == 3
    });

    // The fourth node joins through B (an admitting member that is not the founder).
    let mut d = setup.join("d", &setup.token("10m"), b_addr, false);
    let d_addr = d.addr();
    let d_id: u64 = d.wait_line("admitted as member ").parse().unwrap();
    let status = eventually(&setup, "a", "the fourth is a learner", |st| {
        ids(st, "learners").contains(&d_id)
    });
    assert_eq!(ids(&status, "voters").len(), 3, "{status}");
    let audit = stdout_of(&["token", "list", "--data-dir", s(&setup.path("a"))]);
    assert!(
        audit.contains(&format!("admitted member {c_id}")),
        "{audit}"
    );

    // Protocol B across processes: A creates a namespace and invites; D joins through A.
    let namespace = stdout_of(&["namespace", "create", "--data-dir", s(&setup.path("a"))]);
    assert_eq!(namespace.len(), 64, "{namespace}");
    let invitation = stdout_of(&[
        "namespace",
        "invite",
        "--data-dir",
        s(&setup.path("a")),
        "--namespace",
        &namespace,
        "--ttl",
        "10m",
    ]);
    let ready = stdout_of(&[
        "namespace",
        "join",
        "--data-dir",
        s(&setup.path("d")),
        "--invitation",
        &invitation,
        "--peer",
        &a_addr.to_string(),
        "--deadline",
        "40s",
    ]);
    assert!(ready.starts_with("ready: "), "{ready}");
    // `namespace members` on the joiner: both the admin and the joiner, one admin.
    let members = stdout_of(&[
        "namespace",
        "members",
        "--data-dir",
        s(&setup.path("d")),
        "--namespace",
        &namespace,
    ]);
    assert!(
        members.starts_with("2 members, 1 admins") && members.contains("this node is a member"),
        "{members}"
    );
    assert_eq!(members.matches("(admin)").count(), 1, "{members}");

    // A fifth node given only D, which holds no join secret: D redirects it to the voters, and
    // it is admitted through one of them.
    let mut e = setup.join_once("e", &setup.token("10m"), d_addr);
    assert_eq!(e.exit_code(), 0, "{}", e.stderr_text());
    let e_id: u64 = e.wait_line("admitted as member ").parse().unwrap();
    assert!(![b_id, c_id, d_id].contains(&e_id));
}

#[test]
fn one_token_presented_by_two_joiners_at_once_admits_exactly_one() {
    let setup = Setup::new();
    let (_a, a_addr) = setup.bootstrap("a");
    let token = setup.token("10m");
    let mut first = setup.join_once("j1", &token, a_addr);
    let mut second = setup.join_once("j2", &token, a_addr);
    let codes = [first.exit_code(), second.exit_code()];
    let admitted = codes.iter().filter(|&&c| c == 0).count();
    assert_eq!(
        admitted,
        1,
        "codes {codes:?}\nj1: {}\nj2: {}",
        first.stderr_text(),
        second.stderr_text()
    );
    // The loser was told the token is consumed (it may first have seen `Conflict` and retried).
    assert!(codes.contains(&14), "codes {codes:?}");
    let status = setup.status("a");
    assert_eq!(ids(&status, "learners").len(), 1, "{status}");
}

#[test]
fn expired_wrong_cluster_and_replayed_tokens_have_their_own_message_and_exit_code() {
    let setup = Setup::new();
    let (_a, a_addr) = setup.bootstrap("a");

    // Expired: a 1 ms token, presented once it has lapsed (the test config allows no skew).
    let expired = setup.token("1ms");
    std::thread::sleep(Duration::from_millis(50));
    let mut p = setup.join_once("expired", &expired, a_addr);
    assert_eq!(p.exit_code(), 10, "{}", p.stderr_text());
    assert!(p.stderr_text().contains("expired"), "{}", p.stderr_text());
    // Its logs went to a pipe, not a terminal: no colour escape codes in them.
    assert!(!p.stderr_text().contains('\u{1b}'), "{}", p.stderr_text());

    // Wrong cluster: a token from other secrets.
    let other = setup.path("other-secrets");
    stdout_of(&["cluster", "init", "--dir", s(&other)]);
    let foreign = stdout_of(&["token", "create", "--dir", s(&other), "--ttl", "10m"]);
    let mut p = setup.join_once("foreign", &foreign, a_addr);
    let code = p.exit_code();
    assert_eq!(code, 11, "{}", p.stderr_text());
    assert!(p.stderr_text().contains("cluster"), "{}", p.stderr_text());

    // Replayed: a consumed token presented by another node.
    let token = setup.token("10m");
    let mut first = setup.join_once("first", &token, a_addr);
    assert_eq!(first.exit_code(), 0, "{}", first.stderr_text());
    let mut replay = setup.join_once("replay", &token, a_addr);
    assert_eq!(replay.exit_code(), 14, "{}", replay.stderr_text());
    assert!(
        replay.stderr_text().contains("consumed"),
        "{}",
        replay.stderr_text()
    );

    // A token that does not parse never reaches the network.
    let out = portcullis(&[
        "node",
        "join",
        "--data-dir",
        s(&setup.path("junk")),
        "--token",
        "PCJT-garbage",
        "--seed",
        &a_addr.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(13));
}

#[test]
fn a_mebibyte_of_random_bytes_at_the_port_does_not_crash_the_node() {
    let setup = Setup::new();
    let (mut a, a_addr) = setup.bootstrap("a");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // xorshift: reproducible "random" bytes without a dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut datagram = [0u8; 1024];
    for _ in 0..1024 {
        for byte in datagram.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        // Datagrams may be dropped by the OS under load; that is fine.
        let _ = socket.send_to(&datagram, a_addr);
    }
    assert!(a.child.try_wait().unwrap().is_none(), "the node exited");
    // Still serving: status answers and a join succeeds.
    setup.status("a");
    let mut j = setup.join_once("after-noise", &setup.token("10m"), a_addr);
    assert_eq!(j.exit_code(), 0, "{}", j.stderr_text());
}

#[test]
fn kill_9_of_the_leader_during_admissions_loses_no_admission_and_consumes_no_token_twice() {
    let setup = Setup::new();
    let (mut a, a_addr) = setup.bootstrap("a");
    let mut b = setup.join("b", &setup.token("10m"), a_addr, true);
    let b_addr = b.addr();
    let b_id: u64 = b.wait_line("admitted as member ").parse().unwrap();
    let mut c = setup.join("c", &setup.token("10m"), a_addr, true);
    let c_addr = c.addr();
    let c_id: u64 = c.wait_line("admitted as member ").parse().unwrap();
    promote(&setup, "a", &[b_id, c_id]);
    eventually(&setup, "b", "three voters", |st| {
        ids(st, "voters").len() == 3
    });

    // A stream of admissions through every member; the leader (A) dies in the middle. Each
    // joiner is given all three members, starting at a different one: one whose first seed
    // died goes on to the next (given A alone, it could only wait out its join deadline).
    let seeds = [a_addr, b_addr, c_addr];
    let mut joiners = Vec::new();
    for i in 0..9 {
        let token = setup.token("10m");
        let order = [seeds[i % 3], seeds[(i + 1) % 3], seeds[(i + 2) % 3]];
        joiners.push((
            token.clone(),
            setup.join_once_via(&format!("s{i}"), &token, &order),
        ));
        if i == 4 {
            a.kill();
        }
    }
    // (token, member id) of every joiner that was answered `JoinAccepted`.
    let mut admitted = Vec::new();
    for (token, joiner) in &mut joiners {
        if joiner.exit_code() == 0 {
            let id: u64 = joiner.wait_line("admitted as member ").parse().unwrap();
            admitted.push((token.clone(), id));
        }
    }
    // Restart A from its data directory, on its old address (members know it by that).
    let config = setup.path("a.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &a_addr.to_string());
    std::fs::write(&config, text).unwrap();
    let mut a = Proc::spawn(
        "a-restarted",
        setup.root.path(),
        &["node", "run", "--config", s(&config)],
    );
    assert_eq!(a.addr(), a_addr);
    // Every answered admission is still a member, on every replica (a joiner whose answer was
    // lost with the leader may be a member too: that is allowed).
    for name in ["a", "b", "c"] {
        eventually(&setup, name, "admissions survive the restart", |st| {
            let learners = ids(st, "learners");
            admitted.iter().all(|(_, id)| learners.contains(id)) && ids(st, "voters").len() == 3
        });
    }
    // No token admits twice: each admitted token, presented by a new node, is consumed.
    for (i, (token, _)) in admitted.iter().enumerate().take(3) {
        let mut replay = setup.join_once(&format!("replay{i}"), token, b_addr);
        assert_eq!(replay.exit_code(), 14, "{}", replay.stderr_text());
    }
    // And the cluster serves admissions again, through the restarted node too.
    for (i, seed) in [a_addr, b_addr].into_iter().enumerate() {
        let mut j = setup.join_once(&format!("after{i}"), &setup.token("10m"), seed);
        assert_eq!(j.exit_code(), 0, "{}", j.stderr_text());
    }
    assert!(!admitted.is_empty(), "some admissions completed");
}

#[test]
fn metrics_endpoint_counts_admissions_in_prometheus_text() {
    use std::io::{Read, Write};
    let setup = Setup::new();
    let config = setup.config("a", true, true);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.insert_str(0, "metrics_listen = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let mut a = Proc::spawn(
        "a",
        setup.root.path(),
        &["node", "run", "--config", s(&config)],
    );
    let a_addr = a.addr();
    let metrics: SocketAddr = a
        .wait_line("metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let mut j = setup.join_once("j", &setup.token("10m"), a_addr);
    assert_eq!(j.exit_code(), 0, "{}", j.stderr_text());
    let mut replay = setup.join_once("r", &setup.token("1ms"), a_addr);
    assert_eq!(replay.exit_code(), 10, "{}", replay.stderr_text());

    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let sample = |series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    assert_eq!(
        sample("portcullis_admissions_granted_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample("portcullis_admission_rejections_total{reason=\"expired\"}"),
        Some(1.0),
        "{body}"
    );
    // The granted admission's latency is in the histogram.
    assert!(
        sample("portcullis_admission_duration_ms_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    // The admission's entries were appended and applied here: Raft commit latency observed.
    assert!(
        sample("portcullis_raft_commit_duration_ms_count").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    // The join phase series exist (no namespace join in this test: zero observations).
    for phase in ["probe", "backfill", "acks"] {
        let series = format!("portcullis_namespace_join_{phase}_duration_ms_count");
        assert_eq!(sample(&series), Some(0.0), "{body}");
    }
}

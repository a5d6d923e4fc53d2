//! Admission benchmark: portcullis admissions against etcd's equivalent single-use consume.
//!
//! Two load generators with the same shape and the same output, so `bench/etcd-compare.sh` can
//! put them side by side:
//!
//! ```text
//!   portcullis mode                              etcd mode
//!   fresh 3-founder loopback cluster per C       3-member etcd cluster (started by the script)
//!   (QUIC, redb, fsync per commit)               keys tok/<round>/<i> = "issued" (untimed)
//!   tokens issued (untimed)                           │
//!        │                                       C workers, one keep-alive HTTP/1.1 connection
//!   C workers, one join-client endpoint each       each ─▶ POST /v3/kv/txn
//!     ─▶ [timed: one admission]                     compare value == "issued", put "consumed"
//!     fresh node key ─▶ new connection to one seed  [timed: one consume]
//!     (QUIC+TLS handshake under that key)                │
//!     ─▶ ClusterInfo (pin check) ─▶ JoinRequest
//!     (token + proof) ─▶ listener checks ─▶ Raft:
//!     [Register, BeginInFlight], then [Consume]
//!     ─▶ JoinAccepted with a credential for the key
//!        │                                            │
//!   per C: ops/s (over the round's wall time), latency p50 / p99
//!   RESULT <system> <C>,<ops_per_s>,<p50_ms>,<p99_ms> ...
//!   portcullis mode also: this process's CPU per admission and the ceiling it sets,
//!   CEILING portcullis <C>,<cpu_ms>,<admissions_per_s> ...
//! ```
//!
//! One admission is what a new node needs to be let in: a new node identity, a connection
//! authenticated with it, the token and proof checks, both Raft commits of Protocol A (fsynced on
//! a quorum) and the `JoinAccepted` with a credential, checked by the joiner. It is timed with
//! [`portcullis_io_tokio::join_client`], which presents the token without starting a node (no
//! redb store, one seed dialed instead of all): what a joiner runs before its node starts. Each
//! worker keeps one client endpoint (UDP socket) for its joins, as one admitting tool would;
//! every admission still has its own key and its own authenticated connection, so the
//! cluster's side of the work is that of a new machine joining. Until that client existed each
//! admission started a whole joiner node first (about 10x slower at 64 clients on this 2-core
//! machine, nearly all of it start-up and handshakes with every seed). The admitted members then become Raft learners, as in production; their nodes never
//! start here, so the leader's attempts to reach them are part of the cluster's load. Joiners
//! run in this process, on the same cores as the cluster. The etcd client is a few dozen lines
//! over a raw `TcpStream` rather than an HTTP or etcd crate: one request shape, one response
//! field (`succeeded`).
//!
//! Run:
//! `cargo run --release -p portcullis-io-tokio --example admission_bench -- portcullis`
//! `cargo run --release -p portcullis-io-tokio --example admission_bench -- etcd 127.0.0.1:2379,...`
//! Env: `PORTCULLIS_BENCH_ADMISSIONS` (operations per concurrency level, default 200).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_core::config::Config;
use portcullis_core::crypto::SecretKey;
use portcullis_core::ledger::Addrs;
use portcullis_io_tokio::demo::LocalCluster;
use portcullis_io_tokio::driver;
use portcullis_io_tokio::join_client::JoinClient;
use portcullis_io_tokio::transport::TransportConfig;
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Concurrency levels measured, in order.
const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Operations per concurrency level unless `PORTCULLIS_BENCH_ADMISSIONS` says otherwise.
const DEFAULT_OPERATIONS: usize = 200;
/// Upper bound on operations per level (keeps a typo from running for hours).
const MAX_OPERATIONS: usize = 100_000;
/// Token lifetime: far beyond any round.
const TOKEN_TTL_MS: u64 = 3_600_000;
/// How long a fresh cluster may take to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP response (head + body) from etcd.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One concurrency level's figures.
struct Row {
    concurrency: usize,
    operations: usize,
    failures: usize,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// This process's CPU time per operation (portcullis mode: the cluster and the joiners).
    cpu_ms_per_op: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let operations = match std::env::var("PORTCULLIS_BENCH_ADMISSIONS") {
        Ok(v) => v.parse::<usize>()?.clamp(1, MAX_OPERATIONS),
        Err(_) => DEFAULT_OPERATIONS,
    };
    let (system, rows) = match args.first().map(String::as_str) {
        Some("portcullis") => ("portcullis", bench_portcullis(operations).await?),
        Some("etcd") => {
            let endpoints = args
                .get(1)
                .ok_or("etcd mode needs a comma-separated endpoint list")?
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<SocketAddr>, _>>()?;
            ("etcd", bench_etcd(&endpoints, operations).await?)
        }
        _ => {
            return Err("usage: admission_bench portcullis | etcd HOST:PORT[,HOST:PORT...]".into());
        }
    };
    let mut result = format!("RESULT {system}");
    for row in &rows {
        result.push_str(&format!(
            " {},{:.1},{:.3},{:.3}",
            row.concurrency, row.ops_per_s, row.p50_ms, row.p99_ms
        ));
    }
    println!("{result}");
    // CEILING portcullis <C>,<cpu_ms_per_admission>,<admissions_per_s_ceiling> ...
    if rows.iter().any(|r| r.cpu_ms_per_op.is_some()) {
        let mut ceiling = format!("CEILING {system}");
        for row in &rows {
            let cpu_ms = row.cpu_ms_per_op.unwrap_or(f64::NAN);
            ceiling.push_str(&format!(
                " {},{cpu_ms:.3},{:.1}",
                row.concurrency,
                cpu_bound_ceiling(cpu_ms)
            ));
        }
        println!("{ceiling}");
    }
    Ok(())
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Operations per second if every core did nothing but operations costing `cpu_ms` each: no
/// amount of waiting less (batching, pipelining) gets past it.
fn cpu_bound_ceiling(cpu_ms: f64) -> f64 {
    cores() as f64 * 1e3 / cpu_ms
}

/// CPU time (user + system) of this whole process so far, every thread included.
#[allow(unsafe_code)]
fn process_cpu() -> Option<Duration> {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value on this stack frame and
    // reads nothing else; the return code is checked before the value is used.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    let of = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).ok()?)
            .checked_add(Duration::from_micros(u64::try_from(t.tv_usec).ok()?))
    };
    of(usage.ru_utime)?.checked_add(of(usage.ru_stime)?)
}

fn report(system: &str, row: &Row) {
    println!(
        "{system:<10} C={:<3} ops={:<6} failed={:<4} {:>9.1} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
        row.concurrency, row.operations, row.failures, row.ops_per_s, row.p50_ms, row.p99_ms
    );
    if let Some(cpu_ms) = row.cpu_ms_per_op {
        println!(
            "{:<10} CPU {cpu_ms:.3} ms per operation (this process): at most {:.1} ops/s on {} cores",
            "",
            cpu_bound_ceiling(cpu_ms),
            cores()
        );
    }
}

/// Sorts `latencies` and builds the row.
fn row(concurrency: usize, mut latencies: Vec<Duration>, failures: usize, wall: Duration) -> Row {
    latencies.sort_unstable();
    let pick = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        // Nearest rank: the smallest sample with at least q of the samples at or below it.
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1e3
    };
    Row {
        concurrency,
        operations: latencies.len(),
        failures,
        ops_per_s: latencies.len() as f64 / wall.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        cpu_ms_per_op: None,
    }
}

/// The next operation index for a worker to run, while any is left.
fn claim(next: &AtomicUsize, operations: usize) -> Option<usize> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < operations).then_some(i)
}

/// What one worker measured: latencies of its successful operations, and its failures.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: usize,
    /// Join clients closing their endpoints, awaited after the round's clock stops.
    stopping: Vec<tokio::task::JoinHandle<()>>,
}

impl Tally {
    fn record(&mut self, worker: usize, outcome: Result<Duration, BoxError>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(e) => {
                if self.failures == 0 {
                    eprintln!("worker {worker}: an operation failed: {e}");
                }
                self.failures += 1;
            }
        }
    }
}

/// Runs `concurrency` workers to completion and times the round; `worker(w, next)` claims
/// operation indices from `next` (see [`claim`]) until none is left.
async fn run_round<F, Fut>(concurrency: usize, worker: F) -> Row
where
    F: Fn(usize, Arc<AtomicUsize>) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        workers.spawn(worker(w, next.clone()));
    }
    let mut all = Tally::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(t) => {
                all.latencies.extend(t.latencies);
                all.failures += t.failures;
                all.stopping.extend(t.stopping);
            }
            Err(e) => {
                eprintln!("a worker stopped: {e}");
                all.failures += 1;
            }
        }
    }
    let wall = started.elapsed();
    for stopping in all.stopping {
        if let Err(e) = stopping.await {
            eprintln!("a join client's close task failed: {e}");
        }
    }
    row(concurrency, all.latencies, all.failures, wall)
}

async fn bench_portcullis(operations: usize) -> Result<Vec<Row>, BoxError> {
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        // A fresh cluster per level, so one level's learners do not weigh on the next.
        let cluster = LocalCluster::start(3, LocalCluster::fast_config()).await?;
        cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        let seeds: Vec<SocketAddr> = cluster.founders.iter().map(|n| n.addr()).collect();
        // Issuing is the operator's side, not the cluster's: done before the clock starts.
        let tokens: Arc<Vec<_>> = Arc::new(
            (0..operations)
                .map(|_| cluster.issue_token(TOKEN_TTL_MS))
                .collect(),
        );
        let cpu_before = process_cpu();
        let mut r = run_round(concurrency, |w, next| {
            let tokens = tokens.clone();
            // Each worker starts with a different seed, as a client balancing over endpoints.
            let mut seeds = seeds.clone();
            let shift = w % seeds.len();
            seeds.rotate_left(shift);
            async move {
                let mut tally = Tally::default();
                let config = LocalCluster::fast_config();
                let bind = SocketAddr::from(([127, 0, 0, 1], 0));
                // Where the admitted nodes would listen: they never start here.
                let addrs = match driver::addrs_of(SocketAddr::from(([127, 0, 0, 1], 9))) {
                    Ok(a) => a,
                    Err(e) => {
                        tally.record(w, Err(e.into()));
                        return tally;
                    }
                };
                // One client endpoint per worker, as one admitting tool would keep.
                let mut client = match JoinClient::bind(bind, &config, TransportConfig::default()) {
                    Ok(c) => c,
                    Err(e) => {
                        tally.record(w, Err(e.into()));
                        return tally;
                    }
                };
                while let Some(i) = claim(&next, operations) {
                    let outcome = admit_one(&mut client, &tokens[i], &seeds, &addrs, &config).await;
                    tally.record(w, outcome);
                }
                tally.stopping.push(tokio::spawn(client.close()));
                tally
            }
        })
        .await;
        // Everything this process did during the round: the three founders (with their
        // fsyncs' system time) and the joiners, as the cores that bound throughput see it.
        r.cpu_ms_per_op = cpu_before
            .zip(process_cpu())
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64() * 1e3)
            .map(|ms| ms / r.operations.max(1) as f64);
        report("portcullis", &r);
        rows.push(r);
        cluster.shutdown().await?;
    }
    Ok(rows)
}

/// Times one admission of a fresh node identity with `token` through the worker's join
/// client: a new node key, a QUIC+TLS handshake with one seed under that key, the token with
/// its proof, and the `JoinAccepted` with its credential, checked by the client.
async fn admit_one(
    client: &mut JoinClient,
    token: &portcullis_core::token::JoinToken,
    seeds: &[SocketAddr],
    addrs: &Addrs,
    config: &Config,
) -> Result<Duration, BoxError> {
    let t = Instant::now();
    let node_key = SecretKey::generate(&mut OsRng);
    let accepted = client
        .join(token.clone(), seeds, &node_key, addrs.clone(), config)
        .await?;
    let latency = t.elapsed();
    if accepted.credential.body.node_key != node_key.public() {
        return Err("credential for another key".into());
    }
    Ok(latency)
}

async fn bench_etcd(endpoints: &[SocketAddr], operations: usize) -> Result<Vec<Row>, BoxError> {
    if endpoints.is_empty() {
        return Err("no etcd endpoints".into());
    }
    // Keys unique to this run, so a rerun against the same cluster starts from "issued" too.
    let run = std::process::id();
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        // Untimed: every key of this round is "issued".
        let mut setup = Etcd::connect(endpoints[0]).await?;
        for i in 0..operations {
            let outcome = setup
                .call("/v3/kv/put", &put_body(&key(run, concurrency, i), "issued"))
                .await?;
            if !outcome.contains("\"header\"") {
                return Err(format!("unexpected put answer: {outcome}").into());
            }
        }
        let r = run_round(concurrency, |w, next| {
            let endpoint = endpoints[w % endpoints.len()];
            async move {
                let mut tally = Tally::default();
                // One keep-alive connection per worker, as a client would keep.
                let mut etcd = match Etcd::connect(endpoint).await {
                    Ok(e) => e,
                    Err(e) => {
                        tally.record(w, Err(e));
                        return tally;
                    }
                };
                while let Some(i) = claim(&next, operations) {
                    let outcome = consume_one(&mut etcd, &key(run, concurrency, i)).await;
                    tally.record(w, outcome);
                }
                tally
            }
        })
        .await;
        report("etcd", &r);
        rows.push(r);
    }
    Ok(rows)
}

fn key(run: u32, concurrency: usize, i: usize) -> String {
    format!("tok/{run}-{concurrency}-{i}")
}

/// The single-use consume: if `key` is "issued", make it "consumed"; an answer with
/// `succeeded` false (already consumed) is a failure.
async fn consume_one(etcd: &mut Etcd, key: &str) -> Result<Duration, BoxError> {
    let body = format!(
        r#"{{"compare":[{{"key":"{k}","value":"{issued}","target":"VALUE","result":"EQUAL"}}],"success":[{{"requestPut":{{"key":"{k}","value":"{consumed}"}}}}]}}"#,
        k = base64(key.as_bytes()),
        issued = base64(b"issued"),
        consumed = base64(b"consumed"),
    );
    let t = Instant::now();
    let answer = etcd.call("/v3/kv/txn", &body).await?;
    let latency = t.elapsed();
    if answer.contains("\"succeeded\":true") {
        Ok(latency)
    } else {
        Err(format!("txn did not succeed: {answer}").into())
    }
}

fn put_body(key: &str, value: &str) -> String {
    format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64(key.as_bytes()),
        base64(value.as_bytes())
    )
}

/// Standard base64 with padding (etcd's gateway takes `bytes` fields this way).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if j <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct Etcd {
    stream: TcpStream,
    host: SocketAddr,
    buf: Vec<u8>,
}

impl Etcd {
    async fn connect(host: SocketAddr) -> Result<Etcd, BoxError> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Etcd {
            stream,
            host,
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` to `path` and returns the response body (status 200 only).
    async fn call(&mut self, path: &str, body: &str) -> Result<String, BoxError> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?.to_ascii_lowercase();
        let status_ok = head.starts_with("http/1.1 200");
        let body = if let Some(length) = header(&head, "content-length") {
            let length: usize = length.parse()?;
            if head_end + length > MAX_RESPONSE_BYTES {
                return Err("response too large".into());
            }
            while self.buf.len() < head_end + length {
                self.fill().await?;
            }
            self.buf[head_end..head_end + length].to_vec()
        } else if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.read_chunked(head_end).await?
        } else {
            return Err("response without a length".into());
        };
        let body = String::from_utf8(body)?;
        if status_ok {
            Ok(body)
        } else {
            Err(format!("HTTP error: {} {body}", head.lines().next().unwrap_or("")).into())
        }
    }

    /// Decodes a chunked body that starts at `at` in the buffer.
    async fn read_chunked(&mut self, mut at: usize) -> Result<Vec<u8>, BoxError> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf[at..], b"\r\n") {
                    break at + p;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            let data_start = line_end + 2;
            // The chunk, then its CRLF.
            while self.buf.len() < data_start + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[data_start..data_start + size]);
            at = data_start + size + 2;
            if size == 0 {
                // No trailers from etcd: the last chunk ends the body.
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), BoxError> {
        if self.buf.len() >= MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("etcd closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

//! Prometheus metrics of a running node, in the text exposition format, on an optional port.
//!
//! Why a tiny HTTP/1.1 responder and not a web framework: the endpoint answers one fixed
//! `GET /metrics` with one text body; a bounded read of the request head and one write is all
//! Prometheus needs.
//!
//! ```text
//!   node events ──▶ recorder task: histograms (admission latency, namespace join latency)
//!   GET /metrics ──▶ NodeHandle::status() + histograms ──render──▶ text/plain; version=0.0.4
//! ```
//!
//! Exported: admissions granted, rejections by reason (the core's `NodeMetrics`), peers
//! connected, Raft term and leader, Raft commit latency (a log entry's local append to its
//! apply, measured by the driver), admission latency at this listener (request to verdict: it
//! spans the two Raft commits of an admission), namespace join latency (start to `Ready`) and
//! its phases (probe: start to a ready partner; backfill: to the log copied; acks: announce to
//! `Ready`), timed by event arrival.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_core::namespace::join::JoinEvent;
use portcullis_core::node::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::driver::{NodeHandle, Status};

/// Bucket upper bounds of the latency histograms, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 5_000, 30_000];
/// Largest request head read from a scraper.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;

/// A cumulative latency histogram with fixed buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Count per bucket of [`LATENCY_BUCKETS_MS`] (not cumulative), plus one for `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of observations.
    pub sum_ms: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, ms: u64) {
        let at = LATENCY_BUCKETS_MS.partition_point(|&bound| bound < ms);
        self.buckets[at] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS_MS.iter().zip(&self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS_MS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ms);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Latencies observed from the node's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Admission request to verdict at this listener.
    pub admission_ms: Histogram,
    /// Namespace join start to `Ready`.
    pub namespace_join_ms: Histogram,
    /// Join phases, in [`JOIN_PHASES`] order.
    pub namespace_join_phase_ms: [Histogram; 3],
}

/// The namespace join phases timed, as exported in the `phase` label.
pub const JOIN_PHASES: [&str; 3] = ["probe", "backfill", "acks"];

/// Most namespace joins timed at once (one per namespace).
const MAX_TIMED_JOINS: usize = 256;

/// Arrival times of one join's events.
#[derive(Clone, Copy, Debug, Default)]
struct JoinTimes {
    started: Option<std::time::Instant>,
    backfilled: Option<std::time::Instant>,
    announced: Option<std::time::Instant>,
}

/// Renders `status` and `latencies` in the Prometheus text format.
pub fn render(status: &Status, latencies: &Latencies) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    gauge(
        "portcullis_admissions_granted_total",
        "counter",
        "Admissions granted at this listener.",
        status.metrics.admissions_granted,
    );
    gauge(
        "portcullis_peers_connected",
        "gauge",
        "Connections the core knows of.",
        status.peers_connected as u64,
    );
    gauge("portcullis_raft_term", "gauge", "Raft term.", status.term);
    gauge(
        "portcullis_raft_leader",
        "gauge",
        "Member id of the known leader (0: none).",
        status.leader.map_or(0, |m| m.0),
    );
    gauge(
        "portcullis_admissions_in_flight",
        "gauge",
        "Admissions in flight at this listener.",
        status.admissions_in_flight as u64,
    );
    let name = "portcullis_admission_rejections_total";
    let _ = writeln!(
        out,
        "# HELP {name} Admissions refused at this listener, by reason."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (reason, n) in &status.metrics.admissions_rejected {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
    latencies.admission_ms.render(
        &mut out,
        "portcullis_admission_duration_ms",
        "Admission request to verdict at this listener (two Raft commits), ms.",
    );
    latencies.namespace_join_ms.render(
        &mut out,
        "portcullis_namespace_join_duration_ms",
        "Namespace join start to Ready, ms.",
    );
    for (phase, h) in JOIN_PHASES.iter().zip(&latencies.namespace_join_phase_ms) {
        h.render(
            &mut out,
            &format!("portcullis_namespace_join_{phase}_duration_ms"),
            &format!("Namespace join phase `{phase}`, ms."),
        );
    }
    status.raft_commit_ms.render(
        &mut out,
        "portcullis_raft_commit_duration_ms",
        "A Raft log entry's local append to its apply on this node, ms.",
    );
    out
}

/// A running metrics endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    recorder: tokio::task::JoinHandle<()>,
    /// The bound address.
    pub addr: SocketAddr,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.recorder.abort();
    }
}

/// Serves `GET /metrics` for `node` on `addr`.
pub async fn serve(node: NodeHandle, addr: SocketAddr) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let latencies = Arc::new(parking_lot::Mutex::new(Latencies::default()));
    let recorder = tokio::spawn(record(node.subscribe(), latencies.clone()));
    let task = tokio::spawn(async move {
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::control::accept_failed("metrics endpoint", &e).await;
                    continue;
                }
            };
            let node = node.clone();
            let latencies = latencies.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(512);
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                    if head.len() > MAX_REQUEST_HEAD_BYTES {
                        return;
                    }
                }
                let response = if head.starts_with(b"GET /metrics ") {
                    match node.status().await {
                        Ok(status) => {
                            let body = render(&status, &latencies.lock().clone());
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        Err(_) => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                    }
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(MetricsServer {
        task,
        recorder,
        addr,
    })
}

async fn record(
    mut events: broadcast::Receiver<Event>,
    latencies: Arc<parking_lot::Mutex<Latencies>>,
) {
    let mut joins: std::collections::BTreeMap<
        portcullis_core::namespace::ops::NamespaceId,
        JoinTimes,
    > = std::collections::BTreeMap::new();
    loop {
        let at = std::time::Instant::now();
        let ms = |from: Option<std::time::Instant>, to: std::time::Instant| {
            from.map(|f| {
                u64::try_from(to.saturating_duration_since(f).as_millis()).unwrap_or(u64::MAX)
            })
        };
        match events.recv().await {
            Ok(Event::Admission(record)) => {
                latencies.lock().admission_ms.observe(record.elapsed_ms)
            }
            Ok(Event::NamespaceJoinStarted { namespace, .. }) => {
                if joins.len() < MAX_TIMED_JOINS || joins.contains_key(&namespace) {
                    joins.insert(
                        namespace,
                        JoinTimes {
                            started: Some(at),
                            ..JoinTimes::default()
                        },
                    );
                }
            }
            Ok(Event::NamespaceJoinProgress { namespace, event }) => {
                if let Some(t) = joins.get_mut(&namespace) {
                    match event {
                        JoinEvent::BackfillComplete { .. } => t.backfilled = Some(at),
                        JoinEvent::Announced { .. } => t.announced = Some(at),
                        _ => {}
                    }
                }
            }
            Ok(Event::NamespaceJoinFailed(f)) => {
                joins.remove(&f.report.namespace);
            }
            Ok(Event::NamespaceReady(report)) => {
                let t = joins.remove(&report.namespace).unwrap_or_default();
                let mut l = latencies.lock();
                l.namespace_join_ms.observe(report.elapsed_ms);
                // Probe: the whole join less what followed the partner's choice.
                if let Some(after_start) = ms(t.started, at) {
                    l.namespace_join_phase_ms[0]
                        .observe(report.elapsed_ms.saturating_sub(after_start));
                }
                if let (Some(backfill), Some(acks)) = (
                    ms(t.started, t.backfilled.unwrap_or(at)),
                    ms(t.announced, at),
                ) {
                    l.namespace_join_phase_ms[1].observe(backfill);
                    l.namespace_join_phase_ms[2].observe(acks);
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let mut h = Histogram::default();
        for ms in [1, 3, 3, 700, 60_000] {
            h.observe(ms);
        }
        let mut out = String::new();
        h.render(&mut out, "x_ms", "help");
        let value = |series: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{series} missing in\n{out}"))
        };
        assert_eq!(value("x_ms_bucket{le=\"1\"}"), 1);
        assert_eq!(value("x_ms_bucket{le=\"5\"}"), 3);
        assert_eq!(value("x_ms_bucket{le=\"1000\"}"), 4);
        assert_eq!(value("x_ms_bucket{le=\"30000\"}"), 4);
        assert_eq!(value("x_ms_bucket{le=\"+Inf\"}"), 5);
        assert_eq!(value("x_ms_count"), 5);
        assert_eq!(value("x_ms_sum"), 60_707);
        // Every sample line is `name{labels} value` with a numeric value; every family is typed.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        assert!(out.contains("# TYPE x_ms histogram"));
    }
}

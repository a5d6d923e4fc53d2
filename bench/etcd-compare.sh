#!/usr/bin/env bash
# Admissions vs etcd: portcullis admissions on a 3-founder loopback cluster (QUIC, redb, fsync)
# against etcd's equivalent single-use consume (a txn comparing "issued", putting "consumed") on a
# 3-member loopback etcd cluster (fsync is etcd's default), at 1, 16 and 64 concurrent clients.
#
#   build (release) ─▶ portcullis bench (etcd not running) ─▶ start etcd x3 ─▶ etcd bench
#                   ─▶ table + ratios at 64 clients ─▶ cleanup (etcd killed by PID, temp dir gone)
#
# Usage: bench/etcd-compare.sh   (env: PORTCULLIS_BENCH_ADMISSIONS, default 200 per level;
#                                 ETCD_BENCH_PORT_BASE, default 23790)
# Installs Debian's etcd-server with apt-get when `etcd` is missing (needs root).
set -euo pipefail

cd "$(dirname "$0")/.."
PORT_BASE="${ETCD_BENCH_PORT_BASE:-23790}"
WORK="$(mktemp -d -t etcd-compare.XXXXXX)"
ETCD_PIDS=()

cleanup() {
  for pid in "${ETCD_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${ETCD_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 ..." >&2
    apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
  fi
}
need etcd etcd-server
need curl curl

echo "== building (release)" >&2
cargo build --release -p portcullis-io-tokio --example admission_bench >&2
BENCH=target/release/examples/admission_bench

echo "== portcullis: 3 founders on loopback, fsync on" >&2
"$BENCH" portcullis | tee "$WORK/portcullis.out" >&2

echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members on loopback" >&2
CLUSTER=""
for i in 1 2 3; do
  CLUSTER="${CLUSTER:+$CLUSTER,}e$i=http://127.0.0.1:$((PORT_BASE + 10 + i))"
done
ENDPOINTS=""
for i in 1 2 3; do
  client=$((PORT_BASE + i))
  peer=$((PORT_BASE + 10 + i))
  ENDPOINTS="${ENDPOINTS:+$ENDPOINTS,}127.0.0.1:$client"
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$CLUSTER" --initial-cluster-token "bench-$$" --initial-cluster-state new \
    >"$WORK/e$i.log" 2>&1 &
  ETCD_PIDS+=("$!")
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$((PORT_BASE + i))/health" 2>/dev/null | grep -q '"health":"true"'; then
      break
    fi
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$((PORT_BASE + i))/health" | grep -q '"health":"true"' \
    || { echo "etcd member e$i is not healthy; log:" >&2; tail -20 "$WORK/e$i.log" >&2; exit 1; }
done
"$BENCH" etcd "$ENDPOINTS" | tee "$WORK/etcd.out" >&2

# RESULT <system> <C>,<ops_per_s>,<p50_ms>,<p99_ms> ...
ours="$(grep '^RESULT portcullis ' "$WORK/portcullis.out")"
theirs="$(grep '^RESULT etcd ' "$WORK/etcd.out")"
# CEILING portcullis <C>,<cpu_ms_per_admission>,<ceiling_per_s> ...
ceiling="$(grep '^CEILING portcullis ' "$WORK/portcullis.out" || true)"
cores="$(nproc)"
echo
awk -v ours="$ours" -v theirs="$theirs" -v ceiling="$ceiling" -v cores="$cores" 'BEGIN {
  n = split(ours, o, " "); split(theirs, t, " "); m = split(ceiling, c, " ");
  for (k = 3; k <= m; k++) { split(c[k], x, ","); if (x[1] == 64) { cpu = x[2]; cap = x[3] } }
  printf "| clients | portcullis admissions/s | p50 ms | p99 ms | etcd consumes/s | p50 ms | p99 ms |\n";
  printf "|--------:|------------------------:|-------:|-------:|----------------:|-------:|-------:|\n";
  for (k = 3; k <= n; k++) {
    split(o[k], a, ","); split(t[k], b, ",");
    printf "| %7s | %23.1f | %6.2f | %6.2f | %15.1f | %6.2f | %6.2f |\n", a[1], a[2], a[3], a[4], b[2], b[3], b[4];
    if (a[1] == 64) { ot = a[2]; op = a[4]; et = b[2]; ep = b[4] }
  }
  printf "\nat 64 clients: throughput ratio portcullis/etcd = %.2fx (target >= 2x: %s)\n", ot / et, (ot >= 2 * et) ? "met" : "NOT met";
  printf "at 64 clients: p99 portcullis %.2f ms vs etcd %.2f ms (target <=: %s)\n", op, ep, (op <= ep) ? "met" : "NOT met";
  if (cpu != "") {
    printf "at 64 clients: portcullis spends %.3f ms of CPU per admission (founders and joiners, one process),\n", cpu;
    printf "  so %d cores can do at most %.1f admissions/s; 2x etcd (%.1f/s) needs at most %.3f ms per admission\n", cores, cap, 2 * et, cores * 1000 / (2 * et);
  }
}'

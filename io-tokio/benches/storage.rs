//! Storage throughput: Raft entries persisted per second through `Store::persist`, one durable
//! (fsynced) redb transaction per batch, at several batch sizes; and `load` time.
//!
//! Run: `cargo bench -p portcullis-io-tokio --bench storage`. Prints one line per batch size.

use std::time::Instant;

use portcullis_core::durable::{HardStateRecord, PersistBatch};
use portcullis_core::replication::raft_wire::{EntryPayload, EntryWire, Payload};
use portcullis_io_tokio::storage::Store;

/// Bytes per entry payload: about what one admission entry weighs (DESIGN.md: ~300 B).
const ENTRY_BYTES: usize = 300;
/// Entries written per measured run.
const ENTRIES_PER_RUN: u64 = 8_192;

fn entry(index: u64) -> EntryWire {
    EntryWire {
        term: 1,
        index,
        payload: EntryPayload::Normal(
            Payload::try_from_vec(vec![index as u8; ENTRY_BYTES])
                .expect("invariant: 300 bytes is below the payload bound"),
        ),
        context: Payload::default(),
    }
}

fn main() {
    println!("batch entries | batches/s | entries/s | fsync'd commit p50 ms | p99 ms");
    for batch_entries in [1u64, 16, 64, 256] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let batches = (ENTRIES_PER_RUN / batch_entries).max(64);
        let mut latencies_us = Vec::with_capacity(batches as usize);
        let started = Instant::now();
        let mut next = 1;
        for number in 1..=batches {
            let batch = PersistBatch {
                number,
                hard_state: Some(HardStateRecord {
                    term: 1,
                    vote: 1,
                    commit: next - 1,
                }),
                entries: (next..next + batch_entries).map(entry).collect(),
                ..PersistBatch::default()
            };
            next += batch_entries;
            let t = Instant::now();
            store.persist(&batch).expect("persist");
            latencies_us.push(t.elapsed().as_micros() as u64);
        }
        let secs = started.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        let pct =
            |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize] as f64 / 1e3;
        println!(
            "{batch_entries:>13} | {:>9.0} | {:>9.0} | {:>21.3} | {:>6.3}",
            batches as f64 / secs,
            (batches * batch_entries) as f64 / secs,
            pct(0.50),
            pct(0.99)
        );
        let t = Instant::now();
        let state = store.load().expect("load").expect("persisted");
        println!(
            "              load of {} entries: {:.1} ms",
            state.entries.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

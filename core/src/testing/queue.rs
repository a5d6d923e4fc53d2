//! Fuzzer control of the harness's network: pick a queued delivery by index and drop it,
//! duplicate it (a replay, possibly late) or deliver it now (a reordering). Used by
//! `fuzz/fuzz_targets/node_sequences.rs`.
//!
//! ```text
//!   queue (time, seq) ─▶ n-th Deliver ─┬▶ drop_queued          (lost)
//!                                      ├▶ duplicate_queued     (copy at now + delay)
//!                                      └▶ deliver_queued_now   (out of turn)
//! ```

use crate::node::Input;
use crate::time::Instant;

use super::{Cluster, Pending, pair, peer};

impl Cluster {
    /// Messages queued for delivery (for fuzzers choosing one by index).
    pub fn queued_deliveries(&self) -> usize {
        self.queue
            .values()
            .filter(|p| matches!(p, Pending::Deliver { .. }))
            .count()
    }

    fn queued_delivery_key(&self, n: usize) -> Option<(Instant, u64)> {
        let count = self.queued_deliveries();
        if count == 0 {
            return None;
        }
        self.queue
            .iter()
            .filter(|(_, p)| matches!(p, Pending::Deliver { .. }))
            .nth(n % count)
            .map(|(k, _)| *k)
    }

    /// Drops the `n`th queued delivery (modulo their number). Returns whether one was dropped.
    pub fn drop_queued(&mut self, n: usize) -> bool {
        self.queued_delivery_key(n)
            .and_then(|k| self.queue.remove(&k))
            .is_some()
    }

    /// Queues a copy of the `n`th queued delivery (modulo their number) `delay_ms` from now: a
    /// duplicate, or an old message replayed late. Returns whether one was copied.
    pub fn duplicate_queued(&mut self, n: usize, delay_ms: u64) -> bool {
        let Some(Pending::Deliver { from, to, bytes }) =
            self.queued_delivery_key(n).and_then(|k| self.queue.get(&k))
        else {
            return false;
        };
        let copy = Pending::Deliver {
            from: *from,
            to: *to,
            bytes: bytes.clone(),
        };
        let at = self.now.saturating_add_ms(delay_ms);
        self.schedule(at, copy);
        true
    }

    /// Delivers the `n`th queued delivery (modulo their number) now, ahead of its turn (a
    /// reordering). Returns whether one was delivered.
    pub fn deliver_queued_now(&mut self, n: usize) -> bool {
        let Some(Pending::Deliver { from, to, bytes }) = self
            .queued_delivery_key(n)
            .and_then(|k| self.queue.remove(&k))
        else {
            return false;
        };
        if self.nodes[to].node.is_some() && self.connections.contains_key(&pair(from, to)) {
            self.input(
                to,
                Input::Received {
                    from: peer(from),
                    bytes,
                },
            );
        }
        true
    }
}

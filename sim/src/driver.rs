//! The driver loop of one simulated node: madsim tasks around one core.
//!
//! Each madsim node runs two tasks. The *receive task* takes every datagram off the node's
//! madsim [`Endpoint`] and hands it to the world's fault layer (which queues it in the node's
//! inbox or drops or holds it); it never gives up a receive half-way, so madsim's cancellation
//! can lose nothing we did not decide to lose. The *driver task* sleeps until the inbox has
//! something or the core's timer, the next fsync completion or the next queued send is due,
//! then runs one [`World::step`](crate::world::World::step) and sends every datagram whose
//! delay (drawn by the fault layer) is up. Delays wait in the node's send queue rather than in
//! one madsim task per datagram: a spawned task and its timer per frame were the simulator's
//! largest cost.
//!
//! ```text
//!   node_main:  bind endpoint ─▶ spawn receive task ─▶ boot core (new / recover)
//!               loop { wait(inbox | min(poll_timeout, fsync done, send due)) ─▶ step
//!                      ─▶ send_to_raw every due datagram }
//!   receive:    loop { recv_from_raw ─▶ world.arrive(datagram) ─▶ inbox + wake }
//! ```
//!
//! A wait of zero (a timer already due: the core asks for an immediate timer to batch proof
//! checks and proposals) yields once instead of sleeping, so inputs that arrived at the same
//! instant are handled first — madsim's `sleep` would round it up to a whole millisecond.
//! Killing the madsim node drops both tasks; restarting runs `node_main` again.

use std::future::{Future, poll_fn};
use std::task::Poll;
use std::time::Duration;

use madsim::net::Endpoint;

use crate::check::Violation;
use crate::net::{Datagram, TAG};
use crate::report::FailureKind;
use crate::world::{Shared, addr_of, lock};

/// Consecutive zero-length waits after which the core is declared stuck (its timer stays in
/// the past however often it fires).
const MAX_ZERO_WAITS: u32 = 100_000;

/// The body of slot `i`'s madsim node. Never returns: a madsim node whose init task ends is
/// considered exited.
pub(crate) async fn node_main(shared: Shared, i: usize) {
    let addr = addr_of(i);
    let ep = match Endpoint::bind(addr).await {
        Ok(ep) => ep,
        Err(e) => {
            lock(&shared).fail(Violation::new(
                FailureKind::Crash,
                "harness",
                format!("slot {i} cannot bind {addr}: {e}"),
            ));
            return std::future::pending().await;
        }
    };
    madsim::task::spawn(receive_loop(shared.clone(), i, ep.clone()));
    if !lock(&shared).boot_node(i, ep.clone()) {
        return std::future::pending().await;
    }
    let mut zero_waits = 0u32;
    loop {
        let wait = {
            let mut w = lock(&shared);
            if w.stopped() {
                break;
            }
            w.next_wakeup(i)
        };
        match wait {
            Some(d) if d.is_zero() => {
                zero_waits += 1;
                if zero_waits > MAX_ZERO_WAITS {
                    lock(&shared).fail(Violation::new(
                        FailureKind::Crash,
                        "drain-contract",
                        format!(
                            "slot {i}: poll_timeout stays in the past after {MAX_ZERO_WAITS} timers"
                        ),
                    ));
                    break;
                }
                madsim::task::yield_now().await;
            }
            other => {
                zero_waits = 0;
                wait_for_work(&shared, i, other).await;
            }
        }
        let due = {
            let mut w = lock(&shared);
            w.step(i);
            w.take_due_sends(i)
        };
        if !due.is_empty() {
            // Not awaited here: a madsim send sleeps at least 1 ms of simulated time, and the
            // driver must not fall behind its timers (found by the simulator: ns-deadline,
            // default seed 2801, a join failed 1 ms past its deadline after 7 sends).
            madsim::task::spawn(send_all(ep.clone(), due));
        }
    }
    std::future::pending().await
}

/// Sends every datagram at once (their madsim sends run concurrently, not one after another).
async fn send_all(ep: Endpoint, due: Vec<(std::net::SocketAddr, crate::net::Datagram)>) {
    let mut sends: Vec<_> = due
        .into_iter()
        .map(|(dst, dg)| {
            let ep = ep.clone();
            // A send only fails when the network is gone (the node was killed): nothing to do.
            Some(Box::pin(async move {
                let _ = ep.send_to_raw(dst, TAG, Box::new(dg)).await;
            }))
        })
        .collect();
    poll_fn(|cx| {
        let mut pending = false;
        for slot in sends.iter_mut() {
            if let Some(send) = slot.as_mut() {
                if send.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

/// Sleeps until slot `i` has an inbox item, or `wait` has passed.
async fn wait_for_work(shared: &Shared, i: usize, wait: Option<Duration>) {
    let mut sleep = wait.map(|d| Box::pin(madsim::time::sleep(d)));
    poll_fn(|cx| {
        {
            let mut w = lock(shared);
            if w.has_inbox(i) || w.stopped() {
                return Poll::Ready(());
            }
            w.set_waker(i, cx.waker().clone());
        }
        match sleep.as_mut() {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Pending,
        }
    })
    .await
}

/// Takes every datagram off the endpoint and hands it to the fault layer.
async fn receive_loop(shared: Shared, i: usize, ep: Endpoint) {
    loop {
        let Ok((payload, _from)) = ep.recv_from_raw(TAG).await else {
            return; // The network is gone: the node was killed.
        };
        if let Ok(dg) = payload.downcast::<Datagram>() {
            lock(&shared).arrive(i, *dg);
        }
    }
}

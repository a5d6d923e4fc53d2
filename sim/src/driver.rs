//! The driver loop of one simulated node: madsim tasks around one core.
//!
//! Frames travel over madsim connections opened from each node's [`Endpoint`]: one *pipe* per
//! (sender, receiver) pair, opened with `connect1` the first time the sender has something
//! for that receiver and accepted by the receiver's accept task. A pipe is madsim's reliable,
//! ordered channel (what a QUIC stream is to the production adapter); it never loses or
//! reorders on its own, so every fault is still the fault layer's decision, made before a
//! frame enters the pipe. A pipe costs one channel send and one timer per frame, where a
//! madsim datagram cost a spawned task, three timers and an address formatted to a string:
//! the datagrams were the largest share of the simulator's own time.
//!
//! The *driver task* sleeps until the inbox has something or the core's timer, the next fsync
//! completion or the next queued send is due, then runs one
//! [`World::step`](crate::world::World::step) and puts every datagram whose delay (drawn by
//! the fault layer) is up into its pipe. Delays wait in the node's send queue rather than in
//! one madsim task per datagram. A *pipe task* per accepted pipe hands each arriving frame to
//! the world's fault layer (which queues it in the node's inbox, or drops or holds it).
//!
//! ```text
//!   node_main:  bind endpoint ─▶ spawn accept task ─▶ boot core (new / recover)
//!               loop { wait(inbox | min(poll_timeout, fsync done, send due)) ─▶ step
//!                      ─▶ every due datagram into its pipe (opening it first if needed) }
//!   accept:     loop { accept1 ─▶ spawn pipe task }
//!   pipe:       loop { recv ─▶ world.arrive(datagram) ─▶ inbox + wake }
//! ```
//!
//! A pipe whose receiver was killed is closed: frames for it are lost, as they would be on the
//! wire, and the next frame opens a new pipe (to the restarted node, or fails while it is
//! down). A frame sent on a pipe reaches whichever incarnation accepted it; the world's
//! connection epochs drop frames of connections that no longer exist.
//!
//! A wait of zero (a timer already due: the core asks for an immediate timer to batch proof
//! checks and proposals) yields once instead of sleeping, so inputs that arrived at the same
//! instant are handled first — madsim's `sleep` would round it up to a whole millisecond.
//! Killing the madsim node drops all of its tasks and pipes; restarting runs `node_main` again.

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use madsim::net::{Endpoint, Receiver, Sender};

use portcullis_core::time::Instant;

use crate::check::Violation;
use crate::net::Datagram;
use crate::report::FailureKind;
use crate::timing::{Region, enter};
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
    madsim::task::spawn(accept_loop(shared.clone(), i, ep.clone()));
    let pipes: Pipes = Arc::default();
    if !lock(&shared).boot_node(i, ep.clone()) {
        return std::future::pending().await;
    }
    let mut zero_waits = 0u32;
    let mut alarm = Alarm::default();
    loop {
        let wait = {
            let mut w = lock(&shared);
            if w.stopped() {
                break;
            }
            w.next_wakeup(i)
        };
        match wait {
            Some((_, d)) if d.is_zero() => {
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
                alarm.set(other);
                wait_for_work(&shared, i, &mut alarm).await;
            }
        }
        let due = {
            let mut w = lock(&shared);
            w.step(i);
            w.take_due_sends(i)
        };
        for (to, dg) in due {
            send(&ep, &pipes, to, dg);
        }
    }
    std::future::pending().await
}

/// One node's outgoing pipes, by receiving slot.
type Pipes = Arc<Mutex<BTreeMap<usize, Pipe>>>;

/// An outgoing pipe.
enum Pipe {
    /// Ready for frames.
    Open(Sender),
    /// Being opened: frames wait here, in order, until it is.
    Opening(Vec<Datagram>),
}

fn lock_pipes(pipes: &Pipes) -> MutexGuard<'_, BTreeMap<usize, Pipe>> {
    // Nothing is half-updated if a holder panicked: the map only ever gains or loses whole
    // entries.
    pipes.lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts `dg` into the pipe to slot `to`, opening one if there is none or the old one's
/// receiver is gone.
fn send(ep: &Endpoint, pipes: &Pipes, to: usize, dg: Datagram) {
    let _region = enter(Region::Pipes);
    let mut by_to = lock_pipes(pipes);
    match by_to.get_mut(&to) {
        Some(Pipe::Open(tx)) if !tx.is_closed() => {
            if !put(tx, dg) {
                by_to.remove(&to);
            }
        }
        Some(Pipe::Opening(waiting)) => waiting.push(dg),
        _ => {
            by_to.insert(to, Pipe::Opening(vec![dg]));
            madsim::task::spawn(open_pipe(ep.clone(), pipes.clone(), to));
        }
    }
}

/// Sends one frame into an open pipe; `false` when the pipe turned out closed (the frame is
/// lost, as on a wire to a dead node).
fn put(tx: &Sender, dg: Datagram) -> bool {
    // `Sender::send` is an `async fn` that never waits (an unbounded channel): one poll
    // finishes it. A pending poll would mean madsim changed; the frame then counts as lost.
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        pin!(tx.send(Box::new(dg))).poll(&mut cx),
        Poll::Ready(Ok(()))
    )
}

/// Opens the pipe to slot `to` and sends what waited for it; if `to` is down, that is lost.
async fn open_pipe(ep: Endpoint, pipes: Pipes, to: usize) {
    let opened = ep.connect1(addr_of(to)).await;
    let mut by_to = lock_pipes(&pipes);
    let waiting = match by_to.remove(&to) {
        Some(Pipe::Opening(waiting)) => waiting,
        _ => Vec::new(),
    };
    if let Ok((tx, _rx)) = opened {
        // Frames only flow from the opener to the acceptor; the reverse half is unused.
        if waiting.into_iter().all(|dg| put(&tx, dg)) {
            by_to.insert(to, Pipe::Open(tx));
        }
    }
}

/// Accepts every pipe opened to slot `i` and runs a pipe task for it.
async fn accept_loop(shared: Shared, i: usize, ep: Endpoint) {
    // Fails only when the network is gone (the node was killed).
    while let Ok((_tx, rx, _from)) = ep.accept1().await {
        madsim::task::spawn(pipe_loop(shared.clone(), i, rx));
    }
}

/// Hands every frame arriving on one pipe to the fault layer.
async fn pipe_loop(shared: Shared, i: usize, mut rx: Receiver) {
    // Ends when the sender is gone (its node was killed).
    while let Ok(payload) = rx.recv().await {
        if let Ok(dg) = payload.downcast::<Datagram>() {
            lock(&shared).arrive(i, *dg);
        }
    }
}

/// The driver's wake-up timer, armed once per deadline.
///
/// madsim's `Sleep` adds a timer each time it is polled while pending, and each timer wakes the
/// task when it fires. Polled on every inbox wake, as the driver used to, it piled up timers
/// whose firings woke the driver again for nothing.
#[derive(Default)]
struct Alarm {
    /// The deadline (simulated), the sleep until it, and whether it has registered its timer.
    sleep: Option<(Instant, madsim::time::Sleep, bool)>,
}

impl Alarm {
    /// Aims at `at`, `wait` from now (`None`: no deadline); the same deadline keeps its timer.
    fn set(&mut self, wake: Option<(Instant, Duration)>) {
        let Some((at, wait)) = wake else {
            self.sleep = None;
            return;
        };
        if self
            .sleep
            .as_ref()
            .is_none_or(|(armed_at, ..)| *armed_at != at)
        {
            // madsim makes every sleep last at least 1 ms (as tokio does), which fired a timer
            // due in under 1 ms up to 1 ms late: a namespace join then ended 1 ms past its
            // deadline (default seed 60159). `reset` aims the sleep at the exact instant.
            let clock = madsim::time::TimeHandle::current();
            let exact = clock.now_instant() + wait;
            let mut sleep = clock.sleep(wait);
            Pin::new(&mut sleep).reset(exact);
            self.sleep = Some((at, sleep, false));
        }
    }

    /// Ready once the deadline has passed; registers one timer per deadline to be woken.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, sleep, armed)) = self.sleep.as_mut() else {
            return Poll::Pending;
        };
        if sleep.is_elapsed() {
            return Poll::Ready(());
        }
        if !*armed {
            *armed = true;
            return Pin::new(sleep).poll(cx);
        }
        Poll::Pending
    }
}

/// Sleeps until slot `i` has an inbox item, or `alarm` has gone off.
async fn wait_for_work(shared: &Shared, i: usize, alarm: &mut Alarm) {
    poll_fn(|cx| {
        {
            let mut w = lock(shared);
            if w.has_inbox(i) || w.stopped() {
                return Poll::Ready(());
            }
            w.set_waker(i, cx.waker());
        }
        alarm.poll(cx)
    })
    .await
}

//! The keeper thread: closes connections above `pool_size` once more than `pool_size` have
//! stayed idle for `overflow_idle_timeout`, and reports sessions held longer than
//! `leak_detection_threshold`, when the gate says they are due.

use std::sync::Arc;
use std::thread;

use super::admission::Due;
use super::gate::Gate;

/// Starts the keeper thread of `gate`'s pool. `close(count)` closes `count` idle connections the
/// gate moved to `closing`, and returns `false` once the pool is gone: the thread then stops (as
/// it does when the gate stops).
pub(crate) fn spawn(gate: Arc<Gate>, close: impl FnMut(u32) -> bool + Send + 'static) {
    let spawned = thread::Builder::new()
        .name("userbase-pool-keeper".to_owned())
        .spawn(move || run(&gate, close));
    if let Err(error) = spawned {
        tracing::warn!(target: "userbase::pool", %error, "could not start the pool keeper thread: overflow connections stay open, leaks are not reported");
    }
}

fn run(gate: &Gate, mut close: impl FnMut(u32) -> bool) {
    loop {
        match gate.next_due() {
            Due::Stop => return,
            Due::Close(count) => {
                if !close(count) {
                    return;
                }
            }
            Due::Leaks(leaks) => {
                for leak in leaks {
                    let (location, held) = (leak.location, leak.held);
                    tracing::dispatcher::with_default(&leak.dispatch, || {
                        tracing::warn!(
                            target: "userbase::pool",
                            checked_out_at = %location,
                            held_ms = held.as_millis(),
                            "possible session leak: a session checked out at {location} has been held for {} ms",
                            held.as_millis()
                        );
                    });
                }
            }
            Due::Wait(_) => {}
        }
    }
}

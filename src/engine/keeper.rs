//! Closing idle connections, and the keeper thread: closes connections above `pool_size` once
//! more than `pool_size` have stayed idle for `overflow_idle_timeout`, and reports sessions held
//! longer than `leak_detection_threshold`.

use std::sync::{Arc, Weak};
use std::thread;

use super::admission::Due;
use super::gate::Gate;
use super::{Manager, Pool, TAKE_LIMIT};

/// Closes `count` idle connections the gate moved to `closing`: each is taken from r2d2 and
/// handed back marked for discard, so r2d2 removes it and [`Closer`](super::manager::Closer)
/// closes it and tells the gate.
pub(crate) fn close_idle(pool: &r2d2::Pool<Manager>, gate: &Gate, count: u32) {
    for _ in 0..count {
        match pool.get_timeout(TAKE_LIMIT) {
            Ok(mut conn) => {
                conn.mark_discard();
                drop(conn);
            }
            Err(error) => {
                // The count is given back so the figures stay bounded by what exists.
                tracing::warn!(target: "userbase::pool", %error, "an idle connection to close was not in the pool");
                gate.closed_one();
            }
        }
    }
}

/// Starts the keeper thread of the pool `owner` holds; it stops when the engine is dropped.
pub(crate) fn spawn<T: AsRef<Pool> + Send + Sync + 'static>(owner: &Arc<T>) {
    let gate = (**owner).as_ref().gate.clone();
    let weak: Weak<T> = Arc::downgrade(owner);
    let spawned = thread::Builder::new()
        .name("userbase-pool-keeper".to_owned())
        .spawn(move || run(&gate, &weak));
    if let Err(error) = spawned {
        tracing::warn!(target: "userbase::pool", %error, "could not start the pool keeper thread: overflow connections stay open, leaks are not reported");
    }
}

fn run<T: AsRef<Pool>>(gate: &Gate, owner: &Weak<T>) {
    loop {
        match gate.next_due() {
            Due::Stop => return,
            Due::Close(count) => {
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                let pool = (*owner).as_ref();
                if pool.config.echo_pool {
                    tracing::debug!(target: "userbase::pool", count, "overflow idle timeout: closing connections above pool_size");
                }
                close_idle(&pool.r2d2, gate, count);
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

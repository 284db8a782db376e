//! Taking reserved connections out of r2d2, and the keeper thread: closes connections above
//! `pool_size` once more than `pool_size` have stayed idle for `overflow_idle_timeout`, and
//! reports sessions held longer than `leak_detection_threshold`.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::gate::{Due, Gate};
use super::{Manager, Pool};

/// Pops an idle connection the gate reserved for the caller.
///
/// The gate counts a new connection as idle when its connect returns, a moment before r2d2
/// pushes it into its idle list, so the pop may briefly find the list empty; it then retries
/// until the push (microseconds). `None` only if nothing arrives within `limit`, which the gate's
/// bookkeeping rules out.
pub(crate) fn pop_reserved(
    pool: &r2d2::Pool<Manager>,
    limit: Duration,
) -> Option<r2d2::PooledConnection<Manager>> {
    let started = Instant::now();
    let mut spins = 0_u32;
    loop {
        if let Some(conn) = pool.try_get() {
            return Some(conn);
        }
        if started.elapsed() >= limit {
            return None;
        }
        spins = spins.saturating_add(1);
        if spins < 100 {
            thread::yield_now();
        } else {
            thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Closes `count` idle connections the gate reserved for closing.
pub(crate) fn close_reserved(pool: &r2d2::Pool<Manager>, gate: &Gate, count: u32) {
    let mut closed = 0;
    for _ in 0..count {
        if let Some(mut conn) = pop_reserved(pool, Duration::from_secs(1)) {
            conn.mark_discard();
            drop(conn);
        }
        closed += 1;
    }
    gate.discarded(closed);
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
                close_reserved(&pool.r2d2, gate, count);
            }
            Due::Leaks(leaks) => {
                for (dispatch, location, held) in leaks {
                    tracing::dispatcher::with_default(&dispatch, || {
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
        }
    }
}

//! The admission gate in front of r2d2: the pool's exact bookkeeping, where checkouts wait.
//!
//! r2d2 keeps the idle connections and hands them out, but it cannot wake a waiting checkout
//! when a returned connection is discarded, nor hand it a connect error (it retries in the
//! background while the caller sleeps until its timeout). So checkouts never wait inside r2d2:
//! they wait here, on one condition variable, for one of three things:
//!
//! - an idle connection (`idle` counts only connections already in r2d2's idle list, or
//!   connected and about to be pushed there; each is reserved by one checkout before it pops);
//! - room to open one more (`open + pending < pool_size + max_overflow`): the checkout queues a
//!   connect *ticket*, which a connector (r2d2's `ManageConnection::connect`, see `manager`)
//!   takes, opens, and either pushes into r2d2's idle list or fails with the driver's message;
//! - its ticket's failure, returned to it as [`Error::Connect`](crate::Error::Connect).
//!
//! Waiters take idle connections in arrival order. A waiter is woken whenever a session comes
//! back (kept or discarded), a connect lands or fails, or another waiter leaves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::Location;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::PoolConfig;

/// A session checked out for longer than the leak detection threshold is reported once.
struct Lease {
    since: Instant,
    location: &'static Location<'static>,
    /// The subscriber in force where the session was checked out: the warning goes there.
    dispatch: tracing::Dispatch,
    warned: bool,
}

/// What a waiting checkout was granted.
pub(crate) enum Grant {
    /// One of the idle connections is reserved for it: pop it from r2d2.
    Idle,
}

/// Why a waiting checkout gave up.
pub(crate) enum Refusal {
    /// Its connect failed with this message.
    Connect(String),
    /// Nothing became available in time; the figures at that moment.
    Timeout {
        open: u32,
        checked_out: u32,
        pending: u32,
    },
}

#[derive(Default)]
struct State {
    /// Connections held by sessions (or by the pool while it closes them).
    out: u32,
    /// Connections in r2d2's idle list, not reserved.
    idle: u32,
    /// Connect tickets nobody has taken yet.
    queued: VecDeque<u64>,
    /// Connect tickets a connector is working on.
    connecting: HashSet<u64>,
    /// Tickets whose checkout is still waiting for them.
    owned: HashSet<u64>,
    /// Connect failures for waiting checkouts, by ticket.
    failures: HashMap<u64, String>,
    /// Waiting checkouts, oldest first.
    waiters: VecDeque<u64>,
    next_id: u64,
    /// Since when more than `pool_size` connections have been idle.
    excess_since: Option<Instant>,
    leases: HashMap<u64, Lease>,
    closed: bool,
}

impl State {
    fn pending(&self) -> u32 {
        let pending = self.queued.len().saturating_add(self.connecting.len());
        u32::try_from(pending).unwrap_or(u32::MAX)
    }

    /// Connections open or on their way: what counts against `pool_size + max_overflow`.
    fn committed(&self) -> u32 {
        self.out
            .saturating_add(self.idle)
            .saturating_add(self.pending())
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }
}

/// The gate: shared by the [`Database`](crate::Database), its sessions and its connectors.
pub(crate) struct Gate {
    state: Mutex<State>,
    /// Checkouts waiting for a connection.
    callers: Condvar,
    /// Connectors waiting for a ticket.
    connectors: Condvar,
    /// The keeper thread (overflow idle timeout, leak detection).
    keeper: Condvar,
    pool_size: u32,
    max: u32,
    overflow_idle_timeout: Duration,
    leak_threshold: Option<Duration>,
}

/// Work the keeper thread found due.
pub(crate) enum Due {
    /// Close this many idle connections (already reserved).
    Close(u32),
    /// Emit these leak warnings.
    Leaks(Vec<(tracing::Dispatch, &'static Location<'static>, Duration)>),
    /// The pool is closed: stop.
    Stop,
}

impl Gate {
    pub(crate) fn new(config: &PoolConfig) -> Self {
        Gate {
            state: Mutex::new(State::default()),
            callers: Condvar::new(),
            connectors: Condvar::new(),
            keeper: Condvar::new(),
            pool_size: config.pool_size,
            max: config.max_connections(),
            overflow_idle_timeout: config.overflow_idle_timeout,
            leak_threshold: config.leak_detection_threshold,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiting checkouts, if any, after a change they may be waiting for.
    fn wake_callers(&self, st: MutexGuard<'_, State>) {
        let waiting = !st.waiters.is_empty();
        drop(st);
        if waiting {
            self.callers.notify_all();
        }
    }

    /// Whether a keeper thread has work to do for this configuration.
    pub(crate) fn needs_keeper(&self) -> bool {
        self.max > self.pool_size || self.leak_threshold.is_some()
    }

    fn track_excess(&self, st: &mut State) {
        if st.idle > self.pool_size {
            if st.excess_since.is_none() {
                st.excess_since = Some(Instant::now());
                self.keeper.notify_one();
            }
        } else {
            st.excess_since = None;
        }
    }

    /// Waits until an idle connection is reserved for the caller, queuing a connect ticket when
    /// there is room for one more connection.
    pub(crate) fn acquire(&self, deadline: Instant) -> Result<Grant, Refusal> {
        let mut st = self.lock();
        let me = st.id();
        st.waiters.push_back(me);
        let mut ticket: Option<u64> = None;
        let outcome = loop {
            if let Some(message) = ticket.and_then(|t| st.failures.remove(&t)) {
                break Err(Refusal::Connect(message));
            }
            let position = st.waiters.iter().position(|w| *w == me).unwrap_or(0);
            if u32::try_from(position).is_ok_and(|p| p < st.idle) {
                st.idle -= 1;
                st.out += 1;
                self.track_excess(&mut st);
                break Ok(Grant::Idle);
            }
            if let Some(t) = ticket {
                // Its connection landed and went to an earlier waiter: room for another ticket.
                if !st.queued.contains(&t) && !st.connecting.contains(&t) {
                    st.owned.remove(&t);
                    ticket = None;
                }
            }
            if ticket.is_none() && st.committed() < self.max {
                let t = st.id();
                st.queued.push_back(t);
                st.owned.insert(t);
                ticket = Some(t);
                self.connectors.notify_one();
                continue;
            }
            let now = Instant::now();
            // A connect already opening for this checkout is waited for, like SQLAlchemy's
            // overflow connect: `pool_timeout` bounds the wait for room, the driver's
            // `connect_timeout` bounds the connect. So `PoolTimeout` means the limit was in use
            // (or no connector was free to start a connect) for the whole timeout.
            let connecting_for_me = ticket.is_some_and(|t| st.connecting.contains(&t));
            if now >= deadline && connecting_for_me {
                st = self
                    .callers
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            if now >= deadline {
                break Err(Refusal::Timeout {
                    open: st.out.saturating_add(st.idle),
                    checked_out: st.out,
                    pending: st.pending(),
                });
            }
            st = self
                .callers
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        st.waiters.retain(|w| *w != me);
        if let Some(t) = ticket {
            // Served otherwise: a ticket nobody took is withdrawn; one under way lands as idle.
            st.owned.remove(&t);
            st.failures.remove(&t);
            st.queued.retain(|q| *q != t);
        }
        // Positions moved (and a withdrawn ticket freed room): let the others look again.
        self.wake_callers(st);
        outcome
    }

    /// A checked-out connection (or one the pool was closing) is gone: room for another.
    pub(crate) fn discarded(&self, count: u32) {
        let mut st = self.lock();
        st.out = st.out.saturating_sub(count);
        self.wake_callers(st);
    }

    /// A checked-out connection is back in r2d2's idle list.
    pub(crate) fn kept(&self) {
        let mut st = self.lock();
        st.out = st.out.saturating_sub(1);
        st.idle = st.idle.saturating_add(1);
        self.track_excess(&mut st);
        self.wake_callers(st);
    }

    /// Whether `pool_size` connections are idle (for the immediate overflow close).
    pub(crate) fn pool_size_idle(&self) -> bool {
        self.lock().idle >= self.pool_size
    }

    /// Reserves every idle connection for closing (dispose); returns how many.
    pub(crate) fn reserve_all_idle(&self) -> u32 {
        let mut st = self.lock();
        let count = st.idle;
        st.idle = 0;
        st.out = st.out.saturating_add(count);
        self.track_excess(&mut st);
        count
    }

    // ---- connectors ------------------------------------------------------------------------

    /// Blocks a connector until a ticket is queued; `None` once the pool is closed.
    pub(crate) fn next_ticket(&self) -> Option<u64> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if let Some(t) = st.queued.pop_front() {
                st.connecting.insert(t);
                return Some(t);
            }
            st = self
                .connectors
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The ticket's connection is made; r2d2 pushes it into its idle list right after.
    pub(crate) fn landed(&self, ticket: u64) {
        let mut st = self.lock();
        st.connecting.remove(&ticket);
        st.idle = st.idle.saturating_add(1);
        self.track_excess(&mut st);
        self.wake_callers(st);
    }

    /// The ticket's connect failed: its checkout (if still waiting) gets the message.
    pub(crate) fn failed(&self, ticket: u64, message: String) {
        let mut st = self.lock();
        st.connecting.remove(&ticket);
        if st.owned.contains(&ticket) {
            st.failures.insert(ticket, message);
        }
        self.wake_callers(st);
    }

    /// Closes the gate: connectors and the keeper stop.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.connectors.notify_all();
        self.keeper.notify_all();
    }

    // ---- figures -----------------------------------------------------------------------------

    /// `(open, idle, checked_out)`.
    pub(crate) fn figures(&self) -> (u32, u32, u32) {
        let st = self.lock();
        (st.out.saturating_add(st.idle), st.idle, st.out)
    }

    // ---- leak detection ------------------------------------------------------------------------

    /// Registers a checkout for leak detection; `None` when detection is off.
    pub(crate) fn lease(&self, location: &'static Location<'static>) -> Option<u64> {
        self.leak_threshold?;
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let mut st = self.lock();
        let id = st.id();
        st.leases.insert(
            id,
            Lease {
                since: Instant::now(),
                location,
                dispatch,
                warned: false,
            },
        );
        drop(st);
        self.keeper.notify_one();
        Some(id)
    }

    pub(crate) fn release(&self, lease: u64) {
        self.lock().leases.remove(&lease);
    }

    // ---- the keeper --------------------------------------------------------------------------

    /// Waits for the keeper's next piece of work.
    pub(crate) fn next_due(&self) -> Due {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Due::Stop;
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            if let (Some(since), true) = (st.excess_since, st.idle > self.pool_size) {
                let at = since.checked_add(self.overflow_idle_timeout).unwrap_or(now);
                if at <= now {
                    let count = st.idle - self.pool_size;
                    st.idle = self.pool_size;
                    st.out = st.out.saturating_add(count);
                    st.excess_since = None;
                    return Due::Close(count);
                }
                next = Some(at);
            }
            if let Some(threshold) = self.leak_threshold {
                let mut leaks = Vec::new();
                for lease in st.leases.values_mut().filter(|l| !l.warned) {
                    let held = now.saturating_duration_since(lease.since);
                    if held >= threshold {
                        lease.warned = true;
                        leaks.push((lease.dispatch.clone(), lease.location, held));
                    } else {
                        let at = lease.since.checked_add(threshold).unwrap_or(now);
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                if !leaks.is_empty() {
                    return Due::Leaks(leaks);
                }
            }
            st = match next {
                Some(at) => {
                    self.keeper
                        .wait_timeout(st, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self.keeper.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

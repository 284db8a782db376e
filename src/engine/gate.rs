//! The gate: the [`Admission`] state machine behind a mutex, where checkouts, connect threads,
//! r2d2's connect calls and the keeper wait for each other.
//!
//! - A checkout waits on `callers` for its [`Step`]: an idle connection reserved for it, a
//!   ticket to open one (it starts a connect thread, see `manager`), or its deadline.
//! - A connect thread hands the connection it opened to `ready` and wakes `connectors`: r2d2's
//!   [`connect`](r2d2::ManageConnection::connect) calls wait there and return it, and r2d2 puts it
//!   in its idle list.
//! - The keeper waits on `keeper` for overflow connections to close and leaks to report.
//!
//! Nothing here sleeps for a fixed time or polls: every wait is on a condition variable, bounded
//! by a deadline where there is one.

use std::collections::VecDeque;
use std::panic::Location;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::admission::{Admission, CheckIn, Due, Figures, LeaseId, Limits, Refusal, Step, Ticket};
use super::pooled::Pooled;
use crate::config::PoolConfig;

/// What a failed connect reports to its checkout: the driver's error.
pub(crate) type ConnectFailure = crate::error::BoxedCause;

/// Where the pool's figures and timings go (the metrics instruments), told under the gate's
/// lock after every change, so that a sequence of figures is the sequence of states.
pub(crate) trait Observer: Send + Sync {
    /// The figures changed (or may have).
    fn figures(&self, figures: &Figures);
    /// A checkout gave up at its deadline.
    fn timeout(&self) {}
    /// A connect thread opened a connection in `took`.
    fn created(&self, took: Duration) {
        let _ = took;
    }
    /// A checkout obtained its connection after waiting `took`.
    fn waited(&self, took: Duration) {
        let _ = took;
    }
    /// A session held its connection for `held`, checkout to return.
    fn used(&self, held: Duration) {
        let _ = held;
    }
}

struct Inner {
    admission: Admission<ConnectFailure, tracing::Dispatch>,
    /// Connections opened by connect threads, waiting for one of r2d2's connect calls.
    ready: VecDeque<Pooled>,
}

/// The gate: shared by the pool, its sessions, its connect threads and r2d2's connect calls.
pub(crate) struct Gate {
    inner: Mutex<Inner>,
    /// Checkouts waiting for a step.
    callers: Condvar,
    /// r2d2's connect calls waiting for an opened connection.
    connectors: Condvar,
    /// The keeper thread.
    keeper: Condvar,
    observer: Box<dyn Observer>,
    /// `leak_detection_threshold` is set: checkouts are leased.
    leak_detection: bool,
}

/// A checkout's outcome in the gate.
pub(crate) enum Admitted {
    /// An idle connection is reserved for it: take it from r2d2.
    Take,
    /// It gave up.
    Refused(Refusal<ConnectFailure>),
}

impl Gate {
    pub(crate) fn new(config: &PoolConfig, observer: Box<dyn Observer>) -> Self {
        Gate {
            observer,
            leak_detection: config.leak_detection_threshold.is_some(),
            inner: Mutex::new(Inner {
                admission: Admission::new(Limits::new(config)),
                ready: VecDeque::new(),
            }),
            callers: Condvar::new(),
            connectors: Condvar::new(),
            keeper: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The instruments.
    pub(crate) fn observer(&self) -> &dyn Observer {
        &*self.observer
    }

    /// Tells the observer the figures, under the lock.
    fn publish(&self, inner: &Inner) {
        self.observer.figures(&inner.admission.figures());
    }

    /// Publishes the figures, releases the lock and wakes the waiting checkouts, if any.
    fn wake_callers(&self, inner: MutexGuard<'_, Inner>) {
        self.publish(&inner);
        let waiting = inner.admission.has_waiters();
        drop(inner);
        if waiting {
            self.callers.notify_all();
        }
    }

    /// Whether a keeper thread has work to do for this configuration.
    pub(crate) fn needs_keeper(&self) -> bool {
        self.lock().admission.needs_keeper()
    }

    /// The pool's figures now.
    pub(crate) fn figures(&self) -> Figures {
        self.lock().admission.figures()
    }

    // ---- checkouts ----------------------------------------------------------------------------

    /// Waits until an idle connection is reserved for the caller or it gives up at `deadline`.
    /// `open` starts a connect thread for a ticket the caller was given (called without the lock
    /// held); when it cannot, it returns the failure, which refuses the checkout.
    /// `now` is the time of arrival, a moment before the call: the first decision is taken at it
    /// (a checkout served at once reads no clock here). The figures are published whenever the
    /// lock is let go of, so the arrival alone (pending one more) is seen only by a checkout
    /// that waits.
    pub(crate) fn admit(
        &self,
        now: Instant,
        deadline: Instant,
        open: impl Fn(Ticket) -> Result<(), ConnectFailure>,
    ) -> Admitted {
        let mut inner = self.lock();
        if inner.admission.take_at_once(now) {
            self.wake_callers(inner);
            return Admitted::Take;
        }
        let me = inner.admission.arrive();
        // Leaves the queue however this ends (an `open` that panics included).
        let mut guard = Leave {
            gate: self,
            me,
            done: false,
        };
        let mut now = now;
        loop {
            match inner.admission.poll(me, now, deadline) {
                Step::Take => {
                    guard.done = true;
                    self.wake_callers(inner);
                    return Admitted::Take;
                }
                Step::Refuse(refusal) => {
                    guard.done = true;
                    self.wake_callers(inner);
                    return Admitted::Refused(refusal);
                }
                Step::Open(ticket) => {
                    self.publish(&inner);
                    drop(inner);
                    if let Err(failure) = open(ticket) {
                        self.failed(ticket, failure);
                    }
                    inner = self.lock();
                }
                Step::Wait(until) => {
                    self.publish(&inner);
                    let timeout = until.saturating_duration_since(now);
                    inner = self
                        .callers
                        .wait_timeout(inner, timeout)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            now = Instant::now();
        }
    }

    /// A checked-out connection comes back at `now`: counted idle and `true` (it is pushed to
    /// r2d2's idle list right after: a checkout woken by this takes it from r2d2, whose own wait
    /// covers the moment between); or counted as closing and `false` (the caller discards it),
    /// see [`Admission::check_in`]. One decision under the lock, so two check-ins at once never
    /// both keep a connection above `pool_size`.
    pub(crate) fn check_in(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.admission.check_in(now) {
            CheckIn::Close => {
                self.publish(&inner);
                false
            }
            CheckIn::Kept(timer_started) => {
                if timer_started {
                    self.keeper.notify_one();
                }
                self.wake_callers(inner);
                true
            }
        }
    }

    /// A checked-out connection is about to be closed instead of kept.
    pub(crate) fn discarding(&self) {
        let mut inner = self.lock();
        inner.admission.discarding();
        self.publish(&inner);
    }

    /// A connection being closed is gone: room for another.
    pub(crate) fn closed_one(&self) {
        let mut inner = self.lock();
        inner.admission.closed_one();
        self.wake_callers(inner);
    }

    /// Moves every idle connection to closing (dispose); returns how many to take from r2d2.
    pub(crate) fn close_all_idle(&self) -> u32 {
        let mut inner = self.lock();
        let count = inner.admission.close_all_idle(Instant::now());
        self.publish(&inner);
        count
    }

    // ---- connects ------------------------------------------------------------------------------

    /// A connect thread opened `conn` for `ticket`: it goes to r2d2 through `ready`. When the
    /// pool is closed it is handed back, to be closed by the caller.
    pub(crate) fn opened(&self, ticket: Ticket, conn: Pooled) -> Option<Pooled> {
        let mut inner = self.lock();
        if !inner.admission.opened(ticket, Instant::now()) {
            self.publish(&inner);
            return Some(conn);
        }
        inner.ready.push_back(conn);
        self.connectors.notify_one();
        self.keeper.notify_one();
        self.wake_callers(inner);
        None
    }

    /// The connect for `ticket` failed: its checkout (if still waiting) gets the message.
    /// Returns the message when no checkout waits for it.
    pub(crate) fn failed(&self, ticket: Ticket, failure: ConnectFailure) -> Option<ConnectFailure> {
        let mut inner = self.lock();
        let unclaimed = inner.admission.failed(ticket, failure);
        self.wake_callers(inner);
        unclaimed
    }

    /// For r2d2's connect calls: waits for a connection a connect thread opened; `None` once the
    /// pool is closed.
    pub(crate) fn next_ready(&self) -> Option<Pooled> {
        let mut inner = self.lock();
        loop {
            if let Some(conn) = inner.ready.pop_front() {
                return Some(conn);
            }
            if inner.admission.is_closed() {
                return None;
            }
            inner = self
                .connectors
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Closes the gate: no more connects; r2d2's connect calls and the keeper stop. Returns the
    /// opened connections r2d2 never took, to be closed by the caller.
    pub(crate) fn close(&self) -> Vec<Pooled> {
        let mut inner = self.lock();
        inner.admission.close();
        let unclaimed: Vec<Pooled> = inner.ready.drain(..).collect();
        drop(inner);
        self.connectors.notify_all();
        self.keeper.notify_all();
        self.callers.notify_all();
        unclaimed
    }

    // ---- leak detection ------------------------------------------------------------------------

    /// Watches a checkout for leaks; `None` when detection is off.
    pub(crate) fn lease(&self, location: &'static Location<'static>) -> Option<LeaseId> {
        if !self.leak_detection {
            return None;
        }
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let mut inner = self.lock();
        let lease = inner.admission.lease(location, dispatch, Instant::now());
        drop(inner);
        if lease.is_some() {
            self.keeper.notify_one();
        }
        lease
    }

    pub(crate) fn release(&self, lease: LeaseId) {
        self.lock().admission.release(lease);
    }

    // ---- the keeper --------------------------------------------------------------------------

    /// Waits for the keeper's next piece of work.
    pub(crate) fn next_due(&self) -> Due<tracing::Dispatch> {
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            inner = match inner.admission.due(now) {
                Due::Wait(Some(at)) => {
                    self.keeper
                        .wait_timeout(inner, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                Due::Wait(None) => self
                    .keeper
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner),
                due => {
                    self.publish(&inner);
                    return due;
                }
            };
        }
    }
}

/// Takes a checkout out of the queue if it leaves the gate without a decision.
struct Leave<'g> {
    gate: &'g Gate,
    me: u64,
    done: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.gate.lock();
            inner.admission.abandon(self.me);
            self.gate.wake_callers(inner);
        }
    }
}

//! Admission: the pool's bookkeeping as one state machine, with the clock injected.
//!
//! Every rule of the pool that involves counting or time lives here, in plain methods that take
//! the current instant as an argument and do no I/O, take no lock and never sleep: which
//! checkout gets the next idle connection, when a checkout may open one more connection, when it
//! gives up, which idle connections are closed by the overflow idle timeout, which checkouts are
//! reported as leaks, and whether a connection may be handed out as it is (recycle, invalidation,
//! pre-ping). The [`Gate`](super::gate::Gate) wraps it in a mutex and condition variables;
//! unit tests drive it directly, with instants made up by the test.
//!
//! A connection is in exactly one of these states, each counted:
//!
//! | state        | meaning                                                                    |
//! |--------------|----------------------------------------------------------------------------|
//! | `connecting` | a connect thread is opening it for a ticket                                |
//! | `idle`       | in the pool (or handed to r2d2 on its way there), not reserved              |
//! | `out`        | checked out by a session (reserved for one, or in its hands)                |
//! | `closing`    | taken out of the pool to be closed; gone once the close returns             |
//!
//! `open = idle + out + closing`; `pending = connecting`; `open + pending` never exceeds
//! `pool_size + max_overflow`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::Location;
use std::time::{Duration, Instant};

use crate::config::PoolConfig;

/// A connect asked for by one checkout.
pub(crate) type Ticket = u64;
/// A checkout waiting in the gate.
pub(crate) type Waiter = u64;
/// A checkout watched by leak detection.
pub(crate) type LeaseId = u64;

/// The pool's limits, from [`PoolConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) pool_size: u32,
    pub(crate) max: u32,
    pub(crate) overflow_idle_timeout: Duration,
    pub(crate) leak_threshold: Option<Duration>,
}

impl Limits {
    pub(crate) fn new(config: &PoolConfig) -> Self {
        Limits {
            pool_size: config.pool_size,
            max: config.max_connections(),
            overflow_idle_timeout: config.overflow_idle_timeout,
            leak_threshold: config.leak_detection_threshold,
        }
    }
}

/// What a waiting checkout should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<E = String> {
    /// An idle connection is reserved for it (counted as checked out): take it from r2d2.
    Take,
    /// Start opening a connection for this ticket, then poll again.
    Open(Ticket),
    /// Nothing to do until woken, or until this instant at the latest.
    Wait(Instant),
    /// Give up; the checkout has left the queue.
    Refuse(Refusal<E>),
}

/// Why a checkout gave up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal<E = String> {
    /// The connect opened for it failed.
    Connect(E),
    /// Its deadline passed.
    Timeout(Figures),
}

/// The pool's figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Figures {
    /// Connections that exist: idle, checked out, or being closed.
    pub(crate) open: u32,
    /// Connections in the pool, not reserved.
    pub(crate) idle: u32,
    /// Connections checked out by sessions.
    pub(crate) checked_out: u32,
    /// Connections being closed.
    pub(crate) closing: u32,
    /// Connects under way.
    pub(crate) pending: u32,
    /// Checkouts waiting in the gate.
    pub(crate) waiting: u32,
    /// Whether the checkout these were taken for gave up while a connect that would have served
    /// it was under way (its own, or one holding the last free slot): the server had not
    /// answered yet, rather than every connection being in use.
    pub(crate) waited_on_connect: bool,
}

/// A checkout watched for leaks.
#[derive(Debug)]
pub(crate) struct Lease<D> {
    since: Instant,
    location: &'static Location<'static>,
    /// Where the warning goes (the subscriber in force at checkout).
    dispatch: D,
    warned: bool,
}

/// A leak to report: where the session was checked out, how long it has been held.
#[derive(Debug)]
pub(crate) struct Leak<D> {
    pub(crate) dispatch: D,
    pub(crate) location: &'static Location<'static>,
    pub(crate) held: Duration,
}

/// What became of a checked-out connection that came back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CheckIn {
    /// Counted idle; `true` when it made more than `pool_size` idle and so started the overflow
    /// idle timer (the keeper has a new instant to look at).
    Kept(bool),
    /// Counted as closing: `overflow_idle_timeout` is zero and `pool_size` connections were idle
    /// already (SQLAlchemy's overflow discard). The caller closes it.
    Close,
}

/// The keeper thread's next piece of work.
#[derive(Debug)]
pub(crate) enum Due<D> {
    /// Close this many idle connections, already moved to `closing`.
    Close(u32),
    /// Report these leaks.
    Leaks(Vec<Leak<D>>),
    /// Nothing until woken, or until this instant when `Some`.
    Wait(Option<Instant>),
    /// The pool is closed.
    Stop,
}

struct Queued<E> {
    id: Waiter,
    ticket: Option<Ticket>,
    failure: Option<E>,
}

/// The state machine. `E` is what a failed connect reports; `D` where a leak warning goes.
pub(crate) struct Admission<E = String, D = ()> {
    limits: Limits,
    idle: u32,
    out: u32,
    closing: u32,
    connecting: HashSet<Ticket>,
    /// Waiting checkouts, oldest first: idle connections go to them in this order.
    waiters: VecDeque<Queued<E>>,
    next_id: u64,
    /// Since when more than `pool_size` connections have been idle.
    excess_since: Option<Instant>,
    leases: HashMap<LeaseId, Lease<D>>,
    closed: bool,
}

impl<E, D: Clone> Admission<E, D> {
    pub(crate) fn new(limits: Limits) -> Self {
        Admission {
            limits,
            idle: 0,
            out: 0,
            closing: 0,
            connecting: HashSet::new(),
            waiters: VecDeque::new(),
            next_id: 0,
            excess_since: None,
            leases: HashMap::new(),
            closed: false,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn pending(&self) -> u32 {
        u32::try_from(self.connecting.len()).unwrap_or(u32::MAX)
    }

    /// Connections open or on their way: what counts against `pool_size + max_overflow`.
    fn committed(&self) -> u32 {
        self.idle
            .saturating_add(self.out)
            .saturating_add(self.closing)
            .saturating_add(self.pending())
    }

    /// The figures now.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            open: self
                .idle
                .saturating_add(self.out)
                .saturating_add(self.closing),
            idle: self.idle,
            checked_out: self.out,
            closing: self.closing,
            pending: self.pending(),
            waiting: u32::try_from(self.waiters.len()).unwrap_or(u32::MAX),
            waited_on_connect: false,
        }
    }

    /// Whether a keeper thread has work to do under these limits.
    pub(crate) fn needs_keeper(&self) -> bool {
        self.limits.max > self.limits.pool_size || self.limits.leak_threshold.is_some()
    }

    /// Whether anyone is waiting (a change may let them go on).
    pub(crate) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    fn track_excess(&mut self, now: Instant) -> bool {
        if self.idle > self.limits.pool_size {
            if self.excess_since.is_none() {
                self.excess_since = Some(now);
                return true;
            }
        } else {
            self.excess_since = None;
        }
        false
    }

    // ---- checkouts ----------------------------------------------------------------------------

    /// A checkout arriving at `now` takes an idle connection at once when nobody is queued
    /// before it (`true`): what [`arrive`](Admission::arrive) and a first
    /// [`poll`](Admission::poll) would decide, without joining the queue. `false`: it arrives and
    /// polls.
    pub(crate) fn take_at_once(&mut self, now: Instant) -> bool {
        if !self.waiters.is_empty() || self.idle == 0 {
            return false;
        }
        self.idle -= 1;
        self.out = self.out.saturating_add(1);
        self.track_excess(now);
        true
    }

    /// A checkout arrives: it joins the queue.
    pub(crate) fn arrive(&mut self) -> Waiter {
        let id = self.id();
        self.waiters.push_back(Queued {
            id,
            ticket: None,
            failure: None,
        });
        id
    }

    fn leave(&mut self, position: usize) -> Option<Queued<E>> {
        self.waiters.remove(position)
    }

    /// What the checkout `me` should do at `now`, given its `deadline`.
    ///
    /// Idle connections go to waiters in arrival order. A waiter with no connect of its own opens
    /// one when there is room; a connect it opened that lands goes to whoever is first in line.
    /// At the deadline it gives up, even with its own connect still under way: that connect goes
    /// on, and a connection it opens serves a later checkout.
    pub(crate) fn poll(&mut self, me: Waiter, now: Instant, deadline: Instant) -> Step<E> {
        let Some(position) = self.waiters.iter().position(|w| w.id == me) else {
            // Not queued (the pool closed under it): nothing will come.
            return Step::Refuse(Refusal::Timeout(self.figures()));
        };
        if self.waiters[position].failure.is_some() {
            if let Some(error) = self.leave(position).and_then(|w| w.failure) {
                return Step::Refuse(Refusal::Connect(error));
            }
        }
        if u32::try_from(position).is_ok_and(|p| p < self.idle) {
            self.idle -= 1;
            self.out = self.out.saturating_add(1);
            self.track_excess(now);
            self.leave(position);
            return Step::Take;
        }
        let own = self.waiters[position].ticket;
        let own_pending = own.is_some_and(|t| self.connecting.contains(&t));
        if now >= deadline {
            let mut figures = self.figures();
            figures.waited_on_connect = own_pending || figures.pending > 0;
            self.leave(position);
            return Step::Refuse(Refusal::Timeout(figures));
        }
        if !own_pending && !self.closed && self.committed() < self.limits.max {
            let ticket = self.id();
            self.connecting.insert(ticket);
            self.waiters[position].ticket = Some(ticket);
            return Step::Open(ticket);
        }
        Step::Wait(deadline)
    }

    /// The checkout `me` leaves the queue without a decision (its thread is unwinding).
    pub(crate) fn abandon(&mut self, me: Waiter) {
        if let Some(position) = self.waiters.iter().position(|w| w.id == me) {
            self.leave(position);
        }
    }

    /// The connect for `ticket` opened a connection: it is idle from now on (handed to r2d2).
    /// `false` when the pool is closed: the caller closes the connection.
    pub(crate) fn opened(&mut self, ticket: Ticket, now: Instant) -> bool {
        self.connecting.remove(&ticket);
        if self.closed {
            return false;
        }
        self.idle = self.idle.saturating_add(1);
        self.track_excess(now);
        true
    }

    /// The connect for `ticket` failed: the checkout that asked for it, if still waiting, gets
    /// `error`. Returns the error when nobody is waiting for it (for the log).
    pub(crate) fn failed(&mut self, ticket: Ticket, error: E) -> Option<E> {
        self.connecting.remove(&ticket);
        match self.waiters.iter_mut().find(|w| w.ticket == Some(ticket)) {
            Some(waiter) => {
                waiter.failure = Some(error);
                None
            }
            None => Some(error),
        }
    }

    /// A checked-out connection comes back at `now`: kept idle, or, when `overflow_idle_timeout`
    /// is zero and `pool_size` connections are idle already, closed at once (as SQLAlchemy does).
    pub(crate) fn check_in(&mut self, now: Instant) -> CheckIn {
        if self.limits.overflow_idle_timeout.is_zero() && self.idle >= self.limits.pool_size {
            self.discarding();
            return CheckIn::Close;
        }
        CheckIn::Kept(self.kept(now))
    }

    /// A checked-out connection went back to the pool; `true` when the overflow idle timer
    /// started.
    fn kept(&mut self, now: Instant) -> bool {
        self.out = self.out.saturating_sub(1);
        self.idle = self.idle.saturating_add(1);
        self.track_excess(now)
    }

    /// A checked-out connection is being closed instead of kept.
    pub(crate) fn discarding(&mut self) {
        self.out = self.out.saturating_sub(1);
        self.closing = self.closing.saturating_add(1);
    }

    /// A connection being closed is gone.
    pub(crate) fn closed_one(&mut self) {
        self.closing = self.closing.saturating_sub(1);
    }

    /// Moves every idle connection to `closing` (dispose); returns how many.
    pub(crate) fn close_all_idle(&mut self, now: Instant) -> u32 {
        let count = self.idle;
        self.idle = 0;
        self.closing = self.closing.saturating_add(count);
        self.track_excess(now);
        count
    }

    /// The pool is shut down: no more connects; waiters are let go.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    // ---- leak detection --------------------------------------------------------------------------

    /// Watches a checkout for leaks; `None` when detection is off.
    pub(crate) fn lease(
        &mut self,
        location: &'static Location<'static>,
        dispatch: D,
        now: Instant,
    ) -> Option<LeaseId> {
        self.limits.leak_threshold?;
        let id = self.id();
        self.leases.insert(
            id,
            Lease {
                since: now,
                location,
                dispatch,
                warned: false,
            },
        );
        Some(id)
    }

    /// The session of `lease` was returned.
    pub(crate) fn release(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
    }

    // ---- the keeper --------------------------------------------------------------------------

    /// The keeper's next piece of work at `now`: overflow connections idle past
    /// `overflow_idle_timeout` (while more than `pool_size` are idle) to close, leaks to report,
    /// or the instant to look again.
    pub(crate) fn due(&mut self, now: Instant) -> Due<D> {
        if self.closed {
            return Due::Stop;
        }
        let mut next: Option<Instant> = None;
        if let (Some(since), true) = (self.excess_since, self.idle > self.limits.pool_size) {
            let at = since
                .checked_add(self.limits.overflow_idle_timeout)
                .unwrap_or(now);
            if at <= now {
                let count = self.idle - self.limits.pool_size;
                self.idle = self.limits.pool_size;
                self.closing = self.closing.saturating_add(count);
                self.excess_since = None;
                return Due::Close(count);
            }
            next = Some(at);
        }
        if let Some(threshold) = self.limits.leak_threshold {
            let mut leaks = Vec::new();
            for lease in self.leases.values_mut().filter(|l| !l.warned) {
                let held = now.saturating_duration_since(lease.since);
                if held >= threshold {
                    lease.warned = true;
                    leaks.push(Leak {
                        dispatch: lease.dispatch.clone(),
                        location: lease.location,
                        held,
                    });
                } else {
                    let at = lease.since.checked_add(threshold).unwrap_or(now);
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            if !leaks.is_empty() {
                return Due::Leaks(leaks);
            }
        }
        Due::Wait(next)
    }
}

/// What a checkout does with an idle connection before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it out as it is.
    Use,
    /// Ping it first (`pre_ping`, not used within `pre_ping_bypass`).
    Ping,
    /// Close it and take another: made before a pool invalidation.
    Invalidated,
    /// Close it and take another: older than `pool_recycle`.
    Recycle,
}

/// The checkout-time rule for one connection made at `created` and last used at `last_used`.
pub(crate) fn verdict(
    config: &PoolConfig,
    created: Instant,
    last_used: Instant,
    invalidated: bool,
    now: Instant,
) -> Verdict {
    if invalidated {
        return Verdict::Invalidated;
    }
    if config
        .pool_recycle
        .is_some_and(|recycle| now.saturating_duration_since(created) >= recycle)
    {
        return Verdict::Recycle;
    }
    if config.pre_ping && now.saturating_duration_since(last_used) >= config.pre_ping_bypass {
        return Verdict::Ping;
    }
    Verdict::Use
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pool_size: u32, max_overflow: u32) -> Limits {
        Limits {
            pool_size,
            max: pool_size + max_overflow,
            overflow_idle_timeout: Duration::from_secs(1),
            leak_threshold: None,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Checks out one connection on an empty pool: open, land, take.
    fn checkout(a: &mut Admission, t: Instant) {
        let w = a.arrive();
        let Step::Open(ticket) = a.poll(w, t, ms(t, 1000)) else {
            panic!("expected a connect")
        };
        assert!(a.opened(ticket, t));
        assert_eq!(a.poll(w, t, ms(t, 1000)), Step::Take);
    }

    #[test]
    fn a_lazy_pool_opens_one_connection_per_checkout_that_finds_none_idle() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(2, 1));
        assert_eq!(a.figures(), Figures::default());
        let w = a.arrive();
        let Step::Open(ticket) = a.poll(w, t0, ms(t0, 100)) else {
            panic!()
        };
        // Polling again while its connect is under way: wait, no second connect.
        assert_eq!(a.poll(w, t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        assert_eq!(a.figures().pending, 1);
        assert!(a.opened(ticket, t0));
        assert_eq!(a.poll(w, t0, ms(t0, 100)), Step::Take);
        let f = a.figures();
        assert_eq!((f.open, f.idle, f.checked_out, f.pending), (1, 0, 1, 0));
        // Returned: idle, and the next checkout takes it without a connect.
        a.kept(t0);
        let w2 = a.arrive();
        assert_eq!(a.poll(w2, t0, ms(t0, 100)), Step::Take);
    }

    #[test]
    fn a_burst_never_opens_more_than_the_limit_and_idle_goes_in_arrival_order() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(2, 1));
        let waiters: Vec<Waiter> = (0..6).map(|_| a.arrive()).collect();
        let mut tickets = Vec::new();
        for w in &waiters {
            if let Step::Open(t) = a.poll(*w, t0, ms(t0, 100)) {
                tickets.push(t);
            }
        }
        assert_eq!(tickets.len(), 3, "pool_size + max_overflow connects");
        assert_eq!(a.figures().pending, 3);
        // The last waiter's connect lands first: the first waiter gets it.
        assert!(a.opened(tickets[2], t0));
        assert_eq!(a.poll(waiters[2], t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        assert_eq!(a.poll(waiters[0], t0, ms(t0, 100)), Step::Take);
        // Waiter 2's connect went to waiter 0, but its slot is used: no new connect for it.
        assert!(a.opened(tickets[0], t0));
        assert!(a.opened(tickets[1], t0));
        assert_eq!(a.poll(waiters[1], t0, ms(t0, 100)), Step::Take);
        assert_eq!(a.poll(waiters[2], t0, ms(t0, 100)), Step::Take);
        let f = a.figures();
        assert_eq!((f.open, f.checked_out, f.pending, f.waiting), (3, 3, 0, 3));
        // The rest wait for returns.
        assert_eq!(a.poll(waiters[3], t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        a.kept(t0);
        assert_eq!(a.poll(waiters[4], t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        assert_eq!(a.poll(waiters[3], t0, ms(t0, 100)), Step::Take);
    }

    #[test]
    fn a_discard_makes_room_for_a_connect_once_the_close_is_counted() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 0));
        checkout(&mut a, t0);
        let w = a.arrive();
        assert_eq!(a.poll(w, t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        a.discarding();
        let f = a.figures();
        assert_eq!((f.open, f.checked_out, f.closing), (1, 0, 1));
        // Still being closed: it counts against the limit.
        assert_eq!(a.poll(w, t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        a.closed_one();
        assert!(matches!(a.poll(w, t0, ms(t0, 100)), Step::Open(_)));
        assert_eq!(a.figures().open, 0);
    }

    #[test]
    fn a_checkout_gives_up_at_its_deadline_even_with_its_connect_under_way() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 0));
        let w = a.arrive();
        let Step::Open(ticket) = a.poll(w, t0, ms(t0, 100)) else {
            panic!()
        };
        match a.poll(w, ms(t0, 100), ms(t0, 100)) {
            Step::Refuse(Refusal::Timeout(f)) => {
                assert!(f.waited_on_connect);
                assert_eq!((f.open, f.pending), (0, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.figures().waiting, 0);
        // The connect goes on and serves the next checkout.
        assert!(a.opened(ticket, ms(t0, 150)));
        let w2 = a.arrive();
        assert_eq!(a.poll(w2, ms(t0, 150), ms(t0, 250)), Step::Take);
    }

    #[test]
    fn a_checkout_times_out_when_every_slot_stays_checked_out() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 0));
        checkout(&mut a, t0);
        let w = a.arrive();
        assert_eq!(a.poll(w, t0, ms(t0, 50)), Step::Wait(ms(t0, 50)));
        match a.poll(w, ms(t0, 50), ms(t0, 50)) {
            Step::Refuse(Refusal::Timeout(f)) => {
                assert!(!f.waited_on_connect);
                assert_eq!((f.open, f.checked_out, f.pending), (1, 1, 0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_checkout_takes_an_idle_connection_at_once_only_when_nobody_is_queued() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(2, 0));
        assert!(!a.take_at_once(t0), "nothing idle");
        checkout(&mut a, t0);
        checkout(&mut a, t0);
        a.kept(t0);
        let queued = a.arrive();
        assert!(!a.take_at_once(t0), "one is queued before it");
        assert_eq!(a.poll(queued, t0, ms(t0, 100)), Step::Take);
        a.kept(t0);
        assert!(a.take_at_once(t0));
        let figures = a.figures();
        assert_eq!(
            (figures.idle, figures.checked_out, figures.waiting),
            (0, 2, 0)
        );
    }

    #[test]
    fn a_failed_connect_goes_to_its_checkout_at_once_and_frees_its_slot() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 0));
        let w = a.arrive();
        let other = a.arrive();
        let Step::Open(ticket) = a.poll(w, t0, ms(t0, 100)) else {
            panic!()
        };
        assert_eq!(a.poll(other, t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        assert_eq!(a.failed(ticket, "refused".to_owned()), None);
        assert_eq!(
            a.poll(w, t0, ms(t0, 100)),
            Step::Refuse(Refusal::Connect("refused".to_owned()))
        );
        // The other waiter may try its own connect now.
        assert!(matches!(a.poll(other, t0, ms(t0, 100)), Step::Open(_)));
        // A failure nobody waits for comes back to the caller, to be logged.
        let t = a.id();
        a.connecting.insert(t);
        assert_eq!(a.failed(t, "late".to_owned()), Some("late".to_owned()));
    }

    #[test]
    fn overflow_connections_close_once_more_than_pool_size_stay_idle_for_the_timeout() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 2));
        for _ in 0..3 {
            checkout(&mut a, t0);
        }
        assert!(matches!(a.due(t0), Due::Wait(None)));
        a.kept(ms(t0, 10));
        a.kept(ms(t0, 20)); // two idle > pool_size 1: the timer starts here
        assert!(matches!(a.due(ms(t0, 500)), Due::Wait(Some(at)) if at == ms(t0, 1020)));
        // A checkout in between brings idle back to pool_size: the timer stops.
        let w = a.arrive();
        assert_eq!(a.poll(w, ms(t0, 600), ms(t0, 700)), Step::Take);
        assert!(matches!(a.due(ms(t0, 1100)), Due::Wait(None)));
        a.kept(ms(t0, 1200));
        a.kept(ms(t0, 1300));
        assert!(matches!(a.due(ms(t0, 2199)), Due::Wait(Some(_))));
        match a.due(ms(t0, 2200)) {
            Due::Close(count) => assert_eq!(count, 2),
            other => panic!("{other:?}"),
        }
        let f = a.figures();
        assert_eq!((f.open, f.idle, f.closing, f.checked_out), (3, 1, 2, 0));
        a.closed_one();
        a.closed_one();
        assert_eq!(a.figures().open, 1);
        assert_eq!(a.figures().idle, 1);
    }

    #[test]
    fn a_zero_overflow_idle_timeout_closes_a_return_above_pool_size_idle_at_once() {
        let t0 = Instant::now();
        let zero = Limits {
            overflow_idle_timeout: Duration::ZERO,
            ..limits(1, 2)
        };
        let mut a = Admission::<String>::new(zero);
        for _ in 0..3 {
            checkout(&mut a, t0);
        }
        assert_eq!(a.check_in(t0), CheckIn::Kept(false));
        assert_eq!(a.check_in(t0), CheckIn::Close);
        let f = a.figures();
        assert_eq!((f.open, f.idle, f.checked_out, f.closing), (3, 1, 1, 1));
        a.closed_one();
        assert_eq!(a.check_in(t0), CheckIn::Close);
        assert!(matches!(a.due(ms(t0, 10)), Due::Wait(None)));
        // With a timeout, the same return is kept and starts the overflow idle timer.
        let mut a = Admission::<String>::new(limits(1, 2));
        checkout(&mut a, t0);
        checkout(&mut a, t0);
        assert_eq!(a.check_in(t0), CheckIn::Kept(false));
        assert_eq!(a.check_in(t0), CheckIn::Kept(true));
        assert_eq!(a.figures().idle, 2);
    }

    #[test]
    fn dispose_moves_every_idle_connection_to_closing() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(2, 0));
        checkout(&mut a, t0);
        checkout(&mut a, t0);
        a.kept(t0);
        assert_eq!(a.close_all_idle(t0), 1);
        let f = a.figures();
        assert_eq!((f.open, f.idle, f.checked_out, f.closing), (2, 0, 1, 1));
    }

    #[test]
    fn a_closed_pool_opens_nothing_and_drops_what_lands() {
        let t0 = Instant::now();
        let mut a = Admission::<String>::new(limits(1, 0));
        let w = a.arrive();
        let Step::Open(ticket) = a.poll(w, t0, ms(t0, 100)) else {
            panic!()
        };
        a.close();
        assert!(a.is_closed());
        assert!(!a.opened(ticket, t0));
        assert!(matches!(a.due(t0), Due::Stop));
        assert_eq!(a.poll(w, t0, ms(t0, 100)), Step::Wait(ms(t0, 100)));
        a.abandon(w);
        assert_eq!(a.figures().waiting, 0);
    }

    #[test]
    fn a_session_held_past_the_threshold_is_reported_once() {
        let t0 = Instant::now();
        let mut a = Admission::<String, &'static str>::new(Limits {
            leak_threshold: Some(Duration::from_millis(300)),
            ..limits(1, 0)
        });
        let here = Location::caller();
        let lease = a.lease(here, "subscriber", t0).unwrap();
        let short = a.lease(here, "other", ms(t0, 100)).unwrap();
        a.release(short);
        assert!(matches!(a.due(ms(t0, 299)), Due::Wait(Some(at)) if at == ms(t0, 300)));
        match a.due(ms(t0, 300)) {
            Due::Leaks(leaks) => {
                assert_eq!(leaks.len(), 1);
                assert_eq!(leaks[0].dispatch, "subscriber");
                assert_eq!(leaks[0].held, Duration::from_millis(300));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.due(ms(t0, 900)), Due::Wait(None)));
        a.release(lease);
        // Off: no lease at all.
        let mut off = Admission::<String, &'static str>::new(limits(1, 0));
        assert_eq!(off.lease(here, "x", t0), None);
    }

    #[test]
    fn verdicts_follow_recycle_invalidation_and_the_ping_bypass_window() {
        let t0 = Instant::now();
        let config = PoolConfig::default()
            .with_pool_recycle(Some(Duration::from_secs(60)))
            .with_pre_ping_bypass(Duration::from_millis(500));
        assert_eq!(verdict(&config, t0, t0, true, t0), Verdict::Invalidated);
        assert_eq!(
            verdict(&config, t0, t0, false, ms(t0, 60_000)),
            Verdict::Recycle
        );
        assert_eq!(verdict(&config, t0, t0, false, ms(t0, 499)), Verdict::Use);
        assert_eq!(verdict(&config, t0, t0, false, ms(t0, 500)), Verdict::Ping);
        let no_ping = config.clone().with_pre_ping(false);
        assert_eq!(
            verdict(&no_ping, t0, t0, false, ms(t0, 5_000)),
            Verdict::Use
        );
        let never = PoolConfig::default().with_pre_ping(false);
        assert_eq!(
            verdict(&never, t0, t0, false, t0 + Duration::from_secs(86_400)),
            Verdict::Use
        );
    }
}

//! The engine: an r2d2 pool of [`AnyConnection`](crate::AnyConnection)s with SQLAlchemy's
//! QueuePool semantics (SQLAlchemy's `create_engine`), owned by a [`Database`](crate::Database).
//!
//! - **Lazy**: creating a [`Database`](crate::Database) opens nothing; a connection is opened
//!   only for a checkout that finds none idle.
//! - **`pool_size` / `max_overflow`**: at most `pool_size + max_overflow` connections are open
//!   (or being opened) at any moment. Connections above `pool_size` are closed once more than
//!   `pool_size` have stayed idle for `overflow_idle_timeout` (zero: at once as they come back,
//!   as SQLAlchemy does); `pool_size` idle connections are never closed by a timer.
//! - **`pool_timeout`** bounds the whole checkout: a waiting checkout is woken as soon as a
//!   connection comes back (kept or closed), a connect lands or fails. It fails with
//!   [`Error::Connect`] (the server's message) as soon as the connect made for it fails; at the
//!   deadline, with [`Error::ConnectTimeout`] naming the host when a connect that would serve it
//!   had no answer yet (that connect goes on, and serves a later checkout if it succeeds), else
//!   with [`Error::PoolTimeout`] and the figures: the limit stayed in use.
//! - **`pool_recycle`**: older connections are replaced at checkout.
//! - **`pre_ping`**: idle connections are pinged at checkout unless used within
//!   `pre_ping_bypass`; a failed ping or a query on a dead connection invalidates every older
//!   connection, each then replaced at its next checkout.
//!   [`Database::check`](crate::Database::check) always pings.
//! - **reset on return**: any open transaction (begun through Diesel or by raw SQL such as
//!   `BEGIN`) is rolled back before the connection is reused.
//! - **leak detection**: with `leak_detection_threshold`, a session held longer is reported once
//!   through `tracing`, naming where it was checked out.
//! - **`echo` / `echo_pool`**: statements and pool events through `tracing`, never the password.
//!
//! How the pieces fit: `admission` is the pool's bookkeeping as a state machine with the clock
//! injected (every rule that counts or times, unit-tested without a server); `gate` puts it
//! behind a mutex and is where checkouts, connect threads and the keeper wait; `manager` opens
//! connections on connect threads and hands them to r2d2, which keeps the idle ones; `keeper` is
//! the thread that closes overflow connections and reports leaks; `pooled` and `watch` are what
//! the pool knows of each connection. The engine imports none of the layers above it (session,
//! transaction, repo, the `Database` façade).

mod admission;
mod gate;
mod keeper;
mod manager;
mod pooled;
mod watch;

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use self::admission::{Figures, LeaseId};
use self::admission::{Refusal, Verdict};
use self::gate::{Admitted, ConnectFailure};
pub(crate) use self::gate::{Gate, Observer};
pub(crate) use self::manager::Manager;
use self::manager::{Closer, Opener};
pub(crate) use self::pooled::{Invalidation, Pooled};
pub(crate) use self::watch::Watch;
pub use crate::config::url::LIBPQ_SAFETY_DEFAULTS;
pub use crate::migrate::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

use crate::config::{DbUrl, PoolConfig};
use crate::error::{Error, Result};

/// A connection taken from r2d2 for a checkout.
pub(crate) type Lent = r2d2::PooledConnection<Manager>;

/// What a pool's owner attaches to each of its connections, for its own use (the Repo's
/// telemetry): the engine carries it and never reads it.
pub(crate) type Tag = Arc<dyn std::any::Any + Send + Sync>;

/// The tag of the pool `conn` belongs to (`None` for a connection opened outside a pool).
pub(crate) fn tag(conn: &mut crate::connection::AnyConnection) -> Option<&Tag> {
    use diesel::Connection;
    conn.instrumentation()
        .downcast_ref::<Watch>()
        .and_then(Watch::tag)
}

/// The pool's parts, owned by the [`Database`](crate::Database) (shared by its clones); dropping
/// it stops the pool's threads.
pub(crate) struct Pool {
    pub(crate) r2d2: r2d2::Pool<Manager>,
    pub(crate) url: DbUrl,
    pub(crate) config: PoolConfig,
    pub(crate) gate: Arc<Gate>,
    pub(crate) invalidation: Arc<Invalidation>,
    opener: Arc<Opener>,
}

impl Drop for Pool {
    /// Closes the idle connections in the dropping thread, then stops the connect calls. r2d2
    /// frees its own pool only once its worker threads let go of it, which may come after the
    /// process has exited: an SQLite file would then keep its `-wal` and `-shm` files.
    fn drop(&mut self) {
        self.close_idle();
        drop(self.gate.close());
    }
}

/// How long taking a connection the gate reserved (for a checkout, or to close it) out of r2d2
/// may wait: r2d2 has it already or is pushing it (a check-in is counted a moment before its
/// push), so this is never reached while the pool works.
const TAKE_LIMIT: Duration = Duration::from_secs(5);

impl Pool {
    /// Builds the pool for `url` without opening any connection.
    /// `observer` hears the pool's figures and events; `tag` goes with every connection (see
    /// [`tag`]).
    pub(crate) fn new(
        url: DbUrl,
        config: PoolConfig,
        observer: Box<dyn Observer>,
        tag: Tag,
    ) -> Self {
        let gate = Arc::new(Gate::new(&config, observer));
        let opener = Arc::new(Opener::new(url.clone(), config.clone(), gate.clone(), tag));
        // r2d2 keeps the idle connections; `min_idle` at the maximum keeps a connect call
        // outstanding for every connection not yet open, each taking what a connect thread opened
        // (see `manager`). No reaper: `keeper` closes overflow connections.
        let r2d2 = r2d2::Pool::builder()
            .max_size(config.max_connections())
            .min_idle(None)
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(config.pool_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .connection_customizer(Box::new(Closer { gate: gate.clone() }))
            .event_handler(Box::new(watch::PoolEvents {
                echo_pool: config.echo_pool,
            }))
            .build_unchecked(Manager::new(url.clone(), gate.clone()));
        Pool {
            r2d2,
            url,
            config,
            gate,
            invalidation: Arc::new(Invalidation::new()),
            opener,
        }
    }

    /// Starts the keeper thread of the pool `owner` holds, when its settings need one; it stops
    /// when `owner` is dropped.
    pub(crate) fn start_keeper<T: AsRef<Pool> + Send + Sync + 'static>(owner: &Arc<T>) {
        let gate = &(**owner).as_ref().gate;
        if !gate.needs_keeper() {
            return;
        }
        let owner = Arc::downgrade(owner);
        keeper::spawn(gate.clone(), move |count| {
            let Some(owner) = owner.upgrade() else {
                return false;
            };
            let pool = (*owner).as_ref();
            if pool.config.echo_pool {
                tracing::debug!(target: "userbase::pool", count, "overflow idle timeout: closing connections above pool_size");
            }
            pool.close(count);
            true
        });
    }

    /// A pool event, logged with `echo_pool`.
    pub(crate) fn event(&self, event: &'static str) {
        if self.config.echo_pool {
            tracing::debug!(target: "userbase::pool", "{event}");
        }
    }

    /// Waits in the gate until a connection is reserved for the caller (opening one when there is
    /// room), then takes it from r2d2. Gives up at `deadline`, even while a connect it started is
    /// still under way (that connect goes on and serves a later checkout).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] as soon as the connect started for this checkout fails;
    /// [`Error::ConnectTimeout`] at the deadline while that connect still had no answer;
    /// [`Error::PoolTimeout`] at the deadline when every slot stayed in use.
    ///
    /// `now` is the time the checkout began, `deadline` its end.
    pub(crate) fn checkout(&self, now: Instant, deadline: Instant) -> Result<Lent> {
        match self
            .gate
            .admit(now, deadline, |ticket| self.opener.start(ticket))
        {
            Admitted::Take => {}
            Admitted::Refused(refusal) => return Err(self.refusal(refusal)),
        }
        // Mostly the reserved connection is in r2d2's idle list already: take it without r2d2's
        // timed wait (which reads the clock twice), unless `echo_pool` wants r2d2's checkout
        // event, which only the timed path reports.
        if !self.config.echo_pool {
            if let Some(conn) = self.r2d2.try_get() {
                return Ok(conn);
            }
        }
        match self.r2d2.get_timeout(TAKE_LIMIT) {
            Ok(conn) => Ok(conn),
            Err(error) => {
                // Unreachable by the gate's bookkeeping; give the reservation back as closed.
                self.gate.discarding();
                self.gate.closed_one();
                tracing::warn!(target: "userbase::pool", %error, "a reserved idle connection was not in the pool");
                Err(self.refusal(Refusal::Timeout(self.gate.figures())))
            }
        }
    }

    fn refusal(&self, refusal: Refusal<ConnectFailure>) -> Error {
        match refusal {
            Refusal::Connect(cause) => Error::connect(&self.url, cause),
            Refusal::Timeout(figures) if figures.waited_on_connect => {
                self.gate.observer().timeout();
                tracing::warn!(target: "userbase::pool", url = %self.url, "checkout timed out: a connect that would serve it had no answer yet");
                Error::ConnectTimeout {
                    url: self.url.to_string(),
                    timeout: self.config.pool_timeout,
                }
            }
            Refusal::Timeout(figures) => {
                self.gate.observer().timeout();
                tracing::warn!(
                    target: "userbase::pool",
                    open = figures.open,
                    checked_out = figures.checked_out,
                    pending = figures.pending,
                    "checkout timed out"
                );
                Error::PoolTimeout {
                    pool_size: self.config.pool_size,
                    max_overflow: self.config.max_overflow,
                    timeout: self.config.pool_timeout,
                    open: figures.open,
                    checked_out: figures.checked_out,
                    pending: figures.pending,
                }
            }
        }
    }

    /// Checkout-time validation, in the caller's thread (invalidation, recycle, pre-ping):
    /// whether `pooled` may be handed out. A failed ping invalidates the pool's older connections.
    /// `now` is the time of the check.
    pub(crate) fn validate(&self, pooled: &mut Pooled, now: Instant) -> bool {
        let invalidated = self.invalidation.is_invalidated(pooled.created);
        match admission::verdict(
            &self.config,
            pooled.created,
            pooled.last_used,
            invalidated,
            now,
        ) {
            Verdict::Invalidated => {
                self.event("replacing a connection invalidated earlier");
                return false;
            }
            Verdict::Recycle => {
                self.event("recycle: replacing a connection older than pool_recycle");
                return false;
            }
            Verdict::Ping => {
                if let Err(error) = pooled.ping() {
                    self.invalidation.invalidate();
                    tracing::warn!(target: "userbase::pool", %error, "pre-ping failed: invalidating the pool's older connections");
                    return false;
                }
            }
            Verdict::Use => {}
        }
        pooled.last_used = now;
        true
    }

    /// Closes every idle connection now, in this thread (dispose, and the pool's drop).
    pub(crate) fn close_idle(&self) {
        self.close(self.gate.close_all_idle());
    }

    /// Closes `count` idle connections the gate moved to `closing`: each is taken from r2d2 and
    /// handed back marked for discard, so r2d2 removes it and [`Closer`] closes it and tells the
    /// gate.
    fn close(&self, count: u32) {
        for _ in 0..count {
            match self.r2d2.get_timeout(TAKE_LIMIT) {
                Ok(mut conn) => {
                    conn.mark_discard();
                    drop(conn);
                }
                Err(error) => {
                    // The count is given back so the figures stay bounded by what exists.
                    tracing::warn!(target: "userbase::pool", %error, "an idle connection to close was not in the pool");
                    self.gate.closed_one();
                }
            }
        }
    }

    /// Watches a checkout made at `location` for leaks; `None` when detection is off.
    pub(crate) fn lease(&self, location: &'static Location<'static>) -> Option<LeaseId> {
        self.gate.lease(location)
    }
}

/// The pool's figures: SQLAlchemy's `engine.pool.status()`, from
/// [`Database::status`](crate::Database::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// `pool_size`: connections kept open once made.
    pub pool_size: u32,
    /// `max_overflow`: connections allowed above `pool_size`.
    pub max_overflow: u32,
    /// Open connections (idle and checked out).
    pub open: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out by sessions.
    pub checked_out: u32,
    /// `open - pool_size`: above zero, the overflow in use; negative, room below `pool_size`
    /// (as SQLAlchemy reports it).
    pub overflow: i64,
}

impl fmt::Display for PoolStatus {
    /// SQLAlchemy's format: `Pool size: 5  Connections in pool: 1 Current Overflow: -4 Current Checked out connections: 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pool size: {}  Connections in pool: {} Current Overflow: {} Current Checked out connections: {}",
            self.pool_size, self.idle, self.overflow, self.checked_out
        )
    }
}

/// Caller SQL is about to run on `conn` (`Repo::load_sql`): the pool watches its statements for
/// transaction control, so a transaction it opens is rolled back at check-in.
pub(crate) fn expect_raw_sql(conn: &mut crate::connection::AnyConnection) {
    use diesel::Connection;
    if let Some(watch) = conn.instrumentation().downcast_mut::<Watch>() {
        watch.expect_raw_sql();
    }
}

/// Whether a statement on `conn` was refused as read-only (SQLSTATE 25006) since the last call.
pub(crate) fn took_read_only_refusal(conn: &mut crate::connection::AnyConnection) -> bool {
    use diesel::Connection;
    conn.instrumentation()
        .downcast_mut::<Watch>()
        .is_some_and(|watch| watch.take_read_only_refusal())
}

//! The engine: an r2d2 pool of [`AnyConnection`](crate::AnyConnection)s with SQLAlchemy's
//! QueuePool semantics (SQLAlchemy's `create_engine`), owned by a [`Database`](crate::Database).
//!
//! - **Lazy**: creating a [`Database`](crate::Database) opens nothing; a connection is opened
//!   only for a checkout that finds none idle.
//! - **`pool_size` / `max_overflow`**: at most `pool_size + max_overflow` connections are open
//!   (or being opened) at any moment. Connections above `pool_size` are closed once more than
//!   `pool_size` have stayed idle for `overflow_idle_timeout` (zero: at once as they come back,
//!   as SQLAlchemy does); `pool_size` idle connections are never closed by a timer.
//! - **`pool_timeout`**: a waiting checkout is woken as soon as a connection comes back (kept or
//!   closed), a connect lands or fails; it fails with
//!   [`Error::PoolTimeout`](crate::Error::PoolTimeout) only when the limit stayed in use for the
//!   whole timeout, and with [`Error::Connect`](crate::Error::Connect) (the server's message) as
//!   soon as the connect made for it fails.
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
//! How the pieces fit: `gate` keeps the exact figures and is where checkouts wait; `manager`
//! opens connections for the gate's tickets on r2d2's worker threads; r2d2 keeps the idle
//! connections; `keeper` is the thread that closes overflow connections and reports leaks;
//! `pooled` and `watch` are what the pool knows of each connection. The engine imports none of
//! the layers above it (session, transaction, repo, the `Database` façade).

mod gate;
mod keeper;
mod manager;
mod pooled;
mod watch;

use std::fmt;
use std::sync::Arc;

pub(crate) use self::gate::{Gate, Grant, Refusal};
pub(crate) use self::keeper::{close_reserved, pop_reserved};
pub(crate) use self::manager::{connect_error, Manager};
pub(crate) use self::pooled::{Invalidation, Pooled};
pub(crate) use self::watch::Watch;
pub use crate::config::url::LIBPQ_SAFETY_DEFAULTS;
pub use crate::migrate::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

use crate::config::{DbUrl, PoolConfig};

/// The pool's parts, owned by the [`Database`](crate::Database) (shared by its clones); dropping
/// it stops the pool's threads.
pub(crate) struct Pool {
    pub(crate) r2d2: r2d2::Pool<Manager>,
    pub(crate) url: DbUrl,
    pub(crate) config: PoolConfig,
    pub(crate) gate: Arc<Gate>,
    pub(crate) invalidation: Arc<Invalidation>,
}

impl Drop for Pool {
    /// Closes the idle connections in the dropping thread, then stops the connectors. r2d2
    /// frees its own pool only once its worker threads let go of it, which may come after the
    /// process has exited: an SQLite file would then keep its `-wal` and `-shm` files.
    fn drop(&mut self) {
        let idle = self.gate.reserve_all_idle();
        close_reserved(&self.r2d2, &self.gate, idle);
        self.gate.close();
    }
}

impl Pool {
    /// Builds the pool for `url` (validated) without opening any connection.
    pub(crate) fn new(url: DbUrl, config: PoolConfig) -> Self {
        let gate = Arc::new(Gate::new(&config));
        let manager = Manager::new(url.clone(), config.clone(), gate.clone());
        // r2d2 keeps the idle connections; `min_idle` at the maximum keeps a connect call
        // outstanding for every connection not yet open, each waiting for a checkout's ticket
        // (see `manager`). No reaper: `keeper` closes overflow connections.
        let r2d2 = r2d2::Pool::builder()
            .max_size(config.max_connections())
            .min_idle(None)
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(config.pool_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .event_handler(Box::new(watch::PoolEvents {
                echo_pool: config.echo_pool,
            }))
            .build_unchecked(manager);
        Pool {
            r2d2,
            url,
            config,
            gate,
            invalidation: Arc::new(Invalidation::new()),
        }
    }

    /// Starts the keeper thread of the pool `owner` holds, when its settings need one; it stops
    /// when `owner` is dropped.
    pub(crate) fn start_keeper<T: AsRef<Pool> + Send + Sync + 'static>(owner: &Arc<T>) {
        if (**owner).as_ref().gate.needs_keeper() {
            keeper::spawn(owner);
        }
    }

    /// A pool event, logged with `echo_pool`.
    pub(crate) fn event(&self, event: &'static str) {
        if self.config.echo_pool {
            tracing::debug!(target: "userbase::pool", "{event}");
        }
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

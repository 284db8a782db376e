//! The r2d2 connection manager that gives the pool SQLAlchemy's QueuePool semantics.
//!
//! r2d2 calls [`is_valid`](r2d2::ManageConnection::is_valid) on every checkout (the pool is built
//! with `test_on_check_out(true)`) and [`has_broken`](r2d2::ManageConnection::has_broken) on every
//! check-in; those two hooks carry the semantics:
//!
//! - checkout: replace connections that were invalidated or are older than `pool_recycle`; ping
//!   only connections idle for longer than `pre_ping_bypass`, and when a ping fails invalidate
//!   every connection made before that moment (SQLAlchemy's pool invalidation);
//! - check-in: roll back an open transaction (discard the connection only if that fails), discard
//!   connections that died or were invalidated, and close the connection at once when `pool_size`
//!   connections are already idle (SQLAlchemy's overflow discard).
//!
//! A failed connect returns a placeholder instead of an error: r2d2 would otherwise retry in the
//! background while the waiting checkout sleeps until `pool_timeout`. The placeholder wakes that
//! checkout, which turns it into [`Error::Connect`] with the server's message.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use diesel::connection::{Connection, SimpleConnection, TransactionManager};
use diesel::r2d2::R2D2Connection;

use super::watch::{ConnFlags, Watch};
use crate::config::{Backend, DbUrl, PoolConfig};
use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// Pool-wide state shared by the manager and the [`Database`](super::Database).
#[derive(Debug)]
pub(crate) struct Shared {
    /// Time origin for `invalid_before`.
    base: Instant,
    pool_size: u32,
    /// Connections sitting idle in r2d2's list (new ones enter it too).
    idle: AtomicU32,
    /// Connections made before this many nanoseconds after `base` are invalid; 0: none.
    invalid_before: AtomicU64,
}

impl Shared {
    pub(crate) fn new(pool_size: u32) -> Self {
        Shared {
            base: Instant::now(),
            pool_size,
            idle: AtomicU32::new(0),
            invalid_before: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks every connection made until now as invalid: each is replaced at its next checkout
    /// or closed at its check-in.
    pub(crate) fn invalidate(&self) {
        let now = self.nanos(Instant::now()).max(1);
        self.invalid_before.fetch_max(now, Ordering::AcqRel);
    }

    fn is_invalidated(&self, created: Instant) -> bool {
        self.nanos(created) < self.invalid_before.load(Ordering::Acquire)
    }

    /// A connection enters the idle list.
    fn enter_idle(&self) {
        self.idle.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection leaves the idle list (checkout).
    fn leave_idle(&self) {
        let _ = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Takes an idle slot for a returned connection; `false` when `pool_size` are already idle.
    fn reserve_idle(&self) -> bool {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.pool_size).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A pooled connection: the connection and what the pool knows of it.
pub(crate) struct Pooled {
    conn: AnyConnection,
    /// `Some` for the placeholder of a failed connect: the driver's message.
    failure: Option<String>,
    created: Instant,
    last_used: Instant,
    /// The session handed out the raw connection: a transaction may have been opened by hand.
    raw_access: bool,
    flags: Arc<ConnFlags>,
}

impl Pooled {
    /// The connection, for the Repo.
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// The connection, for arbitrary caller SQL: it is rolled back at check-in.
    pub(crate) fn raw_connection(&mut self) -> &mut AnyConnection {
        self.raw_access = true;
        &mut self.conn
    }

    /// The connection's backend.
    pub(crate) fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// The connect error this placeholder carries, if it is one.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// The latest connect failure and when it happened, for a checkout that times out while r2d2
/// could not even build a placeholder.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastConnectError(Arc<Mutex<Option<(Instant, String)>>>);

impl LastConnectError {
    fn record(&self, error: Option<String>) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = error.map(|message| (Instant::now(), message));
    }

    /// The error recorded at or after `since`, if any.
    pub(crate) fn since(&self, since: Instant) -> Option<String> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, message)| message.clone())
    }
}

/// Opens connections of the backend the URL names, and applies the pool semantics above.
pub(crate) struct Manager {
    url: DbUrl,
    /// What the driver is given (with the password); never printed.
    target: String,
    config: PoolConfig,
    shared: Arc<Shared>,
    last_error: LastConnectError,
    /// For `sqlite::memory:`, a connection held for the pool's lifetime: the in-memory database
    /// lives as long as one connection to it is open. Opened with the first pooled connection.
    memory_keeper: Mutex<Option<AnyConnection>>,
}

impl std::fmt::Debug for Manager {
    /// Shows the redacted URL; `target` holds the password and is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("url", &self.url)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn connect_error(url: &DbUrl, message: String) -> Error {
    Error::Connect {
        url: url.to_string(),
        message,
    }
}

impl Manager {
    pub(crate) fn new(
        url: DbUrl,
        config: PoolConfig,
        shared: Arc<Shared>,
        last_error: LastConnectError,
    ) -> Self {
        Manager {
            target: url.driver_target(),
            url,
            config,
            shared,
            last_error,
            memory_keeper: Mutex::new(None),
        }
    }

    /// Opens the keeper connection of an in-memory database, once.
    fn keep_memory_alive(&self) -> std::result::Result<(), String> {
        if !self.url.is_memory() {
            return Ok(());
        }
        let mut keeper = self
            .memory_keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if keeper.is_none() {
            let conn =
                AnyConnection::open(Backend::Sqlite, &self.target).map_err(|e| e.to_string())?;
            *keeper = Some(conn);
        }
        Ok(())
    }

    fn open(&self) -> std::result::Result<AnyConnection, String> {
        self.keep_memory_alive()?;
        let mut conn = AnyConnection::open(self.url.backend(), &self.target)
            .map_err(|e| e.to_string().trim().to_owned())?;
        if !self.config.statement_cache {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Ok(conn)
    }

    fn pool_event(&self, event: &'static str) {
        if self.config.echo_pool {
            tracing::debug!(target: "userbase::pool", "{event}");
        }
    }

    /// Rolls back what the session left open; `false` when that fails (discard the connection).
    fn reset(&self, pooled: &mut Pooled) -> bool {
        type Tm = <AnyConnection as Connection>::TransactionManager;
        let raw_access = std::mem::take(&mut pooled.raw_access);
        let mut rolled_back = false;
        loop {
            match Tm::transaction_manager_status_mut(&mut pooled.conn).transaction_depth() {
                Ok(None) => break,
                Ok(Some(_)) if Tm::rollback_transaction(&mut pooled.conn).is_ok() => {
                    rolled_back = true;
                }
                Ok(Some(_)) | Err(_) => return false,
            }
        }
        if raw_access && !rolled_back {
            // A transaction opened with raw SQL is invisible to diesel's transaction manager.
            if let Err(e) = pooled.conn.batch_execute("ROLLBACK") {
                let no_transaction = e.to_string().contains("no transaction is active");
                if !no_transaction {
                    return false;
                }
            }
        }
        if rolled_back {
            self.pool_event("reset: rolled back a transaction left open");
        }
        true
    }
}

/// The `Err` of `is_valid`: r2d2 drops the connection and tries the next one (never shown).
fn retired(reason: &str) -> Error {
    Error::Connect {
        url: String::new(),
        message: reason.to_owned(),
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = Error;

    fn connect(&self) -> Result<Pooled> {
        let now = Instant::now();
        let flags = Arc::new(ConnFlags::default());
        let (conn, failure) = match self.open() {
            Ok(mut conn) => {
                self.last_error.record(None);
                conn.set_instrumentation(Watch::new(
                    flags.clone(),
                    self.config.echo,
                    self.config.hide_parameters,
                ));
                (conn, None)
            }
            Err(message) => {
                tracing::warn!(target: "userbase::pool", url = %self.url, error = %message, "connect failed");
                self.last_error.record(Some(message.clone()));
                // The placeholder needs a connection value: an in-memory SQLite one costs
                // microseconds and is never handed to callers.
                let placeholder = AnyConnection::open(Backend::Sqlite, ":memory:")
                    .map_err(|_| connect_error(&self.url, message.clone()))?;
                (placeholder, Some(message))
            }
        };
        self.shared.enter_idle();
        Ok(Pooled {
            conn,
            failure,
            created: now,
            last_used: now,
            raw_access: false,
            flags,
        })
    }

    fn is_valid(&self, pooled: &mut Pooled) -> Result<()> {
        self.shared.leave_idle();
        if pooled.failure.is_some() {
            return Ok(());
        }
        if self.shared.is_invalidated(pooled.created) {
            self.pool_event("replacing a connection invalidated earlier");
            return Err(retired("invalidated"));
        }
        let now = Instant::now();
        if let Some(recycle) = self.config.pool_recycle {
            if now.duration_since(pooled.created) >= recycle {
                self.pool_event("recycle: replacing a connection older than pool_recycle");
                return Err(retired("recycled"));
            }
        }
        if self.config.pre_ping
            && now.duration_since(pooled.last_used) >= self.config.pre_ping_bypass
        {
            if let Err(error) = pooled.conn.ping() {
                self.shared.invalidate();
                tracing::warn!(target: "userbase::pool", %error, "pre-ping failed: invalidating the pool's older connections");
                return Err(retired("pre-ping failed"));
            }
        }
        pooled.last_used = now;
        Ok(())
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        if pooled.failure.is_some() {
            return true;
        }
        if pooled.flags.dead.load(Ordering::Relaxed) {
            self.shared.invalidate();
            tracing::warn!(target: "userbase::pool", "a connection died: invalidating the pool's older connections");
            return true;
        }
        if !self.reset(pooled) {
            self.pool_event("discarding a connection whose rollback failed");
            return true;
        }
        if self.shared.is_invalidated(pooled.created) {
            self.pool_event("closing an invalidated connection at check-in");
            return true;
        }
        if !self.shared.reserve_idle() {
            self.pool_event("overflow discard: pool_size connections are already idle");
            return true;
        }
        pooled.last_used = Instant::now();
        false
    }
}

//! A pooled connection and what the pool knows of it: age, last use, whether it died, whether a
//! transaction may be open; and pool-wide invalidation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use diesel::connection::{Connection, SimpleConnection, TransactionManager};

use super::watch::ConnFlags;
use crate::config::Backend;
use crate::connection::AnyConnection;

/// Connections made before a moment are invalid (SQLAlchemy's pool invalidation): each is
/// replaced at its next checkout or closed at its check-in.
#[derive(Debug)]
pub(crate) struct Invalidation {
    /// Time origin for `before`.
    base: Instant,
    /// Connections made before this many nanoseconds after `base` are invalid; 0: none.
    before: AtomicU64,
}

impl Invalidation {
    pub(crate) fn new() -> Self {
        Invalidation {
            base: Instant::now(),
            before: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks every connection made until now as invalid.
    pub(crate) fn invalidate(&self) {
        let now = self.nanos(Instant::now()).max(1);
        self.before.fetch_max(now, Ordering::AcqRel);
    }

    pub(crate) fn is_invalidated(&self, created: Instant) -> bool {
        let before = self.before.load(Ordering::Acquire);
        before != 0 && self.nanos(created) < before
    }
}

/// A pooled connection: the connection and what the pool knows of it.
pub(crate) struct Pooled {
    conn: AnyConnection,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    flags: Arc<ConnFlags>,
    /// Decided by the session before check-in: close instead of keeping it idle.
    discard: bool,
}

impl Pooled {
    pub(crate) fn new(conn: AnyConnection, created: Instant, flags: Arc<ConnFlags>) -> Self {
        Pooled {
            conn,
            created,
            last_used: created,
            flags,
            discard: false,
        }
    }

    /// The connection, for the Repo's statements.
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// The connection, for caller SQL: its statements are watched for transaction control.
    pub(crate) fn raw_connection(&mut self) -> &mut AnyConnection {
        self.flags.expect_raw_sql();
        &mut self.conn
    }

    /// The connection's backend.
    pub(crate) fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Whether a statement found the server connection gone.
    pub(crate) fn is_dead(&self) -> bool {
        self.flags.dead.load(Ordering::Relaxed)
    }

    /// Close this connection when it is handed back.
    pub(crate) fn mark_discard(&mut self) {
        self.discard = true;
    }

    pub(crate) fn is_discarded(&self) -> bool {
        self.discard
    }

    /// Tests the connection with a round trip (`SELECT 1`).
    pub(crate) fn ping(&mut self) -> diesel::QueryResult<()> {
        self.conn.batch_execute("SELECT 1")
    }

    /// Rolls back whatever transaction the session left open, whoever began it: Diesel's
    /// transaction manager, or raw SQL (`BEGIN`, `BEGIN IMMEDIATE`, `START TRANSACTION`) that
    /// the manager cannot see and the statement watch flags. `false` when the rollback fails
    /// (the connection is then discarded). Returns whether something was rolled back via `rolled`.
    pub(crate) fn reset(&mut self) -> Result<bool, ()> {
        type Tm = <AnyConnection as Connection>::TransactionManager;
        let mut rolled_back = false;
        loop {
            match Tm::transaction_manager_status_mut(&mut self.conn).transaction_depth() {
                Ok(None) => break,
                Ok(Some(_)) if Tm::rollback_transaction(&mut self.conn).is_ok() => {
                    rolled_back = true;
                }
                Ok(Some(_)) | Err(_) => return Err(()),
            }
        }
        self.flags.clear_raw_sql();
        if self.flags.take_raw_transaction() && !rolled_back {
            match self.conn.batch_execute("ROLLBACK") {
                Ok(()) => rolled_back = true,
                // SQLite refuses a ROLLBACK outside a transaction; PostgreSQL only warns.
                Err(e) if e.to_string().contains("no transaction is active") => {}
                Err(_) => return Err(()),
            }
        }
        Ok(rolled_back)
    }
}

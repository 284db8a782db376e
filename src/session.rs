//! Sessions: a pooled connection checked out for a scope, and transactions on it.

use std::sync::Arc;

use crate::config::{Backend, PoolConfig};
use crate::connection::AnyConnection;
use crate::engine::{Gate, Invalidation, Manager, Pooled};
use crate::error::Error;
use crate::repo::Repo;

/// A connection checked out of the pool for a scope: the tutorial's `with
/// session_pool() as session` (a SQLAlchemy `sessionmaker`).
///
/// Dropping it returns the connection to the pool: any transaction left open (however it was
/// begun) is rolled back first, and a connection that died, was invalidated or could not be
/// rolled back is closed instead. Queries go through [`Session::repo`].
pub struct Session {
    // Field order matters: `conn` goes back to r2d2 before `checkin` updates the gate.
    conn: r2d2::PooledConnection<Manager>,
    checkin: Checkin,
}

/// The gate's side of a check-in, run after the connection is back in r2d2 (or closed).
struct Checkin {
    gate: Arc<Gate>,
    invalidation: Arc<Invalidation>,
    config: PoolConfig,
    lease: Option<u64>,
    kept: bool,
}

impl Drop for Checkin {
    fn drop(&mut self) {
        if let Some(lease) = self.lease {
            self.gate.release(lease);
        }
        if self.kept {
            self.gate.kept();
        } else {
            self.gate.discarded(1);
        }
    }
}

impl Drop for Session {
    /// The check-in work that may block (rollback), done before the connection goes back to
    /// r2d2, whose `has_broken` then only reads the decision.
    fn drop(&mut self) {
        let config = &self.checkin.config;
        let pooled: &mut Pooled = &mut self.conn;
        let event = |event: &'static str| {
            if config.echo_pool {
                tracing::debug!(target: "userbase::pool", "{event}");
            }
        };
        let keep = if pooled.is_discarded() {
            false
        } else if pooled.is_dead() {
            self.checkin.invalidation.invalidate();
            tracing::warn!(target: "userbase::pool", "a connection died: invalidating the pool's older connections");
            false
        } else {
            match pooled.reset() {
                Err(()) => {
                    event("discarding a connection whose rollback failed");
                    false
                }
                Ok(rolled_back) => {
                    if rolled_back {
                        event("reset: rolled back a transaction left open");
                    }
                    if self.checkin.invalidation.is_invalidated(pooled.created) {
                        event("closing an invalidated connection at check-in");
                        false
                    } else if config.overflow_idle_timeout.is_zero()
                        && self.checkin.gate.pool_size_idle()
                    {
                        event("overflow discard: pool_size connections are already idle");
                        false
                    } else {
                        true
                    }
                }
            }
        };
        if keep {
            pooled.last_used = std::time::Instant::now();
        } else {
            pooled.mark_discard();
        }
        self.checkin.kept = keep;
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend", &self.conn.backend())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        conn: r2d2::PooledConnection<Manager>,
        gate: Arc<Gate>,
        invalidation: Arc<Invalidation>,
        config: PoolConfig,
        lease: Option<u64>,
    ) -> Self {
        Session {
            conn,
            checkin: Checkin {
                gate,
                invalidation,
                config,
                lease,
                kept: false,
            },
        }
    }

    /// The pooled connection, for the engine's checks.
    pub(crate) fn pooled(&mut self) -> &mut Pooled {
        &mut self.conn
    }

    /// Closes the connection instead of returning it to the pool.
    pub(crate) fn discard(mut self) {
        self.conn.mark_discard();
    }

    /// The typed queries over this session's connection: the tutorial's `Repo(session)`.
    pub fn repo(&mut self) -> Repo<'_> {
        Repo::new(self.conn.connection())
    }

    /// The raw connection, for queries the [`Repo`] does not offer.
    ///
    /// A transaction opened here with raw SQL (`BEGIN`) and left open is rolled back when the
    /// session ends, like one opened through Diesel's API.
    pub fn connection(&mut self) -> &mut AnyConnection {
        self.conn.raw_connection()
    }

    /// The connection for the crate's own queries.
    pub(crate) fn repo_connection(&mut self) -> &mut AnyConnection {
        self.conn.connection()
    }

    /// The backend of this session's connection.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back when it returns `Err`
    /// or panics. Nested calls (through [`Repo::transaction`]) use savepoints.
    ///
    /// # Errors
    ///
    /// `f`'s own error, or a failure to begin or commit converted into `E`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Repo<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        self.repo().transaction(f)
    }
}

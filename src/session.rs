//! Sessions: a pooled connection checked out for a scope, and transactions on it.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Backend, PoolConfig};
use crate::connection::AnyConnection;
use crate::engine::{Gate, Invalidation, LeaseId, Lent, Pooled};
use crate::error::Error;
use crate::repo::Repo;

/// A connection checked out of the pool for a scope: the tutorial's `with
/// session_pool() as session` (a SQLAlchemy `sessionmaker`).
///
/// Dropping it returns the connection to the pool: any transaction left open (however it was
/// begun) is rolled back first, and a connection that died, was invalidated or could not be
/// rolled back is closed instead. Queries go through [`Session::repo`].
pub struct Session {
    conn: Lent,
    gate: Arc<Gate>,
    invalidation: Arc<Invalidation>,
    /// `echo_pool`: the check-in's events are logged.
    echo_pool: bool,
    lease: Option<LeaseId>,
    /// When the connection was handed to this session.
    since: Instant,
}

impl Drop for Session {
    /// The check-in, in this order: the work that may block (rollback) and the decision to keep
    /// or close, done here so that r2d2's `has_broken` only reads it; the gate told; then the
    /// connection handed back to r2d2 as the `conn` field drops. A kept connection is counted
    /// idle a moment before r2d2 has it back (a checkout woken by it waits inside r2d2 for the
    /// push); a closed one stays counted as closing until r2d2 has closed it (see
    /// `engine::manager::Closer`).
    fn drop(&mut self) {
        let keep = self.decide();
        let now = Instant::now();
        let kept = if keep {
            let pooled: &mut Pooled = &mut self.conn;
            pooled.last_used = now;
            let kept = self.gate.check_in(now);
            if !kept {
                self.event("overflow discard: pool_size connections are already idle");
            }
            kept
        } else {
            self.gate.discarding();
            false
        };
        if !kept {
            let pooled: &mut Pooled = &mut self.conn;
            pooled.mark_discard();
        }
        if let Some(lease) = self.lease {
            self.gate.release(lease);
        }
        self.gate
            .observer()
            .used(now.saturating_duration_since(self.since));
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
    /// The session of `conn`, handed out `since`.
    pub(crate) fn new(
        conn: Lent,
        gate: Arc<Gate>,
        invalidation: Arc<Invalidation>,
        config: &PoolConfig,
        lease: Option<LeaseId>,
        since: Instant,
    ) -> Self {
        Session {
            conn,
            gate,
            invalidation,
            echo_pool: config.echo_pool,
            lease,
            since,
        }
    }

    /// Logs a pool event with `echo_pool`.
    fn event(&self, event: &'static str) {
        if self.echo_pool {
            tracing::debug!(target: "userbase::pool", "{event}");
        }
    }

    /// Whether the connection may go back to the pool: not when it was marked for discard, died,
    /// could not be rolled back or was invalidated (the gate may still close it, with
    /// `overflow_idle_timeout` zero, when `pool_size` are idle). Rolls back what the session left
    /// open.
    fn decide(&mut self) -> bool {
        let pooled: &mut Pooled = &mut self.conn;
        if pooled.is_discarded() {
            return false;
        }
        if pooled.is_dead() {
            self.invalidation.invalidate();
            tracing::warn!(target: "userbase::pool", "a connection died: invalidating the pool's older connections");
            return false;
        }
        match pooled.reset() {
            Err(()) => {
                self.event("discarding a connection whose rollback failed");
                false
            }
            Ok(rolled_back) => {
                if rolled_back {
                    self.event("reset: rolled back a transaction left open");
                }
                let created = self.conn.created;
                if self.invalidation.is_invalidated(created) {
                    self.event("closing an invalidated connection at check-in");
                    false
                } else {
                    true
                }
            }
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

//! Read replicas with exact read-your-writes, failover on libpq multi-host URLs, and running
//! behind pgbouncer.
//!
//! # Reads on replicas
//!
//! With [`ReplicaConfig::urls`](crate::config::ReplicaConfig::urls) set (env
//! `DATABASE_REPLICA_URLS`), each replica gets its own pool (the primary's
//! [`PoolConfig`](crate::PoolConfig)), whose connections are read-only
//! (`default_transaction_read_only=on`: a write there is [`Error::ReadOnly`]).
//! [`Database::read`] and [`Database::read_session`] use a replica; [`Database::session`],
//! [`Database::transaction`] and migrations stay on the primary, so code that does not ask for a
//! replica is unaffected.
//!
//! A read goes to a replica that is up, lags at most
//! [`max_lag`](crate::config::ReplicaConfig::max_lag) and has replayed the position it needs
//! (replicas taken in turn); otherwise to the primary. Every decision is a `tracing` event
//! (target `userbase::pool`, level DEBUG) with `echo_pool`.
//!
//! # Read-your-writes, exact
//!
//! After a transaction that wrote commits through [`Database::transaction`] or
//! [`Database::transaction_with_retry`], the primary's WAL insert position
//! (`pg_current_wal_insert_lsn()`, one extra round trip on the same connection) is recorded in the
//! `Database` (shared by its clones). Whether it wrote is asked just before the commit
//! (`pg_current_xact_id_if_assigned()`, one more round trip): a transaction that only read
//! records nothing, so the reads after it need no replica to catch up. A position just past a
//! WAL page header (an idle primary right after a segment switch, or a record that ended at a
//! page's end) is recorded as the page's start: every earlier record ends there, and a standby's
//! replay position stops there until the next write. A later read needs a replica whose
//! `pg_last_wal_replay_lsn()` has reached it (or one no longer in recovery): the replica's last
//! seen replay position is cached (it only grows), so a read that the cache already covers costs
//! no extra query; otherwise the replica is asked, and asked again for up to
//! [`wait`](crate::config::ReplicaConfig::wait); after that the read goes to the primary.
//!
//! Writes made on a [`Session`] of the primary (not through `transaction`) are not recorded:
//! call [`Database::record_write`] after them. The position is also a token
//! ([`WalPosition`], text `X/Y`): [`Database::last_write`] gives it, and another process passes
//! it to [`Database::read_after`] / [`Database::read_session_after`] for the same guarantee.
//!
//! # Lag and health
//!
//! A background thread measures each replica every
//! [`check_interval`](crate::config::ReplicaConfig::check_interval) in one query: lag is
//! `now() - pg_last_xact_replay_timestamp()`, and 0 when the replica has replayed all the WAL it
//! received (`pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()`: on an idle primary the
//! timestamp keeps ageing though nothing is missing). A replica that fails to connect or answer
//! is taken out (its idle connections closed) and re-checked every check interval until it
//! answers again. One outage is one failure: the reads that were running on it when it stopped,
//! and the failed re-checks, do not lengthen that wait, so a replica that is back serves reads
//! again within about two check intervals. Only a replica that fails again less than 30 s after
//! it came back (a flapping server) is re-checked less often: each such relapse doubles the wait,
//! up to 30 s. With no usable replica, reads go to the primary.
//!
//! # Failover
//!
//! The primary's URL may be a libpq multi-host URL with `target_session_attrs=read-write`: new
//! connections go to whichever host accepts writes. After a promotion, the dead connections to
//! the old primary are invalidated by the pool (a failed ping or query), and new ones reach the
//! promoted server. A connection to a server that still answers but was demoted (or set
//! read-only) fails writes with [`Error::ReadOnly`]: when a transaction through
//! [`Database::transaction`] or [`Database::transaction_with_retry`] fails and
//! `SHOW transaction_read_only` answers `on`, the pool's connections are invalidated
//! ([`Database::dispose`]), so the next ones are made through `target_session_attrs`.
//!
//! # pgbouncer
//!
//! [`PoolConfig::statement_cache`](crate::PoolConfig::statement_cache) `= false` (env
//! `DB_STATEMENT_CACHE=off`) for transaction pooling. A pool that has the cache on and finds
//! itself behind a pooler sharing server connections between transactions switches the cache
//! off for all its connections at its first checkout, and says so once (a `tracing` warning,
//! target `userbase::pool`, naming `DB_STATEMENT_CACHE`): the pooler is seen when the server's
//! `inet_server_port()` is not the URL's port and a second client connection is served by the
//! same server backend; the cache stays on when the pooler keeps named prepared statements
//! itself (PgBouncer 1.21 and later with `max_prepared_statements`: in a transaction, a
//! statement diesel prepares does not show under diesel's name on the server). The same probe
//! runs for a pool with deadlines (even with the cache off): behind such a pooler each Repo
//! statement outside a transaction then runs in a transaction of its own, begun with the
//! deadlines as `SET LOCAL`s, so that they hold on whichever server connection the pooler picks
//! (see [`PoolConfig::statement_timeout`](crate::PoolConfig::statement_timeout)). Checkouts wait
//! for the probe's verdict (up to their `pool_timeout`; one that cannot wait longer goes on as
//! behind such a pooler), so no statement of the pool runs before it. Migrations run
//! through
//! [`Settings::migration_url`](crate::Settings::migration_url) (env `DATABASE_MIGRATION_URL`)
//! when set, and are refused with [`Error::Config`] when the migration connection goes through a
//! pooler (the server's `inet_server_port()` differs from the URL's port, and the same host and
//! port answer for a database named `pgbouncer`).

mod lsn;
mod pooler;
mod router;
mod status;

use std::time::Duration;

pub use self::lsn::WalPosition;
pub(crate) use self::pooler::{run_migrations, PoolerCheck};
pub(crate) use self::router::Router;
use self::router::{Health, Route};
use crate::connection::AnyConnection;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::failures::Failures;
use crate::repo::Repo;
use crate::session::Session;
use crate::transaction::Isolation;

/// A replica as the router sees it: [`Database::replicas`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's URL, password hidden.
    pub url: String,
    /// Whether reads may go there now (up, within the lag bound; `false` before it is measured).
    pub usable: bool,
    /// Its last measured lag, when known.
    pub lag: Option<Duration>,
    /// Whether it is taken out because it did not answer.
    pub down: bool,
}

/// Whether `error` means the connection or server is gone (not the query's fault): a read that
/// fails so on a replica is run again on the primary.
fn is_connection_failure(error: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    matches!(
        error,
        Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::PoolTimeout { .. }
            | Error::Query(D::DatabaseError(DatabaseErrorKind::ClosedConnection, _))
    )
}

/// Runs `f` on the primary in a read-only transaction, so a write fails as it would on a replica:
/// `BEGIN READ ONLY` on PostgreSQL, `PRAGMA query_only` on SQLite.
fn read_on_primary<T, F>(db: &Database, f: &mut F) -> Result<T>
where
    F: FnMut(&mut Repo<'_>) -> Result<T>,
{
    let mut session = db.session()?;
    read_only(session.repo_connection(), f)
}

/// Runs the read `f` in a read-only transaction on `conn`: `BEGIN READ ONLY` on PostgreSQL; on
/// SQLite a deferred `BEGIN` (no write lock) under `PRAGMA query_only`, switched off again after.
/// A write in `f` is [`Error::ReadOnly`] on both.
fn read_only<T, F>(conn: &mut AnyConnection, f: &mut F) -> Result<T>
where
    F: FnMut(&mut Repo<'_>) -> Result<T>,
{
    let mut read = |conn: &mut AnyConnection, own: &mut Failures| f(&mut Repo::within(conn, own));
    let mut own = Failures::default();
    if conn.backend() == crate::config::Backend::Sqlite {
        let mut query_only = QueryOnly::on(conn)?;
        let outcome =
            crate::transaction::run(query_only.conn, &mut own, Isolation::ReadOnly, &mut read);
        query_only.off()?;
        return outcome;
    }
    crate::transaction::run(conn, &mut own, Isolation::ReadOnly, read)
}

/// SQLite's `PRAGMA query_only` on a pooled connection, switched off again even when the read
/// panics: the connection goes back to the pool and must take writes there.
struct QueryOnly<'c> {
    conn: &'c mut AnyConnection,
    on: bool,
}

impl<'c> QueryOnly<'c> {
    fn on(conn: &'c mut AnyConnection) -> Result<Self> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("PRAGMA query_only = ON")?;
        Ok(QueryOnly { conn, on: true })
    }

    /// Switches it off, reporting a failure to do so.
    fn off(&mut self) -> Result<()> {
        use diesel::connection::SimpleConnection;
        self.on = false;
        self.conn.batch_execute("PRAGMA query_only = OFF")?;
        Ok(())
    }
}

impl Drop for QueryOnly<'_> {
    fn drop(&mut self) {
        if self.on {
            // Unwinding from the read: nobody is left to report a failure to.
            let _ = self.off();
        }
    }
}

impl Database {
    /// Runs the read `f` on a replica (see [`crate::replica`]): one that has replayed this
    /// `Database`'s last recorded write, within the lag bound, else the primary. Without
    /// replicas (and on SQLite) it runs on the primary.
    ///
    /// `f` runs in read-only mode everywhere: a write in it is [`Error::ReadOnly`]. When the
    /// replica's connection turns out to be gone, the replica is taken out and `f` runs again on
    /// the primary, so a replica that stops costs no failed read.
    ///
    /// ```no_run
    /// use userbase::Database;
    ///
    /// let db = Database::from_env()?;
    /// db.transaction(|repo| repo.rename_location(1, "Lisboa").map(drop))?;
    /// let name = db.read(|repo| Ok(repo.location(1)?.location_name))?; // sees "Lisboa"
    /// # Ok::<(), userbase::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `f`'s error; [`Error::ReadOnly`] when `f` writes; a checkout error of the primary.
    pub fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnMut(&mut Repo<'_>) -> Result<T>,
    {
        self.read_routed(None, f)
    }

    /// [`read`](Database::read) that also sees every write up to `token` (a
    /// [`last_write`](Database::last_write) of another `Database`, possibly in another process).
    ///
    /// # Errors
    ///
    /// As [`read`](Database::read).
    pub fn read_after<T, F>(&self, token: WalPosition, f: F) -> Result<T>
    where
        F: FnMut(&mut Repo<'_>) -> Result<T>,
    {
        self.read_routed(Some(token.as_u64()), f)
    }

    fn read_routed<T, F>(&self, token: Option<u64>, mut f: F) -> Result<T>
    where
        F: FnMut(&mut Repo<'_>) -> Result<T>,
    {
        let Some(router) = self.router() else {
            return read_on_primary(self, &mut f);
        };
        match router.route(token) {
            Route::Replica(index, seen, mut session) => match f(&mut session.repo()) {
                Err(error) if is_connection_failure(&error) => {
                    drop(session);
                    let replica = &router.replicas[index];
                    router.mark_down(replica, seen, &error);
                    router.event(
                        Some(replica),
                        format_args!("read failed on the replica: running it again on the primary"),
                    );
                    read_on_primary(self, &mut f)
                }
                outcome => outcome,
            },
            Route::Primary => read_on_primary(self, &mut f),
        }
    }

    /// A session for reads, on a replica chosen as for [`read`](Database::read), else on the
    /// primary. On a replica its transactions are read-only; on the primary it is an ordinary
    /// session (use [`read`](Database::read) for read-only everywhere, and for the retry on the
    /// primary when a replica's connection is gone).
    ///
    /// # Errors
    ///
    /// A checkout error of the primary.
    pub fn read_session(&self) -> Result<Session> {
        self.read_session_routed(None)
    }

    /// [`read_session`](Database::read_session) that also sees every write up to `token`.
    ///
    /// # Errors
    ///
    /// A checkout error of the primary.
    pub fn read_session_after(&self, token: WalPosition) -> Result<Session> {
        self.read_session_routed(Some(token.as_u64()))
    }

    fn read_session_routed(&self, token: Option<u64>) -> Result<Session> {
        match self.router().map(|router| router.route(token)) {
            Some(Route::Replica(_, _, session)) => Ok(*session),
            Some(Route::Primary) | None => self.session(),
        }
    }

    /// The WAL position of the last write recorded through this `Database` (and its clones):
    /// the token another process gives [`read_after`](Database::read_after). `None` before the
    /// first recorded write, without replicas, and on SQLite.
    pub fn last_write(&self) -> Option<WalPosition> {
        self.router()
            .and_then(Router::last_write)
            .map(WalPosition::from_u64)
    }

    /// Records the primary's current WAL insert position as a write of this `Database`, after
    /// writes made on a [`Session`] outside [`transaction`](Database::transaction); returns it.
    /// A position just past a WAL page header (an idle primary right after a segment switch) is
    /// given as the page's start, which a standby that has replayed everything reaches.
    /// `None` on SQLite.
    ///
    /// # Errors
    ///
    /// A checkout error, or the query's (on a server in recovery: "recovery is in progress").
    pub fn record_write(&self) -> Result<Option<WalPosition>> {
        let mut session = self.session()?;
        let conn = session.repo_connection();
        let lsn = match self.router() {
            Some(router) => router.record_write(conn),
            None => status::insert_position(conn, &std::sync::OnceLock::new())?,
        };
        Ok(lsn.map(WalPosition::from_u64))
    }

    /// What the router knows of each replica, in configuration order (empty without replicas).
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        let Some(router) = self.router() else {
            return Vec::new();
        };
        router
            .replicas
            .iter()
            .map(|replica| {
                let health = replica.health();
                ReplicaStatus {
                    url: replica.label.clone(),
                    usable: matches!(health, Health::Usable { .. }),
                    lag: match health {
                        Health::Usable { lag } => Some(lag),
                        Health::Lagging { lag } => lag,
                        _ => None,
                    },
                    down: matches!(health, Health::Down { .. }),
                }
            })
            .collect()
    }
}

/// The top-level transaction of [`Database::transaction`] (at [`Isolation::Default`]) and
/// [`Database::transaction_with_retry`] (at [`Isolation::Serializable`]): runs `f` in a
/// transaction on `conn` (a fresh session of the primary), then [`after_transaction`].
///
/// With replicas, on PostgreSQL, just before the commit it asks whether the transaction wrote
/// (`pg_current_xact_id_if_assigned()`: a transaction gets an ID at its first write, and only
/// then): a transaction that wrote nothing records no position, so it never makes reads wait
/// for a position no write needs. That position could lie where no standby reaches until the
/// next write: on an idle primary just after a WAL segment switch, the insert position is past
/// the new segment's header, while a standby's replay position stops at the segment's start.
pub(crate) fn transaction<T, E, F>(
    db: &Database,
    conn: &mut AnyConnection,
    isolation: Isolation,
    f: F,
) -> std::result::Result<T, E>
where
    F: FnOnce(&mut Repo<'_>) -> std::result::Result<T, E>,
    E: From<Error>,
{
    let ask = db.router().is_some() && matches!(conn, AnyConnection::Pg(_));
    // Unknown (no replicas, SQLite, or a failure before the question): treated as written.
    let mut wrote = true;
    let mut own = Failures::default();
    let outcome = crate::transaction::run(conn, &mut own, isolation, |conn, own| {
        let outcome = f(&mut Repo::within(conn, own));
        if ask && outcome.is_ok() && crate::transaction::check_usable(conn, own).is_ok() {
            // A failure here is recorded as the transaction's: it rolls back, as the commit
            // on a connection that fails a query would.
            wrote = status::wrote(conn).unwrap_or(true);
        }
        outcome
    });
    after_transaction(db, conn, outcome.is_ok(), wrote);
    outcome
}

/// What runs on the primary's connection after a top-level transaction of
/// [`Database::transaction`] or [`Database::transaction_with_retry`]: after a commit that
/// `wrote`, record the WAL position (with replicas); after a failure in which a statement was
/// refused as read-only (SQLSTATE 25006), evict the pool's connections when the server itself
/// has turned read-only (a demoted primary). An ordinary failure costs no extra round trip.
fn after_transaction(db: &Database, conn: &mut AnyConnection, committed: bool, wrote: bool) {
    if committed {
        if let Some(router) = db.router() {
            if wrote {
                router.record_write(conn);
            } else {
                router.event(
                    None,
                    format_args!("the transaction wrote nothing: no WAL position recorded"),
                );
            }
        }
    } else if crate::engine::took_read_only_refusal(conn) && status::is_read_only(conn) {
        if db.config().echo_pool {
            tracing::debug!(target: "userbase::pool", url = %db.url(), "the primary refuses writes (transaction_read_only = on): closing its connections, new ones follow target_session_attrs");
        }
        db.dispose();
    }
}

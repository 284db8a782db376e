//! Behind pgbouncer: migrations run on a direct connection (a pooler is refused), and a pool
//! behind a pooler that shares server connections between transactions (and does not keep
//! named prepared statements) switches its statement cache off.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use diesel::connection::CacheSize;
use diesel::sql_types::{Integer, Nullable, Text};
use diesel::{Connection, ConnectionError, IntoSql, PgConnection, QueryableByName, RunQueryDsl};

use crate::config::{DbUrl, PoolConfig, DEFAULT_PORT};
use crate::connection::{AnyConnection, Deadlines};
use crate::database::Database;
use crate::error::{Error, Result};

/// Applies the pending migrations: on a connection of its own to `migration_url` when set, else
/// on a session of `db`; refused when that connection goes through a pooler.
pub(crate) fn run_migrations(db: &Database, migration_url: Option<&DbUrl>) -> Result<Vec<String>> {
    match migration_url {
        Some(url) => {
            let mut conn = AnyConnection::open(url.backend(), &url.driver_target())
                .map_err(|e| Error::connect(url, e))?;
            refuse_pooler(url, &mut conn, "DATABASE_MIGRATION_URL")?;
            crate::migrate::run(&mut conn)
        }
        None => {
            let mut session = db.session()?;
            refuse_pooler(db.url(), session.repo_connection(), "DATABASE_URL")?;
            crate::migrate::run(session.repo_connection())
        }
    }
}

#[derive(QueryableByName)]
struct Port {
    #[diesel(sql_type = Nullable<Integer>)]
    port: Option<i32>,
}

/// The server's own port (`inet_server_port()`) when it is none of `url`'s ports: something
/// between the client and the server (a pooler, a proxy, a port mapping). `None` when a port
/// matches, and over a Unix socket. One query.
fn foreign_port(url: &DbUrl, pg: &mut PgConnection) -> Result<Option<i32>> {
    let Some(port) = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result::<Port>(pg)?
        .port
    else {
        return Ok(None);
    };
    let hosts = url.hosts();
    let mut ports = hosts.iter().map(|(_, p)| p.unwrap_or(DEFAULT_PORT));
    if hosts.is_empty() && port == i32::from(DEFAULT_PORT) || ports.any(|p| i32::from(p) == port) {
        return Ok(None);
    }
    Ok(Some(port))
}

/// [`Error::Config`] naming `variable` when `conn` (made from `url`) goes through a pooler:
/// the server's own port (`inet_server_port()`) is none of the URL's ports, and the same hosts
/// answer for a database named `pgbouncer` with anything but PostgreSQL's "does not exist"
/// (pgbouncer's admin console lives there). One query when the ports match; nothing on SQLite
/// or over a Unix socket.
fn refuse_pooler(url: &DbUrl, conn: &mut AnyConnection, variable: &str) -> Result<()> {
    let AnyConnection::Pg(pg) = conn else {
        return Ok(());
    };
    let Some(port) = foreign_port(url, pg)? else {
        return Ok(());
    };
    let probe = url.clone().with_database("pgbouncer")?;
    match PgConnection::establish(&probe.driver_target()) {
        Err(ConnectionError::BadConnection(message))
            if message.contains("database \"pgbouncer\" does not exist") =>
        {
            Ok(())
        }
        _ => Err(Error::config(
            variable,
            format!(
                "migrations must not run through a connection pooler: {url} reaches a server \
                 listening on port {port} and a pooler's admin database `pgbouncer` answers \
                 there. Its session advisory lock does not survive transaction pooling; set \
                 DATABASE_MIGRATION_URL (Settings::migration_url) to a direct connection to \
                 the primary"
            ),
        )),
    }
}

/// The pooler verdict of a pool, decided at its first checkout.
const UNDECIDED: u8 = 0;
/// A direct connection or a session pooler: each client keeps its server connection. The
/// statement cache stays as configured and statements outside a transaction run as they are.
const DIRECT: u8 = 1;
/// Behind a pooler that shares server connections between transactions and does not keep named
/// prepared statements (or whose probe could not start): the cache is off, and statements
/// outside a transaction run in one of their own, begun with the deadlines.
const SHARED: u8 = 2;
/// Something sits between the pool and the server; a thread is finding out what. Meanwhile a
/// checkout that cannot wait longer goes on as [`SHARED`].
const PROBING: u8 = 3;
/// Behind a pooler that shares server connections but keeps diesel's named statements itself
/// (PgBouncer 1.21 and later with `max_prepared_statements`): the cache stays as configured,
/// statements outside a transaction run in one of their own.
const SHARED_KEEPS_NAMES: u8 = 4;
/// The server could not be asked: the cache stays as configured, and statements outside a
/// transaction run in one of their own (the deadlines hold wherever the connection goes).
const UNKNOWN: u8 = 5;

/// The pauses of the probe of [`shares_server_connections`] between the first client's question
/// and the second's, one per attempt, before it concludes that the pooler gives each client its
/// own server connection (about 160 ms in all, once per pool, behind a session pooler or a
/// proxy). A pooler that resets a server connection when a transaction ends
/// (`server_reset_query_always`) hands it out again only once the reset is done.
const PROBE_PAUSES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// Once per pool: whether its connections go through a pooler that shares server connections
/// between transactions (pgbouncer's `pool_mode = transaction` or `statement`), and whether that
/// pooler keeps named prepared statements. Two things depend on it:
///
/// - **The statement cache.** Diesel's cache names its prepared statements `__diesel_stmt_N` per
///   client connection; such a pooler runs each transaction on whichever server connection is
///   free, where that name is missing ("prepared statement \"__diesel_stmt_1\" does not
///   exist") or taken by another client's statement. So when a pool with the cache on finds
///   itself there, its connections run with the cache off, and one warning says so. A pooler
///   that tracks the names itself (PgBouncer 1.21 and later with `max_prepared_statements`)
///   keeps the cache on.
/// - **The deadlines** ([`PoolConfig::statement_timeout`], `lock_timeout`,
///   `idle_in_transaction_timeout`). Such a pooler drops the session `SET`s the pool sends at
///   connect, so a statement outside a transaction would run with whatever the server connection
///   it lands on has. Behind one, a pool with deadlines runs each Repo statement outside a
///   transaction in a transaction of its own, begun with the deadlines as `SET LOCAL`s (see
///   `crate::connection`): two more round trips per such statement, there only.
///
/// Why switch the cache off rather than refuse the checkout: switching off is always safe (it
/// costs only the re-use of parsed statements), whereas a refusal would turn a performance knob
/// into an outage of every request (a `Database` opens no connection before its first checkout,
/// so nothing would fail at start-up), and would do so too on a pooler the probe misjudged.
#[derive(Debug, Default)]
pub(crate) struct PoolerCheck {
    verdict: Arc<Verdict>,
}

/// A pool's pooler verdict, shared with the thread that probes.
#[derive(Debug, Default)]
struct Verdict {
    /// One of the constants above: written under `lock`, read without it.
    value: AtomicU8,
    /// Held by the first checkout while it decides and by checkouts waiting for the probe.
    lock: Mutex<()>,
    /// Notified when the probe has decided.
    decided: Condvar,
}

impl PoolerCheck {
    /// At every checkout of a pool on `url` with the knobs `config`, before the caller uses
    /// `conn`; `deadline` is the checkout's. The first one asks `conn` for its server's port (one
    /// query, once per pool): when it is one of the URL's, nothing changes and every later
    /// checkout costs an atomic load. When it is not (something in between), a thread of its
    /// own decides, on connections of its own (a second client connection compares server
    /// backends; when they are shared and the cache is on, one transaction sees whether a named
    /// statement keeps its name), while this pool's checkouts wait for the verdict (so their own
    /// load does not blur the probe, and no statement of theirs runs before it), each until its
    /// deadline at the latest: one that has to go on undecided runs as behind a transaction
    /// pooler (cache off, statements outside a transaction in one of their own), which is always
    /// safe. Nothing when the pool has neither the cache on nor a deadline, nothing on SQLite.
    pub(crate) fn apply(
        &self,
        url: &DbUrl,
        config: &PoolConfig,
        conn: &mut AnyConnection,
        deadline: Instant,
    ) {
        let deadlines = Deadlines::of(config) != Deadlines::default();
        if !config.statement_cache && !deadlines {
            return;
        }
        let AnyConnection::Pg(pg) = conn else {
            return;
        };
        let verdict = match self.verdict.value.load(Ordering::Acquire) {
            UNDECIDED | PROBING => self.decide_or_wait(url, config, pg, deadline),
            settled => settled,
        };
        if matches!(verdict, SHARED | PROBING) {
            pg.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        crate::transaction::bound_autocommit(conn, verdict != DIRECT);
    }

    /// The verdict for a checkout before it is final: the first checkout asks its server's port
    /// (and starts the probe when something sits in between); each waits for the probe until its
    /// `deadline`, and goes on as [`PROBING`] when it is reached.
    fn decide_or_wait(
        &self,
        url: &DbUrl,
        config: &PoolConfig,
        pg: &mut PgConnection,
        deadline: Instant,
    ) -> u8 {
        let shared = &*self.verdict;
        let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.value.load(Ordering::Acquire) == UNDECIDED {
            let verdict = match foreign_port(url, pg) {
                Ok(None) => DIRECT,
                Ok(Some(_)) => self.probe_in_background(url, config),
                Err(error) => {
                    tracing::debug!(target: "userbase::pool", url = %url, %error, "could not tell whether the pool is behind a pooler: the statement cache stays as configured, statements outside a transaction run in one of their own");
                    UNKNOWN
                }
            };
            shared.value.store(verdict, Ordering::Release);
        }
        loop {
            let verdict = shared.value.load(Ordering::Acquire);
            let now = Instant::now();
            if verdict != PROBING || now >= deadline {
                return verdict;
            }
            guard = shared
                .decided
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts the thread that decides, logging to the caller's subscriber; returns the verdict
    /// until it has: [`PROBING`], or [`SHARED`] when it cannot start.
    fn probe_in_background(&self, url: &DbUrl, config: &PoolConfig) -> u8 {
        let verdict = Arc::clone(&self.verdict);
        let url = url.clone();
        let cache = config.statement_cache;
        let deadlines = Deadlines::of(config) != Deadlines::default();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let spawned = thread::Builder::new()
            .name("userbase-pooler-probe".to_owned())
            .spawn(move || {
                let decision =
                    tracing::dispatcher::with_default(&dispatch, || decide(&url, cache, deadlines));
                let guard = verdict.lock.lock().unwrap_or_else(PoisonError::into_inner);
                verdict.value.store(decision, Ordering::Release);
                drop(guard);
                verdict.decided.notify_all();
            });
        match spawned {
            Ok(_) => PROBING,
            Err(error) => {
                tracing::warn!(target: "userbase::pool", %error, "could not start the pooler probe: the statement cache is off for this pool, and its statements outside a transaction run in one of their own");
                SHARED
            }
        }
    }
}

/// The verdict for a pool on `url`, whose server port is not the URL's, from connections of
/// its own, with its log lines; `cache`: the pool has the statement cache on (only then is the
/// pooler asked whether it keeps named statements); `deadlines`: the pool has deadlines.
fn decide(url: &DbUrl, cache: bool, deadlines: bool) -> u8 {
    let verdict = PgConnection::establish(&url.driver_target())
        .map_err(|e| Error::connect(url, e))
        .and_then(|mut pg| {
            if !shares_server_connections(url, &mut pg)? {
                return Ok(DIRECT);
            }
            // Shared server connections: the cache works only if the pooler keeps the names.
            Ok(if cache && keeps_named_statements(&mut pg)? {
                SHARED_KEEPS_NAMES
            } else {
                SHARED
            })
        });
    match verdict {
        Ok(DIRECT) => DIRECT,
        Ok(shared) => {
            if cache && shared == SHARED {
                tracing::warn!(
                    target: "userbase::pool",
                    url = %url,
                    "behind a connection pooler that shares server connections between \
                     transactions (pgbouncer pool_mode = transaction) and does not keep named \
                     prepared statements (pgbouncer before 1.21, or max_prepared_statements = 0): \
                     the statement cache is switched off for this pool, its statements would fail \
                     there (\"prepared statement does not exist\"). Set DB_STATEMENT_CACHE=off \
                     (PoolConfig::statement_cache) to say so"
                );
            }
            if deadlines {
                tracing::info!(
                    target: "userbase::pool",
                    url = %url,
                    "behind a connection pooler that shares server connections between \
                     transactions: each statement outside a transaction runs in one of its own, \
                     begun with the pool's deadlines (two more round trips per such statement)"
                );
            }
            shared
        }
        Err(error) => {
            tracing::debug!(target: "userbase::pool", url = %url, %error, "could not tell whether a pooler shares server connections: the statement cache stays as configured, statements outside a transaction run in one of their own");
            UNKNOWN
        }
    }
}

#[derive(QueryableByName)]
struct Prepared {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The protocol-level statements this transaction prepared under diesel's names.
const OURS: &str = "SELECT name FROM pg_prepared_statements \
     WHERE NOT from_sql AND prepare_time >= now() AND name LIKE '\\_\\_diesel\\_stmt\\_%'";

/// Whether the pooler in front of `pg`, which shares server connections, keeps diesel's named
/// prepared statements working: it tracks them itself (PgBouncer 1.21 and later with
/// `max_prepared_statements`), preparing them on each server connection under names of its own.
/// Asked in one transaction (so on one server connection): a statement diesel prepares there
/// under its name `__diesel_stmt_N` shows in `pg_prepared_statements` under that very name
/// when the pooler passed it on as it is; it is then deallocated again, so it cannot collide
/// with another client's. A collision met on the way ("already exists": a name left by another
/// client) is a no as well.
///
/// # Errors
///
/// A query's failure.
fn keeps_named_statements(pg: &mut PgConnection) -> Result<bool> {
    let outcome = pg.transaction::<_, diesel::result::Error, _>(|pg| {
        // Cached by diesel: prepared under a name.
        diesel::select(1_i32.into_sql::<Integer>()).get_result::<i32>(pg)?;
        let ours = diesel::sql_query(OURS).load::<Prepared>(pg)?;
        for statement in &ours {
            // The pattern above admits only `_`, letters and digits after diesel's prefix here;
            // anything else is not a name to quote blindly.
            if statement
                .name
                .bytes()
                .all(|b| b == b'_' || b.is_ascii_alphanumeric())
            {
                diesel::sql_query(format!("DEALLOCATE \"{}\"", statement.name)).execute(pg)?;
            }
        }
        Ok(ours.is_empty())
    });
    match outcome {
        Ok(kept) => Ok(kept),
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

#[derive(QueryableByName)]
struct BackendPid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

fn backend_pid(pg: &mut PgConnection) -> Result<i32> {
    Ok(diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<BackendPid>(pg)?
        .pid)
}

/// Whether the pooler in front of `pg` (made from `url`) shares server connections between
/// client connections: a second client connection, asking right after `pg` finished a
/// statement, is served by the same server backend. A session pooler (or a direct connection)
/// never does that: each client keeps its own backend while connected. A transaction pooler
/// hands the backend `pg` just released to the next transaction (pgbouncer re-uses the most
/// recently released one first); asked once per pause of [`PROBE_PAUSES`], longer each time,
/// in case another client took it or the pooler was still resetting it.
///
/// # Errors
///
/// The second connection's failure, or a query's.
fn shares_server_connections(url: &DbUrl, pg: &mut PgConnection) -> Result<bool> {
    let mut probe =
        PgConnection::establish(&url.driver_target()).map_err(|e| Error::connect(url, e))?;
    for pause in PROBE_PAUSES {
        let first = backend_pid(pg)?;
        thread::sleep(pause);
        if first == backend_pid(&mut probe)? {
            return Ok(true);
        }
    }
    Ok(false)
}

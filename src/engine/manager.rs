//! The r2d2 connection manager: opens connections for the checkouts that ask for them.
//!
//! The pool is built with `min_idle` at its maximum, so r2d2 keeps `pool_size + max_overflow -
//! open` calls to [`connect`](r2d2::ManageConnection::connect) outstanding on its worker threads.
//! Each call waits in the [`Gate`] until a checkout queues a connect ticket, and only then opens a
//! connection: the pool stays lazy, no connection is opened that no checkout asked for, and a
//! failure goes back to the checkout that asked (which returns [`Error::Connect`] at once)
//! instead of to r2d2, which would retry it in the background while the checkout sleeps until its
//! timeout. The call keeps serving tickets until one connects; it returns an error only when the
//! engine is dropped.
//!
//! Checkouts validate connections themselves (recycle, invalidation, pre-ping), in their own
//! thread, so the pool is built with `test_on_check_out(false)`; check-in work that may block
//! (rolling back, deciding to discard) is done by the session before the connection is handed
//! back, so [`has_broken`](r2d2::ManageConnection::has_broken) only reads the decision.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use diesel::connection::Connection;

use super::gate::Gate;
use super::pooled::Pooled;
use super::watch::{ConnFlags, Watch};
use crate::config::{Backend, DbUrl, PoolConfig};
use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// libpq settings added to PostgreSQL URLs that do not set them, so that a dropped network cannot
/// hang a checkout or a query forever: connect within 10 s, TCP keepalives after 30 s idle every
/// 10 s (3 probes), and give up on unacknowledged data after 30 s.
pub const LIBPQ_SAFETY_DEFAULTS: [(&str, &str); 6] = [
    ("connect_timeout", "10"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// Names the in-memory databases of this process apart.
static MEMORY_DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Opens connections of the backend the URL names, for the gate's tickets.
pub(crate) struct Manager {
    url: DbUrl,
    /// What the driver is given (with the password); never printed.
    target: String,
    config: PoolConfig,
    gate: Arc<Gate>,
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

/// The string the driver opens for `url`.
fn driver_target(url: &DbUrl) -> String {
    match url.backend() {
        Backend::Postgres => {
            let mut with_defaults = url.clone();
            for (key, value) in LIBPQ_SAFETY_DEFAULTS {
                if with_defaults.query_value(key).is_none() {
                    with_defaults = with_defaults.with_query_param(key, value);
                }
            }
            with_defaults.render(false)
        }
        // `memdb` with a name starting with `/` is one database shared by every connection of
        // the process (unlike plain `:memory:`, one per connection), with normal locking.
        Backend::Sqlite if url.is_memory() => format!(
            "file:/userbase-{}-{}?vfs=memdb",
            std::process::id(),
            MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed)
        ),
        Backend::Sqlite => url.database().unwrap_or_default().to_owned(),
    }
}

impl Manager {
    pub(crate) fn new(url: DbUrl, config: PoolConfig, gate: Arc<Gate>) -> Self {
        Manager {
            target: driver_target(&url),
            url,
            config,
            gate,
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
        AnyConnection::open(self.url.backend(), &self.target)
            .map_err(|e| e.to_string().trim().to_owned())
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = Error;

    /// Waits for a connect ticket and opens a connection for it; a failure goes to the ticket's
    /// checkout and the call waits for the next ticket. Errors only once the engine is dropped.
    fn connect(&self) -> Result<Pooled> {
        while let Some(ticket) = self.gate.next_ticket() {
            match self.open() {
                Ok(mut conn) => {
                    let flags = Arc::new(ConnFlags::default());
                    conn.set_instrumentation(Watch::new(
                        flags.clone(),
                        self.config.echo,
                        self.config.hide_parameters,
                    ));
                    self.gate.landed(ticket);
                    return Ok(Pooled::new(conn, Instant::now(), flags));
                }
                Err(message) => {
                    tracing::warn!(target: "userbase::pool", url = %self.url, error = %message, "connect failed");
                    self.gate.failed(ticket, message);
                }
            }
        }
        Err(connect_error(
            &self.url,
            "the engine was dropped".to_owned(),
        ))
    }

    /// Never called: checkouts validate connections themselves (`test_on_check_out(false)`).
    fn is_valid(&self, _pooled: &mut Pooled) -> Result<()> {
        Ok(())
    }

    /// Reads the decision the session made before handing the connection back; never blocks.
    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        pooled.is_discarded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_safety_defaults_are_added_unless_the_url_sets_them() {
        let url = DbUrl::parse("postgres://bot:pw@db:5432/app?connect_timeout=3").unwrap();
        assert_eq!(
            driver_target(&url),
            "postgres://bot:pw@db:5432/app?connect_timeout=3&keepalives=1&keepalives_idle=30\
             &keepalives_interval=10&keepalives_count=3&tcp_user_timeout=30000"
        );
    }

    #[test]
    fn sqlite_targets_are_the_path_or_a_shared_memdb() {
        assert_eq!(driver_target(&DbUrl::sqlite("data/app.db")), "data/app.db");
        let memory = driver_target(&DbUrl::sqlite(":memory:"));
        assert!(memory.starts_with("file:/userbase-"), "{memory}");
        assert!(memory.ends_with("?vfs=memdb"), "{memory}");
        assert_ne!(
            memory,
            driver_target(&DbUrl::sqlite(":memory:")),
            "one database per engine"
        );
    }
}

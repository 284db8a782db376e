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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use diesel::connection::Connection;

use super::gate::Gate;
use super::pooled::Pooled;
use super::watch::{ConnFlags, Watch};
use crate::config::{Backend, DbUrl, PoolConfig};
use crate::connection::{AnyConnection, Deadlines};
use crate::error::{Error, Result};

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

impl Manager {
    pub(crate) fn new(url: DbUrl, config: PoolConfig, gate: Arc<Gate>) -> Self {
        Manager {
            target: url.driver_target(),
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
        let mut conn = AnyConnection::open_with(self.url.backend(), &self.target, &self.config)
            .map_err(|e| e.to_string().trim().to_owned())?;
        if !self.config.statement_cache {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Ok(conn)
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
                    crate::transaction::set_deadlines(&mut conn, Deadlines::of(&self.config));
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

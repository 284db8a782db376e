//! Opening and closing connections: the connect threads, and what r2d2 is given.
//!
//! r2d2 keeps the idle connections and hands them out; it opens connections only through
//! [`ManageConnection::connect`](r2d2::ManageConnection::connect) on its worker threads, and
//! retries a failed connect in the background while the checkout that needed it sleeps until its
//! timeout. So connections are opened elsewhere:
//!
//! - A checkout the gate gives a ticket starts a **connect thread** ([`Opener::start`]), one per
//!   connect: as many connects run at once as the pool has room for, none waits for a worker, and
//!   the checkout can leave at its deadline while its connect goes on. A failure goes straight
//!   back to the checkout (which returns [`Error::Connect`] at once); a
//!   connection that opens after its checkout left serves the next one.
//! - The opened connection goes to the gate's `ready` queue. The pool is built with `min_idle`
//!   at its maximum, so r2d2 keeps a `connect` call outstanding for every connection not yet
//!   open; those calls ([`Manager`]) take the ready connections and return them, and r2d2 puts
//!   them in its idle list. They return an error only when the engine is dropped.
//! - Every connection r2d2 removes (a discarded check-in, the keeper's or `dispose`'s closes)
//!   passes through [`Closer::on_release`](r2d2::CustomizeConnection::on_release), which closes
//!   it and only then tells the gate: the figures never count a closed connection, nor miss one
//!   still open.
//!
//! Checkouts validate connections themselves (recycle, invalidation, pre-ping), in their own
//! thread, so the pool is built with `test_on_check_out(false)`; check-in work that may block
//! (rolling back, deciding to discard) is done by the session before the connection is handed
//! back, so [`has_broken`](r2d2::ManageConnection::has_broken) only reads the decision.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use diesel::connection::Connection;

use super::admission::Ticket;
use super::gate::{ConnectFailure, Gate};
use super::pooled::Pooled;
use super::watch::{ConnFlags, Watch};
use super::Tag;
use crate::config::{Backend, DbUrl, PoolConfig};
use crate::connection::{AnyConnection, Deadlines, Scope};
use crate::error::{Error, Result};

/// Opens connections of the backend the URL names, one thread per connect.
pub(crate) struct Opener {
    url: DbUrl,
    /// What the driver is given (with the password); never printed.
    target: String,
    config: PoolConfig,
    gate: Arc<Gate>,
    /// For `sqlite::memory:`, a connection held for the pool's lifetime: the in-memory database
    /// lives as long as one connection to it is open. Opened with the first pooled connection.
    memory_keeper: Mutex<Option<AnyConnection>>,
    /// The pool owner's tag, handed to every connection's watch.
    tag: Tag,
}

impl std::fmt::Debug for Opener {
    /// Shows the redacted URL; `target` holds the password and is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("url", &self.url)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub(crate) fn new(url: DbUrl, config: PoolConfig, gate: Arc<Gate>, tag: Tag) -> Self {
        Opener {
            target: url.driver_target(),
            tag,
            url,
            config,
            gate,
            memory_keeper: Mutex::new(None),
        }
    }

    /// Starts a connect thread for `ticket`.
    ///
    /// # Errors
    ///
    /// The reason, when the thread cannot be started.
    pub(crate) fn start(self: &Arc<Self>, ticket: Ticket) -> Result<(), ConnectFailure> {
        let opener = Arc::clone(self);
        thread::Builder::new()
            .name("userbase-connect".to_owned())
            .spawn(move || opener.run(ticket))
            .map(drop)
            .map_err(ConnectFailure::from)
    }

    /// The connect thread: opens the connection and hands it (or the failure) to the gate.
    fn run(&self, ticket: Ticket) {
        let started = Instant::now();
        match self.open() {
            Ok(conn) => {
                self.gate.observer().created(started.elapsed());
                let pooled = Pooled::new(conn.0, Instant::now(), conn.1);
                if self.config.echo_pool {
                    tracing::debug!(
                        target: "userbase::pool",
                        connect_us = started.elapsed().as_micros(),
                        "connection opened"
                    );
                }
                // The pool closed meanwhile: close it here.
                drop(self.gate.opened(ticket, pooled));
            }
            Err(error) => {
                tracing::warn!(target: "userbase::pool", url = %self.url, %error, "connect failed");
                drop(self.gate.failed(ticket, error));
            }
        }
    }

    /// Opens the keeper connection of an in-memory database, once.
    fn keep_memory_alive(&self) -> std::result::Result<(), ConnectFailure> {
        if !self.url.is_memory() {
            return Ok(());
        }
        let mut keeper = self
            .memory_keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if keeper.is_none() {
            let conn = AnyConnection::open(Backend::Sqlite, &self.target)?;
            *keeper = Some(conn);
        }
        Ok(())
    }

    fn open(&self) -> std::result::Result<(AnyConnection, Arc<ConnFlags>), ConnectFailure> {
        self.keep_memory_alive()?;
        let mut conn = AnyConnection::open_with(self.url.backend(), &self.target, &self.config)?;
        if !self.config.statement_cache {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        let flags = Arc::new(ConnFlags::default());
        // Deadlines as `SET LOCAL`s with every top-level `BEGIN` hold whichever server
        // connection a pooler runs the transaction on (SQLite has none).
        let transaction_settings = match conn {
            AnyConnection::Pg(_) => Deadlines::of(&self.config).sql(Scope::Transaction),
            AnyConnection::Sqlite(_) => String::new(),
        };
        conn.set_instrumentation(
            Watch::new(flags.clone(), self.config.echo, self.config.hide_parameters)
                .with_tag(self.tag.clone())
                .with_transaction_settings(transaction_settings),
        );
        Ok((conn, flags))
    }
}

/// r2d2's connection manager: returns the connections the connect threads opened.
pub(crate) struct Manager {
    url: DbUrl,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Manager {
    pub(crate) fn new(url: DbUrl, gate: Arc<Gate>) -> Self {
        Manager { url, gate }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = Error;

    /// Waits for a connection a connect thread opened. Errors only once the engine is dropped.
    fn connect(&self) -> Result<Pooled> {
        self.gate
            .next_ready()
            .ok_or_else(|| Error::connect(&self.url, "the engine was dropped"))
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

/// Closes the connections r2d2 removes, then tells the gate.
pub(crate) struct Closer {
    pub(crate) gate: Arc<Gate>,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer").finish_non_exhaustive()
    }
}

impl r2d2::CustomizeConnection<Pooled, Error> for Closer {
    fn on_release(&self, conn: Pooled) {
        drop(conn);
        self.gate.closed_one();
    }
}

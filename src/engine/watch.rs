//! What the engine sees of each connection and of the pool: statement logging (`echo`), dead
//! connection detection, and pool events (`echo_pool`), all through `tracing`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Tag;
use std::time::Instant;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::failures::Failures;

/// Flags a connection's instrumentation raises for the pool to read at check-in.
#[derive(Debug, Default)]
pub(crate) struct ConnFlags {
    /// A statement failed because the server connection is gone.
    pub(crate) dead: AtomicBool,
    /// The last transaction-control statement seen began a transaction (`BEGIN`, `START
    /// TRANSACTION`, `SAVEPOINT`), so one may be open that Diesel's transaction manager does not
    /// know about.
    raw_transaction: AtomicBool,
    /// Caller SQL may run on this connection (`Repo::load_sql`, `Session::connection`): only then
    /// are statements read for transaction control. The Repo's own statements never open a
    /// transaction by text, and reading them would render their SQL on every execution.
    raw_sql: AtomicBool,
    /// A statement was refused because the transaction or the server is read-only (SQLSTATE
    /// 25006): after a failover the primary may have been demoted.
    read_only_refusal: AtomicBool,
}

impl ConnFlags {
    /// Whether a transaction may have been left open by raw SQL; clears the flag.
    pub(crate) fn take_raw_transaction(&self) -> bool {
        self.raw_transaction.swap(false, Ordering::Relaxed)
    }

    /// Whether a statement was refused as read-only since the last call; clears the flag.
    pub(crate) fn take_read_only_refusal(&self) -> bool {
        self.read_only_refusal.swap(false, Ordering::Relaxed)
    }

    /// Caller SQL may run from now on: watch statements for transaction control.
    pub(crate) fn expect_raw_sql(&self) {
        self.raw_sql.store(true, Ordering::Relaxed);
    }

    /// The connection goes back to the pool: its next session starts unwatched.
    pub(crate) fn clear_raw_sql(&self) {
        self.raw_sql.store(false, Ordering::Relaxed);
    }
}

/// Keeps the first bytes written to it and refuses the rest (ends the formatting early).
struct Prefix {
    text: [u8; 64],
    len: usize,
}

impl std::fmt::Write for Prefix {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.text.len() - self.len;
        let take = s.len().min(room);
        self.text[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// What a statement does to the transaction state, from its text: `Some(true)` when it begins a
/// transaction, `Some(false)` when it ends one, `None` when it is not transaction control. In a
/// batch (`BEGIN; INSERT …`) the last transaction-control statement decides. Only an exact
/// `COMMIT` / `END` / `ROLLBACK` / `ABORT` (with an optional `WORK` or `TRANSACTION`) counts as an
/// end, so a doubtful text errs on the side of a rollback at check-in.
pub(crate) fn transaction_effect(sql: &str) -> Option<bool> {
    let mut effect = None;
    for statement in sql.split(';') {
        let mut words = statement.split_whitespace();
        let is = |word: Option<&str>, any: &[&str]| {
            word.is_some_and(|w| any.iter().any(|a| w.eq_ignore_ascii_case(a)))
        };
        let first = words.next();
        if is(first, &["BEGIN", "SAVEPOINT"]) {
            effect = Some(true);
        } else if is(first, &["START"]) {
            if is(words.next(), &["TRANSACTION"]) {
                effect = Some(true);
            }
        } else if is(first, &["COMMIT", "END", "ROLLBACK", "ABORT"]) {
            let second = words.next();
            if (second.is_none() || is(second, &["WORK", "TRANSACTION"])) && words.next().is_none()
            {
                effect = Some(false);
            }
        }
    }
    effect
}

/// Installed on every pooled connection: flags dead connections, and with `echo` logs each
/// statement (target `userbase::sql`). It never sees the connection URL: it is installed after
/// the connection is established, so diesel's connect events (which carry the URL) never reach it.
pub(crate) struct Watch {
    flags: Arc<ConnFlags>,
    echo: bool,
    hide_parameters: bool,
    started: Option<Instant>,
    failures: Failures,
    /// What the pool's owner attaches to every connection (the Repo's telemetry); the engine
    /// never reads it.
    tag: Option<Tag>,
}

impl Watch {
    pub(crate) fn new(flags: Arc<ConnFlags>, echo: bool, hide_parameters: bool) -> Self {
        Watch {
            flags,
            echo,
            hide_parameters,
            started: None,
            failures: Failures::default(),
            tag: None,
        }
    }

    /// This watch, carrying the pool owner's `tag`.
    pub(crate) fn with_tag(mut self, tag: Tag) -> Self {
        self.tag = Some(tag);
        self
    }

    /// This watch, beginning every top-level transaction with `settings` (`SET LOCAL …`
    /// statements, see `crate::transaction`); empty: none.
    pub(crate) fn with_transaction_settings(mut self, settings: String) -> Self {
        self.failures.set_transaction_settings(settings);
        self
    }

    /// The pool owner's tag.
    pub(crate) fn tag(&self) -> Option<&Tag> {
        self.tag.as_ref()
    }

    /// Caller SQL is about to run on this connection (see [`ConnFlags::expect_raw_sql`]).
    pub(crate) fn expect_raw_sql(&self) {
        self.flags.expect_raw_sql();
    }

    /// Whether a statement was refused as read-only since the last call.
    pub(crate) fn take_read_only_refusal(&self) -> bool {
        self.flags.take_read_only_refusal()
    }

    /// The failed statements of the connection's open transactions (see `crate::failures`).
    pub(crate) fn failures(&mut self) -> &mut Failures {
        &mut self.failures
    }

    fn log(&self, query: &dyn std::fmt::Display, error: Option<&DieselError>) {
        let elapsed_us = self.started.map(|s| s.elapsed().as_micros()).unwrap_or(0);
        let mut sql = query.to_string();
        if self.hide_parameters {
            if let Some(at) = sql.find(" -- binds: ") {
                sql.truncate(at);
                sql.push_str(" -- binds: [hidden]");
            }
        }
        // The span of the Repo method running it, if any: `db.query.text` (echo only).
        tracing::Span::current().record("db.query.text", sql.as_str());
        match error {
            None => tracing::info!(target: "userbase::sql", elapsed_us, "{sql}"),
            Some(error) => tracing::warn!(target: "userbase::sql", elapsed_us, %error, "{sql}"),
        }
    }
}

impl Instrumentation for Watch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.failures.observe(&event);
        match event {
            InstrumentationEvent::StartQuery { query, .. }
                if self.flags.raw_sql.load(Ordering::Relaxed) =>
            {
                // Transaction control is short and comes first: 64 bytes tell.
                let mut prefix = Prefix {
                    text: [0; 64],
                    len: 0,
                };
                let _ = std::fmt::Write::write_fmt(&mut prefix, format_args!("{query}"));
                let text = String::from_utf8_lossy(&prefix.text[..prefix.len]);
                let truncated = prefix.len == prefix.text.len();
                // A batch longer than the prefix may begin a transaction past it.
                let effect = match transaction_effect(&text) {
                    _ if truncated && text.contains(';') => Some(true),
                    effect => effect,
                };
                if let Some(open) = effect {
                    self.flags.raw_transaction.store(open, Ordering::Relaxed);
                }
                if self.echo {
                    self.started = Some(Instant::now());
                }
            }
            InstrumentationEvent::StartQuery { .. } if self.echo => {
                self.started = Some(Instant::now());
            }
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                if let Some(DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) =
                    error
                {
                    self.flags.dead.store(true, Ordering::Relaxed);
                }
                if let Some(DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)) =
                    error
                {
                    self.flags.read_only_refusal.store(true, Ordering::Relaxed);
                }
                if self.echo {
                    self.log(query, error);
                }
            }
            InstrumentationEvent::BeginTransaction { depth, .. } if self.echo => {
                tracing::debug!(target: "userbase::sql", depth = depth.get(), "begin transaction");
            }
            InstrumentationEvent::CommitTransaction { depth, .. } if self.echo => {
                tracing::debug!(target: "userbase::sql", depth = depth.get(), "commit");
            }
            InstrumentationEvent::RollbackTransaction { depth, .. } if self.echo => {
                tracing::debug!(target: "userbase::sql", depth = depth.get(), "rollback");
            }
            _ => {}
        }
    }
}

/// r2d2's pool events, logged with `echo_pool` (target `userbase::pool`, level DEBUG).
#[derive(Debug)]
pub(crate) struct PoolEvents {
    pub(crate) echo_pool: bool,
}

impl r2d2::HandleEvent for PoolEvents {
    fn handle_acquire(&self, event: r2d2::event::AcquireEvent) {
        if self.echo_pool {
            tracing::debug!(target: "userbase::pool", id = event.connection_id(), "connection opened");
        }
    }

    fn handle_release(&self, event: r2d2::event::ReleaseEvent) {
        if self.echo_pool {
            tracing::debug!(
                target: "userbase::pool",
                id = event.connection_id(),
                age_ms = event.age().as_millis(),
                "connection closed"
            );
        }
    }

    fn handle_checkout(&self, event: r2d2::event::CheckoutEvent) {
        if self.echo_pool {
            tracing::debug!(
                target: "userbase::pool",
                id = event.connection_id(),
                wait_us = event.duration().as_micros(),
                "checkout"
            );
        }
    }

    fn handle_timeout(&self, event: r2d2::event::TimeoutEvent) {
        tracing::warn!(
            target: "userbase::pool",
            timeout_ms = event.timeout().as_millis(),
            "checkout timed out"
        );
    }

    fn handle_checkin(&self, event: r2d2::event::CheckinEvent) {
        if self.echo_pool {
            tracing::debug!(
                target: "userbase::pool",
                id = event.connection_id(),
                held_us = event.duration().as_micros(),
                "checkin"
            );
        }
    }
}

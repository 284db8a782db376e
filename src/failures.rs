//! The record of a connection's failed statements: the first failure of each open transaction
//! level, kept so that a failed transaction refuses to go on and cannot commit (see
//! `crate::transaction`).
//!
//! A low module: the engine's instrumentation keeps a [`Failures`] for every pooled connection,
//! a [`Repo`](crate::Repo) keeps one beside a connection the application opened (never replacing
//! that connection's own instrumentation), and the transaction helper reads the one that applies;
//! it imports none of them.

use diesel::connection::InstrumentationEvent;
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

use crate::error::Error;

/// A copy of a failed statement's database error, kept to be reported when the transaction
/// tries to go on or to commit.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    kind: DatabaseErrorKind,
    message: String,
    details: Option<String>,
    hint: Option<String>,
    table_name: Option<String>,
    column_name: Option<String>,
    constraint_name: Option<String>,
    statement_position: Option<i32>,
}

impl Failure {
    fn copy(kind: DatabaseErrorKind, info: &dyn DatabaseErrorInformation) -> Self {
        Failure {
            kind,
            message: info.message().to_owned(),
            details: info.details().map(str::to_owned),
            hint: info.hint().map(str::to_owned),
            table_name: info.table_name().map(str::to_owned),
            column_name: info.column_name().map(str::to_owned),
            constraint_name: info.constraint_name().map(str::to_owned),
            statement_position: info.statement_position(),
        }
    }

    /// The failure as the crate's typed error (the same variant the statement returned).
    pub(crate) fn to_error(&self) -> Error {
        Error::from(DieselError::DatabaseError(
            self.kind,
            Box::new(self.clone()),
        ))
    }
}

impl DatabaseErrorInformation for Failure {
    fn message(&self) -> &str {
        &self.message
    }
    fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }
    fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    fn table_name(&self) -> Option<&str> {
        self.table_name.as_deref()
    }
    fn column_name(&self) -> Option<&str> {
        self.column_name.as_deref()
    }
    fn constraint_name(&self) -> Option<&str> {
        self.constraint_name.as_deref()
    }
    fn statement_position(&self) -> Option<i32> {
        self.statement_position
    }
}

/// The first failed statement of each open transaction level of one connection (index 0: the
/// top level). Levels are opened and closed by
/// [`transaction`](crate::transaction::transaction); statements that fail outside any level
/// (autocommit) are not kept.
///
/// It also keeps the `SET LOCAL` statements the transaction helper sends with every top-level
/// `BEGIN` of the connection (its pool's deadlines, see `crate::connection`), and whether the
/// Repo's statements outside a transaction must run in one of their own for those to hold
/// (behind a transaction pooler): the one per-connection record the helper reads.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    levels: Vec<Option<Failure>>,
    transaction_settings: String,
    bound_autocommit: bool,
}

impl Failures {
    /// Whether statements outside a transaction run in one of their own, begun with the
    /// [`transaction_settings`](Failures::transaction_settings): there are some, and the
    /// connection's pool is behind a transaction pooler.
    pub(crate) fn bounds_autocommit(&self) -> bool {
        self.bound_autocommit && !self.transaction_settings.is_empty()
    }

    /// Sets whether the connection's pool is behind a transaction pooler (see
    /// [`bounds_autocommit`](Failures::bounds_autocommit)).
    pub(crate) fn set_bound_autocommit(&mut self, bound: bool) {
        self.bound_autocommit = bound;
    }

    /// The `SET LOCAL …` statements for the start of each top-level transaction; empty: none.
    pub(crate) fn transaction_settings(&self) -> &str {
        &self.transaction_settings
    }

    /// Sets what [`transaction_settings`](Failures::transaction_settings) returns.
    pub(crate) fn set_transaction_settings(&mut self, sql: String) {
        self.transaction_settings = sql;
    }

    /// Records a failed statement in the innermost open level, unless that level already has
    /// its first failure. Called for every event of the connection's instrumentation.
    pub(crate) fn observe(&mut self, event: &InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery {
            error: Some(error), ..
        } = event
        {
            self.record(error);
        }
    }

    /// Records `error` in the innermost open level when it is the database's (not a client-side
    /// error such as a missing row) and the level has no failure yet.
    pub(crate) fn record(&mut self, error: &DieselError) {
        if let (Some(level @ None), DieselError::DatabaseError(kind, info)) =
            (self.levels.last_mut(), error)
        {
            *level = Some(Failure::copy(*kind, info.as_ref()));
        }
    }

    /// Forgets levels deeper than `depth` (left behind by a closure that panicked, or closed by
    /// raw SQL).
    pub(crate) fn sync(&mut self, depth: usize) {
        self.levels.truncate(depth);
    }

    /// The first failure of the innermost open level, if it has one.
    pub(crate) fn innermost(&self) -> Option<&Failure> {
        self.levels.last().and_then(Option::as_ref)
    }

    /// A level was just opened at `depth` (1: the top level): it starts with no failure.
    pub(crate) fn open(&mut self, depth: usize) {
        self.sync(depth.saturating_sub(1));
        self.levels.resize(depth, None);
    }

    /// Closes the level `depth`; returns its first failure.
    pub(crate) fn close(&mut self, depth: usize) -> Option<Failure> {
        let first = self.levels.get_mut(depth.checked_sub(1)?)?.take();
        self.sync(depth.saturating_sub(1));
        first
    }
}

//! The one place that picks the concrete connection.
//!
//! Repo queries are written once, as backend-generic fragments in [`models`](crate::models), and
//! run on the concrete `PgConnection` or `SqliteConnection` inside the
//! [`AnyConnection`](crate::AnyConnection): Diesel's `MultiConnection` wrapper renders the whole
//! SQL text again on every execution, even of a cached statement, which on SQLite costs more than
//! the query itself.

/// `dispatch!(c => body)`: evaluates `body` with `c`, a `&mut AnyConnection`, rebound to the
/// concrete connection of its backend. `body` is compiled once per backend, so a generic
/// fragment in it is instantiated for each (its backend inferred from the connection).
macro_rules! dispatch {
    ($c:ident => $body:expr) => {
        match $c {
            $crate::AnyConnection::Pg($c) => $body,
            $crate::AnyConnection::Sqlite($c) => $body,
        }
    };
}

pub(super) use dispatch;

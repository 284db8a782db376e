#![warn(missing_docs, clippy::missing_errors_doc)]

//! Test support for userbase and for applications built on it (Unix): the `userbase-testing`
//! crate, a dev-dependency.
//!
//! - [`TestDb`]: a fresh, migrated database per test — on PostgreSQL a clone of a template
//!   migrated once per set of migrations, dropped on `Drop` (also when the test panics); on SQLite
//!   a temporary file or `sqlite::memory:` — each giving a ready [`Database`](userbase::Database).
//! - [`server_url`]: the PostgreSQL server of the tests — `TEST_DATABASE_URL`, else
//!   `127.0.0.1:5432` when it answers, else a private cluster started on demand from the system's
//!   server binaries under `target/userbase-postgres/`, shared by the test processes of a run and
//!   stopped a minute after the last one exits (see [`server`]).
//! - [`Cluster`], [`PrimaryStandby`], [`PgBouncer`]: private servers on free loopback ports for
//!   tests that stop, promote, lag or pool — never the shared server. Torn down on `Drop`.
//! - [`fixtures`]: the quickstart's demo rows and builders for users, locations and links.
//!
//! Fallible constructors return [`SetupError`]; the short ones (`TestDb::new`, `database`,
//! `seeded`, …) panic with the whole error chain instead, which is what a test wants.
//!
//! When the tests run as root, the server programs (which refuse root) run as the `postgres`
//! user, and the directories they use are given to it.
//!
//! # Use in an application
//!
//! ```toml
//! [dev-dependencies]
//! userbase-testing = { version = "0.1" }
//! ```
//!
//! ```
//! use userbase_testing::{fixtures, TestDb};
//! use userbase::Backend;
//!
//! fn count_links(backend: Backend) -> Result<i64, userbase::Error> {
//!     let test = TestDb::new(backend); // migrated, empty; dropped at the end of the scope
//!     let db = test.seeded(); // plus the quickstart's demo rows
//!     db.transaction(|repo| {
//!         fixtures::user(42).username("ada").insert(repo)?;
//!         repo.link(42, 1)?;
//!         repo.count_user_locations(42)
//!     })
//! }
//!
//! assert_eq!(count_links(Backend::Sqlite)?, 1);
//! // The same on PostgreSQL: `TEST_DATABASE_URL`, 127.0.0.1:5432, or a private cluster.
//! assert_eq!(count_links(Backend::Postgres)?, 1);
//! # Ok::<(), userbase::Error>(())
//! ```

use std::time::Duration;

mod cluster;
mod db;
pub mod fixtures;
mod process;
pub mod server;
mod topology;

pub use cluster::{Cluster, ClusterOptions, StopMode};
pub use db::{database_exists, unique_name, TestDb};
pub use server::{private_server_url, server_url, DEFAULT_SERVER};
pub use topology::{PgBouncer, PgBouncerOptions, PoolMode, PrimaryStandby, StandbyOptions};

/// Why a test database or server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// There is no PostgreSQL server to test against and none could be started; the message says
    /// what to install or which variable to set.
    #[error("{message}")]
    ServerUnavailable {
        /// What was tried and what to do.
        message: String,
    },

    /// A program (or the `postgres` user the server programs need under root) is missing.
    #[error("{program} not found (looked in {looked_in}): {hint}")]
    MissingProgram {
        /// What is missing.
        program: String,
        /// Where it was looked for.
        looked_in: String,
        /// What to install or set.
        hint: String,
    },

    /// A program exited with an error.
    #[error("{command} failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed (and the server log, for `pg_ctl start`).
        output: String,
    },

    /// A file or process operation failed.
    #[error("could not {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A database operation of the setup failed.
    #[error("could not {action}")]
    Database {
        /// What was being done.
        action: String,
        /// The database error.
        #[source]
        source: userbase::Error,
    },

    /// Something did not become ready in time.
    #[error("timed out after {} s waiting for {what}", waited.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },

    /// The request cannot be served (for example, a second engine for an in-memory database).
    #[error("{message}")]
    Unsupported {
        /// Why.
        message: String,
    },
}

/// An error and its `source()` chain on one line: what a panic message should show.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

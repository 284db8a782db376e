#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::missing_errors_doc)]
// Library code returns typed errors; it never unwraps or panics (unit tests may).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bulk;
pub mod config;
mod connection;
mod database;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
pub mod error;
mod failures;
mod metrics;
pub mod migrate;
pub mod models;
mod repo;
#[rustfmt::skip]
#[allow(missing_docs)]
pub mod schema;
pub mod session;
mod transaction;
pub mod validate;

pub use config::{Backend, DbUrl, PoolConfig, Secrets, Settings};
pub use connection::{AnyConnection, MultiBackend};
pub use database::replica;
pub use database::Database;
pub use database::RetryPolicy;
pub use engine::PoolStatus;
pub use error::{BoxedCause, Error, MigrationFailure, Result};
pub use replica::WalPosition;
pub use repo::{Repo, UpsertOptions};
pub use session::Session;

// What applications rely on: an engine shared across threads, a session moved to a worker.
const _: () = {
    const fn send_sync_clone<T: Send + Sync + Clone>() {}
    const fn send<T: Send>() {}
    send_sync_clone::<Database>();
    send::<Session>();
};

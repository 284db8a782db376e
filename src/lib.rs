#![doc = include_str!("../README.md")]
#![warn(missing_docs, clippy::missing_errors_doc)]
// Library code returns typed errors; it never unwraps or panics (unit tests may).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod connection;
pub mod demo;
pub mod engine;
pub mod error;
mod migrate;
pub mod models;
pub mod replica;
pub mod repo;
#[rustfmt::skip]
#[allow(missing_docs)]
pub mod schema;
pub mod session;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transaction;
pub mod validate;

pub use config::{Backend, DbUrl, PoolConfig, Secrets, Settings};
pub use connection::{AnyConnection, MultiBackend};
pub use engine::{Database, PoolStatus};
pub use error::{Error, Result};
pub use replica::WalPosition;
pub use repo::{Repo, UpsertOptions};
pub use session::Session;
pub use transaction::RetryPolicy;

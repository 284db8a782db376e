//! Test harness: thin wrappers over `userbase_testing` (a fresh database per test on a real
//! server, or a real SQLite file), kept under the names the test files use.
//!
//! PostgreSQL: the server is `TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`
//! when it answers, else a private cluster started from the system's server binaries under
//! `target/userbase-postgres/` (see `userbase_testing::server`). Each test clones a migrated
//! template and drops its clone on `Drop`. SQLite: each test gets a new file in its own temporary
//! directory, migrated by the library.
#![allow(dead_code)]

use diesel::{Connection, PgConnection};
use userbase::{Backend, Database, DbUrl, PoolConfig, Secrets};
use userbase_testing as testing;

#[allow(unused_imports)]
pub use userbase_testing::{unique_name, DEFAULT_SERVER};

/// The server URL the tests use.
#[track_caller]
pub fn server_url() -> DbUrl {
    testing::server_url().unwrap_or_else(|error| panic!("{}", testing::report(&error)))
}

/// A URL for another database on the test server.
#[track_caller]
pub fn database_url(name: &str) -> DbUrl {
    server_url().with_database(name).unwrap()
}

/// `postgres://127.0.0.1:{port}/x`: database `x` at a loopback port where the test controls what
/// answers (a silent listener, a closed port).
#[track_caller]
pub fn loopback_url(port: u16) -> DbUrl {
    DbUrl::postgres()
        .with_host("127.0.0.1")
        .and_then(|url| url.with_port(port))
        .and_then(|url| url.with_database("x"))
        .unwrap()
}

/// An admin connection to the server's maintenance database.
#[track_caller]
pub fn admin() -> PgConnection {
    PgConnection::establish(&server_url().render(Secrets::Shown))
        .expect("connect to the test server")
}

/// Whether database `name` exists on the server `admin` is connected to.
pub fn database_exists(admin: &mut PgConnection, name: &str) -> bool {
    testing::database_exists(admin, name).expect("query pg_database")
}

/// A fresh, migrated database for one test, removed on `Drop`: `userbase_testing::TestDb` with
/// its backend and URL as fields (everything else through `Deref`).
pub struct TestDb {
    pub backend: Backend,
    pub url: DbUrl,
    inner: testing::TestDb,
}

impl TestDb {
    /// A migrated, empty database.
    #[track_caller]
    pub fn new(backend: Backend) -> Self {
        let inner = testing::TestDb::new(backend);
        TestDb {
            backend,
            url: inner.url().clone(),
            inner,
        }
    }

    /// An engine on this database with the default pool.
    #[track_caller]
    pub fn database(&self) -> Database {
        self.inner.database()
    }

    /// An engine on this database with the given pool knobs.
    #[track_caller]
    pub fn database_with(&self, pool: PoolConfig) -> Database {
        self.inner.database_with(pool)
    }

    /// An engine on this database holding the seed's demo rows.
    #[track_caller]
    pub fn seeded(&self) -> Database {
        self.inner.seeded()
    }
}

impl std::ops::Deref for TestDb {
    type Target = testing::TestDb;

    fn deref(&self) -> &testing::TestDb {
        &self.inner
    }
}

/// A `tracing` writer that keeps everything written to it, and the way to read it back.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Runs `work` with a subscriber at `level` writing into a new buffer; returns the text.
    pub fn run(level: tracing::Level, work: impl FnOnce()) -> String {
        Captured::run_watching(level, |_| work())
    }

    /// As [`Captured::run`], with the buffer handed to `work` so that it can wait for a line
    /// (see [`Captured::text`]) instead of sleeping.
    pub fn run_watching(level: tracing::Level, work: impl FnOnce(&Captured)) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || work(&captured));
        captured.text()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().expect("capture lock").clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Defines `mod $name { fn postgres(); fn sqlite(); }`: the same test body on both backends.
#[macro_export]
macro_rules! both_backends {
    ($(fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                fn run($backend: userbase::Backend) $body

                #[test]
                fn postgres() {
                    run(userbase::Backend::Postgres)
                }

                #[test]
                fn sqlite() {
                    run(userbase::Backend::Sqlite)
                }
            }
        )*
    };
}

/// Polls until `check` holds or `limit` passes (every 5 ms); returns whether it held.
pub fn eventually(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// One boolean column named `flag` (`SELECT … AS flag`).
#[derive(diesel::QueryableByName)]
pub struct Flag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub flag: bool,
}

/// One integer column named `port` (`SELECT inet_server_port() AS port`).
#[derive(diesel::QueryableByName)]
pub struct Port {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub port: i32,
}

/// Settings read from `vars` alone, as if they were the whole environment.
pub fn env_settings(vars: &[(&str, &str)]) -> userbase::Result<userbase::Settings> {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    userbase::Settings::from_lookup(|name| vars.get(name).cloned())
}

#[derive(diesel::QueryableByName)]
struct ConnectionCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Server connections whose `application_name` is `app`, counted by the server
/// (`pg_stat_activity`).
#[track_caller]
pub fn server_connections(app: &str) -> i64 {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1")
        .bind::<diesel::sql_types::Text, _>(app)
        .get_result::<ConnectionCount>(&mut admin())
        .expect("count the server's connections")
        .n
}

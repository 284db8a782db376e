//! Test harness: a fresh database per test on a real server (or a real SQLite file).
//!
//! PostgreSQL: the server comes from `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). A template database is migrated once per set of
//! migrations (its name carries their hash), under an advisory lock so parallel test processes
//! build it once; each test clones it (`CREATE DATABASE … TEMPLATE`) and drops its clone on `Drop`.
//! SQLite: each test gets a new file in its own temporary directory, migrated by the library.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use userbase::{Backend, Database, DbUrl, PoolConfig, Settings};

pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const TEMPLATE_LOCK: i64 = 0x7562_7465_7374; // "ubtest"

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The server URL the tests use.
pub fn server_url() -> DbUrl {
    let raw = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    DbUrl::parse(&raw).expect("TEST_DATABASE_URL is a valid URL")
}

/// A URL for another database on the test server.
pub fn database_url(name: &str) -> DbUrl {
    server_url().with_database(name)
}

/// An admin connection to the server's maintenance database.
pub fn admin() -> PgConnection {
    PgConnection::establish(&server_url().render(false)).expect("connect to the test server")
}

/// Hash of every migration file, so a changed migration gets a new template.
fn migrations_hash() -> u64 {
    fn walk(dir: &Path, hasher: &mut DefaultHasher) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read migrations")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, hasher);
            } else {
                path.file_name().hash(hasher);
                std::fs::read(&path).expect("read migration").hash(hasher);
            }
        }
    }
    let mut hasher = DefaultHasher::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"),
        &mut hasher,
    );
    hasher.finish()
}

/// The migrated template's name, building it first if needed.
fn template() -> String {
    let name = format!("userbase_tpl_{:016x}", migrations_hash());
    let mut admin = admin();
    admin
        .batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .expect("lock");
    let exists = database_exists(&mut admin, &name);
    if !exists {
        let building = format!("{name}_building");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .expect("drop a half-built template");
        admin
            .batch_execute(&format!("CREATE DATABASE {building}"))
            .expect("create template");
        {
            let db = Database::new(Settings::new(database_url(&building))).expect("engine");
            db.run_pending_migrations().expect("migrate template");
        }
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .expect("publish template");
    }
    admin
        .batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .expect("unlock");
    name
}

pub fn database_exists(admin: &mut PgConnection, name: &str) -> bool {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        #[allow(dead_code)]
        found: i32,
    }
    diesel::sql_query("SELECT 1 AS found FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .load::<Found>(admin)
        .expect("query pg_database")
        .len()
        == 1
}

/// A unique name for a scratch database or file.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, migrated database for one test, removed on `Drop`.
pub struct TestDb {
    pub backend: Backend,
    pub url: DbUrl,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A migrated, empty database.
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let template = template();
                let name = unique_name("userbase_test");
                admin()
                    .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                    .expect("clone template");
                TestDb {
                    backend,
                    url: database_url(&name),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("test.sqlite3");
                let url = DbUrl::sqlite(path.to_str().expect("utf-8 temp path"));
                Database::new(Settings::new(url.clone()))
                    .expect("engine")
                    .run_pending_migrations()
                    .expect("migrate sqlite");
                TestDb {
                    backend,
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// An engine on this database with the default pool.
    pub fn database(&self) -> Database {
        self.database_with(PoolConfig::default())
    }

    /// An engine on this database with the given pool knobs.
    pub fn database_with(&self, pool: PoolConfig) -> Database {
        Database::new(Settings {
            url: self.url.clone(),
            pool,
        })
        .expect("engine")
    }

    /// An engine on this database holding the seed's demo rows.
    pub fn seeded(&self) -> Database {
        let db = self.database();
        db.transaction(userbase::demo::load)
            .expect("load demo rows");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            // WITH (FORCE) ends connections a test's pool still holds.
            let _ = admin().batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// A `tracing` writer that keeps everything written to it, and the way to read it back.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Runs `work` with a subscriber at `level` writing into a new buffer; returns the text.
    pub fn run(level: tracing::Level, work: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(level)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let bytes = captured.0.lock().expect("capture lock").clone();
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

//! [`TestDb`]: a fresh, migrated database for one test.
//!
//! PostgreSQL: a template database is migrated once per set of migrations (its name carries their
//! hash), under an advisory lock so parallel test processes build it once; each `TestDb` clones it
//! (`CREATE DATABASE … TEMPLATE`, a file copy: milliseconds) and drops its clone on `Drop`, which
//! also runs when the test panics. SQLite: a new file in its own temporary directory, or one
//! shared in-memory database per `TestDb`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use diesel::connection::SimpleConnection;
use diesel::PgConnection;

use super::cluster::{connect, execute};
use super::{report, server, SetupError};
use userbase::{Backend, Database, DbUrl, PoolConfig, Secrets, Settings};

/// The advisory lock key that serializes template builds ("ubtest").
const TEMPLATE_LOCK: i64 = 0x7562_7465_7374;

/// A fresh, migrated database for one test, removed on `Drop`.
///
/// ```
/// use userbase_testing::TestDb;
/// use userbase::Backend;
///
/// let test = TestDb::new(Backend::Sqlite);
/// let db = test.seeded(); // migrated, with the quickstart's demo rows
/// assert_eq!(db.session()?.repo().count_user_locations(6873)?, 2);
/// # Ok::<(), userbase::Error>(())
/// ```
pub struct TestDb {
    url: DbUrl,
    kind: Kind,
}

enum Kind {
    Postgres { server: DbUrl, name: String },
    SqliteFile { _dir: tempfile::TempDir },
    SqliteMemory { db: Database },
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// A migrated, empty database: on PostgreSQL a clone of the template on the
    /// [`server_url`](super::server_url) server (which may start the private cluster), on SQLite
    /// a new file in a temporary directory.
    ///
    /// # Errors
    ///
    /// [`SetupError::ServerUnavailable`] when there is no PostgreSQL server and none can be
    /// started; [`SetupError::Database`] when the template or the clone cannot be made or
    /// migrated; [`SetupError::Io`] when the temporary directory cannot be made.
    pub fn try_new(backend: Backend) -> Result<TestDb, SetupError> {
        match backend {
            Backend::Postgres => TestDb::try_postgres_on(&server::server_url()?),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().map_err(|source| SetupError::Io {
                    action: "create a temporary directory".into(),
                    source,
                })?;
                let path = dir.path().join("test.sqlite3");
                let path = path.to_str().ok_or_else(|| SetupError::Unsupported {
                    message: format!("the temporary path {} is not UTF-8", path.display()),
                })?;
                let url = DbUrl::sqlite(path).map_err(|source| SetupError::Database {
                    action: format!("build the URL of {path}"),
                    source,
                })?;
                migrate(&url)?;
                Ok(TestDb {
                    url,
                    kind: Kind::SqliteFile { _dir: dir },
                })
            }
            other => Err(SetupError::Unsupported {
                message: format!("no test databases for the {other:?} backend"),
            }),
        }
    }

    /// [`try_new`](TestDb::try_new), panicking on failure: the convenience for tests.
    ///
    /// # Panics
    ///
    /// When the database cannot be made, with the whole error chain (for example what to install
    /// or which variable to set when there is no PostgreSQL server).
    #[track_caller]
    pub fn new(backend: Backend) -> TestDb {
        or_panic(TestDb::try_new(backend), "TestDb::new")
    }

    /// A migrated, empty PostgreSQL database cloned on `server` (a URL of any database there, for
    /// example [`Cluster::url`](super::Cluster::url)), dropped on `Drop`.
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] when the server cannot be reached or the template or clone cannot
    /// be made.
    pub fn try_postgres_on(server: &DbUrl) -> Result<TestDb, SetupError> {
        let template = template(server)?;
        let name = unique_name("userbase_test");
        let url = on_server(server, &name)?;
        execute(
            &mut connect(server)?,
            &format!("CREATE DATABASE {name} TEMPLATE {template}"),
        )?;
        Ok(TestDb {
            url,
            kind: Kind::Postgres {
                server: server.clone(),
                name,
            },
        })
    }

    /// A migrated, empty in-memory SQLite database (`sqlite::memory:`), alive as long as this
    /// `TestDb`; every [`database`](TestDb::database) call returns the same engine (`pool`).
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] when `pool` is invalid or the migrations fail.
    pub fn try_sqlite_memory(pool: PoolConfig) -> Result<TestDb, SetupError> {
        let url = DbUrl::sqlite(":memory:").map_err(|source| SetupError::Database {
            action: "build the URL of an in-memory database".into(),
            source,
        })?;
        let db = engine(&url, pool)?;
        db.run_pending_migrations()
            .map_err(|source| SetupError::Database {
                action: "migrate the in-memory database".into(),
                source,
            })?;
        Ok(TestDb {
            url,
            kind: Kind::SqliteMemory { db },
        })
    }

    /// [`try_sqlite_memory`](TestDb::try_sqlite_memory) with the default pool, panicking on
    /// failure.
    ///
    /// # Panics
    ///
    /// When the migrations fail.
    #[track_caller]
    pub fn sqlite_memory() -> TestDb {
        or_panic(
            TestDb::try_sqlite_memory(PoolConfig::default()),
            "TestDb::sqlite_memory",
        )
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The database's URL (PostgreSQL: the clone on the server; SQLite: the file, or
    /// `sqlite::memory:`, which only [`database`](TestDb::database) reaches).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The PostgreSQL database's name (`None` on SQLite).
    pub fn name(&self) -> Option<&str> {
        match &self.kind {
            Kind::Postgres { name, .. } => Some(name),
            _ => None,
        }
    }

    /// An engine on this database with the default pool (it opens no connection yet).
    ///
    /// # Errors
    ///
    /// As [`try_database_with`](TestDb::try_database_with).
    pub fn try_database(&self) -> Result<Database, SetupError> {
        self.try_database_with(PoolConfig::default())
    }

    /// An engine on this database with the given pool knobs.
    ///
    /// # Errors
    ///
    /// [`SetupError::Database`] holding an [`Error::Config`](userbase::Error::Config) when `pool` is
    /// invalid; [`SetupError::Unsupported`] for an in-memory database asked for another pool than
    /// the one it was made with (a new engine would be a new, empty database).
    pub fn try_database_with(&self, pool: PoolConfig) -> Result<Database, SetupError> {
        match &self.kind {
            Kind::SqliteMemory { db } if *db.config() == pool => Ok(db.clone()),
            Kind::SqliteMemory { .. } => Err(SetupError::Unsupported {
                message: "an in-memory TestDb has one engine: pass the pool to \
                          TestDb::try_sqlite_memory"
                    .into(),
            }),
            _ => engine(&self.url, pool),
        }
    }

    /// An engine on this database holding the quickstart's demo rows
    /// ([`fixtures::load_demo`](super::fixtures::load_demo)).
    ///
    /// # Errors
    ///
    /// As [`try_database`](TestDb::try_database), and [`SetupError::Database`] when the rows
    /// cannot be inserted.
    pub fn try_seeded(&self) -> Result<Database, SetupError> {
        let db = self.try_database()?;
        db.transaction(super::fixtures::load_demo)
            .map_err(|source| SetupError::Database {
                action: "load the demo rows".into(),
                source,
            })?;
        Ok(db)
    }

    /// [`try_database`](TestDb::try_database), panicking on failure.
    ///
    /// # Panics
    ///
    /// When the engine cannot be made.
    #[track_caller]
    pub fn database(&self) -> Database {
        or_panic(self.try_database(), "TestDb::database")
    }

    /// [`try_database_with`](TestDb::try_database_with), panicking on failure.
    ///
    /// # Panics
    ///
    /// When the engine cannot be made (an invalid `pool`).
    #[track_caller]
    pub fn database_with(&self, pool: PoolConfig) -> Database {
        or_panic(self.try_database_with(pool), "TestDb::database_with")
    }

    /// [`try_seeded`](TestDb::try_seeded), panicking on failure.
    ///
    /// # Panics
    ///
    /// When the engine cannot be made or the demo rows cannot be inserted.
    #[track_caller]
    pub fn seeded(&self) -> Database {
        or_panic(self.try_seeded(), "TestDb::seeded")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Kind::Postgres { server, name } = &self.kind {
            // WITH (FORCE) ends connections a test's pool still holds.
            let dropped = connect(server).and_then(|mut admin| {
                execute(
                    &mut admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
            });
            if let Err(error) = dropped {
                tracing::warn!(database = %name, error = %report(&error), "test database left behind");
            }
        }
    }
}

/// The one place the panicking conveniences panic: with the error's whole chain, reported at the
/// test's call site.
#[track_caller]
#[allow(clippy::panic)]
fn or_panic<T>(result: Result<T, SetupError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {}", report(&error)),
    }
}

/// A unique name for a scratch database, role or file: `<prefix>_<pid>_<counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a database called `name` exists on the server `admin` is connected to.
///
/// # Errors
///
/// [`SetupError::Database`] when the query fails.
pub fn database_exists(admin: &mut PgConnection, name: &str) -> Result<bool, SetupError> {
    use diesel::sql_types::Text;
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .execute(admin)
        .map(|rows| rows == 1)
        .map_err(|error| SetupError::Database {
            action: "look the database up in pg_database".into(),
            source: error.into(),
        })
}

/// Database `name` on `server` (whose URL names any database there).
fn on_server(server: &DbUrl, name: &str) -> Result<DbUrl, SetupError> {
    server
        .clone()
        .with_database(name)
        .map_err(|source| SetupError::Database {
            action: format!("build the URL of database `{name}` on {server}"),
            source,
        })
}

fn engine(url: &DbUrl, pool: PoolConfig) -> Result<Database, SetupError> {
    Database::new(Settings::new(url.clone()).with_pool(pool)).map_err(|source| {
        SetupError::Database {
            action: format!("create an engine for {url}"),
            source,
        }
    })
}

fn migrate(url: &DbUrl) -> Result<(), SetupError> {
    engine(url, PoolConfig::default())?
        .run_pending_migrations()
        .map(drop)
        .map_err(|source| SetupError::Database {
            action: format!("migrate {url}"),
            source,
        })
}

/// The migrated template's name on `server`, building it first if needed (once per process and
/// server; across processes the advisory lock and the hash in the name decide).
fn template(server: &DbUrl) -> Result<String, SetupError> {
    static BUILT: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    // The server, whichever of its databases `server` names.
    let key = on_server(server, "postgres")?.render(Secrets::Shown);
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(name) = built.get(&key) {
        return Ok(name.clone());
    }
    let name = format!("userbase_tpl_{:016x}", migrations_hash());
    let mut admin = connect(server)?;
    let lock_error = |error: diesel::result::Error| SetupError::Database {
        action: "take the template lock".into(),
        source: error.into(),
    };
    admin
        .batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
        .map_err(lock_error)?;
    let made = make_template(&mut admin, server, &name);
    let unlocked = admin
        .batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
        .map_err(lock_error);
    made?;
    unlocked?;
    built.insert(key, name.clone());
    Ok(name)
}

fn make_template(admin: &mut PgConnection, server: &DbUrl, name: &str) -> Result<(), SetupError> {
    if database_exists(admin, name)? {
        return Ok(());
    }
    let building = format!("{name}_building");
    execute(
        admin,
        &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
    )?;
    execute(admin, &format!("CREATE DATABASE {building}"))?;
    migrate(&on_server(server, &building)?)?;
    execute(
        admin,
        &format!("ALTER DATABASE {building} RENAME TO {name}"),
    )?;
    Ok(())
}

/// A hash of the PostgreSQL migrations, so a changed migration gets a new template: of the
/// migration files when this crate's source is readable (a build machine), else of the embedded
/// migrations' names.
fn migrations_hash() -> u64 {
    fn walk(dir: &Path, hasher: &mut DefaultHasher) -> std::io::Result<()> {
        let mut entries = std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, hasher)?;
            } else {
                path.file_name().hash(hasher);
                std::fs::read(&path)?.hash(hasher);
            }
        }
        Ok(())
    }
    let mut hasher = DefaultHasher::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    if walk(&dir, &mut hasher).is_err() {
        let mut hasher = DefaultHasher::new();
        use diesel::migration::MigrationSource;
        let names =
            MigrationSource::<diesel::pg::Pg>::migrations(&userbase::engine::POSTGRES_MIGRATIONS)
                .map(|migrations| {
                    migrations
                        .iter()
                        .map(|m| m.name().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
        (env!("CARGO_PKG_VERSION"), names).hash(&mut hasher);
        return hasher.finish();
    }
    hasher.finish()
}

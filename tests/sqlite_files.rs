//! SQLite files that keep what they were given: created private (0600, with their -wal/-shm),
//! `synchronous` configurable, and a full database or a read-only file reported as typed errors
//! without losing anything committed.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::sql_types::Integer;
use diesel::{QueryableByName, RunQueryDsl};
use userbase::config::SqliteSynchronous;
use userbase::models::NewUser;
use userbase::{AnyConnection, Database, DbUrl, Error, PoolConfig, Settings};

fn open(path: &Path, pool: PoolConfig) -> Database {
    Database::new(Settings::new(DbUrl::sqlite(path.to_str().unwrap()).unwrap()).with_pool(pool))
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

fn insert_users(db: &Database, ids: std::ops::Range<i64>) {
    db.transaction(|repo| {
        for id in ids {
            repo.insert_user(&NewUser::new(id, "A. User"))?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
}

fn user_ids(db: &Database) -> Vec<i64> {
    db.session()
        .unwrap()
        .repo()
        .users()
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect()
}

/// Only this test changes the umask (the most permissive one): other tests of this binary only
/// make files in their own directories.
#[test]
fn a_new_database_file_and_its_wal_and_shm_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let previous = rustix::process::umask(rustix::fs::Mode::empty());
    let db = open(&path, PoolConfig::default());
    db.run_pending_migrations().unwrap();
    insert_users(&db, 1..3);
    // A file made after, with the same umask, is world-readable: the umask really is 0.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "x").unwrap();
    rustix::process::umask(previous);
    assert_eq!(mode(&probe), 0o666);

    // An open connection keeps the -wal and -shm files in place.
    let _session = db.session().unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&sidecar(&path, "-wal")), 0o600);
    assert_eq!(mode(&sidecar(&path, "-shm")), 0o600);

    // A file that exists keeps its mode.
    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, "").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
    let db = open(&shared, PoolConfig::default());
    db.run_pending_migrations().unwrap();
    assert_eq!(mode(&shared), 0o640);
}

#[derive(QueryableByName)]
struct Synchronous {
    #[diesel(sql_type = Integer)]
    synchronous: i32,
}

fn synchronous(db: &Database) -> i32 {
    let mut session = db.session().unwrap();
    let AnyConnection::Sqlite(c) = session.connection() else {
        panic!("expected SQLite")
    };
    diesel::sql_query("PRAGMA synchronous")
        .get_result::<Synchronous>(c)
        .unwrap()
        .synchronous
}

#[test]
fn synchronous_is_normal_by_default_and_full_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    assert_eq!(
        synchronous(&open(&path, PoolConfig::default())),
        1,
        "NORMAL"
    );
    let full = PoolConfig::default().with_sqlite_synchronous(SqliteSynchronous::Full);
    assert_eq!(synchronous(&open(&path, full)), 2, "FULL");

    let settings = |value: &str| {
        let vars: HashMap<&str, &str> = [("DB_SQLITE_SYNCHRONOUS", value)].into();
        Settings::from_lookup(|name| vars.get(name).map(|v| (*v).to_owned()))
    };
    assert_eq!(
        settings("full").unwrap().pool.sqlite_synchronous,
        SqliteSynchronous::Full
    );
    assert_eq!(
        settings("NORMAL").unwrap().pool.sqlite_synchronous,
        SqliteSynchronous::Normal
    );
    match settings("off") {
        Err(Error::Config {
            variable: Some(v),
            message,
        }) => {
            assert_eq!(v, "DB_SQLITE_SYNCHRONOUS");
            assert!(message.contains("normal, full"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[derive(QueryableByName)]
struct PageCount {
    #[diesel(sql_type = Integer)]
    page_count: i32,
}

#[test]
fn a_full_database_is_a_typed_error_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(
        &path,
        PoolConfig::default().with_pool_size(1).with_max_overflow(0),
    );
    db.run_pending_migrations().unwrap();
    insert_users(&db, 1..101);

    // The connection may not grow the file by more than a few pages.
    let mut session = db.session().unwrap();
    {
        let AnyConnection::Sqlite(c) = session.connection() else {
            panic!("expected SQLite")
        };
        let pages = diesel::sql_query("PRAGMA page_count")
            .get_result::<PageCount>(c)
            .unwrap()
            .page_count;
        c.batch_execute(&format!("PRAGMA max_page_count = {}", pages + 2))
            .unwrap();
    }
    let long_name = "x".repeat(120);
    let outcome = session.transaction(|repo| {
        for id in 1000..3000 {
            repo.insert_user(&NewUser::new(id, &long_name))?;
        }
        Ok::<_, Error>(())
    });
    match outcome {
        Err(Error::StorageFull { message }) => {
            assert!(message.contains("full"), "{message}");
        }
        other => panic!("expected Error::StorageFull, got {other:?}"),
    }
    // Autocommit too: single rows until the free room is used up.
    let mut committed = Vec::new();
    let full = (5000..7000).find_map(|id| {
        match session.repo().insert_user(&NewUser::new(id, &long_name)) {
            Ok(_) => {
                committed.push(id);
                None
            }
            Err(e) => Some(e),
        }
    });
    assert!(
        matches!(full, Some(Error::StorageFull { .. })),
        "expected Error::StorageFull, got {full:?}"
    );
    drop(session);

    // Everything committed is there, nothing of the failed writes.
    let expected: Vec<i64> = (1..101).chain(committed).collect();
    assert_eq!(user_ids(&db), expected);
    drop(db);
    let reopened = open(&path, PoolConfig::default());
    assert_eq!(user_ids(&reopened), expected);
    // And with room again, writes go on.
    insert_users(&reopened, 10_000..10_001);
    assert_eq!(user_ids(&reopened).len(), expected.len() + 1);
}

/// Makes `path` read-only for this process, and writable again on drop: `chmod 0444`, or for
/// root (whom permissions do not stop) the immutable attribute (`chattr +i`).
struct ReadOnly(PathBuf, bool);

impl ReadOnly {
    fn make(path: &Path) -> ReadOnly {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let still_writable = std::fs::OpenOptions::new().write(true).open(path).is_ok();
        if still_writable {
            let status = Command::new("chattr").arg("+i").arg(path).status().unwrap();
            assert!(
                status.success(),
                "chattr +i failed: the file system does not support it"
            );
        }
        ReadOnly(path.to_owned(), still_writable)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        }
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o600));
    }
}

#[test]
fn a_read_only_file_is_a_typed_error_and_its_data_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let db = open(&path, PoolConfig::default());
    db.run_pending_migrations().unwrap();
    insert_users(&db, 1..11);
    // Every connection closed: the WAL is checkpointed into the file.
    drop(db);

    let _read_only = ReadOnly::make(&path);
    let db = open(&path, PoolConfig::default());
    assert_eq!(user_ids(&db), (1..11).collect::<Vec<_>>());
    let outcome = db
        .session()
        .unwrap()
        .repo()
        .insert_user(&NewUser::new(11, "B"));
    match outcome {
        Err(Error::ReadOnly { message }) => {
            assert!(message.contains("database file"), "{message}");
        }
        other => panic!("expected Error::ReadOnly, got {other:?}"),
    }
    let outcome = db.transaction(|repo| repo.insert_user(&NewUser::new(12, "C")).map(drop));
    assert!(
        matches!(outcome, Err(Error::ReadOnly { .. })),
        "{outcome:?}"
    );
    assert_eq!(user_ids(&db), (1..11).collect::<Vec<_>>());
}

//! `userbase_testing` itself: per-test databases, fixtures, the private run-wide server, and the
//! topologies (private cluster, streaming standby, pgbouncer) on real servers.

#[macro_use]
mod common;

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use userbase::{Backend, Database, Error, Secrets};
use userbase_testing::{
    self as testing, fixtures, Cluster, PgBouncer, PrimaryStandby, StandbyOptions, StopMode, TestDb,
};

use common::{Flag, Port};

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn pg(url: &userbase::DbUrl) -> PgConnection {
    PgConnection::establish(&url.render(Secrets::Shown)).unwrap()
}

fn flag(conn: &mut PgConnection, sql: &str) -> bool {
    diesel::sql_query(sql)
        .get_result::<Flag>(conn)
        .unwrap()
        .flag
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

fn exists_on(server: &userbase::DbUrl, name: &str) -> bool {
    testing::database_exists(&mut pg(server), name).unwrap()
}

#[test]
fn postgres_test_db_is_a_migrated_clone_dropped_on_drop() {
    let server = testing::server_url().unwrap();
    let test = TestDb::new(Backend::Postgres);
    let name = test.name().unwrap().to_owned();
    assert!(name.starts_with("userbase_test_"), "{name}");
    assert_eq!(test.url().database(), Some(name.as_str()));
    assert!(exists_on(&server, &name));
    // Migrated and empty.
    let db = test.database();
    assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 0);
    // A pool connection still open does not keep the database alive.
    let _held = db.session().unwrap();
    drop(test);
    assert!(!exists_on(&server, &name), "{name} survived its TestDb");
}

#[test]
fn postgres_test_db_is_dropped_when_the_test_panics() {
    let server = testing::server_url().unwrap();
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let test = TestDb::new(Backend::Postgres);
        *name.lock().unwrap() = test.name().unwrap().to_owned();
        test.seeded();
        panic!("the test fails");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(
        !exists_on(&server, &name),
        "{name} survived a panicking test"
    );
}

#[test]
fn sqlite_test_db_file_is_removed_on_drop() {
    let test = TestDb::new(Backend::Sqlite);
    assert_eq!(test.backend(), Backend::Sqlite);
    assert_eq!(test.name(), None);
    let path = std::path::PathBuf::from(test.url().database().unwrap());
    test.seeded();
    assert!(path.is_file(), "{}", path.display());
    drop(test);
    assert!(!path.exists(), "{} survived its TestDb", path.display());
}

#[test]
fn sqlite_memory_test_db_is_one_database_for_its_lifetime() {
    let test = TestDb::sqlite_memory();
    assert!(test.url().is_memory());
    test.seeded();
    // A second engine from the same TestDb sees the rows of the first.
    let db = test.database();
    assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 7);
    // Another pool would be another (empty) database: refused, not silently empty.
    let other = userbase::PoolConfig::default().with_pool_size(1);
    assert!(matches!(
        test.try_database_with(other),
        Err(testing::SetupError::Unsupported { .. })
    ));
    // Another in-memory TestDb is a different database.
    let fresh = TestDb::sqlite_memory();
    let rows = fresh
        .database()
        .session()
        .unwrap()
        .repo()
        .users_raw()
        .unwrap();
    assert_eq!(rows.len(), 0);
}

both_backends! {
    fn seeded_holds_exactly_the_demo_rows(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let ids: Vec<i64> = repo.users_raw().unwrap().iter().map(|u| u.user_id).collect();
        assert_eq!(ids, [1, 1169, 1824, 5155, 6873, 9044, 12356]);
        let mut expected: Vec<i64> = fixtures::DEMO_USERS.iter().map(|u| u.user_id).collect();
        expected.sort();
        assert_eq!(ids, expected);
        let counts = repo.location_counts_by_user().unwrap();
        let pairs: Vec<(i64, i64)> = counts.iter().map(|c| (c.quantity, c.user_id)).collect();
        assert_eq!(pairs, [(1, 1169), (1, 5155), (2, 6873), (1, 9044)]);
        assert_eq!(counts.iter().map(|c| c.quantity).sum::<i64>(), fixtures::DEMO_LINKS.len() as i64);
        // Loading again changes nothing.
        db.transaction(fixtures::load_demo).unwrap();
        assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 7);
    }

    fn builders_insert_users_locations_and_links(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let (ada, lab, link) = db
            .transaction(|repo| {
                let referrer = fixtures::user(1).insert(repo)?;
                let ada = fixtures::user(42)
                    .full_name("Ada Lovelace")
                    .username("ada")
                    .language("fr")
                    .referrer(referrer.user_id)
                    .insert(repo)?;
                let lab = fixtures::location("Lab").solarium(false).insert(repo)?;
                let link = fixtures::link(ada.user_id, lab.location_id).insert(repo)?;
                Ok::<_, Error>((ada, lab, link))
            })
            .unwrap();
        assert_eq!(
            (ada.user_id, ada.full_name.as_str(), ada.username.as_deref()),
            (42, "Ada Lovelace", Some("ada"))
        );
        assert_eq!((ada.language.as_str(), ada.referrer_id, ada.active), ("fr", Some(1), true));
        assert_eq!(
            (lab.location_name.as_str(), lab.address.as_str(), lab.has_solarium),
            ("Lab", "1 Lab Street", false)
        );
        assert_eq!((link.user_id, link.location_id), (42, lab.location_id));
        let default_user = db.session().unwrap().repo().find_user(1).unwrap().unwrap();
        assert_eq!(default_user.full_name, "User 1");

        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        assert_eq!(repo.count_user_locations(42).unwrap(), 1);
        assert!(matches!(
            fixtures::link(42, lab.location_id).insert(&mut repo),
            Err(Error::UniqueViolation { .. })
        ));
        assert!(matches!(
            fixtures::link(7, lab.location_id).insert(&mut repo),
            Err(Error::ForeignKeyViolation { .. })
        ));
        assert!(matches!(
            fixtures::user(42).insert(&mut repo),
            Err(Error::UniqueViolation { .. })
        ));
    }
}

#[test]
fn private_server_runs_under_the_target_dir_and_serves_test_dbs() {
    let url = testing::private_server_url().unwrap();
    assert_eq!(url.host(), Some("127.0.0.1"));
    assert_ne!(url.port(), Some(5432));
    // Decided once per process.
    assert_eq!(testing::private_server_url().unwrap(), url);
    let data: Setting =
        diesel::sql_query("SELECT setting AS value FROM pg_settings WHERE name = 'data_directory'")
            .get_result(&mut pg(&url))
            .unwrap();
    assert!(
        data.value.ends_with("userbase-postgres/data"),
        "{}",
        data.value
    );
    // TestDb on it: template clone, dropped on Drop.
    let test = TestDb::try_postgres_on(&url).unwrap();
    let name = test.name().unwrap().to_owned();
    let db = test.seeded();
    assert_eq!(db.session().unwrap().repo().users_raw().unwrap().len(), 7);
    drop(db);
    drop(test);
    assert!(!exists_on(&url, &name));
}

#[test]
fn cluster_stops_starts_again_and_is_removed_on_drop() {
    let mut cluster = Cluster::start().unwrap();
    let url = cluster.url();
    assert_eq!(url.port(), Some(cluster.port()));
    let port: Port = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result(&mut cluster.connect().unwrap())
        .unwrap();
    assert_eq!(port.port, i32::from(cluster.port()));

    let db = Database::new(userbase::Settings::new(url.clone())).unwrap();
    db.check().unwrap();
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    db.dispose();
    assert!(
        matches!(db.check(), Err(Error::Connect { .. })),
        "stopped server still answers"
    );
    cluster.start_again().unwrap();
    db.check().unwrap();
    cluster.stop_with(StopMode::Immediate).unwrap();
    cluster.start_again().unwrap(); // crash recovery
    db.dispose();
    db.check().unwrap();

    let data = cluster.data_dir().to_owned();
    assert!(data.join("PG_VERSION").is_file());
    drop(db);
    drop(cluster);
    assert!(!data.exists(), "{} survived its Cluster", data.display());
    assert!(
        PgConnection::establish(&url.render(Secrets::Shown)).is_err(),
        "the dropped cluster still answers"
    );
}

#[test]
fn standby_is_in_recovery_and_replays_the_primarys_writes() {
    let pair = PrimaryStandby::start().unwrap();
    let mut primary = pair.primary().connect().unwrap();
    let mut standby = pair.standby().connect().unwrap();
    assert!(!flag(&mut primary, "SELECT pg_is_in_recovery() AS flag"));
    assert!(flag(&mut standby, "SELECT pg_is_in_recovery() AS flag"));

    // Through userbase: a TestDb on the primary, read on the standby.
    let test = TestDb::try_postgres_on(&pair.primary().url()).unwrap();
    test.seeded();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    let replica = Database::new(userbase::Settings::new(
        pair.standby()
            .url()
            .with_database(test.name().unwrap())
            .unwrap(),
    ))
    .unwrap();
    let mut session = replica.session().unwrap();
    assert_eq!(session.repo().count_user_locations(6873).unwrap(), 2);
    // The standby refuses writes.
    let refused = session
        .repo()
        .insert_user(&userbase::models::NewUser::new(5, "Five"));
    assert!(refused.is_err(), "a write succeeded on the standby");
    drop(session);
    drop(replica);

    execute(&mut primary, "CREATE TABLE replicated (n int)");
    execute(&mut primary, "INSERT INTO replicated VALUES (1), (2), (3)");
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    assert_eq!(
        count(&mut standby, "SELECT count(*) AS n FROM replicated"),
        3
    );

    // Failover: the old primary stopped, the standby promoted takes writes.
    drop(primary);
    drop(test);
    let mut pair = pair;
    pair.primary_mut().stop().unwrap();
    assert!(!pair.primary().is_running());
    pair.standby().promote().unwrap();
    let mut promoted = pair.standby().connect().unwrap();
    assert!(!flag(&mut promoted, "SELECT pg_is_in_recovery() AS flag"));
    execute(&mut promoted, "INSERT INTO replicated VALUES (4)");
    assert_eq!(
        count(&mut promoted, "SELECT count(*) AS n FROM replicated"),
        4
    );
}

#[test]
fn standby_apply_delay_makes_lag_until_it_is_lifted() {
    // Long enough that the commit below is still pending when the standby is asked, however
    // loaded the machine.
    let delay = Duration::from_secs(10);
    let pair = PrimaryStandby::start_with(&StandbyOptions::new().apply_delay(delay)).unwrap();
    let mut standby = pair.standby().connect().unwrap();
    let applied: Setting = diesel::sql_query(
        "SELECT setting AS value FROM pg_settings WHERE name = 'recovery_min_apply_delay'",
    )
    .get_result(&mut standby)
    .unwrap();
    assert_eq!(applied.value, "10000");

    let mut primary = pair.primary().connect().unwrap();
    execute(&mut primary, "CREATE TABLE lagging (n int)");
    // Ten seconds of delay: the commit is not replayed right after it.
    assert!(
        !flag(
            &mut standby,
            "SELECT EXISTS (SELECT FROM pg_tables WHERE tablename = 'lagging') AS flag"
        ),
        "the standby replayed a commit before its apply delay"
    );
    pair.wait_for_replay(Duration::from_secs(60)).unwrap();
    assert_eq!(count(&mut standby, "SELECT count(*) AS n FROM lagging"), 0);

    // Lifted at run time: replayed promptly.
    pair.set_apply_delay(Duration::ZERO).unwrap();
    execute(&mut primary, "INSERT INTO lagging VALUES (1)");
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    assert_eq!(count(&mut standby, "SELECT count(*) AS n FROM lagging"), 1);
}

#[test]
#[ignore = "needs pgbouncer: apt-get install pgbouncer, then cargo test -- --include-ignored"]
fn pgbouncer_pools_in_transaction_mode_in_front_of_a_cluster() {
    let cluster = Cluster::start().unwrap();
    let bouncer = PgBouncer::start(&cluster.url()).unwrap();
    assert_ne!(bouncer.port(), cluster.port());
    let test = TestDb::try_postgres_on(&cluster.url()).unwrap();
    let name = test.name().unwrap().to_owned();

    // Connected to pgbouncer's port, served by the cluster's.
    let through = bouncer.url(&name).unwrap();
    assert_eq!(through.port(), Some(bouncer.port()));
    let db = Database::new(userbase::Settings::new(through)).unwrap();
    db.transaction(fixtures::load_demo).unwrap();
    let mut session = db.session().unwrap();
    let served_by: Port = session
        .repo()
        .load_sql::<Port>("SELECT inet_server_port() AS port")
        .unwrap()
        .remove(0);
    assert_eq!(served_by.port, i32::from(cluster.port()));
    assert_eq!(session.repo().count_user_locations(6873).unwrap(), 2);
    drop(session);

    let pools = bouncer.admin("SHOW POOLS").unwrap();
    let pool = pools
        .iter()
        .find(|row| row.get("database") == Some(&name))
        .unwrap_or_else(|| panic!("no pool for {name} in {pools:?}"));
    assert_eq!(
        pool.get("pool_mode").map(String::as_str),
        Some("transaction")
    );
    assert_eq!(pool.get("user").map(String::as_str), Some("postgres"));
    let clients = bouncer.admin("SHOW CLIENTS").unwrap();
    assert!(
        clients.iter().any(|row| row.get("database") == Some(&name)),
        "{clients:?}"
    );
    drop(db);
    drop(bouncer);
    drop(test);
}

fn execute(conn: &mut PgConnection, sql: &str) {
    diesel::sql_query(sql).execute(conn).unwrap();
}

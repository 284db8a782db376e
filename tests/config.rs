//! DbUrl (building, encoding, redaction, parsing) and Settings (environment, malformed values).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestDb;
use userbase::config::{Secrets, DEFAULT_SQLITE_PATH};
use userbase::{Backend, Database, DbUrl, Error, PoolConfig, Settings};

fn seed_url() -> DbUrl {
    DbUrl::postgres()
        .with_username("testuser")
        .unwrap()
        .with_password("testpassword")
        .unwrap()
        .with_host("localhost")
        .unwrap()
        .with_database("testuser")
        .unwrap()
        .with_port(5432)
        .unwrap()
}

#[test]
fn renders_like_the_seed_with_and_without_password() {
    let url = seed_url();
    assert_eq!(
        url.render(Secrets::Shown),
        "postgres://testuser:testpassword@localhost:5432/testuser"
    );
    assert_eq!(
        url.render(Secrets::Hidden),
        "postgres://testuser:***@localhost:5432/testuser"
    );
}

#[test]
fn display_and_debug_never_show_the_password() {
    let url = seed_url().with_password("s3cr3t-Pa55").unwrap();
    assert_eq!(
        url.to_string(),
        "postgres://testuser:***@localhost:5432/testuser"
    );
    let debug = format!("{url:?} {url:#?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("***"), "{debug}");
    let settings = Settings::new(url);
    assert!(!format!("{settings:?}").contains("s3cr3t"));
}

#[test]
fn percent_encodes_every_part() {
    let url = DbUrl::postgres()
        .with_username("bot user")
        .unwrap()
        .with_password("p@ss:w/rd?#%é")
        .unwrap()
        .with_host("db.internal")
        .unwrap()
        .with_port(6432)
        .unwrap()
        .with_database("my db")
        .unwrap()
        .with_query_param("application_name", "chat bot")
        .unwrap()
        .with_query_param("sslmode", "require")
        .unwrap();
    let rendered = url.render(Secrets::Shown);
    assert_eq!(
        rendered,
        "postgres://bot%20user:p%40ss%3Aw%2Frd%3F%23%25%C3%A9@db.internal:6432/my%20db\
         ?application_name=chat%20bot&sslmode=require"
    );
    assert_eq!(DbUrl::parse(&rendered).unwrap(), url);
}

#[test]
fn parses_postgres_urls_into_parts() {
    let url =
        DbUrl::parse("postgresql://u%40x:p%2Fw@127.0.0.1:5433/db%20name?sslmode=disable").unwrap();
    assert_eq!(url.backend(), Backend::Postgres);
    assert_eq!(url.username(), Some("u@x"));
    assert!(url.has_password());
    assert_eq!(url.host(), Some("127.0.0.1"));
    assert_eq!(url.port(), Some(5433));
    assert_eq!(url.database(), Some("db name"));
    assert_eq!(url.query_value("sslmode"), Some("disable"));
    assert_eq!(
        url.render(Secrets::Shown),
        "postgresql://u%40x:p%2Fw@127.0.0.1:5433/db%20name?sslmode=disable"
    );
    assert_eq!(
        url.render(Secrets::Hidden),
        "postgresql://u%40x:***@127.0.0.1:5433/db%20name?sslmode=disable"
    );
}

#[test]
fn parses_ipv6_hosts_and_urls_without_parts() {
    let url = DbUrl::parse("postgres://[::1]:5432/app").unwrap();
    assert_eq!(url.host(), Some("::1"));
    assert_eq!(url.render(Secrets::Shown), "postgres://[::1]:5432/app");
    let bare = DbUrl::parse("postgres://").unwrap();
    assert_eq!(
        (bare.username(), bare.host(), bare.port(), bare.database()),
        (None, None, None, None)
    );
    assert_eq!(bare.render(Secrets::Shown), "postgres://");
}

#[test]
fn parses_sqlite_urls_and_paths() {
    let cases = [
        (
            "sqlite://data/app.db",
            "data/app.db",
            "sqlite://data/app.db",
        ),
        (
            "sqlite:///var/lib/app.db",
            "/var/lib/app.db",
            "sqlite:///var/lib/app.db",
        ),
        (
            "sqlite://my%20file.db",
            "my file.db",
            "sqlite://my%20file.db",
        ),
        ("./app.sqlite3", "./app.sqlite3", "sqlite://./app.sqlite3"),
        ("/tmp/x.db", "/tmp/x.db", "sqlite:///tmp/x.db"),
        ("app.db", "app.db", "sqlite://app.db"),
        ("sqlite::memory:", ":memory:", "sqlite::memory:"),
        (":memory:", ":memory:", "sqlite::memory:"),
    ];
    for (input, path, rendered) in cases {
        let url = DbUrl::parse(input).unwrap();
        assert_eq!(url.backend(), Backend::Sqlite, "{input}");
        assert_eq!(url.database(), Some(path), "{input}");
        assert_eq!(url.render(Secrets::Shown), rendered, "{input}");
        assert_eq!(DbUrl::parse(rendered).unwrap(), url, "{input}");
    }
    assert!(DbUrl::parse("sqlite::memory:").unwrap().is_memory());
}

#[test]
fn unsupported_schemes_are_config_errors_naming_the_scheme() {
    for (input, scheme) in [
        ("mysql://root@localhost/db", "mysql"),
        ("redis://localhost", "redis"),
        ("mssql:x", "mssql"),
    ] {
        match DbUrl::parse(input) {
            Err(Error::Config { variable, message }) => {
                assert_eq!(variable.as_deref(), Some("DATABASE_URL"));
                assert!(message.contains(&format!("`{scheme}`")), "{message}");
            }
            other => panic!("{input}: expected Config error, got {other:?}"),
        }
    }
    assert!(matches!(DbUrl::parse("  "), Err(Error::Config { .. })));
    assert!(matches!(
        DbUrl::parse("sqlite://"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        DbUrl::parse("postgres://host:99999/db"),
        Err(Error::Config { .. })
    ));
}

fn settings(vars: &[(&str, &str)]) -> Result<Settings, Error> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn no_variables_means_the_embedded_sqlite_file_and_seed_defaults() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.url, DbUrl::sqlite(DEFAULT_SQLITE_PATH).unwrap());
    assert_eq!(s.url.render(Secrets::Shown), "sqlite://userbase.sqlite3");
    assert_eq!(
        s.pool,
        PoolConfig::default()
            .with_pool_size(5)
            .with_max_overflow(10)
            .with_pool_timeout(Duration::from_secs(30))
            .with_pool_recycle(None)
            .with_pre_ping(true)
            .with_pre_ping_bypass(Duration::from_millis(500))
            .with_echo(false)
            .with_hide_parameters(false)
            .with_echo_pool(false)
            .with_overflow_idle_timeout(Duration::from_secs(1))
            .with_leak_detection_threshold(None)
            .with_statement_cache(true)
    );
    assert_eq!(s.pool, PoolConfig::default());
    assert_eq!(s.pool.max_connections(), 15);
}

#[test]
fn database_url_wins_over_parts() {
    let s = settings(&[("DATABASE_URL", "postgres://a@h/d"), ("DB_HOST", "ignored")]).unwrap();
    assert_eq!(s.url.render(Secrets::Shown), "postgres://a@h/d");
}

#[test]
fn parts_build_a_postgres_url() {
    let s = settings(&[
        ("DB_HOST", "db"),
        ("DB_USER", "bot"),
        ("DB_PASS", "p w"),
        ("DB_NAME", "chat"),
    ])
    .unwrap();
    assert_eq!(
        s.url.render(Secrets::Shown),
        "postgres://bot:p%20w@db:5432/chat"
    );
    let s = settings(&[("DB_PASS", "x")]).unwrap();
    assert_eq!(
        s.url.render(Secrets::Hidden),
        "postgres://postgres:***@localhost:5432/postgres"
    );
    let s = settings(&[("DB_PORT", "6000"), ("DB_USER", "u")]).unwrap();
    assert_eq!(
        s.url.render(Secrets::Shown),
        "postgres://u@localhost:6000/u"
    );
}

#[test]
fn pool_variables_are_read() {
    let s = settings(&[
        ("DB_POOL_SIZE", "2"),
        ("DB_MAX_OVERFLOW", "0"),
        ("DB_POOL_TIMEOUT_SECS", "1.5"),
        ("DB_POOL_RECYCLE_SECS", "3600"),
        ("DB_PRE_PING", "off"),
        ("DB_PRE_PING_BYPASS_MS", "250"),
        ("DB_ECHO", "YES"),
        ("DB_HIDE_PARAMETERS", "1"),
        ("DB_ECHO_POOL", "true"),
        ("DB_OVERFLOW_IDLE_TIMEOUT_MS", "2500"),
        ("DB_LEAK_DETECTION_MS", "60000"),
        ("DB_STATEMENT_CACHE", "off"),
    ])
    .unwrap();
    assert_eq!(
        s.pool,
        PoolConfig::default()
            .with_pool_size(2)
            .with_max_overflow(0)
            .with_pool_timeout(Duration::from_millis(1500))
            .with_pool_recycle(Some(Duration::from_secs(3600)))
            .with_pre_ping(false)
            .with_pre_ping_bypass(Duration::from_millis(250))
            .with_echo(true)
            .with_hide_parameters(true)
            .with_echo_pool(true)
            .with_overflow_idle_timeout(Duration::from_millis(2500))
            .with_leak_detection_threshold(Some(Duration::from_secs(60)))
            .with_statement_cache(false)
    );
    assert_eq!(
        settings(&[("DB_POOL_RECYCLE_SECS", "-1")])
            .unwrap()
            .pool
            .pool_recycle,
        None
    );
}

#[test]
fn malformed_values_are_config_errors_naming_the_variable() {
    let cases = [
        ("DB_POOL_SIZE", "five"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_MAX_OVERFLOW", "1.5"),
        ("DB_POOL_TIMEOUT_SECS", "soon"),
        ("DB_POOL_TIMEOUT_SECS", "-3"),
        ("DB_POOL_TIMEOUT_SECS", "0"),
        ("DB_POOL_RECYCLE_SECS", "-5"),
        ("DB_PRE_PING", "maybe"),
        ("DB_ECHO", "2"),
        ("DB_PRE_PING_BYPASS_MS", "-1"),
        ("DB_ECHO_POOL", "sometimes"),
        ("DB_PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
    ];
    for (name, value) in cases {
        match settings(&[(name, value)]) {
            Err(Error::Config { variable, message }) => {
                assert_eq!(variable.as_deref(), Some(name), "{name}={value}: {message}");
            }
            other => panic!("{name}={value}: expected Config error, got {other:?}"),
        }
    }
    let err = settings(&[("DB_POOL_SIZE", "0"), ("DB_MAX_OVERFLOW", "0")]).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(
        settings(&[("DB_PRE_PING", "maybe")]).unwrap_err().to_string(),
        "invalid configuration in DB_PRE_PING: `maybe` is not a boolean (true/false, 1/0, yes/no, on/off)"
    );
}

// ---- Every part survives build → render → parse, and none can inject another ----

fn config_error(result: Result<impl std::fmt::Debug, Error>) -> (String, String) {
    match result {
        Err(Error::Config { variable, message }) => (variable.unwrap_or_default(), message),
        other => panic!("expected a Config error, got {other:?}"),
    }
}

fn round_trips(url: &DbUrl) -> String {
    let rendered = url.render(Secrets::Shown);
    assert_eq!(&DbUrl::parse(&rendered).unwrap(), url, "{rendered}");
    rendered
}

const INJECTION: &str = "::1]:6000/otherdb?sslmode=disable&x=";

#[test]
fn a_host_that_tries_to_pick_port_database_and_sslmode_is_refused() {
    let (variable, message) = config_error(settings(&[("DB_HOST", INJECTION)]));
    assert_eq!(variable, "DB_HOST");
    assert!(message.contains("is not a host name"), "{message}");
    let (variable, message) = config_error(DbUrl::postgres().with_host(INJECTION));
    assert_eq!(variable, "URL host");
    assert!(message.contains("is not a host name"), "{message}");
}

/// The builder refuses the injecting host; and even the string rendering would make of it (the
/// whole value encoded inside the brackets, as the unit tests of `config::url` hold), handed to
/// libpq directly, cannot move the connection: it carries `hostaddr`, so libpq connects to
/// 127.0.0.1 without resolving the host name. Had the host injected its port, database and
/// `sslmode`, libpq would have gone to port 6000 and database `otherdb`; it reaches the test's
/// own database on the server's port.
#[test]
fn libpq_reads_an_injecting_host_as_one_host_name() {
    #[derive(diesel::QueryableByName)]
    struct Where {
        #[diesel(sql_type = diesel::sql_types::Text)]
        db: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        port: i32,
    }
    let test = TestDb::new(Backend::Postgres);
    let server = common::server_url();
    let (variable, _) = config_error(DbUrl::postgres().with_host(INJECTION));
    assert_eq!(variable, "URL host");
    let mut url = DbUrl::postgres()
        .with_host("placeholder")
        .unwrap()
        .with_port(server.port().unwrap_or(5432))
        .unwrap()
        .with_database(test.url.database().unwrap())
        .unwrap()
        .with_query_param("hostaddr", "127.0.0.1")
        .unwrap();
    if let Some(user) = server.username() {
        url = url.with_username(user).unwrap();
    }
    let rendered = url.render(Secrets::Shown).replacen(
        "placeholder",
        "[::1%5D:6000%2Fotherdb%3Fsslmode%3Ddisable%26x%3D]",
        1,
    );
    let mut conn = <diesel::PgConnection as diesel::Connection>::establish(&rendered).unwrap();
    let found: Vec<Where> = diesel::RunQueryDsl::load(
        diesel::sql_query("SELECT current_database()::text AS db, inet_server_port() AS port"),
        &mut conn,
    )
    .unwrap();
    assert_eq!(found[0].db, test.url.database().unwrap());
    assert_eq!(found[0].port, i32::from(server.port().unwrap_or(5432)));
}

#[test]
fn hosts_with_a_colon_are_ipv6_or_refused() {
    // `%3A` decoded into a name used to be written back raw, as `[a:b]`.
    let (variable, message) = config_error(DbUrl::parse("postgres://u@a%3Ab/app"));
    assert_eq!(variable, "DATABASE_URL");
    assert!(message.contains("`a:b`"), "{message}");
    let (variable, _) = config_error(settings(&[("DB_HOST", "a:b")]));
    assert_eq!(variable, "DB_HOST");
    let (variable, _) = config_error(DbUrl::postgres().with_host("a:b"));
    assert_eq!(variable, "URL host");
}

#[test]
fn ipv6_hosts_are_the_same_with_or_without_brackets_and_zone_ids_are_encoded() {
    for host in ["::1", "[::1]"] {
        let s = settings(&[("DB_HOST", host), ("DB_NAME", "app")]).unwrap();
        assert_eq!(s.url.host(), Some("::1"));
        assert_eq!(round_trips(&s.url), "postgres://postgres@[::1]:5432/app");
        assert_eq!(
            DbUrl::postgres().with_host(host).unwrap().host(),
            Some("::1")
        );
    }
    let zoned = DbUrl::postgres()
        .with_host("fe80::1%eth0")
        .unwrap()
        .with_port(5432)
        .unwrap();
    assert_eq!(round_trips(&zoned), "postgres://[fe80::1%25eth0]:5432");
    let parsed = DbUrl::parse("postgres://[fe80::1%25eth0]:5432").unwrap();
    assert_eq!(parsed.host(), Some("fe80::1%eth0"));
    let (variable, _) = config_error(DbUrl::postgres().with_host("fe80::1%"));
    assert_eq!(variable, "URL host");
    let (variable, _) = config_error(DbUrl::postgres().with_host("fe80::1%e/0"));
    assert_eq!(variable, "URL host");
    // A raw `%` in a URL is not a zone id: libpq would refuse it too.
    assert!(DbUrl::parse("postgres://[fe80::1%eth0]/db").is_err());
    // IPv4, names and Unix-socket directories.
    for host in ["10.0.0.7", "db-1.internal", "my_db", "/var/run/postgresql"] {
        let url = DbUrl::postgres()
            .with_host(host)
            .unwrap()
            .with_database("app")
            .unwrap();
        round_trips(&url);
        assert_eq!(url.host(), Some(host));
    }
    assert_eq!(
        DbUrl::postgres()
            .with_host("/var/run/postgresql")
            .unwrap()
            .render(Secrets::Shown),
        "postgres://%2Fvar%2Frun%2Fpostgresql"
    );
    for bad in [
        "",
        "db host",
        "db,other",
        "dé.example",
        "[db]",
        "a@b",
        "/dir,other",
    ] {
        let (variable, _) = config_error(DbUrl::postgres().with_host(bad));
        assert_eq!(variable, "URL host", "{bad:?}");
    }
}

#[test]
fn a_query_on_an_sqlite_url_is_refused_not_dropped() {
    for input in [
        "sqlite://:memory:?a=b",
        "sqlite::memory:?a=b",
        "sqlite://app.db?mode=ro",
    ] {
        let (variable, message) = config_error(DbUrl::parse(input));
        assert_eq!(variable, "DATABASE_URL", "{input}");
        assert!(
            message.contains("takes no query parameter"),
            "{input}: {message}"
        );
    }
    let (variable, message) = config_error(
        DbUrl::sqlite(":memory:")
            .unwrap()
            .with_query_param("a", "b"),
    );
    assert_eq!(variable, "URL query");
    assert!(message.contains("takes no query parameter"), "{message}");
    let (variable, _) = config_error(DbUrl::sqlite("app.db").unwrap().with_host("h"));
    assert_eq!(variable, "URL host");
}

#[test]
fn empty_parts_set_through_the_builder_are_refused() {
    let base = || DbUrl::postgres().with_host("h").unwrap();
    for (url, part) in [
        (base().with_username(""), "URL user"),
        (base().with_password(""), "URL password"),
        (base().with_database(""), "URL database"),
        (base().with_query_param("", "x"), "URL query"),
        (DbUrl::sqlite(""), "URL path"),
    ] {
        let (variable, _) = config_error(url);
        assert_eq!(variable, part);
    }
    // An empty value of a query parameter is a value, kept as such.
    round_trips(&base().with_query_param("application_name", "").unwrap());
    // In a URL, libpq ignores empty parts; so does the parser (and says so in its docs).
    let url = DbUrl::parse("postgres://:@h/").unwrap();
    assert_eq!(
        (url.username(), url.has_password(), url.database()),
        (None, false, None)
    );
}

/// Each builder method refuses, when the part is set, what could not survive rendering: an
/// [`Error::Config`] naming exactly that part, whose message holds neither the password nor a
/// query value.
#[test]
fn every_builder_method_refuses_its_invalid_parts_naming_the_part() {
    let pg = DbUrl::postgres;
    let lite = || DbUrl::sqlite("app.db").unwrap();
    let long_name = "a".repeat(254);
    let cases: Vec<(&str, Result<DbUrl, Error>, &str)> = vec![
        ("empty path", DbUrl::sqlite(""), "URL path"),
        ("NUL in path", DbUrl::sqlite("a\0b"), "URL path"),
        ("file: path", DbUrl::sqlite("file:app.db"), "URL path"),
        (
            "file: URI",
            DbUrl::sqlite("file:app.db?mode=ro"),
            "URL path",
        ),
        ("empty user", pg().with_username(""), "URL user"),
        ("NUL in user", pg().with_username("u\0"), "URL user"),
        ("user on SQLite", lite().with_username("u"), "URL user"),
        ("empty password", pg().with_password(""), "URL password"),
        (
            "NUL in password",
            pg().with_password("pw-secret\0x"),
            "URL password",
        ),
        (
            "password on SQLite",
            lite().with_password("pw-secret"),
            "URL password",
        ),
        ("empty host", pg().with_host(""), "URL host"),
        ("NUL host", pg().with_host("\0"), "URL host"),
        ("space in host", pg().with_host("db host"), "URL host"),
        ("colon, not IPv6", pg().with_host("a:b"), "URL host"),
        ("comma in host", pg().with_host("db,other"), "URL host"),
        ("brackets, not IPv6", pg().with_host("[db]"), "URL host"),
        ("empty zone id", pg().with_host("fe80::1%"), "URL host"),
        ("comma in socket dir", pg().with_host("/dir,x"), "URL host"),
        ("NUL in socket dir", pg().with_host("/d\0"), "URL host"),
        (
            "254-character name",
            pg().with_host(long_name.as_str()),
            "URL host",
        ),
        ("injection", pg().with_host(INJECTION), "URL host"),
        ("host on SQLite", lite().with_host("h"), "URL host"),
        ("port 0", pg().with_port(0), "URL port"),
        ("port on SQLite", lite().with_port(5432), "URL port"),
        (
            "empty added host",
            pg().with_additional_host("", None),
            "URL host",
        ),
        (
            "bad added host",
            pg().with_additional_host("a,b", Some(1)),
            "URL host",
        ),
        (
            "added port 0",
            pg().with_additional_host("h", Some(0)),
            "URL port",
        ),
        (
            "host checked first",
            pg().with_additional_host("a b", Some(0)),
            "URL host",
        ),
        (
            "added host on SQLite",
            lite().with_additional_host("h", None),
            "URL host",
        ),
        ("empty database", pg().with_database(""), "URL database"),
        ("NUL in database", pg().with_database("d\0"), "URL database"),
        ("empty SQLite path", lite().with_database(""), "URL path"),
        (
            "NUL in SQLite path",
            lite().with_database("a\0"),
            "URL path",
        ),
        (
            "file: SQLite path",
            lite().with_database("file:x.db"),
            "URL path",
        ),
        (
            "empty query name",
            pg().with_query_param("", "qv-secret"),
            "URL query",
        ),
        (
            "NUL in query name",
            pg().with_query_param("k\0", "qv-secret"),
            "URL query",
        ),
        (
            "NUL in query value",
            pg().with_query_param("sslpassword", "qv-secret\0"),
            "URL query",
        ),
        (
            "query on SQLite",
            lite().with_query_param("mode", "qv-secret"),
            "URL query",
        ),
    ];
    for (case, result, part) in cases {
        match result {
            Err(Error::Config {
                variable: Some(variable),
                message,
            }) => {
                assert_eq!(variable, part, "{case}: {message}");
                assert!(!message.contains("pw-secret"), "{case}: {message}");
                assert!(!message.contains("qv-secret"), "{case}: {message}");
            }
            other => panic!("{case}: expected Error::Config for {part}, got {other:?}"),
        }
    }
    // The limits pass: a 253-character name, ports 1 and 65535, an empty query value.
    let url = pg()
        .with_host("a".repeat(253))
        .and_then(|url| url.with_port(1))
        .and_then(|url| url.with_additional_host("h", Some(65_535)))
        .and_then(|url| url.with_query_param("application_name", ""))
        .unwrap();
    round_trips(&url);
    // From the environment, the error names the variable instead.
    let (variable, _) = config_error(settings(&[("DB_HOST", "db"), ("DB_SSLROOTCERT", "a\0b")]));
    assert_eq!(variable, "DB_SSLROOTCERT");
    let (variable, _) = config_error(settings(&[("DB_NAME", "d\0")]));
    assert_eq!(variable, "DB_NAME");
}

#[test]
fn dot_databases_and_parts_without_a_host_are_kept_exactly() {
    for database in [".", "..", "a/../b", "./x", "%2F"] {
        let url = DbUrl::postgres()
            .with_host("h")
            .unwrap()
            .with_database(database)
            .unwrap();
        round_trips(&url);
        assert_eq!(url.database(), Some(database));
    }
    let user_only = DbUrl::postgres()
        .with_username("u")
        .unwrap()
        .with_database("app")
        .unwrap();
    assert_eq!(round_trips(&user_only), "postgres://u@/app");
    let port_only = DbUrl::postgres()
        .with_port(5433)
        .unwrap()
        .with_database("app")
        .unwrap();
    assert_eq!(round_trips(&port_only), "postgres://:5433/app");
    let password_only = DbUrl::postgres()
        .with_password("pw")
        .unwrap()
        .with_host("h")
        .unwrap();
    assert_eq!(round_trips(&password_only), "postgres://:pw@h");
}

#[test]
fn every_special_character_is_kept_in_every_part() {
    let nasty = "a@b:c/d?e#f%g&h=i+j[k]l m,n\\o\"p'é日🙂";
    let url = DbUrl::postgres()
        .with_username(nasty)
        .unwrap()
        .with_password(nasty)
        .unwrap()
        .with_host("h")
        .unwrap()
        .with_port(1)
        .unwrap()
        .with_database(nasty)
        .unwrap()
        .with_query_param(nasty, nasty)
        .unwrap();
    round_trips(&url);
    round_trips(&DbUrl::sqlite(nasty).unwrap());
    // `+` is a plus, as libpq reads it (not a space, as HTML forms would have it).
    let plus = DbUrl::parse("postgres://h/db?application_name=a+b").unwrap();
    assert_eq!(plus.query_value("application_name"), Some("a+b"));
    let (_, message) = config_error(DbUrl::postgres().with_username("a\0b"));
    assert!(message.contains("NUL"), "{message}");
}

#[test]
fn urls_gone_wrong_are_config_errors_not_sqlite_files() {
    let (variable, message) = config_error(settings(&[("DATABASE_URL", "")]));
    assert_eq!(variable, "DATABASE_URL");
    assert!(message.contains("empty"), "{message}");
    let (variable, _) = config_error(settings(&[("DATABASE_URL", "   ")]));
    assert_eq!(variable, "DATABASE_URL");
    for input in [
        "postgres//host/db",
        "postgres//u:s3cret-pw@host/db",
        "postgres:/host/db",
        "postgresql:host",
        "sqlite:app.db",
        "postgres/host/db",
        "app.db?mode=ro",
        "file:app.db",
        "sqlite://file:app.db",
        "postgres://u:s3cret-pw@host:99999/db",
        "postgres://u:s3cret-pw@host/d b",
        "postgres://u:s3cret%zz@host/db",
    ] {
        let (variable, message) = config_error(DbUrl::parse(input));
        assert_eq!(variable, "DATABASE_URL", "{input}");
        assert!(!message.contains("s3cret"), "{input}: {message}");
        let (variable, _) = config_error(settings(&[("DATABASE_URL", input)]));
        assert_eq!(variable, "DATABASE_URL", "{input}");
    }
    // A relative SQLite path starting with `file:` is refused (SQLite would read it as a URI);
    // `./file:…` names such a file.
    let (variable, message) = config_error(DbUrl::sqlite("file:app.db"));
    assert_eq!(variable, "URL path");
    assert!(message.contains("./file:app.db"), "{message}");
    let url = DbUrl::parse("./file:app.db").unwrap();
    assert_eq!(url.database(), Some("./file:app.db"));
    round_trips(&url);
    round_trips(&DbUrl::sqlite("C:/data/app.db").unwrap());
    assert_eq!(
        DbUrl::parse("C:\\data\\app.db").unwrap().database(),
        Some("C:\\data\\app.db")
    );
}

// ---- Secrets given as query parameters are hidden everywhere ----

const SECRET_PARAMS: [(&str, &str); 6] = [
    ("password", "qp-pass-1"),
    ("sslpassword", "qp-sslpass-2"),
    ("scram_client_key", "qp-scram-client-3"),
    ("scram_server_key", "qp-scram-server-4"),
    ("oauth_client_secret", "qp-oauth-5"),
    ("PassWord", "qp-upper-6"),
];

fn with_secret_params(mut url: DbUrl) -> DbUrl {
    for (key, value) in SECRET_PARAMS {
        url = url.with_query_param(key, value).unwrap();
    }
    url.with_query_param("sslkey", "/keys/client.key")
        .unwrap()
        .with_query_param("application_name", "bot")
        .unwrap()
}

fn assert_no_secret(text: &str) {
    for (_, value) in SECRET_PARAMS {
        assert!(!text.contains(value), "{value} in: {text}");
    }
    assert!(!text.contains("main-pw-0"), "{text}");
}

#[test]
fn secret_query_parameters_are_hidden_in_every_rendering_of_a_url() {
    let url = with_secret_params(
        DbUrl::postgres()
            .with_username("bot")
            .unwrap()
            .with_password("main-pw-0")
            .unwrap()
            .with_host("db")
            .unwrap()
            .with_database("app")
            .unwrap(),
    );
    let hidden = url.render(Secrets::Hidden);
    assert_eq!(
        hidden,
        "postgres://bot:***@db/app?password=***&sslpassword=***&scram_client_key=***\
         &scram_server_key=***&oauth_client_secret=***&PassWord=***\
         &sslkey=%2Fkeys%2Fclient.key&application_name=bot"
    );
    for text in [
        hidden,
        url.render(Secrets::Hidden),
        url.to_string(),
        format!("{url:?}"),
        format!("{url:#?}"),
        format!("{:?}", Settings::new(url.clone())),
        format!("{:?}", Database::new(Settings::new(url.clone())).unwrap()),
    ] {
        assert_no_secret(&text);
    }
    // Shown, they are all there, exactly.
    let shown = url.render(Secrets::Shown);
    assert_eq!(DbUrl::parse(&shown).unwrap(), url);
    for (_, value) in SECRET_PARAMS {
        assert!(shown.contains(value), "{shown}");
    }
}

/// A refused loopback port: the connect error and the pool's warning print the URL, hidden.
#[test]
fn secret_query_parameters_are_hidden_in_connect_errors_and_pool_warnings() {
    let url =
        with_secret_params(DbUrl::parse("postgres://postgres:main-pw-0@127.0.0.1:1/x").unwrap());
    // r2d2 connects on its own threads: capture with a process-wide subscriber (no other test
    // of this file sets one).
    let captured = common::Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let db = Database::new(
        Settings::new(url).with_pool(
            PoolConfig::default()
                .with_echo_pool(true)
                .with_pool_size(1)
                .with_max_overflow(0)
                .with_pool_timeout(Duration::from_secs(5)),
        ),
    )
    .unwrap();
    let error = db.session().map(drop).unwrap_err();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("password=***"), "{shown}");
    assert_no_secret(&shown);
    assert!(log.contains("connect failed"), "{log}");
    assert!(log.contains("password=***"), "{log}");
    assert_no_secret(&log);
}

// ---- Every knob is bounded, from the environment and from code ----

#[test]
fn absurd_environment_values_are_config_errors_naming_the_variable_and_range() {
    let cases = [
        ("DB_POOL_SIZE", "4294967295", "0 to 10000"),
        ("DB_POOL_SIZE", "99999999999", "0 to 10000"),
        ("DB_POOL_SIZE", "10001", "0 to 10000"),
        ("DB_MAX_OVERFLOW", "100000000", "0 to 10000"),
        ("DB_MAX_OVERFLOW", "9996", "from 1 to 10000"), // 5 + 9996
        ("DB_POOL_TIMEOUT_SECS", "1e19", "at most 86400"),
        ("DB_POOL_TIMEOUT_SECS", "86400.5", "at most 86400"),
        ("DB_POOL_TIMEOUT_SECS", "NaN", "seconds above 0"),
        ("DB_POOL_TIMEOUT_SECS", "inf", "seconds above 0"),
        ("DB_POOL_TIMEOUT_SECS", "-inf", "seconds above 0"),
        ("DB_POOL_TIMEOUT_SECS", "-0.5", "seconds above 0"),
        ("DB_POOL_TIMEOUT_SECS", "0", "seconds above 0"),
        ("DB_POOL_TIMEOUT_SECS", "0.0000000001", "seconds above 0"),
        ("DB_POOL_RECYCLE_SECS", "0", "-1 (never)"),
        ("DB_POOL_RECYCLE_SECS", "1e300", "-1 (never)"),
        ("DB_POOL_RECYCLE_SECS", "NaN", "-1 (never)"),
        (
            "DB_PRE_PING_BYPASS_MS",
            "18446744073709551615",
            "0 to 86400000",
        ),
        ("DB_PRE_PING_BYPASS_MS", "86400001", "0 to 86400000"),
        ("DB_PRE_PING_BYPASS_MS", "1.5", "0 to 86400000"),
        ("DB_OVERFLOW_IDLE_TIMEOUT_MS", "86400001", "0 to 86400000"),
        ("DB_OVERFLOW_IDLE_TIMEOUT_MS", "-1", "0 to 86400000"),
        (
            "DB_LEAK_DETECTION_MS",
            "18446744073709551615",
            "0 (off) to 86400000",
        ),
        ("DB_LEAK_DETECTION_MS", "soon", "0 (off) to 86400000"),
        ("DB_PORT", "0", "1 to 65535"),
    ];
    for (name, value, range) in cases {
        let (variable, message) = config_error(settings(&[(name, value)]));
        assert_eq!(variable, name, "{name}={value}: {message}");
        assert!(message.contains(range), "{name}={value}: {message}");
    }
}

#[test]
fn bounds_at_their_limits_are_accepted() {
    let s = settings(&[
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "10000"),
        ("DB_POOL_TIMEOUT_SECS", "86400"),
        ("DB_POOL_RECYCLE_SECS", "86400"),
        ("DB_PRE_PING_BYPASS_MS", "0"),
        ("DB_OVERFLOW_IDLE_TIMEOUT_MS", "0"),
        ("DB_LEAK_DETECTION_MS", "0"),
    ])
    .unwrap();
    assert_eq!((s.pool.pool_size, s.pool.max_overflow), (0, 10_000));
    assert_eq!(s.pool.pool_timeout, Duration::from_secs(86_400));
    assert_eq!(s.pool.overflow_idle_timeout, Duration::ZERO);
    assert_eq!(
        s.pool.leak_detection_threshold, None,
        "0 turns leak detection off"
    );
    let s = settings(&[("DB_POOL_SIZE", "10000"), ("DB_MAX_OVERFLOW", "0")]).unwrap();
    assert_eq!(s.pool.max_connections(), 10_000);
    assert_eq!(
        settings(&[("DB_LEAK_DETECTION_MS", "86400000")])
            .unwrap()
            .pool
            .leak_detection_threshold,
        Some(Duration::from_secs(86_400))
    );
}

#[test]
fn pool_size_zero_needs_an_overflow() {
    let (variable, message) =
        config_error(settings(&[("DB_POOL_SIZE", "0"), ("DB_MAX_OVERFLOW", "0")]));
    assert_eq!(variable, "DB_MAX_OVERFLOW");
    assert!(message.contains("from 1 to 10000"), "{message}");
    let (variable, _) = config_error(
        PoolConfig::default()
            .with_pool_size(0)
            .with_max_overflow(0)
            .validate(),
    );
    assert_eq!(variable, "PoolConfig::max_overflow");
    PoolConfig::default()
        .with_pool_size(0)
        .with_max_overflow(1)
        .validate()
        .unwrap();
}

#[test]
fn absurd_values_set_in_code_are_refused_by_validate_and_database_new() {
    let day = Duration::from_secs(86_400);
    let cases = [
        (
            PoolConfig::default().with_pool_size(u32::MAX),
            "PoolConfig::pool_size",
        ),
        (
            PoolConfig::default().with_max_overflow(100_000_000),
            "PoolConfig::max_overflow",
        ),
        (
            PoolConfig::default()
                .with_pool_size(u32::MAX)
                .with_max_overflow(u32::MAX),
            "PoolConfig::pool_size",
        ),
        (
            PoolConfig::default().with_pool_timeout(Duration::MAX),
            "PoolConfig::pool_timeout",
        ),
        (
            PoolConfig::default().with_pool_timeout(Duration::ZERO),
            "PoolConfig::pool_timeout",
        ),
        (
            PoolConfig::default().with_pool_timeout(day + Duration::from_nanos(1)),
            "PoolConfig::pool_timeout",
        ),
        (
            PoolConfig::default().with_pool_recycle(Some(Duration::MAX)),
            "PoolConfig::pool_recycle",
        ),
        (
            PoolConfig::default().with_pool_recycle(Some(Duration::ZERO)),
            "PoolConfig::pool_recycle",
        ),
        (
            PoolConfig::default().with_pre_ping_bypass(Duration::MAX),
            "PoolConfig::pre_ping_bypass",
        ),
        (
            PoolConfig::default().with_overflow_idle_timeout(Duration::MAX),
            "PoolConfig::overflow_idle_timeout",
        ),
        (
            PoolConfig::default().with_leak_detection_threshold(Some(Duration::ZERO)),
            "PoolConfig::leak_detection_threshold",
        ),
        (
            PoolConfig::default().with_leak_detection_threshold(Some(Duration::MAX)),
            "PoolConfig::leak_detection_threshold",
        ),
    ];
    for (pool, field) in cases {
        let (variable, message) = config_error(pool.validate());
        assert_eq!(variable, field, "{pool:?}: {message}");
        assert!(message.contains("allowed:"), "{message}");
        let (variable, _) = config_error(Database::new(
            Settings::new(DbUrl::sqlite(":memory:").unwrap()).with_pool(pool),
        ));
        assert_eq!(variable, field);
    }
    // Their limits pass.
    PoolConfig::default()
        .with_pool_size(0)
        .with_max_overflow(10_000)
        .with_pool_timeout(day)
        .with_pool_recycle(Some(day))
        .with_pre_ping_bypass(day)
        .with_overflow_idle_timeout(day)
        .with_leak_detection_threshold(Some(day))
        .validate()
        .unwrap();
}

// ---- libpq multi-host URLs ----

#[test]
fn multi_host_urls_parse_and_render_exactly_with_the_password_hidden() {
    let input = "postgres://u:pw-multi@h1:5432,h2:5433/db?target_session_attrs=read-write";
    let url = DbUrl::parse(input).unwrap();
    assert_eq!(
        url.hosts(),
        vec![(Some("h1"), Some(5432)), (Some("h2"), Some(5433))]
    );
    assert_eq!((url.host(), url.port()), (Some("h1"), Some(5432)));
    assert_eq!(url.render(Secrets::Shown), input);
    assert_eq!(
        url.to_string(),
        "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
    );
    assert_eq!(
        url,
        DbUrl::postgres()
            .with_username("u")
            .unwrap()
            .with_password("pw-multi")
            .unwrap()
            .with_host("h1")
            .unwrap()
            .with_port(5432)
            .unwrap()
            .with_additional_host("h2", Some(5433))
            .unwrap()
            .with_database("db")
            .unwrap()
            .with_query_param("target_session_attrs", "read-write")
            .unwrap()
    );
    // IPv6, default ports, socket directories and an empty (default) host keep their places.
    for input in [
        "postgres://[::1]:5432,db2,%2Fvar%2Frun%2Fpostgresql:6000/app",
        "postgres://,h2/db",
        "postgres://h1,h2",
        "postgres://[fe80::1%25eth0],[::1]:7/x",
    ] {
        let url = DbUrl::parse(input).unwrap();
        assert_eq!(url.render(Secrets::Shown), input);
        round_trips(&url);
    }
    let url = DbUrl::parse("postgres://[::1]:5432,db2,%2Fvar%2Frun%2Fpostgresql:6000/app").unwrap();
    assert_eq!(
        url.hosts(),
        vec![
            (Some("::1"), Some(5432)),
            (Some("db2"), None),
            (Some("/var/run/postgresql"), Some(6000))
        ]
    );
    let built = DbUrl::postgres()
        .with_additional_host("[::1]", Some(5433))
        .unwrap()
        .with_additional_host("h2", None)
        .unwrap();
    assert_eq!(round_trips(&built), "postgres://[::1]:5433,h2");
    // Each host is checked; a port of 0 anywhere is refused.
    let (variable, _) = config_error(
        DbUrl::postgres()
            .with_host("h1")
            .unwrap()
            .with_additional_host("a,b", None),
    );
    assert_eq!(variable, "URL host");
    let (variable, _) = config_error(DbUrl::postgres().with_additional_host("h2", Some(0)));
    assert_eq!(variable, "URL port");
    let (variable, message) = config_error(DbUrl::parse("postgres://u:pw-multi@h1,h2:0/db"));
    assert_eq!(variable, "DATABASE_URL");
    assert!(!message.contains("pw-multi"), "{message}");
}

/// libpq reads the rendered host list as a list: the first host refuses (port 1), the second is
/// the server.
#[test]
fn libpq_tries_the_hosts_of_a_multi_host_url_in_order() {
    let test = TestDb::new(Backend::Postgres);
    let server = common::server_url();
    let mut url = DbUrl::postgres()
        .with_host("127.0.0.1")
        .unwrap()
        .with_port(1)
        .unwrap()
        .with_additional_host("127.0.0.1", server.port())
        .unwrap()
        .with_database(test.url.database().unwrap())
        .unwrap();
    if let Some(user) = server.username() {
        url = url.with_username(user).unwrap();
    }
    Database::new(Settings::new(url)).unwrap().check().unwrap();
}

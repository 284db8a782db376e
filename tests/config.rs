//! DbUrl (building, encoding, redaction, parsing) and Settings (environment, malformed values).

use std::collections::HashMap;
use std::time::Duration;

use userbase::config::DEFAULT_SQLITE_PATH;
use userbase::{Backend, DbUrl, Error, PoolConfig, Settings};

fn seed_url() -> DbUrl {
    DbUrl::postgres()
        .with_username("testuser")
        .with_password("testpassword")
        .with_host("localhost")
        .with_database("testuser")
        .with_port(5432)
}

#[test]
fn renders_like_the_seed_with_and_without_password() {
    let url = seed_url();
    assert_eq!(
        url.render(false),
        "postgres://testuser:testpassword@localhost:5432/testuser"
    );
    assert_eq!(
        url.render(true),
        "postgres://testuser:***@localhost:5432/testuser"
    );
}

#[test]
fn display_and_debug_never_show_the_password() {
    let url = seed_url().with_password("s3cr3t-Pa55");
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
        .with_password("p@ss:w/rd?#%é")
        .with_host("db.internal")
        .with_port(6432)
        .with_database("my db")
        .with_query_param("application_name", "chat bot")
        .with_query_param("sslmode", "require");
    let rendered = url.render(false);
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
        url.render(false),
        "postgresql://u%40x:p%2Fw@127.0.0.1:5433/db%20name?sslmode=disable"
    );
    assert_eq!(
        url.render(true),
        "postgresql://u%40x:***@127.0.0.1:5433/db%20name?sslmode=disable"
    );
}

#[test]
fn parses_ipv6_hosts_and_urls_without_parts() {
    let url = DbUrl::parse("postgres://[::1]:5432/app").unwrap();
    assert_eq!(url.host(), Some("::1"));
    assert_eq!(url.render(false), "postgres://[::1]:5432/app");
    let bare = DbUrl::parse("postgres://").unwrap();
    assert_eq!(
        (bare.username(), bare.host(), bare.port(), bare.database()),
        (None, None, None, None)
    );
    assert_eq!(bare.render(false), "postgres://");
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
        assert_eq!(url.render(false), rendered, "{input}");
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
    assert_eq!(s.url, DbUrl::sqlite(DEFAULT_SQLITE_PATH));
    assert_eq!(s.url.render(false), "sqlite://userbase.sqlite3");
    assert_eq!(
        s.pool,
        PoolConfig {
            pool_size: 5,
            max_overflow: 10,
            pool_timeout: Duration::from_secs(30),
            pool_recycle: None,
            pre_ping: true,
            pre_ping_bypass: Duration::from_millis(500),
            echo: false,
            hide_parameters: false,
            echo_pool: false,
            overflow_idle_timeout: Duration::from_secs(1),
            leak_detection_threshold: None,
        }
    );
    assert_eq!(s.pool.max_connections(), 15);
}

#[test]
fn database_url_wins_over_parts() {
    let s = settings(&[("DATABASE_URL", "postgres://a@h/d"), ("DB_HOST", "ignored")]).unwrap();
    assert_eq!(s.url.render(false), "postgres://a@h/d");
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
    assert_eq!(s.url.render(false), "postgres://bot:p%20w@db:5432/chat");
    let s = settings(&[("DB_PASS", "x")]).unwrap();
    assert_eq!(
        s.url.render(true),
        "postgres://postgres:***@localhost:5432/postgres"
    );
    let s = settings(&[("DB_PORT", "6000"), ("DB_USER", "u")]).unwrap();
    assert_eq!(s.url.render(false), "postgres://u@localhost:6000/u");
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
        ("DB_OVERFLOW_IDLE_TIMEOUT_MS", "250"),
        ("DB_LEAK_DETECTION_MS", "2000"),
    ])
    .unwrap();
    assert_eq!(
        s.pool,
        PoolConfig {
            pool_size: 2,
            max_overflow: 0,
            pool_timeout: Duration::from_millis(1500),
            pool_recycle: Some(Duration::from_secs(3600)),
            pre_ping: false,
            pre_ping_bypass: Duration::from_millis(250),
            echo: true,
            hide_parameters: true,
            echo_pool: true,
            overflow_idle_timeout: Duration::from_millis(250),
            leak_detection_threshold: Some(Duration::from_secs(2)),
        }
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

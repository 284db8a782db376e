//! Secrets from files (`DB_PASS_FILE`, `DATABASE_URL_FILE`, `DATABASE_REPLICA_URLS_FILE`), and
//! libpq's own password file next to them.

mod common;

use common::env_settings as settings;

use std::path::Path;

use diesel::connection::SimpleConnection;
use userbase::{Database, DbUrl, Error, Secrets, Settings};
use userbase_testing::Cluster;

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_owned()
}

#[track_caller]
fn config_error(result: userbase::Result<Settings>) -> (String, String) {
    match result {
        Err(Error::Config {
            variable: Some(variable),
            message,
        }) => (variable, message),
        other => panic!("expected Error::Config naming a variable, got {other:?}"),
    }
}

#[test]
fn db_pass_file_gives_the_password_without_its_one_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("s3cret\n", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),
        (" spaced pass \n", " spaced pass "),
    ];
    for (content, password) in cases {
        let file = write(dir.path(), "pass", content);
        let s = settings(&[("DB_HOST", "db.internal"), ("DB_PASS_FILE", &file)]).unwrap();
        let expected = DbUrl::postgres()
            .with_host("db.internal")
            .unwrap()
            .with_port(5432)
            .unwrap()
            .with_username("postgres")
            .unwrap()
            .with_database("postgres")
            .unwrap()
            .with_password(password)
            .unwrap();
        assert_eq!(
            s.url.render(Secrets::Shown),
            expected.render(Secrets::Shown),
            "{content:?}"
        );
    }
}

#[test]
fn db_pass_file_alone_selects_postgres_parts() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "pass", "pw\n");
    let s = settings(&[("DB_PASS_FILE", &file)]).unwrap();
    assert_eq!(s.url.host(), Some("localhost"));
    assert!(s.url.has_password());
}

#[test]
fn database_url_file_and_replica_urls_file_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = write(dir.path(), "url", "postgres://app:pw@primary:5432/app\n");
    let replicas = write(
        dir.path(),
        "replicas",
        "postgres://app:pw@r1:5432/app,postgres://app:pw@r2:5432/app\n",
    );
    let s = settings(&[
        ("DATABASE_URL_FILE", &url),
        ("DATABASE_REPLICA_URLS_FILE", &replicas),
    ])
    .unwrap();
    assert_eq!(
        s.url.render(Secrets::Shown),
        "postgres://app:pw@primary:5432/app"
    );
    let hosts: Vec<_> = s.replicas.urls.iter().map(|u| u.host()).collect();
    assert_eq!(hosts, [Some("r1"), Some("r2")]);
}

#[test]
fn a_variable_and_its_file_both_set_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "secret", "postgres://a:b@h/d\n");
    for name in userbase::config::SECRET_FILE_VARIABLES {
        let file_variable = format!("{name}_FILE");
        let (variable, message) =
            config_error(settings(&[(name, "x"), (file_variable.as_str(), &file)]));
        assert_eq!(variable, file_variable);
        assert!(message.contains(name), "{message}");
        assert!(!message.contains("postgres://a:b"), "{message}");
    }
}

#[test]
fn an_unreadable_file_names_the_variable_and_the_path_never_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let (variable, message) = config_error(settings(&[("DB_PASS_FILE", &missing)]));
    assert_eq!(variable, "DB_PASS_FILE");
    assert!(message.contains(&missing), "{message}");

    // A directory cannot be read as a file.
    let directory = dir.path().to_str().unwrap().to_owned();
    let (variable, message) = config_error(settings(&[("DATABASE_URL_FILE", &directory)]));
    assert_eq!(variable, "DATABASE_URL_FILE");
    assert!(message.contains(&directory), "{message}");

    // Not UTF-8: the error says so and shows none of the bytes.
    let binary = dir.path().join("binary");
    std::fs::write(&binary, b"pa\xffss-TOPSECRET").unwrap();
    let binary = binary.to_str().unwrap().to_owned();
    let (variable, message) = config_error(settings(&[("DB_PASS_FILE", &binary)]));
    assert_eq!(variable, "DB_PASS_FILE");
    assert!(message.contains(&binary), "{message}");
    assert!(!message.contains("TOPSECRET"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
}

/// A private cluster that asks for a password (SCRAM) on loopback: `postgres` / `password`.
fn password_cluster(password: &str) -> Cluster {
    let cluster = Cluster::start().unwrap();
    let mut conn = cluster.connect().unwrap();
    conn.batch_execute(&format!("ALTER USER postgres PASSWORD '{password}'"))
        .unwrap();
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    conn.batch_execute("SELECT pg_reload_conf()").unwrap();
    cluster
}

/// Waits until a connection without a password is refused (the reload has taken effect).
fn wait_for_password_auth(url: &DbUrl) {
    use diesel::Connection;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while diesel::PgConnection::establish(&url.render(Secrets::Shown)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still accepts connections without a password"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn count_users(db: &Database) -> userbase::Result<usize> {
    Ok(db.session()?.repo().users_raw()?.len())
}

#[test]
fn db_pass_file_and_libpq_passfile_both_authenticate() {
    let cluster = password_cluster("file-secret");
    let url = cluster.url().with_database("postgres").unwrap();
    wait_for_password_auth(&url);

    // DB_PASS_FILE through Settings::from_lookup, end to end.
    let dir = tempfile::tempdir().unwrap();
    let pass = write(dir.path(), "pass", "file-secret\n");
    let port = cluster.port().to_string();
    let s = settings(&[
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", &port),
        ("DB_NAME", "postgres"),
        ("DB_PASS_FILE", &pass),
    ])
    .unwrap();
    let db = Database::new(s).unwrap();
    db.run_pending_migrations().unwrap();
    assert_eq!(count_users(&db).unwrap(), 0);

    // No password in the URL: libpq's own password file (the `passfile` parameter, as
    // `PGPASSFILE` or `~/.pgpass` would name it) supplies it.
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{port}:*:postgres:file-secret\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_passfile = url
        .clone()
        .with_query_param("passfile", pgpass.to_str().unwrap())
        .unwrap();
    let db = Database::new(Settings::new(with_passfile)).unwrap();
    assert_eq!(count_users(&db).unwrap(), 0);

    // Without it, the same URL is refused: the password did come from the file.
    let db = Database::new(Settings::new(
        url.with_query_param("passfile", "/nonexistent").unwrap(),
    ))
    .unwrap();
    match count_users(&db) {
        Err(Error::Connect { message, .. }) => {
            assert!(message.contains("password"), "{message}");
            assert!(!message.contains("file-secret"), "{message}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

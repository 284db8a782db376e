//! TLS by default to hosts that are not this machine: the host classification, `DB_SSLMODE` and
//! `DB_SSLROOTCERT`, and real connections to private clusters with and without TLS, using
//! certificates made here (rcgen).

mod common;

use common::env_settings as settings;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{eventually, Captured};
use diesel::sql_types::Bool;
use diesel::{QueryableByName, RunQueryDsl};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use userbase::{AnyConnection, Database, DbUrl, Error, Settings};
use userbase_testing::Cluster;

#[test]
fn host_classification_and_default_sslmode() {
    // (URL, is this machine, sslmode the driver gets)
    let cases: &[(&str, bool, Option<&str>)] = &[
        ("postgres://a@127.0.0.1/d", true, None),
        ("postgres://a@127.8.9.10:6432/d", true, None),
        ("postgres://a@[::1]/d", true, None),
        ("postgres://a@[::1%25lo]:5433/d", true, None),
        ("postgres://a@[::ffff:127.0.0.1]/d", true, None),
        ("postgres://a@localhost/d", true, None),
        ("postgres://a@LocalHost:5432/d", true, None),
        ("postgres:///d", true, None),
        ("postgres:///d?host=/var/run/postgresql", true, None),
        ("postgres://a@%2Fvar%2Frun%2Fpostgresql/d", true, None),
        ("postgres:///d?host=%40abstract", true, None),
        ("postgres://a@localhost,127.0.0.1:5433/d", true, None),
        ("postgres://a@db.internal/d?hostaddr=127.0.0.1", true, None),
        ("postgres://a@db.internal/d", false, Some("require")),
        ("postgres://a@10.0.0.5/d", false, Some("require")),
        ("postgres://a@[2001:db8::1]/d", false, Some("require")),
        ("postgres://a@[::2]/d", false, Some("require")),
        // A name that happens to resolve to loopback is still a name.
        (
            "postgres://a@localhost.example.com/d",
            false,
            Some("require"),
        ),
        (
            "postgres://a@localhost,db.internal/d",
            false,
            Some("require"),
        ),
        ("postgres://a@127.0.0.1,10.0.0.5/d", false, Some("require")),
        ("postgres://a@db1:5432,db2:5433/d", false, Some("require")),
        (
            "postgres:///d?host=localhost,db.internal",
            false,
            Some("require"),
        ),
        (
            "postgres://a@localhost/d?hostaddr=10.0.0.5",
            false,
            Some("require"),
        ),
        // What the URL says wins.
        (
            "postgres://a@db.internal/d?sslmode=disable",
            false,
            Some("disable"),
        ),
        (
            "postgres://a@db.internal/d?sslmode=verify-ca",
            false,
            Some("verify-ca"),
        ),
        (
            "postgres://a@localhost/d?sslmode=require",
            true,
            Some("require"),
        ),
        // A CA file asks for verification, remote or not.
        (
            "postgres://a@db.internal/d?sslrootcert=/ca.pem",
            false,
            Some("verify-full"),
        ),
        (
            "postgres://a@127.0.0.1/d?sslrootcert=/ca.pem",
            true,
            Some("verify-full"),
        ),
        (
            "postgres://a@db.internal/d?sslrootcert=/ca.pem&sslmode=require",
            false,
            Some("require"),
        ),
        ("sqlite://file.db", true, None),
    ];
    for (input, local, mode) in cases {
        let url = DbUrl::parse(input).unwrap();
        assert_eq!(url.is_local(), *local, "{input}");
        assert_eq!(url.effective_sslmode().as_deref(), *mode, "{input}");
    }
}

#[test]
fn db_sslmode_and_db_sslrootcert_from_the_environment() {
    let s = settings(&[
        ("DATABASE_URL", "postgres://a@db.internal/d"),
        ("DB_SSLMODE", "verify-ca"),
        ("DATABASE_REPLICA_URLS", "postgres://a@r1/d"),
    ])
    .unwrap();
    assert_eq!(s.url.query_value("sslmode"), Some("verify-ca"));
    assert_eq!(s.replicas.urls[0].query_value("sslmode"), Some("verify-ca"));

    // The URL's own sslmode wins.
    let s = settings(&[
        (
            "DATABASE_URL",
            "postgres://a@db.internal/d?sslmode=verify-full",
        ),
        ("DB_SSLMODE", "disable"),
    ])
    .unwrap();
    assert_eq!(s.url.effective_sslmode().as_deref(), Some("verify-full"));

    let s = settings(&[
        ("DB_HOST", "db.internal"),
        ("DB_SSLROOTCERT", "/etc/ca.pem"),
    ])
    .unwrap();
    assert_eq!(s.url.query_value("sslrootcert"), Some("/etc/ca.pem"));
    assert_eq!(s.url.effective_sslmode().as_deref(), Some("verify-full"));

    match settings(&[("DB_HOST", "db"), ("DB_SSLMODE", "always")]) {
        Err(Error::Config {
            variable: Some(v),
            message,
        }) => {
            assert_eq!(v, "DB_SSLMODE");
            assert!(message.contains("verify-full"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // SQLite has no TLS: the variables do not apply.
    let s = settings(&[("DB_SSLMODE", "require")]).unwrap();
    assert!(s.url.query().is_empty());
}

/// A CA named `ca_name` and a server certificate signed by it for `names`, as PEM: (CA, server
/// cert, server key).
fn certificates(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    server.distinguished_name.push(DnType::CommonName, names[0]);
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

/// Writes `content` to `path`, mode 0600, owned like `owner_of` (the server's user).
fn write_private(path: &Path, content: &str, owner_of: &Path) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(owner_of).unwrap();
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// A name other than `localhost` that /etc/hosts maps to a loopback address, if any.
fn loopback_name() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let address = words.next()?;
        if !(address.starts_with("127.") || address == "::1") {
            return None;
        }
        words
            .find(|w| !w.to_ascii_lowercase().starts_with("localhost") && !w.contains("ip6"))
            .map(str::to_owned)
    })
}

/// A private cluster serving TLS with a certificate for `names` signed by the returned CA.
fn tls_cluster(names: &[&str]) -> (Cluster, String) {
    let cluster = Cluster::start().unwrap();
    let (ca, cert, key) = certificates("userbase test CA", names);
    let data = cluster.data_dir().to_owned();
    write_private(&data.join("server.crt"), &cert, &data);
    write_private(&data.join("server.key"), &key, &data);
    cluster.set("ssl_cert_file", "'server.crt'").unwrap();
    cluster.set("ssl_key_file", "'server.key'").unwrap();
    cluster.set("ssl", "on").unwrap();
    let require = cluster
        .url()
        .with_query_param("sslmode", "require")
        .unwrap();
    let up = eventually(Duration::from_secs(30), || {
        Database::new(Settings::new(require.clone()))
            .and_then(|db| db.session().map(drop))
            .is_ok()
    });
    assert!(up, "the cluster does not serve TLS: {}", cluster.log());
    (cluster, ca)
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Whether the session's connection is encrypted (`pg_stat_ssl`).
fn encrypted(db: &Database) -> userbase::Result<bool> {
    let mut session = db.session()?;
    let AnyConnection::Pg(pg) = session.connection() else {
        panic!("expected PostgreSQL")
    };
    Ok(
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result::<Ssl>(pg)?
            .ssl,
    )
}

#[track_caller]
fn assert_certificate_refused(outcome: userbase::Result<bool>) {
    match outcome {
        Err(Error::Connect { message, .. }) => {
            assert!(message.contains("certificate"), "{message}");
        }
        other => panic!("expected Error::Connect about the certificate, got {other:?}"),
    }
}

#[test]
fn verify_full_connects_with_the_right_ca_and_refuses_a_wrong_ca_or_name() {
    let (cluster, ca) = tls_cluster(&["localhost", "127.0.0.1"]);
    // Another CA, and an impostor with the very name of the right one (only its key differs).
    let (wrong_ca, _, _) = certificates("another CA", &["localhost"]);
    let (impostor_ca, _, _) = certificates("userbase test CA", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let wrong_path = dir.path().join("wrong.pem");
    let impostor_path = dir.path().join("impostor.pem");
    std::fs::write(&ca_path, ca).unwrap();
    std::fs::write(&wrong_path, wrong_ca).unwrap();
    std::fs::write(&impostor_path, impostor_ca).unwrap();
    let ca_path = ca_path.to_str().unwrap();
    let wrong_path = wrong_path.to_str().unwrap();
    let impostor_path = impostor_path.to_str().unwrap();
    let open = |url: DbUrl| Database::new(Settings::new(url)).unwrap();

    // The right CA, verify-full: connected, encrypted.
    let verified = cluster
        .url()
        .with_query_param("sslmode", "verify-full")
        .unwrap()
        .with_query_param("sslrootcert", ca_path)
        .unwrap();
    assert!(encrypted(&open(verified)).unwrap());
    // sslrootcert alone means verify-full: it connects with the right CA ...
    let pinned = cluster
        .url()
        .with_query_param("sslrootcert", ca_path)
        .unwrap();
    assert!(encrypted(&open(pinned)).unwrap());
    // ... and refuses a wrong one (with libpq's default `prefer` it would not check).
    let pinned_wrong = cluster
        .url()
        .with_query_param("sslrootcert", wrong_path)
        .unwrap();
    assert_certificate_refused(encrypted(&open(pinned_wrong)));

    // A wrong CA under verify-full.
    let wrong = cluster
        .url()
        .with_query_param("sslmode", "verify-full")
        .unwrap()
        .with_query_param("sslrootcert", wrong_path)
        .unwrap();
    assert_certificate_refused(encrypted(&open(wrong)));
    let impostor = cluster
        .url()
        .with_query_param("sslmode", "verify-ca")
        .unwrap()
        .with_query_param("sslrootcert", impostor_path)
        .unwrap();
    assert_certificate_refused(encrypted(&open(impostor)));

    // A host name the certificate does not name (the address stays loopback).
    let mismatch = DbUrl::postgres()
        .with_username("postgres")
        .unwrap()
        .with_host("db.test")
        .unwrap()
        .with_port(cluster.port())
        .unwrap()
        .with_database("postgres")
        .unwrap()
        .with_query_param("hostaddr", "127.0.0.1")
        .unwrap()
        .with_query_param("sslmode", "verify-full")
        .unwrap()
        .with_query_param("sslrootcert", ca_path)
        .unwrap();
    assert_certificate_refused(encrypted(&open(mismatch)));

    // With no sslmode to a loopback host: libpq's default (`prefer`) still encrypts here.
    assert!(encrypted(&open(cluster.url())).unwrap());
    // To a name that is not `localhost` (but resolves to loopback): `require` by default.
    if let Some(name) = loopback_name() {
        let remote = cluster.url().with_host(name).unwrap();
        assert_eq!(remote.effective_sslmode().as_deref(), Some("require"));
        assert!(encrypted(&open(remote)).unwrap());
    }
}

#[test]
fn a_server_without_tls_is_refused_under_require_and_by_default_for_a_remote_name() {
    let cluster = Cluster::start().unwrap();
    let open = |url: DbUrl| Database::new(Settings::new(url)).unwrap();
    let refused = |outcome: userbase::Result<bool>| match outcome {
        Err(Error::Connect { message, .. }) => {
            assert!(message.contains("SSL"), "{message}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    };
    refused(encrypted(&open(
        cluster
            .url()
            .with_query_param("sslmode", "require")
            .unwrap(),
    )));
    // Loopback with no sslmode: libpq's default, unencrypted.
    assert!(!encrypted(&open(cluster.url())).unwrap());

    let Some(name) = loopback_name() else {
        eprintln!("no name other than localhost maps to loopback in /etc/hosts: default not tested on a connection");
        return;
    };
    // No sslmode to a host that is not this machine: refused rather than sent in clear.
    let remote = cluster.url().with_host(name).unwrap();
    refused(encrypted(&open(remote.clone())));

    // An explicit weaker sslmode is honoured, and logged once at warn.
    let weak = remote.with_query_param("sslmode", "disable").unwrap();
    let logs = Captured::run(tracing::Level::WARN, || {
        for _ in 0..3 {
            assert!(!encrypted(&open(weak.clone())).unwrap());
        }
    });
    assert_eq!(logs.matches("sslmode disable").count(), 1, "{logs}");
}

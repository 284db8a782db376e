//! The metrics and spans in OpenTelemetry's database-client conventions, read back through
//! `metrics-util`'s debugging recorder, installed per test thread (`with_local_recorder`) so the
//! tests of this binary do not see each other's figures.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use userbase::bulk::{ExportError, ExportOptions, ImportOptions};
use userbase::config::ReplicaConfig;
use userbase::models::{NewLocation, NewUser, UserChanges, UserLocation};
use userbase::{Backend, Database, Error, PoolConfig, RetryPolicy, Settings, UpsertOptions};
use userbase_testing::PrimaryStandby;

use common::{eventually, server_connections, unique_name, Captured, TestDb};

/// The password given to every PostgreSQL URL of these tests (the test server trusts local
/// connections, so libpq never sends it); no label may contain it.
const PASSWORD: &str = "pw-Zq8#metrics-secret";

/// An output that refuses every write.
struct Broken;

impl std::io::Write for Broken {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk gone"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("disk gone"))
    }
}

/// One metric as the recorder holds it: kind, name, labels, value.
#[derive(Debug)]
struct Metric {
    kind: MetricKind,
    name: String,
    labels: BTreeMap<String, String>,
    value: DebugValue,
}

/// Everything the recorder holds (histograms drain: each sample is read once).
fn read(snapshotter: &Snapshotter) -> Vec<Metric> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            Metric {
                kind,
                name: key.name().to_owned(),
                labels: key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
                value,
            }
        })
        .collect()
}

/// Whether `metric` is `name` with at least the `labels` given.
fn matches(metric: &Metric, name: &str, labels: &[(&str, &str)]) -> bool {
    metric.name == name
        && labels
            .iter()
            .all(|(k, v)| metric.labels.get(*k).map(String::as_str) == Some(*v))
}

/// The samples of histogram `name` whose labels are exactly `labels`.
fn samples(metrics: &[Metric], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    metrics
        .iter()
        .filter(|m| matches(m, name, labels))
        // Without an `error.type` asked for, only the series without one.
        .filter(|m| {
            labels.iter().any(|(k, _)| *k == "error.type") || !m.labels.contains_key("error.type")
        })
        .flat_map(|m| match &m.value {
            DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The value of gauge `name` with `labels` (`None`: not registered).
fn gauge(metrics: &[Metric], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .iter()
        .find(|m| m.kind == MetricKind::Gauge && matches(m, name, labels))
        .map(|m| match &m.value {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        })
}

/// The value of counter `name` with `labels` (0 when not registered).
fn counter(metrics: &[Metric], name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .iter()
        .filter(|m| m.kind == MetricKind::Counter && matches(m, name, labels))
        .map(|m| match &m.value {
            DebugValue::Counter(v) => *v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// The URL of `test`'s database with [`PASSWORD`] set (PostgreSQL) and the settings' pool.
fn settings(test: &TestDb, pool: PoolConfig) -> Settings {
    let url = match test.backend {
        Backend::Postgres => test.url.clone().with_password(PASSWORD).unwrap(),
        _ => test.url.clone(),
    };
    Settings::new(url).with_pool(pool)
}

fn system(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "postgresql",
        _ => "sqlite",
    }
}

/// Asserts that no label of `metrics` holds the password, a bind value or SQL text.
fn assert_clean(metrics: &[Metric], binds: &[&str]) {
    for metric in metrics {
        for (key, value) in &metric.labels {
            assert!(!value.contains(PASSWORD), "{} {key}={value}", metric.name);
            for bind in binds {
                assert!(!value.contains(bind), "{} {key}={value}", metric.name);
            }
            for sql in ["SELECT", "INSERT", "UPDATE", "FROM", "binds"] {
                assert!(!value.contains(sql), "{} {key}={value}", metric.name);
            }
        }
    }
}

both_backends! {
    fn one_sample_per_repo_call(backend: Backend) {
        let test = TestDb::new(backend);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let db = Database::new(settings(&test, PoolConfig::default())).unwrap();
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            assert!(matches!(repo.user(1), Err(Error::NotFound)));
            repo.insert_user(&NewUser::new(1, "Ada Quietname")).unwrap();
            for _ in 0..3 {
                assert_eq!(repo.user(1).unwrap().full_name, "Ada Quietname");
            }
            assert!(repo.find_user(2).unwrap().is_none());
            // A stream is one operation, measured until it is dropped.
            assert_eq!(repo.users_iter().unwrap().count(), 1);
            // upsert_user runs upsert_user_with: one operation, the one called.
            repo.upsert_user(&NewUser::new(1, "Ada Quietname").username("ada-seen"))
                .unwrap();
            assert!(matches!(
                repo.insert_user(&NewUser::new(1, "Ada Twice")),
                Err(Error::UniqueViolation { .. })
            ));
            // An error type of the crate's own other than `Error`: its kind.
            assert!(matches!(
                repo.export_users(Broken, ExportOptions::default()),
                Err(ExportError::Write(_))
            ));
            drop(session);
            // In a transaction: each call is one operation too.
            db.transaction(|repo| {
                repo.user(1)?;
                repo.users_by_location(7)
            })
            .unwrap();
        });
        let metrics = read(&snapshotter);
        let system = system(backend);
        let op = |name: &'static str| {
            vec![("db.system.name", system), ("db.operation.name", name)]
        };
        let duration = "db.client.operation.duration";
        assert_eq!(samples(&metrics, duration, &op("user")).len(), 4);
        let mut not_found = op("user");
        not_found.push(("error.type", "NotFound"));
        assert_eq!(samples(&metrics, duration, &not_found).len(), 1);
        assert_eq!(samples(&metrics, duration, &op("find_user")).len(), 1);
        assert_eq!(samples(&metrics, duration, &op("users_iter")).len(), 1);
        assert_eq!(samples(&metrics, duration, &op("upsert_user")).len(), 1);
        assert_eq!(samples(&metrics, duration, &op("upsert_user_with")).len(), 0);
        assert_eq!(samples(&metrics, duration, &op("users_by_location")).len(), 1);
        assert_eq!(samples(&metrics, duration, &op("insert_user")).len(), 1);
        let mut unique = op("insert_user");
        unique.push(("error.type", "UniqueViolation"));
        assert_eq!(samples(&metrics, duration, &unique).len(), 1);
        let mut write = op("export_users");
        write.push(("error.type", "ExportWrite"));
        assert_eq!(samples(&metrics, duration, &write).len(), 1);
        let every: usize = metrics
            .iter()
            .filter(|m| m.name == duration)
            .map(|m| match &m.value {
                DebugValue::Histogram(v) => v.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(every, 12, "one sample per call, no other: {metrics:#?}");
        // Seconds: a call on this machine takes more than a nanosecond and less than a minute.
        for sample in samples(&metrics, duration, &op("user")) {
            assert!(sample > 1e-9 && sample < 60.0, "{sample}");
        }
        // The conventions' attributes.
        let user = metrics
            .iter()
            .find(|m| matches(m, duration, &op("user")))
            .unwrap();
        match backend {
            Backend::Postgres => {
                assert_eq!(user.labels["server.address"], test.url.host().unwrap());
                assert_eq!(user.labels["server.port"], test.url.port().unwrap().to_string());
                assert_eq!(user.labels["db.namespace"], test.url.database().unwrap());
            }
            _ => {
                assert!(!user.labels.contains_key("server.address"));
                let file = test.url.database().unwrap().rsplit('/').next().unwrap();
                assert_eq!(user.labels["db.namespace"], file);
            }
        }
        assert_clean(&metrics, &["Ada", "ada-seen"]);
    }

    fn operation_metrics_off_times_no_call_and_keeps_the_rest(backend: Backend) {
        let test = TestDb::new(backend);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let pool = PoolConfig::default().with_operation_metrics(false);
        let db = metrics::with_local_recorder(&recorder, || {
            let db = Database::new(settings(&test, pool)).unwrap();
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            repo.insert_user(&NewUser::new(5, "Lin Untimed")).unwrap();
            assert_eq!(repo.user(5).unwrap().full_name, "Lin Untimed");
            assert!(matches!(repo.user(6), Err(Error::NotFound)));
            assert_eq!(repo.users_iter().unwrap().count(), 1);
            drop(session);
            db.transaction_with_retry(RetryPolicy::default(), |repo| repo.user(5))
                .unwrap();
            db
        });
        let metrics = read(&snapshotter);
        assert!(
            !metrics
                .iter()
                .any(|m| m.name == "db.client.operation.duration"),
            "no call timed: {metrics:#?}"
        );
        // The pool's instruments and the retry counters stay.
        assert_eq!(
            gauge(&metrics, "db.client.connection.count", &[("db.client.connection.state", "idle")]),
            Some(1.0)
        );
        assert_eq!(samples(&metrics, "db.client.connection.wait_time", &[]).len(), 2);
        assert_eq!(counter(&metrics, "userbase.transaction.attempts", &[]), 1);
        // So do the spans, when a subscriber wants them.
        let closed = spans_closed(|| {
            db.session().unwrap().repo().user(5).unwrap();
        });
        assert!(
            closed
                .lines()
                .any(|l| l.contains("db.operation.name=\"user\"") && l.contains(" close ")),
            "{closed}"
        );
    }

    fn every_public_method_reports_its_operation(backend: Backend) {
        let test = TestDb::new(backend);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let db = Database::new(settings(&test, PoolConfig::default())).unwrap();
            let mut session = db.session().unwrap();
            let mut r = session.repo();
            r.insert_user(&NewUser::new(1, "One")).unwrap();
            r.insert_user(&NewUser::new(2, "Two")).unwrap();
            r.user(1).unwrap();
            r.find_user(1).unwrap();
            r.users().unwrap();
            r.upsert_user(&NewUser::new(1, "One")).unwrap();
            r.upsert_user_with(&NewUser::new(1, "One"), UpsertOptions::default().with_referrer(true))
                .unwrap();
            let changes = UserChanges { full_name: Some("Uno"), ..UserChanges::default() };
            r.update_user(1, &changes).unwrap();
            r.deactivate_user(1).unwrap();
            r.reactivate_user(1).unwrap();
            r.set_referrer(2, Some(1)).unwrap();
            r.referrals(1).unwrap();
            r.users_with_referrer_names().unwrap();
            r.referral_counts().unwrap();
            let a = r.insert_location(&NewLocation::new("A", "1 Road")).unwrap();
            let b = r.insert_location(&NewLocation::new("B", "2 Road")).unwrap();
            r.location(a.location_id).unwrap();
            r.find_location_by_name("A").unwrap();
            r.locations().unwrap();
            r.rename_location(a.location_id, "A2").unwrap();
            r.link(1, a.location_id).unwrap();
            r.insert_user_location(&UserLocation { location_id: a.location_id, user_id: 2 })
                .unwrap();
            r.user_locations().unwrap();
            r.unlink(2, a.location_id).unwrap();
            r.replace_user_locations(1, &[a.location_id]).unwrap();
            r.users_with_locations().unwrap();
            r.users_by_location(a.location_id).unwrap();
            r.user_locations_with_username(1).unwrap();
            r.count_user_locations(1).unwrap();
            r.location_counts_by_user().unwrap();
            r.location_counts_by_user_named().unwrap();
            r.users_raw().unwrap();
            let _: Vec<UserLocation> = r.load_sql("SELECT * FROM userlocations").unwrap();
            r.users_page(None, 10).unwrap();
            r.locations_page(None, 10).unwrap();
            r.users_with_locations_page(None, 10).unwrap();
            assert_eq!(r.users_iter().unwrap().count(), 2);
            r.import_users(&[NewUser::new(3, "Three")]).unwrap();
            r.copy_users(&[NewUser::new(4, "Four")]).unwrap();
            r.import_locations(&[NewLocation::new("C", "3 Road")]).unwrap();
            r.import_links(&[UserLocation { location_id: b.location_id, user_id: 3 }]).unwrap();
            r.import_users_from([Ok::<_, Error>(NewUser::new(5, "Five"))], ImportOptions::default())
                .unwrap();
            r.import_locations_from(
                [Ok::<_, Error>(NewLocation::new("D", "4 Road"))],
                ImportOptions::default(),
            )
            .unwrap();
            r.import_links_from(
                [Ok::<_, Error>(UserLocation { location_id: a.location_id, user_id: 5 })],
                ImportOptions::default(),
            )
            .unwrap();
            let mut out = Vec::new();
            r.export_users(&mut out, ExportOptions::default()).unwrap();
            r.export_locations(&mut out, ExportOptions::default()).unwrap();
            r.export_links(&mut out, ExportOptions::default()).unwrap();
            r.each_user(|_| Ok::<(), Error>(())).unwrap();
            r.each_location(|_| Ok::<(), Error>(())).unwrap();
            r.each_link(|_| Ok::<(), Error>(())).unwrap();
            r.unlink(3, b.location_id).unwrap();
            r.delete_location(b.location_id).unwrap();
            r.delete_user(4).unwrap();
            // Frames report nothing of their own: only the calls made in them.
            r.transaction(|r| r.user(1).map(drop)).unwrap();
            r.with_statement_timeout(Duration::from_secs(5), |r| r.user(1).map(drop))
                .unwrap();
        });
        let metrics = read(&snapshotter);
        let mut calls: BTreeMap<String, usize> = BTreeMap::new();
        for m in metrics.iter().filter(|m| m.name == "db.client.operation.duration") {
            assert!(!m.labels.contains_key("error.type"), "{m:?}");
            if let DebugValue::Histogram(values) = &m.value {
                *calls.entry(m.labels["db.operation.name"].clone()).or_default() += values.len();
            }
        }
        let twice = ["insert_user", "insert_location", "unlink"];
        let thrice = ["user"];
        let expected: BTreeMap<String, usize> = [
            "user", "find_user", "users", "insert_user", "delete_user", "upsert_user",
            "upsert_user_with", "update_user", "deactivate_user", "reactivate_user",
            "set_referrer", "referrals", "users_with_referrer_names", "referral_counts",
            "location", "find_location_by_name", "locations", "insert_location",
            "rename_location", "delete_location", "user_locations", "link",
            "insert_user_location", "unlink", "replace_user_locations", "users_with_locations",
            "users_by_location", "user_locations_with_username", "count_user_locations",
            "location_counts_by_user", "location_counts_by_user_named", "users_raw", "load_sql",
            "users_page", "locations_page", "users_with_locations_page", "users_iter",
            "import_users", "copy_users", "import_locations", "import_links",
            "import_users_from", "import_locations_from", "import_links_from", "export_users",
            "export_locations", "export_links", "each_user", "each_location", "each_link",
        ]
        .into_iter()
        .map(|op| {
            let n = if thrice.contains(&op) { 3 } else if twice.contains(&op) { 2 } else { 1 };
            (op.to_owned(), n)
        })
        .collect();
        assert_eq!(calls, expected);
    }

    fn pool_names_hold_no_password(backend: Backend) {
        let test = TestDb::new(backend);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (default_name, named) = metrics::with_local_recorder(&recorder, || {
            let db = Database::new(settings(&test, PoolConfig::default())).unwrap();
            db.session().unwrap().repo().users().unwrap();
            let named = Database::new(settings(
                &test,
                PoolConfig::default().with_pool_name("orders-db"),
            ))
            .unwrap();
            named.session().unwrap().repo().users().unwrap();
            let default_name = match backend {
                Backend::Postgres => format!(
                    "{}:{}/{}",
                    test.url.host().unwrap(),
                    test.url.port().unwrap(),
                    test.url.database().unwrap()
                ),
                _ => test
                    .url
                    .database()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
            };
            (default_name, named)
        });
        drop(named);
        let metrics = read(&snapshotter);
        let pool = "db.client.connection.pool.name";
        let mut names: Vec<&str> = metrics
            .iter()
            .filter_map(|m| m.labels.get(pool).map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut expected = vec![default_name.as_str(), "orders-db"];
        expected.sort_unstable();
        assert_eq!(names, expected);
        assert_clean(&metrics, &[]);
    }

    fn retries_count_attempts_and_errors(backend: Backend) {
        let test = TestDb::new(backend);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runs = AtomicU32::new(0);
        metrics::with_local_recorder(&recorder, || {
            let db = Database::new(settings(&test, PoolConfig::default().with_pool_name("retrying")))
                .unwrap();
            let policy = RetryPolicy::default()
                .with_backoff(Duration::from_millis(1), Duration::from_millis(2));
            let user = db
                .transaction_with_retry(policy, |repo| {
                    match runs.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(Error::SerializationFailure { message: "first".into() }),
                        1 => Err(Error::Deadlock { message: "second".into() }),
                        _ => repo.insert_user(&NewUser::new(5, "Retried")),
                    }
                })
                .unwrap();
            assert_eq!(user.user_id, 5);
            // Not retryable: one attempt, no retry.
            let refused = db.transaction_with_retry(policy, |_| -> userbase::Result<()> {
                Err(Error::NotFound)
            });
            assert!(matches!(refused, Err(Error::NotFound)));
        });
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let metrics = read(&snapshotter);
        let pool = ("db.client.connection.pool.name", "retrying");
        assert_eq!(counter(&metrics, "userbase.transaction.attempts", &[pool]), 4);
        assert_eq!(counter(&metrics, "userbase.transaction.retries", &[pool]), 2);
        assert_eq!(
            counter(
                &metrics,
                "userbase.transaction.retries",
                &[pool, ("error.type", "SerializationFailure")]
            ),
            1
        );
        assert_eq!(
            counter(&metrics, "userbase.transaction.retries", &[pool, ("error.type", "Deadlock")]),
            1
        );
    }

    fn spans_follow_the_conventions(backend: Backend) {
        let test = TestDb::new(backend);
        let db = Database::new(settings(
            &test,
            PoolConfig::default().with_echo(true).with_hide_parameters(true),
        ))
        .unwrap();
        let log = Captured::run(tracing::Level::INFO, || {
            let caller = tracing::info_span!("handler", request = 42);
            let _entered = caller.enter();
            let mut session = db.session().unwrap();
            let mut repo = session.repo();
            repo.insert_user(&NewUser::new(3, "Grace Spanner")).unwrap();
            assert!(matches!(repo.user(4), Err(Error::NotFound)));
        });
        // The statement log lines name the Repo method's span, nested in the caller's.
        let insert = log
            .lines()
            .find(|l| l.contains("INSERT INTO"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(insert.contains("handler{request=42}:db.operation{"), "{insert}");
        assert!(insert.contains("db.operation.name=\"insert_user\""), "{insert}");
        assert!(insert.contains(&format!("db.system.name=\"{}\"", system(backend))), "{insert}");
        if backend == Backend::Postgres {
            assert!(insert.contains("server.address="), "{insert}");
            assert!(insert.contains("server.port="), "{insert}");
        }
        assert!(!log.contains("Grace Spanner"), "hide_parameters: {log}");
        assert!(!log.contains(PASSWORD), "{log}");
        // The span's own fields, as it closes: `db.query.text` with `echo` only, binds hidden.
        let closed = spans_closed(|| {
            let mut session = db.session().unwrap();
            assert!(matches!(session.repo().user(4), Err(Error::NotFound)));
        });
        let span = closed
            .lines()
            .find(|l| l.contains("db.operation.name=\"user\"") && l.contains(" close "))
            .unwrap_or_else(|| panic!("{closed}"));
        assert!(span.contains("db.query.text="), "{span}");
        assert!(span.contains("-- binds: [hidden]"), "{span}");
        assert!(span.contains("error.type=\"NotFound\""), "{span}");
        let quiet = Database::new(settings(&test, PoolConfig::default())).unwrap();
        let closed = spans_closed(|| {
            quiet.session().unwrap().repo().user(3).unwrap();
        });
        let span = closed
            .lines()
            .find(|l| l.contains("db.operation.name=\"user\"") && l.contains(" close "))
            .unwrap_or_else(|| panic!("{closed}"));
        assert!(!span.contains("db.query.text"), "no echo, no SQL text: {span}");
        assert!(!span.contains("error.type"), "{span}");
    }
}

/// What a `tracing` subscriber prints as the spans of `work` close (their fields included).
fn spans_closed(work: impl FnOnce()) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, work);
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

/// The pool gauges after a scripted sequence equal what the threads and the server count: hold
/// 7, return 4, exhaust the pool until one `PoolTimeout`, then a burst of 16 waiters.
fn pool_gauges(backend: Backend) {
    let test = TestDb::new(backend);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let app = unique_name("metrics");
    let url = match backend {
        Backend::Postgres => test
            .url
            .clone()
            .with_password(PASSWORD)
            .unwrap()
            .with_query_param("application_name", &app)
            .unwrap(),
        _ => test.url.clone(),
    };
    let pool = PoolConfig::default()
        .with_pool_size(5)
        .with_max_overflow(5)
        .with_pool_timeout(Duration::from_secs(2))
        .with_overflow_idle_timeout(Duration::from_secs(3600))
        .with_pool_name("gauged");
    let db = metrics::with_local_recorder(&recorder, || {
        Database::new(Settings::new(url).with_pool(pool)).unwrap()
    });
    let name = ("db.client.connection.pool.name", "gauged");
    let figures = || {
        let metrics = read(&snapshotter);
        let g = |metric: &str, extra: Option<(&str, &str)>| {
            let mut labels = vec![name];
            labels.extend(extra);
            gauge(&metrics, metric, &labels).unwrap_or(-1.0)
        };
        (
            g(
                "db.client.connection.count",
                Some(("db.client.connection.state", "used")),
            ),
            g(
                "db.client.connection.count",
                Some(("db.client.connection.state", "idle")),
            ),
            g("db.client.connection.pending_requests", None),
            counter(&metrics, "db.client.connection.timeouts", &[name]),
            metrics,
        )
    };
    let server = |open: i64| {
        if backend == Backend::Postgres {
            assert!(
                eventually(Duration::from_secs(10), || server_connections(&app) == open),
                "pg_stat_activity: {} connections, not {open}",
                server_connections(&app)
            );
        }
    };
    let mut checkouts = 0_usize;
    let mut returns = 0_usize;
    let mut waits = Vec::new();
    let mut uses = Vec::new();
    let mut take = |metrics: &[Metric]| {
        waits.extend(samples(metrics, "db.client.connection.wait_time", &[name]));
        uses.extend(samples(metrics, "db.client.connection.use_time", &[name]));
    };

    let limits = read(&snapshotter);
    assert_eq!(
        gauge(&limits, "db.client.connection.max", &[name]),
        Some(10.0)
    );
    assert_eq!(
        gauge(&limits, "db.client.connection.idle.max", &[name]),
        Some(5.0)
    );
    assert_eq!(
        gauge(&limits, "db.client.connection.idle.min", &[name]),
        Some(0.0)
    );

    // Hold 7.
    let mut held: Vec<_> = (0..7).map(|_| db.session().unwrap()).collect();
    checkouts += 7;
    // Each read drains the recorder (counters and histograms restart from zero, gauges until
    // set again): timeouts and samples are summed over the reads.
    let mut timeouts_seen = 0;
    let (used, idle, pending, timeouts, metrics) = figures();
    take(&metrics);
    timeouts_seen += timeouts;
    assert_eq!((used, idle, pending, timeouts_seen), (7.0, 0.0, 0.0, 0));
    server(7);

    // Return 4.
    held.truncate(3);
    returns += 4;
    let (used, idle, pending, timeouts, metrics) = figures();
    take(&metrics);
    timeouts_seen += timeouts;
    assert_eq!((used, idle, pending), (3.0, 4.0, 0.0));
    server(7);

    // Exhaust the pool: 10 held, the 11th times out.
    while held.len() < 10 {
        held.push(db.session().unwrap());
        checkouts += 1;
    }
    assert!(matches!(db.session(), Err(Error::PoolTimeout { .. })));
    let (used, idle, pending, timeouts, metrics) = figures();
    take(&metrics);
    timeouts_seen += timeouts;
    assert_eq!((used, idle, pending, timeouts_seen), (10.0, 0.0, 0.0, 1));
    server(10);

    // A burst of 16 waiters while the pool is exhausted: they block until connections come
    // back, each gets one, returns it, and the next waiter takes it.
    let served = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(17));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (db, served, start) = (db.clone(), served.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let session = db.session().expect("a connection before the timeout");
                served.fetch_add(1, Ordering::SeqCst);
                drop(session);
            })
        })
        .collect();
    start.wait();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, _, pending, timeouts, metrics) = figures();
            take(&metrics);
            timeouts_seen += timeouts;
            pending == 16.0
        }),
        "16 callers blocked in a checkout"
    );
    assert_eq!(served.load(Ordering::SeqCst), 0);
    held.clear();
    returns += 10;
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(served.load(Ordering::SeqCst), 16);
    checkouts += 16;
    returns += 16;
    let (used, idle, pending, timeouts, metrics) = figures();
    take(&metrics);
    timeouts_seen += timeouts;
    assert_eq!((used, idle, pending, timeouts_seen), (0.0, 10.0, 0.0, 1));
    server(10);
    assert_clean(&metrics, &[]);
    // One wait per checkout (the timed-out one is a timeout, not a wait), one use per return.
    assert_eq!(waits.len(), checkouts, "wait_time samples");
    assert_eq!(uses.len(), returns, "use_time samples");
}

#[test]
fn pool_gauges_postgres() {
    pool_gauges(Backend::Postgres)
}

#[test]
fn pool_gauges_sqlite() {
    pool_gauges(Backend::Sqlite)
}

#[test]
fn pool_name_from_the_environment() {
    let settings = Settings::from_lookup(|name| match name {
        "DATABASE_URL" => Some(format!("postgres://app:{PASSWORD}@db.internal:6432/orders")),
        "DB_POOL_NAME" => Some(" orders-primary ".to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(settings.pool.pool_name.as_deref(), Some("orders-primary"));
    let unset = Settings::from_lookup(|name| {
        (name == "DATABASE_URL").then(|| "sqlite::memory:".to_owned())
    })
    .unwrap();
    assert_eq!(unset.pool.pool_name, None);
}

/// Each replica pool reports under its own name, with its lag and whether it takes reads. Read
/// through the Prometheus recorder, whose gauges keep their last value (the debugging recorder
/// resets them at each read).
#[test]
fn replicas_report_their_own_pool_lag_and_use() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let pair = PrimaryStandby::start().unwrap();
    let db = metrics::with_local_recorder(&recorder, || {
        let settings = Settings::new(pair.primary().url())
            .with_pool(PoolConfig::default().with_pool_name("orders"))
            .with_replicas(ReplicaConfig::default().with_url(pair.standby().url()));
        Database::new(settings).unwrap()
    });
    db.run_pending_migrations().unwrap();
    pair.wait_for_replay(Duration::from_secs(30)).unwrap();
    assert!(db.read(|repo| repo.users()).unwrap().is_empty());
    // The value of the series `name{labels}` in the scrape.
    let value = |name: &str, labels: &str| -> Option<f64> {
        let scrape = handle.render();
        let prefix = format!("{name}{{{labels}}} ");
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    let replica = r#"db_client_connection_pool_name="orders-replica-0""#;
    let primary = r#"db_client_connection_pool_name="orders""#;
    assert_eq!(
        value("userbase_replica_in_use", replica),
        Some(1.0),
        "{}",
        handle.render()
    );
    let lag = value("userbase_replica_lag", replica).expect("the lag is measured");
    assert!((0.0..5.0).contains(&lag), "{lag}");
    assert_eq!(value("db_client_connection_max", replica), Some(15.0));
    assert_eq!(value("db_client_connection_max", primary), Some(15.0));
    assert_eq!(value("userbase_replica_in_use", primary), None);
    // A replica that stops answering is taken out: in use 0, reads on the primary.
    let mut pair = pair;
    pair.standby_mut().stop().unwrap();
    assert!(db.read(|repo| repo.users()).unwrap().is_empty());
    assert!(
        eventually(Duration::from_secs(10), || {
            value("userbase_replica_in_use", replica) == Some(0.0)
        }),
        "the stopped replica is out of use: {}",
        handle.render()
    );
}

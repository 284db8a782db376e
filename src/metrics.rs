//! Metrics and tracing spans in OpenTelemetry's database-client conventions.
//!
//! Every instrument goes through the [`metrics`] facade: without a recorder installed by the
//! application (Prometheus, OpenTelemetry, StatsD, …) each is a no-op handle, and the crate pays
//! a branch per event, and per Repo call two clock reads and a sample (the facade cannot tell
//! whether a recorder listens): about 2 % of the instructions of an SQLite point read, 1 % of a
//! PostgreSQL one. [`PoolConfig::operation_metrics`] `false` leaves `db.client.operation.duration`
//! out and those calls untimed. Install the recorder **before** creating the
//! [`Database`](crate::Database): a pool takes its handles from the recorder in force when it is
//! created.
//!
//! | instrument | kind | unit | attributes |
//! |---|---|---|---|
//! | `db.client.connection.count` | gauge | `{connection}` | pool name, `db.client.connection.state` (`idle` / `used`) |
//! | `db.client.connection.idle.max` | gauge | `{connection}` | pool name |
//! | `db.client.connection.idle.min` | gauge | `{connection}` | pool name |
//! | `db.client.connection.max` | gauge | `{connection}` | pool name |
//! | `db.client.connection.pending_requests` | gauge | `{request}` | pool name |
//! | `db.client.connection.timeouts` | counter | `{timeout}` | pool name |
//! | `db.client.connection.create_time` | histogram | `s` | pool name |
//! | `db.client.connection.wait_time` | histogram | `s` | pool name |
//! | `db.client.connection.use_time` | histogram | `s` | pool name |
//! | `db.client.operation.duration` | histogram | `s` | `db.system.name`, `db.operation.name`, `db.namespace`, `server.address`, `server.port`, `error.type` on failure |
//! | `userbase.replica.lag` | gauge | `s` | pool name (of the replica) |
//! | `userbase.replica.in_use` | gauge | 1 / 0 | pool name (of the replica) |
//! | `userbase.transaction.attempts` | counter | `{attempt}` | pool name |
//! | `userbase.transaction.retries` | counter | `{retry}` | pool name, `error.type` |
//!
//! The pool name (`db.client.connection.pool.name`) is [`PoolConfig::pool_name`] or, by
//! default, `host:port/database` (SQLite: the file name); each replica pool has its own. No
//! label ever holds a password, a bind value or SQL text.
//!
//! Spans: every public [`Repo`](crate::Repo) method that runs statements (not the frames
//! `transaction` and `with_statement_timeout`) runs in a span (target `userbase::db`, level
//! INFO) named after the method, with `db.system.name`, `db.operation.name`, `db.namespace`,
//! `server.address`, `server.port`, `otel.kind = "client"`, `error.type` on failure, and
//! `db.query.text` (the last statement, as the `echo` log prints it) only when `echo` is on.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Label, Unit};

use crate::config::{Backend, DbUrl, PoolConfig};
use crate::connection::AnyConnection;
use crate::error::Error;

/// `db.client.connection.pool.name`: the pool every connection-pool instrument is labelled with.
pub(crate) const POOL_NAME: &str = "db.client.connection.pool.name";
/// `db.client.connection.state`: `idle` or `used` on [`CONNECTION_COUNT`].
pub(crate) const STATE: &str = "db.client.connection.state";

pub(crate) const CONNECTION_COUNT: &str = "db.client.connection.count";
pub(crate) const IDLE_MAX: &str = "db.client.connection.idle.max";
pub(crate) const IDLE_MIN: &str = "db.client.connection.idle.min";
pub(crate) const MAX: &str = "db.client.connection.max";
pub(crate) const PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
pub(crate) const TIMEOUTS: &str = "db.client.connection.timeouts";
pub(crate) const CREATE_TIME: &str = "db.client.connection.create_time";
pub(crate) const WAIT_TIME: &str = "db.client.connection.wait_time";
pub(crate) const USE_TIME: &str = "db.client.connection.use_time";
pub(crate) const OPERATION_DURATION: &str = "db.client.operation.duration";
pub(crate) const REPLICA_LAG: &str = "userbase.replica.lag";
pub(crate) const REPLICA_IN_USE: &str = "userbase.replica.in_use";
pub(crate) const TRANSACTION_ATTEMPTS: &str = "userbase.transaction.attempts";
pub(crate) const TRANSACTION_RETRIES: &str = "userbase.transaction.retries";

/// Describes every instrument to the recorder in force (units and help texts); called whenever
/// a pool is created, since the application may install its recorder at any time before.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTION_COUNT,
        Unit::Count,
        "The number of connections that are currently in the state described by the state attribute ({connection})"
    );
    describe_gauge!(
        IDLE_MAX,
        Unit::Count,
        "The maximum number of idle open connections allowed: pool_size ({connection})"
    );
    describe_gauge!(
        IDLE_MIN,
        Unit::Count,
        "The minimum number of idle open connections allowed: 0, the pool opens connections only on demand ({connection})"
    );
    describe_gauge!(
        MAX,
        Unit::Count,
        "The maximum number of open connections allowed: pool_size + max_overflow ({connection})"
    );
    describe_gauge!(
        PENDING_REQUESTS,
        Unit::Count,
        "The number of callers blocked in a checkout right now ({request})"
    );
    describe_counter!(
        TIMEOUTS,
        Unit::Count,
        "The number of checkouts that timed out waiting for a connection ({timeout})"
    );
    describe_histogram!(
        CREATE_TIME,
        Unit::Seconds,
        "The time it took to create a new connection"
    );
    describe_histogram!(
        WAIT_TIME,
        Unit::Seconds,
        "The time it took to obtain an open connection from the pool"
    );
    describe_histogram!(
        USE_TIME,
        Unit::Seconds,
        "The time between borrowing a connection and returning it to the pool"
    );
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Duration of database client operations: one sample per Repo method call"
    );
    describe_gauge!(
        REPLICA_LAG,
        Unit::Seconds,
        "The replay lag last measured on a read replica"
    );
    describe_gauge!(
        REPLICA_IN_USE,
        "1 while a read replica takes reads, 0 while it is down or lags over the bound"
    );
    describe_counter!(
        TRANSACTION_ATTEMPTS,
        Unit::Count,
        "Runs of transaction_with_retry's closure, the first ones included ({attempt})"
    );
    describe_counter!(
        TRANSACTION_RETRIES,
        Unit::Count,
        "Runs of transaction_with_retry's closure started again after a retryable error ({retry})"
    );
}

/// The pool name of a pool built with `config` for `url`: `config.pool_name` when set (and not
/// blank), else [`default_pool_name`].
pub(crate) fn pool_name(url: &DbUrl, config: &PoolConfig) -> String {
    match config.pool_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => default_pool_name(url),
    }
}

/// The default pool name: `host:port/database` for PostgreSQL (libpq's defaults `localhost` and
/// 5432 when the URL names none; the first host of a multi-host URL), never the user or the
/// password; for SQLite the file name without its directory (`:memory:` for an in-memory
/// database).
pub(crate) fn default_pool_name(url: &DbUrl) -> String {
    match url.backend() {
        Backend::Postgres => {
            let (address, port) = server(url);
            format!("{address}:{port}/{}", url.database().unwrap_or_default())
        }
        Backend::Sqlite => sqlite_name(url),
    }
}

/// The name of each replica's pool: `<name>-replica-<index>` when the primary's pool is named
/// in `config`, else the replica URL's [`default_pool_name`].
pub(crate) fn replica_pool_name(url: &DbUrl, config: &PoolConfig, index: usize) -> String {
    match config.pool_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => format!("{name}-replica-{index}"),
        _ => default_pool_name(url),
    }
}

/// `server.address` and `server.port` of a PostgreSQL URL (libpq's defaults when unset).
fn server(url: &DbUrl) -> (&str, u16) {
    (
        url.host().unwrap_or("localhost"),
        url.port().unwrap_or(5432),
    )
}

/// The file name of an SQLite URL: no directory, no `file:` prefix, no URI query.
fn sqlite_name(url: &DbUrl) -> String {
    let path = url.database().unwrap_or_default();
    if path == ":memory:" {
        return path.to_owned();
    }
    let path = path.strip_prefix("file:").unwrap_or(path);
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    if name.is_empty() {
        path.to_owned()
    } else {
        name.to_owned()
    }
}

/// A pool's connection-pool instruments: handles created once, labelled with the pool name.
/// Each call is a relaxed atomic operation on the recorder's side (nothing without a recorder).
pub(crate) struct PoolMetrics {
    idle: Gauge,
    used: Gauge,
    pending: Gauge,
    timeouts: Counter,
    create_time: Histogram,
    wait_time: Histogram,
    use_time: Histogram,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMetrics").finish_non_exhaustive()
    }
}

impl PoolMetrics {
    /// The instruments of the pool `pool_name` built with `config`; sets the limits
    /// (`idle.max` = `pool_size`, `idle.min` = 0: the pool opens connections only on demand
    /// and keeps no minimum, `max` = `pool_size + max_overflow`) and zero counts.
    pub(crate) fn new(pool_name: &str, config: &PoolConfig) -> Self {
        describe();
        let name = pool_name.to_owned();
        metrics::gauge!(IDLE_MAX, POOL_NAME => name.clone()).set(config.pool_size);
        metrics::gauge!(IDLE_MIN, POOL_NAME => name.clone()).set(0);
        metrics::gauge!(MAX, POOL_NAME => name.clone()).set(config.max_connections());
        let metrics = PoolMetrics {
            idle: metrics::gauge!(CONNECTION_COUNT, POOL_NAME => name.clone(), STATE => "idle"),
            used: metrics::gauge!(CONNECTION_COUNT, POOL_NAME => name.clone(), STATE => "used"),
            pending: metrics::gauge!(PENDING_REQUESTS, POOL_NAME => name.clone()),
            timeouts: metrics::counter!(TIMEOUTS, POOL_NAME => name.clone()),
            create_time: metrics::histogram!(CREATE_TIME, POOL_NAME => name.clone()),
            wait_time: metrics::histogram!(WAIT_TIME, POOL_NAME => name.clone()),
            use_time: metrics::histogram!(USE_TIME, POOL_NAME => name),
        };
        metrics.set_counts(0, 0, 0);
        metrics.timeouts.absolute(0);
        metrics
    }

    /// The connections idle and checked out (`count{state}`), and the callers blocked in a
    /// checkout (`pending_requests`).
    pub(crate) fn set_counts(&self, idle: u32, used: u32, pending: u32) {
        self.idle.set(idle);
        self.used.set(used);
        self.pending.set(pending);
    }

    /// A checkout gave up after `pool_timeout`.
    pub(crate) fn timeout(&self) {
        self.timeouts.increment(1);
    }

    /// A connection took `took` to open.
    pub(crate) fn create_time(&self, took: Duration) {
        self.create_time.record(took);
    }

    /// A checkout waited `took` for its connection (the wait alone, not the query).
    pub(crate) fn wait_time(&self, took: Duration) {
        self.wait_time.record(took);
    }

    /// A connection was held `held`, from checkout to its return to the pool.
    pub(crate) fn use_time(&self, held: Duration) {
        self.use_time.record(held);
    }
}

/// The engine tells the pool's figures under the gate's lock after every change, so the gauges
/// follow the states in order.
impl crate::engine::Observer for PoolMetrics {
    fn figures(&self, figures: &crate::engine::Figures) {
        self.set_counts(figures.idle, figures.checked_out, figures.waiting);
    }

    fn timeout(&self) {
        PoolMetrics::timeout(self);
    }

    fn created(&self, took: Duration) {
        self.create_time(took);
    }

    fn waited(&self, took: Duration) {
        self.wait_time(took);
    }

    fn used(&self, held: Duration) {
        self.use_time(held);
    }
}

/// A replica's own instruments: its measured lag and whether it takes reads.
pub(crate) struct ReplicaMetrics {
    lag: Gauge,
    in_use: Gauge,
}

impl std::fmt::Debug for ReplicaMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaMetrics").finish_non_exhaustive()
    }
}

impl ReplicaMetrics {
    /// The instruments of the replica whose pool is named `pool_name`; not in use until measured.
    pub(crate) fn new(pool_name: &str) -> Self {
        describe();
        let metrics = ReplicaMetrics {
            lag: metrics::gauge!(REPLICA_LAG, POOL_NAME => pool_name.to_owned()),
            in_use: metrics::gauge!(REPLICA_IN_USE, POOL_NAME => pool_name.to_owned()),
        };
        metrics.in_use(false);
        metrics
    }

    /// The replay lag just measured.
    pub(crate) fn lag(&self, lag: Duration) {
        self.lag.set(lag);
    }

    /// Whether the replica takes reads now (answering, lag within the bound).
    pub(crate) fn in_use(&self, in_use: bool) {
        self.in_use.set(if in_use { 1.0 } else { 0.0 });
    }
}

macro_rules! operations {
    ($($variant:ident = $name:literal,)*) => {
        /// The public Repo methods, as `db.operation.name` names them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Op {
            $(
                #[doc = concat!("`Repo::", $name, "`.")]
                $variant,
            )*
        }

        impl Op {
            /// Every operation, in declaration order (their index in [`Telemetry`]'s table).
            pub(crate) const ALL: &'static [Op] = &[$(Op::$variant,)*];

            /// The method's name: `db.operation.name`.
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name,)*
                }
            }
        }
    };
}

operations! {
    User = "user",
    FindUser = "find_user",
    Users = "users",
    InsertUser = "insert_user",
    DeleteUser = "delete_user",
    UpsertUser = "upsert_user",
    UpsertUserWith = "upsert_user_with",
    UpdateUser = "update_user",
    DeactivateUser = "deactivate_user",
    ReactivateUser = "reactivate_user",
    SetReferrer = "set_referrer",
    Referrals = "referrals",
    UsersWithReferrerNames = "users_with_referrer_names",
    ReferralCounts = "referral_counts",
    Location = "location",
    FindLocationByName = "find_location_by_name",
    Locations = "locations",
    InsertLocation = "insert_location",
    RenameLocation = "rename_location",
    DeleteLocation = "delete_location",
    UserLocations = "user_locations",
    Link = "link",
    InsertUserLocation = "insert_user_location",
    Unlink = "unlink",
    ReplaceUserLocations = "replace_user_locations",
    UsersWithLocations = "users_with_locations",
    UsersByLocation = "users_by_location",
    UserLocationsWithUsername = "user_locations_with_username",
    CountUserLocations = "count_user_locations",
    LocationCountsByUser = "location_counts_by_user",
    LocationCountsByUserNamed = "location_counts_by_user_named",
    UsersRaw = "users_raw",
    LoadSql = "load_sql",
    UsersPage = "users_page",
    LocationsPage = "locations_page",
    UsersWithLocationsPage = "users_with_locations_page",
    UsersIter = "users_iter",
    ImportUsers = "import_users",
    CopyUsers = "copy_users",
    ImportLocations = "import_locations",
    ImportLinks = "import_links",
    ImportUsersFrom = "import_users_from",
    ImportLocationsFrom = "import_locations_from",
    ImportLinksFrom = "import_links_from",
    ExportUsers = "export_users",
    ExportLocations = "export_locations",
    ExportLinks = "export_links",
    EachUser = "each_user",
    EachLocation = "each_location",
    EachLink = "each_link",
}

/// The number of [`Op`]s.
const OPS: usize = Op::ALL.len();

/// What a pool's connections know for the Repo's spans and operation metrics, shared by them
/// (through the connection's statement watch) and created with the pool.
pub(crate) struct Telemetry {
    pool_name: String,
    system: &'static str,
    namespace: String,
    address: Option<String>,
    port: Option<u16>,
    /// `db.client.operation.duration` per operation without `error.type`: made at the first
    /// call, with the labels above.
    ops: [OnceLock<Histogram>; OPS],
    attempts: Counter,
    /// [`PoolConfig::operation_metrics`]: Repo calls are timed and recorded.
    timed: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("pool_name", &self.pool_name)
            .field("system", &self.system)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The telemetry of the pool for `url` built with `config`.
    pub(crate) fn new(url: &DbUrl, config: &PoolConfig) -> Self {
        describe();
        let pool_name = pool_name(url, config);
        let (system, namespace, address, port) = match url.backend() {
            Backend::Postgres => {
                let (address, port) = server(url);
                (
                    "postgresql",
                    url.database().unwrap_or_default().to_owned(),
                    Some(address.to_owned()),
                    Some(port),
                )
            }
            Backend::Sqlite => ("sqlite", sqlite_name(url), None, None),
        };
        Telemetry {
            attempts: metrics::counter!(TRANSACTION_ATTEMPTS, POOL_NAME => pool_name.clone()),
            pool_name,
            system,
            namespace,
            address,
            port,
            ops: [const { OnceLock::new() }; OPS],
            timed: config.operation_metrics,
        }
    }

    /// The labels of `op`'s duration.
    fn labels(&self, op: Op, error: Option<&'static str>) -> Vec<Label> {
        let mut labels = vec![
            Label::from_static_parts("db.system.name", self.system),
            Label::from_static_parts("db.operation.name", op.name()),
            Label::new("db.namespace", self.namespace.clone()),
        ];
        if let (Some(address), Some(port)) = (&self.address, self.port) {
            labels.push(Label::new("server.address", address.clone()));
            labels.push(Label::new("server.port", port.to_string()));
        }
        if let Some(error) = error {
            labels.push(Label::from_static_parts("error.type", error));
        }
        labels
    }

    /// Records one call of `op` that took `took` and failed with the error named `error`
    /// (`error.type`), if it did.
    fn record_named(&self, op: Op, took: Duration, error: Option<&'static str>) {
        if !self.timed {
            return;
        }
        match error {
            None => {
                let index = op as usize;
                if let Some(slot) = self.ops.get(index) {
                    slot.get_or_init(|| {
                        metrics::histogram!(OPERATION_DURATION, self.labels(op, None))
                    })
                    .record(took);
                }
            }
            Some(error) => {
                metrics::histogram!(OPERATION_DURATION, self.labels(op, Some(error))).record(took);
            }
        }
    }

    /// A run of `transaction_with_retry`'s closure begins.
    pub(crate) fn attempt(&self) {
        self.attempts.increment(1);
    }

    /// A run of `transaction_with_retry`'s closure failed with the retryable `error` and runs
    /// again.
    pub(crate) fn retry(&self, error: &Error) {
        metrics::counter!(
            TRANSACTION_RETRIES,
            POOL_NAME => self.pool_name.clone(),
            "error.type" => error.variant_name()
        )
        .increment(1);
    }

    /// The span of one call of `op` (disabled unless a subscriber wants it).
    fn span(&self, op: Op) -> tracing::Span {
        tracing::info_span!(
            target: "userbase::db",
            "db.operation",
            otel.name = op.name(),
            otel.kind = "client",
            db.system.name = self.system,
            db.operation.name = op.name(),
            db.namespace = self.namespace.as_str(),
            server.address = self.address.as_deref(),
            server.port = self.port,
            db.query.text = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    }
}

/// The telemetry of the pool `conn` belongs to, the tag its engine carries (`None` for a
/// connection opened outside a pool).
pub(crate) fn telemetry(conn: &mut AnyConnection) -> Option<&Telemetry> {
    crate::engine::tag(conn)?.downcast_ref::<Telemetry>()
}

/// A Repo method's call under way: its span (entered) and its start.
pub(crate) struct Call {
    op: Op,
    started: Instant,
    span: tracing::span::EnteredSpan,
}

impl Call {
    /// Starts measuring `op` on `conn`: `None` when the connection belongs to no pool, or when
    /// its pool times no call ([`PoolConfig::operation_metrics`] off) and no subscriber wants the
    /// span: then the call costs nothing more.
    #[inline]
    pub(crate) fn start(conn: &mut AnyConnection, op: Op) -> Option<Call> {
        let telemetry = telemetry(conn)?;
        let span = telemetry.span(op);
        if !telemetry.timed && span.is_disabled() {
            return None;
        }
        Some(Call {
            op,
            started: Instant::now(),
            span: span.entered(),
        })
    }

    /// Ends the call, failed with the error named `error` if it did: one sample of
    /// `db.client.operation.duration`.
    #[inline]
    pub(crate) fn finish(self, conn: &mut AnyConnection, error: Option<&'static str>) {
        let took = self.started.elapsed();
        if let Some(error) = error {
            self.span.record("error.type", error);
        }
        if let Some(telemetry) = telemetry(conn) {
            telemetry.record_named(self.op, took, error);
        }
    }
}

/// The `error.type` of an error a Repo method returns.
pub(crate) trait ErrorType {
    /// A low-cardinality name of the error's kind: never a value it carries.
    fn error_type(&self) -> &'static str;
}

impl ErrorType for Error {
    fn error_type(&self) -> &'static str {
        self.variant_name()
    }
}

impl ErrorType for crate::bulk::ExportError {
    /// The database error's variant, or `ExportWrite` when writing the output failed.
    fn error_type(&self) -> &'static str {
        match self {
            crate::bulk::ExportError::Database(error) => error.variant_name(),
            _ => "ExportWrite",
        }
    }
}

impl<E> ErrorType for crate::bulk::ImportError<E> {
    /// The database (or validation) error's variant, or `ImportSource` when the source failed.
    fn error_type(&self) -> &'static str {
        match self.database() {
            Some(error) => error.variant_name(),
            None => "ImportSource",
        }
    }
}

/// A streaming Repo method's call: it lasts until the stream is dropped, and fails with the
/// first error of the call or of a row.
pub(crate) struct Stream {
    op: Op,
    started: Instant,
    span: tracing::Span,
    telemetry: Arc<Telemetry>,
    error: Option<&'static str>,
}

impl Stream {
    /// Starts measuring the streaming method `op` on `conn`: `None` inside another method's
    /// body (`nested`) and on a connection outside a pool.
    pub(crate) fn start(conn: &mut AnyConnection, op: Op, nested: bool) -> Option<Stream> {
        if nested {
            return None;
        }
        let telemetry = crate::engine::tag(conn)?
            .clone()
            .downcast::<Telemetry>()
            .ok()?;
        Some(Stream {
            op,
            span: telemetry.span(op),
            started: Instant::now(),
            telemetry,
            error: None,
        })
    }

    /// The method's result, measured until its rows are dropped.
    pub(crate) fn wrap<'a, T: 'a>(
        stream: Option<Stream>,
        rows: Result<Box<dyn Iterator<Item = Result<T, Error>> + 'a>, Error>,
    ) -> Result<Box<dyn Iterator<Item = Result<T, Error>> + 'a>, Error> {
        let Some(mut stream) = stream else {
            return rows;
        };
        match rows {
            Ok(rows) => Ok(Box::new(Streamed { rows, stream })),
            Err(error) => {
                stream.fail(&error);
                Err(error)
            }
        }
    }

    fn fail(&mut self, error: &Error) {
        if self.error.is_none() {
            self.error = Some(error.variant_name());
            self.span.record("error.type", error.variant_name());
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.telemetry
            .record_named(self.op, self.started.elapsed(), self.error);
    }
}

/// The rows of a streaming method, in its span.
struct Streamed<'a, T> {
    rows: Box<dyn Iterator<Item = Result<T, Error>> + 'a>,
    stream: Stream,
}

impl<T> Iterator for Streamed<'_, T> {
    type Item = Result<T, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = {
            let _entered = self.stream.span.enter();
            self.rows.next()
        };
        if let Some(Err(error)) = &row {
            self.stream.fail(error);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_names_hold_no_credentials() {
        let url =
            DbUrl::parse("postgres://app:s3cret@db.internal:6432/orders?sslmode=require").unwrap();
        assert_eq!(default_pool_name(&url), "db.internal:6432/orders");
        let bare = DbUrl::parse("postgres:///orders").unwrap();
        assert_eq!(default_pool_name(&bare), "localhost:5432/orders");
        for (sqlite, name) in [
            ("sqlite:///var/lib/app/users.db", "users.db"),
            ("users.sqlite3", "users.sqlite3"),
            ("sqlite::memory:", ":memory:"),
        ] {
            assert_eq!(
                default_pool_name(&DbUrl::parse(sqlite).unwrap()),
                name,
                "{sqlite}"
            );
        }
    }

    #[test]
    fn configured_names_win_and_replicas_get_their_own() {
        let url = DbUrl::parse("postgres://app:s3cret@replica:5432/orders").unwrap();
        let named = PoolConfig::default().with_pool_name("orders");
        assert_eq!(pool_name(&url, &named), "orders");
        assert_eq!(replica_pool_name(&url, &named, 1), "orders-replica-1");
        let blank = PoolConfig::default().with_pool_name("  ");
        assert_eq!(pool_name(&url, &blank), "replica:5432/orders");
        assert_eq!(
            replica_pool_name(&url, &PoolConfig::default(), 0),
            "replica:5432/orders"
        );
    }

    #[test]
    fn every_operation_has_its_own_name() {
        let mut names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPS);
    }
}

//! The router: one pool per replica, their health and lag, and the choice of where a read goes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::status::{self, Status};
use crate::config::{DbUrl, PoolConfig, ReplicaConfig, Settings};
use crate::connection::AnyConnection;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::session::Session;

/// The longest wait between two checks of a replica that is down.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the router knows of one replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Health {
    /// Not measured yet: the first read measures it.
    Unknown,
    /// Answering, lagging `lag` (at most the bound).
    Usable { lag: Duration },
    /// Answering but lagging more than the bound (or by an unknown amount): skipped.
    Lagging { lag: Option<Duration> },
    /// Did not answer: skipped until `retry_at`, then checked in the background.
    Down { failures: u32, retry_at: Instant },
}

/// One replica: its pool (read-only connections) and state.
pub(crate) struct Replica {
    pub(crate) db: Database,
    /// The URL, password hidden, for events.
    pub(crate) label: String,
    /// The highest replay position seen while in recovery (it only grows there); 0: none.
    replay: AtomicU64,
    /// The server answered `pg_is_in_recovery() = false` at the last check: it has every write.
    promoted: AtomicBool,
    health: Mutex<Health>,
}

/// State shared by every clone of a [`Database`] with replicas.
pub(crate) struct Router {
    pub(crate) replicas: Vec<Replica>,
    pub(crate) config: ReplicaConfig,
    echo_pool: bool,
    /// The highest WAL insert position recorded after a commit through this `Database`; 0: none.
    written: AtomicU64,
    /// A commit's position could not be read: reads go to the primary until one is recorded.
    written_unknown: AtomicBool,
    /// Round-robin start among the replicas.
    next: AtomicUsize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "replicas",
                &self.replicas.iter().map(|r| &r.label).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where a read was sent.
pub(crate) enum Route {
    /// A replica that may serve it, with a session on it.
    Replica(usize, Box<Session>),
    /// The primary.
    Primary,
}

/// `url` with `default_transaction_read_only=on` added to its libpq `options`, so every
/// transaction on the replica's connections is `READ ONLY` without a statement per checkout.
fn read_only(url: &DbUrl) -> DbUrl {
    const READ_ONLY: &str = "-c default_transaction_read_only=on";
    let options = match url.query_value("options") {
        Some(existing) => format!("{existing} {READ_ONLY}"),
        None => READ_ONLY.to_owned(),
    };
    url.clone().with_query_param_replaced("options", options)
}

impl Router {
    /// The router for `replicas`, with its background health thread; `None` without replicas.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad [`ReplicaConfig`], or a replica URL the pool refuses.
    pub(crate) fn start(replicas: &ReplicaConfig, pool: &PoolConfig) -> Result<Option<Arc<Self>>> {
        replicas.validate()?;
        if replicas.urls.is_empty() {
            return Ok(None);
        }
        let pools = replicas
            .urls
            .iter()
            .map(|url| {
                let db = Database::new(Settings::new(read_only(url)).with_pool(pool.clone()))?;
                Ok(Replica {
                    db,
                    label: url.to_string(),
                    replay: AtomicU64::new(0),
                    promoted: AtomicBool::new(false),
                    health: Mutex::new(Health::Unknown),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let router = Arc::new(Router {
            replicas: pools,
            config: replicas.clone(),
            echo_pool: pool.echo_pool,
            written: AtomicU64::new(0),
            written_unknown: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        });
        spawn_monitor(Arc::downgrade(&router), replicas.check_interval)?;
        Ok(Some(router))
    }

    /// A routing decision, through `tracing` (target `userbase::pool`) with `echo_pool`.
    pub(crate) fn event(&self, replica: Option<&Replica>, message: std::fmt::Arguments<'_>) {
        if self.echo_pool {
            match replica {
                Some(r) => {
                    tracing::debug!(target: "userbase::pool", replica = %r.label, "{message}")
                }
                None => tracing::debug!(target: "userbase::pool", "{message}"),
            }
        }
    }

    /// The position of the last write recorded, if any.
    pub(crate) fn last_write(&self) -> Option<u64> {
        Some(self.written.load(Ordering::Acquire)).filter(|lsn| *lsn > 0)
    }

    /// Records the primary's insert position after a commit on `conn`.
    pub(crate) fn record_write(&self, conn: &mut AnyConnection) -> Option<u64> {
        match status::insert_position(conn) {
            Ok(Some(lsn)) => {
                self.written.fetch_max(lsn, Ordering::AcqRel);
                self.written_unknown.store(false, Ordering::Release);
                Some(lsn)
            }
            Ok(None) => None,
            Err(error) => {
                self.written_unknown.store(true, Ordering::Release);
                self.event(
                    None,
                    format_args!("could not read the commit's WAL position ({error}): reads go to the primary until the next commit"),
                );
                None
            }
        }
    }

    /// Where a read that must see writes up to `token` (and this `Database`'s own) goes.
    pub(crate) fn route(&self, token: Option<u64>) -> Route {
        if self.written_unknown.load(Ordering::Acquire) {
            self.event(
                None,
                format_args!("read on the primary: the last commit's WAL position is unknown"),
            );
            return Route::Primary;
        }
        let need = token.unwrap_or(0).max(self.written.load(Ordering::Acquire));
        let deadline = Instant::now() + self.config.wait;
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count.max(1);
        // The first replica that answers but has not replayed `need` yet: waited on below.
        let mut behind: Option<(usize, Session)> = None;
        for index in (0..count).map(|i| (start + i) % count) {
            let replica = &self.replicas[index];
            let health = replica.health();
            match health {
                Health::Down { retry_at, .. } => {
                    self.event(
                        Some(replica),
                        format_args!(
                            "skipped: down, re-checked in {:?}",
                            retry_at.saturating_duration_since(Instant::now())
                        ),
                    );
                    continue;
                }
                Health::Lagging { lag } => {
                    self.event(
                        Some(replica),
                        format_args!(
                            "skipped: lag {lag:?} over the bound {:?}",
                            self.config.max_lag
                        ),
                    );
                    continue;
                }
                Health::Usable { .. } | Health::Unknown => {}
            }
            let mut session = match replica.db.session() {
                Ok(session) => session,
                Err(error) => {
                    self.mark_down(replica, &error);
                    continue;
                }
            };
            if health != Health::Unknown && replica.has_replayed(need) {
                self.event(Some(replica), format_args!("read on the replica"));
                return Route::Replica(index, Box::new(session));
            }
            match status::status(session.repo_connection()) {
                Ok(status) => {
                    if !self.update(replica, &status) {
                        continue;
                    }
                    if status.has_replayed(need) {
                        self.event(
                            Some(replica),
                            format_args!(
                                "read on the replica (checked: replayed {})",
                                super::WalPosition::from_u64(need)
                            ),
                        );
                        return Route::Replica(index, Box::new(session));
                    }
                    if behind.is_none() {
                        behind = Some((index, session));
                    }
                }
                Err(error) => self.mark_down(replica, &error),
            }
        }
        if let Some((index, mut session)) = behind {
            let replica = &self.replicas[index];
            let mut pause = Duration::from_millis(1);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(10));
                match status::status(session.repo_connection()) {
                    Ok(status) if status.has_replayed(need) => {
                        self.update(replica, &status);
                        self.event(
                            Some(replica),
                            format_args!(
                                "read on the replica after waiting for it to replay {}",
                                super::WalPosition::from_u64(need)
                            ),
                        );
                        return Route::Replica(index, Box::new(session));
                    }
                    Ok(status) => {
                        if !self.update(replica, &status) {
                            break;
                        }
                    }
                    Err(error) => {
                        self.mark_down(replica, &error);
                        break;
                    }
                }
            }
            self.event(
                Some(replica),
                format_args!(
                    "read on the primary: no replica replayed {} within {:?}",
                    super::WalPosition::from_u64(need),
                    self.config.wait
                ),
            );
            return Route::Primary;
        }
        self.event(None, format_args!("read on the primary: no usable replica"));
        Route::Primary
    }

    /// Applies a replica's measured `status`; `true` when it is usable.
    pub(crate) fn update(&self, replica: &Replica, status: &Status) -> bool {
        replica
            .promoted
            .store(!status.in_recovery, Ordering::Release);
        if let Some(replay) = status.replay().filter(|_| status.in_recovery) {
            replica.replay.fetch_max(replay, Ordering::AcqRel);
        }
        let lag = status.lag();
        let next = match lag {
            Some(lag) if lag <= self.config.max_lag => Health::Usable { lag },
            lag => Health::Lagging { lag },
        };
        let before = std::mem::replace(&mut *replica.lock(), next);
        match (before, next) {
            (Health::Usable { .. }, Health::Usable { .. }) => {}
            (Health::Lagging { .. }, Health::Lagging { .. }) => {}
            (_, Health::Usable { lag }) => {
                self.event(Some(replica), format_args!("usable: lag {lag:?}"))
            }
            (_, Health::Lagging { lag }) => self.event(
                Some(replica),
                format_args!(
                    "taken out: lag {lag:?} over the bound {:?}",
                    self.config.max_lag
                ),
            ),
            _ => {}
        }
        matches!(next, Health::Usable { .. })
    }

    /// Takes a replica out after `error`, to be re-checked after a backoff doubling from the
    /// check interval up to [`MAX_BACKOFF`]; closes its idle connections.
    pub(crate) fn mark_down(&self, replica: &Replica, error: &Error) {
        let failures = {
            let mut health = replica.lock();
            let failures = match *health {
                Health::Down { failures, .. } => failures.saturating_add(1),
                _ => 1,
            };
            let doublings = failures.saturating_sub(1).min(16);
            let backoff = self
                .config
                .check_interval
                .saturating_mul(1 << doublings)
                .min(MAX_BACKOFF.max(self.config.check_interval));
            *health = Health::Down {
                failures,
                retry_at: Instant::now() + backoff,
            };
            replica.replay.store(0, Ordering::Release);
            replica.promoted.store(false, Ordering::Release);
            (failures, backoff)
        };
        replica.db.dispose();
        self.event(
            Some(replica),
            format_args!(
                "taken out: down ({error}); failure {}, re-checked in {:?}",
                failures.0, failures.1
            ),
        );
    }
}

impl Replica {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn health(&self) -> Health {
        *self.lock()
    }

    /// From the cache: whether this replica has replayed `need` (0: nothing needed).
    fn has_replayed(&self, need: u64) -> bool {
        need == 0
            || self.promoted.load(Ordering::Acquire)
            || self.replay.load(Ordering::Acquire) >= need
    }
}

/// The background thread: every `interval`, measures each replica (lag, replay position), and
/// re-checks a replica that is down once its backoff has passed. Ends when the last clone of the
/// `Database` is dropped.
fn spawn_monitor(router: Weak<Router>, interval: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("userbase-replicas".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(router) = router.upgrade() else {
                return;
            };
            for replica in &router.replicas {
                if let Health::Down { retry_at, .. } = replica.health() {
                    if Instant::now() < retry_at {
                        continue;
                    }
                }
                let measured = replica
                    .db
                    .session()
                    .and_then(|mut session| status::status(session.repo_connection()));
                match measured {
                    Ok(status) => {
                        if matches!(replica.health(), Health::Down { .. }) {
                            router.event(Some(replica), format_args!("answering again"));
                        }
                        router.update(replica, &status);
                    }
                    Err(error) => router.mark_down(replica, &error),
                }
            }
        })
        .map(drop)
        .map_err(|e| {
            Error::config(
                "DATABASE_REPLICA_URLS",
                format!("could not start the replica health thread: {e}"),
            )
        })
}

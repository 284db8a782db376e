//! The router: one pool per replica, their health and lag, and the choice of where a read goes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
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
    Down { retry_at: Instant },
}

/// A replica's health and its outage bookkeeping, under one lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Track {
    pub(crate) health: Health,
    /// Outages begun so far. A failure or a measurement made on a connection checked out before
    /// the latest outage began belongs to that outage (or an older one) and changes nothing.
    outages: u64,
    /// The backoff step of the current (or last) outage: 0 re-checks every check interval,
    /// each step doubles that, up to [`MAX_BACKOFF`].
    step: u32,
    /// When the replica last answered again after an outage: an outage beginning less than
    /// [`MAX_BACKOFF`] later is a relapse and takes the next step.
    back_since: Option<Instant>,
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
    track: Mutex<Track>,
    /// Its lag and whether it takes reads, as metrics.
    metrics: crate::metrics::ReplicaMetrics,
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
    /// The primary's WAL layout, asked at the first recorded write.
    layout: OnceLock<Option<status::WalLayout>>,
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
    /// A replica that may serve it (its index and the count of its outages when the session was
    /// checked out), with a session on it.
    Replica(usize, u64, Box<Session>),
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
            .enumerate()
            .map(|(index, url)| {
                let name = crate::metrics::replica_pool_name(url, pool, index);
                let config = pool.clone().with_pool_name(name.clone());
                let db = Database::new(Settings::new(read_only(url)).with_pool(config))?;
                Ok(Replica {
                    db,
                    metrics: crate::metrics::ReplicaMetrics::new(&name),
                    label: url.to_string(),
                    replay: AtomicU64::new(0),
                    promoted: AtomicBool::new(false),
                    track: Mutex::new(Track {
                        health: Health::Unknown,
                        outages: 0,
                        step: 0,
                        back_since: None,
                    }),
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
            layout: OnceLock::new(),
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

    /// Records the primary's insert position after a commit on `conn` (moved back to its page's
    /// start when it lies just past a page header, see `status::WalLayout::reachable`).
    pub(crate) fn record_write(&self, conn: &mut AnyConnection) -> Option<u64> {
        match status::insert_position(conn, &self.layout) {
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
        let mut behind: Option<(usize, u64, Session)> = None;
        for index in (0..count).map(|i| (start + i) % count) {
            let replica = &self.replicas[index];
            let (health, seen) = replica.observe();
            match health {
                Health::Down { retry_at } => {
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
                    self.mark_down(replica, seen, &error);
                    continue;
                }
            };
            if health != Health::Unknown && replica.has_replayed(need) {
                self.event(Some(replica), format_args!("read on the replica"));
                return Route::Replica(index, seen, Box::new(session));
            }
            match status::status(session.repo_connection()) {
                Ok(status) => {
                    if !self.update(replica, seen, &status) {
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
                        return Route::Replica(index, seen, Box::new(session));
                    }
                    if behind.is_none() {
                        behind = Some((index, seen, session));
                    }
                }
                Err(error) => self.mark_down(replica, seen, &error),
            }
        }
        if let Some((index, seen, mut session)) = behind {
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
                        if !self.update(replica, seen, &status) {
                            break;
                        }
                        self.event(
                            Some(replica),
                            format_args!(
                                "read on the replica after waiting for it to replay {}",
                                super::WalPosition::from_u64(need)
                            ),
                        );
                        return Route::Replica(index, seen, Box::new(session));
                    }
                    Ok(status) => {
                        if !self.update(replica, seen, &status) {
                            break;
                        }
                    }
                    Err(error) => {
                        self.mark_down(replica, seen, &error);
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

    /// Applies a replica's `status`, measured on a connection checked out when the replica had
    /// had `seen` outages; `true` when it is usable. A measurement from before the latest outage
    /// began changes nothing (and is `false`): that outage ends only by a check made since.
    pub(crate) fn update(&self, replica: &Replica, seen: u64, status: &Status) -> bool {
        let lag = status.lag();
        let next = match lag {
            Some(lag) if lag <= self.config.max_lag => Health::Usable { lag },
            lag => Health::Lagging { lag },
        };
        let before = {
            let mut track = replica.lock();
            if track.outages != seen {
                return false;
            }
            if let Some(lag) = lag {
                replica.metrics.lag(lag);
            }
            replica
                .metrics
                .in_use(matches!(next, Health::Usable { .. }));
            replica
                .promoted
                .store(!status.in_recovery, Ordering::Release);
            if let Some(replay) = status.replay().filter(|_| status.in_recovery) {
                replica.replay.fetch_max(replay, Ordering::AcqRel);
            }
            if matches!(track.health, Health::Down { .. }) {
                track.back_since = Some(Instant::now());
            }
            std::mem::replace(&mut track.health, next)
        };
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

    /// The wait before re-checking a replica at backoff `step`: the check interval doubled
    /// `step` times, at most [`MAX_BACKOFF`] (or the check interval, when that is longer).
    fn backoff(&self, step: u32) -> Duration {
        let interval = self.config.check_interval;
        interval
            .saturating_mul(1 << step.min(16))
            .min(MAX_BACKOFF.max(interval))
    }

    /// Takes a replica out after `error`, seen on a connection checked out when the replica had
    /// had `seen` outages; closes its idle connections. One outage is one failure: while the
    /// replica is out, or when the connection dates from before its latest outage, the failure
    /// belongs to an outage already counted and changes nothing. A new outage is re-checked
    /// every check interval; one beginning less than [`MAX_BACKOFF`] after the replica answered
    /// again (a flapping server) takes the next backoff step, doubling that wait up to
    /// [`MAX_BACKOFF`].
    pub(crate) fn mark_down(&self, replica: &Replica, seen: u64, error: &Error) {
        let now = Instant::now();
        let (step, backoff) = {
            let mut track = replica.lock();
            if track.outages != seen || matches!(track.health, Health::Down { .. }) {
                drop(track);
                self.event(
                    Some(replica),
                    format_args!(
                        "failed ({error}) during an outage already counted: backoff unchanged"
                    ),
                );
                return;
            }
            track.step = match track.back_since {
                Some(back) if now.saturating_duration_since(back) < MAX_BACKOFF => {
                    track.step.saturating_add(1).min(16)
                }
                _ => 0,
            };
            track.outages = track.outages.wrapping_add(1);
            let backoff = self.backoff(track.step);
            track.health = Health::Down {
                retry_at: now + backoff,
            };
            replica.replay.store(0, Ordering::Release);
            replica.promoted.store(false, Ordering::Release);
            replica.metrics.in_use(false);
            (track.step, backoff)
        };
        replica.db.dispose();
        self.event(
            Some(replica),
            format_args!(
                "taken out: down ({error}); backoff step {step}, re-checked every {backoff:?}"
            ),
        );
    }

    /// A re-check of a replica that is out failed with `error`: checked again after the same
    /// backoff (the outage goes on; it is not a new one).
    fn recheck_failed(&self, replica: &Replica, error: &Error) {
        let backoff = {
            let mut track = replica.lock();
            let Health::Down { .. } = track.health else {
                return;
            };
            let backoff = self.backoff(track.step);
            track.health = Health::Down {
                retry_at: Instant::now() + backoff,
            };
            backoff
        };
        self.event(
            Some(replica),
            format_args!("still down ({error}): re-checked in {backoff:?}"),
        );
    }
}

impl Replica {
    fn lock(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn health(&self) -> Health {
        self.lock().health
    }

    /// Its health and the count of its outages so far, read together.
    pub(crate) fn observe(&self) -> (Health, u64) {
        let track = self.lock();
        (track.health, track.outages)
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
                let (health, seen) = replica.observe();
                let down = matches!(health, Health::Down { .. });
                if let Health::Down { retry_at } = health {
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
                        if router.update(replica, seen, &status) && down {
                            router.event(Some(replica), format_args!("answering again"));
                        }
                    }
                    Err(error) if down => router.recheck_failed(replica, &error),
                    Err(error) => router.mark_down(replica, seen, &error),
                }
            }
        })
        .map(drop)
        .map_err(|e| Error::Runtime {
            message: "could not start the replica health thread".to_owned(),
            source: Some(Box::new(e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router over one replica that nothing listens for; its health thread sleeps an hour
    /// before its first check, so only the test moves the replica's state.
    fn router() -> Arc<Router> {
        let url = DbUrl::parse("postgres://app@127.0.0.1:1/app").unwrap();
        let config = ReplicaConfig::default()
            .with_url(url)
            .with_check_interval(Duration::from_secs(3600));
        Router::start(&config, &PoolConfig::default())
            .unwrap()
            .unwrap()
    }

    fn gone() -> Error {
        Error::Connect {
            url: "postgres://app@127.0.0.1:1/app".into(),
            message: "connection refused".into(),
            source: None,
        }
    }

    fn track(router: &Router) -> Track {
        *router.replicas[0].lock()
    }

    #[test]
    fn one_outage_is_one_failure_and_only_a_relapse_takes_the_next_step() {
        let router = router();
        let replica = &router.replicas[0];
        let (_, seen) = replica.observe();
        // Eight reads caught by one stop: one outage, at the first step.
        for _ in 0..8 {
            router.mark_down(replica, seen, &gone());
        }
        let out = track(&router);
        assert!(matches!(out.health, Health::Down { .. }), "{out:?}");
        assert_eq!((out.outages, out.step), (1, 0));
        // Failed re-checks go on with the same step.
        router.recheck_failed(replica, &gone());
        assert_eq!((track(&router).outages, track(&router).step), (1, 0));
        // A measurement made before the outage began does not end it.
        assert!(!router.update(replica, seen, &Status::caught_up(100)));
        assert!(matches!(track(&router).health, Health::Down { .. }));
        // A check made since does; a failure on a connection from before the outage, arriving
        // after, changes nothing.
        assert!(router.update(replica, 1, &Status::caught_up(100)));
        router.mark_down(replica, seen, &gone());
        assert!(matches!(track(&router).health, Health::Usable { .. }));
        // Failing again right after coming back is a relapse: the next step, doubling the wait.
        router.mark_down(replica, 1, &gone());
        let relapse = track(&router);
        assert_eq!((relapse.outages, relapse.step), (2, 1));
        assert!(router.update(replica, 2, &Status::caught_up(200)));
        // Back for longer than the longest wait: the next outage starts from the first step.
        replica.lock().back_since = Instant::now().checked_sub(MAX_BACKOFF);
        router.mark_down(replica, 2, &gone());
        assert_eq!((track(&router).outages, track(&router).step), (3, 0));
    }

    #[test]
    fn the_wait_doubles_per_step_up_to_the_longest() {
        let config = ReplicaConfig::default().with_check_interval(Duration::from_millis(500));
        let router = Router {
            replicas: Vec::new(),
            config,
            echo_pool: false,
            written: AtomicU64::new(0),
            written_unknown: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            layout: OnceLock::new(),
        };
        let waits: Vec<u64> = (0..8)
            .map(|step| router.backoff(step).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
        assert_eq!(router.backoff(u32::MAX), MAX_BACKOFF);
    }
}

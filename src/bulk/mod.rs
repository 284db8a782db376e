//! Bulk data at any size: the options, progress reports, rows and errors of the
//! [`Repo`](crate::Repo)'s streaming imports and exports.
//!
//! - Imports from any source: [`Repo::import_users_from`](crate::Repo::import_users_from),
//!   [`import_locations_from`](crate::Repo::import_locations_from) and
//!   [`import_links_from`](crate::Repo::import_links_from) take an iterator of
//!   `Result<row, E>` (a CSV reader's errors flow through as `E`) and write it in batches of
//!   [`ImportOptions::batch_size`] rows: memory is bounded by the batch, not by the input.
//!   Each row is validated as by the slice methods, referral cycles are refused (across batches
//!   too), and [`Commit`] chooses between one transaction for the whole input and one per batch.
//! - Exports: [`Repo::export_users`](crate::Repo::export_users),
//!   [`export_locations`](crate::Repo::export_locations) and
//!   [`export_links`](crate::Repo::export_links) write CSV (PostgreSQL's `COPY … TO STDOUT`,
//!   SQLite a keyset walk) that the imports read back exactly; `each_user`, `each_location` and
//!   `each_link` hand out rows instead.
//! - Progress: every one of them reports to an optional [`Progress`] callback at a bounded rate.
//!   (A slice imports with progress through the streaming methods:
//!   `repo.import_users_from(users.iter().map(Ok::<_, Infallible>), options)`.)
//! - CSV reading (feature `csv`): `bulk::csv` turns CSV files into rows for the imports, with line
//!   and column in its errors.
//!
//! # The CSV format
//!
//! One header line naming the columns, then one line a row, in the column order of the table:
//!
//! | table | header |
//! | --- | --- |
//! | users | `user_id,username,full_name,language,active,logged_as,referrer_id,created_at` |
//! | locations | `location_id,location_name,address,has_solarium,created_at` |
//! | links | `location_id,user_id` |
//!
//! Exactly PostgreSQL's `COPY … (FORMAT csv, HEADER)` output, on both backends: fields separated
//! by `,`, lines ended by `\n`; a text field in double quotes when it holds a `,`, a `"`, a line
//! feed or a carriage return (a `"` inside doubled); `NULL` as an empty field; booleans `t` and
//! `f`; timestamps `YYYY-MM-DD HH:MM:SS` with the fraction of a second, when there is one, in at
//! most 6 digits without trailing zeros. Rows are ordered by key (users and locations by id,
//! links by user then location).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;

use crate::error::Error;
use crate::models::{Location, NewLocation, NewUser, User};

#[cfg(feature = "csv")]
pub mod csv;
pub(crate) mod format;

/// Rows an import writes a batch by default.
pub const DEFAULT_BATCH_SIZE: usize = 20_000;
/// Largest [`ImportOptions::batch_size`]: a batch is held in memory.
pub const MAX_BATCH_SIZE: usize = 1_000_000;
/// Shortest time between two progress reports by default.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Where a streaming import commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Commit {
    /// One transaction for the whole input (the default): a failure anywhere, in the source or
    /// in the database, leaves nothing of the import.
    #[default]
    Whole,
    /// One transaction per batch: a failure leaves the batches before it committed, and
    /// [`ImportError::committed`] says how many source rows they held. Inside a transaction
    /// the caller opened, each batch is a savepoint instead, and nothing is committed before the
    /// caller's transaction is.
    PerBatch,
}

/// A progress report: how far an import or export has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows done: read from the source and written (imports, in the import's transaction), or
    /// written out (exports).
    pub rows: u64,
    /// Bytes done, when known: read from the source (when it reports them through a
    /// [`ByteCount`], as the readers of `bulk::csv` do) or written out (exports).
    pub bytes: Option<u64>,
    /// Time since the import or export started.
    pub elapsed: Duration,
    /// Whether this is the last report, with the final counts.
    pub finished: bool,
}

/// A progress callback.
pub type ProgressFn<'p> = Box<dyn FnMut(&Progress) + 'p>;

/// A count of bytes a source has consumed, shared between the source (which adds to it) and an
/// import (which puts it in its [`Progress`] reports). Cloning shares the count.
#[derive(Debug, Clone, Default)]
pub struct ByteCount(Arc<AtomicU64>);

impl ByteCount {
    /// A new count at 0.
    pub fn new() -> Self {
        ByteCount::default()
    }

    /// Sets the count to `bytes`.
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a streaming import runs: batch size, where it commits, progress.
///
/// ```
/// use userbase::bulk::{Commit, ImportOptions};
///
/// let options = ImportOptions::default()
///     .batch_size(50_000)
///     .commit(Commit::PerBatch)
///     .progress(|p| eprintln!("{} rows in {:?}", p.rows, p.elapsed));
/// ```
#[non_exhaustive]
pub struct ImportOptions<'p> {
    pub(crate) batch_size: usize,
    pub(crate) commit: Commit,
    pub(crate) reporter: Reporter<'p>,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        ImportOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            commit: Commit::Whole,
            reporter: Reporter::default(),
        }
    }
}

impl fmt::Debug for ImportOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportOptions")
            .field("batch_size", &self.batch_size)
            .field("commit", &self.commit)
            .field("reporter", &self.reporter)
            .finish()
    }
}

impl<'p> ImportOptions<'p> {
    /// Rows a batch holds: from 1 to [`MAX_BATCH_SIZE`] (values outside are clamped);
    /// default [`DEFAULT_BATCH_SIZE`]. Memory grows with it (a batch and its rows are held
    /// while it is written); each batch costs a few round trips more, so small batches are
    /// slower.
    pub fn batch_size(self, rows: usize) -> Self {
        ImportOptions {
            batch_size: rows.clamp(1, MAX_BATCH_SIZE),
            ..self
        }
    }

    /// Where the import commits; default [`Commit::Whole`].
    pub fn commit(self, commit: Commit) -> Self {
        ImportOptions { commit, ..self }
    }

    /// Calls `callback` with the progress after a batch, at most once every
    /// [`progress_interval`](ImportOptions::progress_interval), and once at the end with the
    /// final counts ([`Progress::finished`]). Rows count up monotonically. Default: none.
    pub fn progress(mut self, callback: impl FnMut(&Progress) + 'p) -> Self {
        self.reporter.callback = Some(Box::new(callback));
        self
    }

    /// The shortest time between two progress reports (the last one is always made); default
    /// [`DEFAULT_PROGRESS_INTERVAL`].
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.reporter.interval = interval;
        self
    }

    /// The bytes the source has read, to report in [`Progress::bytes`]; default none.
    pub fn bytes(mut self, count: ByteCount) -> Self {
        self.reporter.bytes = Some(count);
        self
    }
}

/// How an export runs: progress.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ExportOptions<'p> {
    pub(crate) reporter: Reporter<'p>,
}

impl<'p> ExportOptions<'p> {
    /// Calls `callback` with the progress at most once every
    /// [`progress_interval`](ExportOptions::progress_interval), and once at the end; default
    /// none.
    pub fn progress(mut self, callback: impl FnMut(&Progress) + 'p) -> Self {
        self.reporter.callback = Some(Box::new(callback));
        self
    }

    /// The shortest time between two progress reports; default
    /// [`DEFAULT_PROGRESS_INTERVAL`].
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.reporter.interval = interval;
        self
    }
}

/// Calls a progress callback at a bounded rate.
pub(crate) struct Reporter<'p> {
    callback: Option<ProgressFn<'p>>,
    interval: Duration,
    bytes: Option<ByteCount>,
    start: Instant,
    last: Option<Instant>,
}

impl Default for Reporter<'_> {
    fn default() -> Self {
        Reporter {
            callback: None,
            interval: DEFAULT_PROGRESS_INTERVAL,
            bytes: None,
            start: Instant::now(),
            last: None,
        }
    }
}

impl fmt::Debug for Reporter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("callback", &self.callback.is_some())
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Rows between two looks at the clock in [`Reporter::row`].
const ROWS_PER_CLOCK_READ: u64 = 1_024;

impl Reporter<'_> {
    /// Starts the clock.
    pub(crate) fn start(&mut self) {
        self.start = Instant::now();
        self.last = None;
    }

    /// After `rows` rows (and `bytes` bytes when the caller counts them): reports when the
    /// interval has passed since the last report.
    pub(crate) fn tick(&mut self, rows: u64, bytes: Option<u64>) {
        if self.callback.is_none() {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return;
        }
        self.last = Some(now);
        self.report(rows, bytes, now, false);
    }

    /// [`tick`](Reporter::tick) once every [`ROWS_PER_CLOCK_READ`] rows, for row-by-row loops.
    pub(crate) fn row(&mut self, rows: u64, bytes: Option<u64>) {
        if rows.is_multiple_of(ROWS_PER_CLOCK_READ) {
            self.tick(rows, bytes);
        }
    }

    /// The last report.
    pub(crate) fn finish(&mut self, rows: u64, bytes: Option<u64>) {
        if self.callback.is_some() {
            self.report(rows, bytes, Instant::now(), true);
        }
    }

    fn report(&mut self, rows: u64, bytes: Option<u64>, now: Instant, finished: bool) {
        let bytes = bytes.or_else(|| self.bytes.as_ref().map(ByteCount::get));
        let progress = Progress {
            rows,
            bytes,
            elapsed: now.duration_since(self.start),
            finished,
        };
        if let Some(callback) = self.callback.as_mut() {
            callback(&progress);
        }
    }
}

/// What a streaming import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Imported {
    /// Rows read from the source.
    pub rows: u64,
    /// Rows inserted: `rows` less the links that existed already (users and locations are all
    /// inserted or the import fails).
    pub inserted: u64,
    /// Batches written.
    pub batches: u64,
}

/// What an export did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exported {
    /// Rows written out.
    pub rows: u64,
    /// Bytes written out (the header line included).
    pub bytes: u64,
}

/// An export that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Writing to the output failed.
    #[error("writing the export failed")]
    Write(#[source] std::io::Error),
    /// The database failed.
    #[error("reading the export failed")]
    Database(#[source] Error),
}

impl From<Error> for ExportError {
    fn from(error: Error) -> Self {
        ExportError::Database(error)
    }
}

/// A streaming import that failed.
#[derive(Debug)]
#[non_exhaustive]
pub struct ImportError<E> {
    /// Source rows of the batches committed before the failure: 0 with [`Commit::Whole`].
    pub committed: u64,
    /// The source row (counted from 1) at fault, when the failure is one row's: the source's
    /// own error, or a row refused by validation.
    pub row: Option<u64>,
    /// What failed.
    pub cause: ImportCause<E>,
}

/// The cause of an [`ImportError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportCause<E> {
    /// The source failed (its iterator yielded `Err`).
    Source(E),
    /// Validation or the database refused the import.
    Database(Error),
}

impl<E> ImportError<E> {
    /// The database's or validation's error, when that is the cause.
    pub fn database(&self) -> Option<&Error> {
        match &self.cause {
            ImportCause::Database(error) => Some(error),
            ImportCause::Source(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for ImportError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cause, self.row) {
            (ImportCause::Source(_), Some(row)) => write!(f, "reading row {row} failed")?,
            (ImportCause::Source(_), None) => f.write_str("reading the source failed")?,
            (ImportCause::Database(_), Some(row)) => write!(f, "row {row} was refused")?,
            (ImportCause::Database(_), None) => f.write_str("the import was refused")?,
        }
        write!(f, " ({} rows committed before)", self.committed)
    }
}

impl<E> std::error::Error for ImportError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            ImportCause::Source(error) => Some(error),
            ImportCause::Database(error) => Some(error),
        }
    }
}

/// A row a user import takes: [`NewUser`] itself, an owned [`UserRecord`], or a stored [`User`].
pub trait AsNewUser {
    /// The user to insert.
    fn as_new_user(&self) -> NewUser<'_>;
}

impl AsNewUser for NewUser<'_> {
    fn as_new_user(&self) -> NewUser<'_> {
        *self
    }
}

impl AsNewUser for User {
    fn as_new_user(&self) -> NewUser<'_> {
        NewUser {
            user_id: self.user_id,
            username: self.username.as_deref(),
            full_name: &self.full_name,
            language: Some(&self.language),
            active: Some(self.active),
            logged_as: self.logged_as.as_deref(),
            referrer_id: self.referrer_id,
            created_at: Some(self.created_at),
        }
    }
}

/// A user that owns its text: a row of a user import read from a file. `None` fields take the
/// column default, as in [`NewUser`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    /// The user's id.
    pub user_id: i64,
    /// Handle.
    pub username: Option<String>,
    /// Full name.
    pub full_name: String,
    /// Language code; default `en`.
    pub language: Option<String>,
    /// Active flag; default `true`.
    pub active: Option<bool>,
    /// Logged-in name.
    pub logged_as: Option<String>,
    /// Referrer's id.
    pub referrer_id: Option<i64>,
    /// Creation time; default the database's now.
    pub created_at: Option<NaiveDateTime>,
}

impl AsNewUser for UserRecord {
    fn as_new_user(&self) -> NewUser<'_> {
        NewUser {
            user_id: self.user_id,
            username: self.username.as_deref(),
            full_name: &self.full_name,
            language: self.language.as_deref(),
            active: self.active,
            logged_as: self.logged_as.as_deref(),
            referrer_id: self.referrer_id,
            created_at: self.created_at,
        }
    }
}

/// A row a location import takes: [`NewLocation`] (its id generated), an owned
/// [`LocationRecord`], or a stored [`Location`] (its id kept).
pub trait AsNewLocation {
    /// The id to store the location under, or `None` for a generated one.
    fn location_id(&self) -> Option<i32>;
    /// The location to insert.
    fn as_new_location(&self) -> NewLocation<'_>;
}

impl AsNewLocation for NewLocation<'_> {
    fn location_id(&self) -> Option<i32> {
        None
    }

    fn as_new_location(&self) -> NewLocation<'_> {
        *self
    }
}

impl AsNewLocation for Location {
    fn location_id(&self) -> Option<i32> {
        Some(self.location_id)
    }

    fn as_new_location(&self) -> NewLocation<'_> {
        NewLocation {
            location_name: &self.location_name,
            address: &self.address,
            has_solarium: Some(self.has_solarium),
            created_at: Some(self.created_at),
        }
    }
}

/// A location that owns its text: a row of a location import read from a file.
///
/// With a `location_id` the location is stored under that id (and PostgreSQL's id sequence is
/// moved past it); without one, the id is generated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocationRecord {
    /// Id to store the location under; default a generated one.
    pub location_id: Option<i32>,
    /// Unique name.
    pub location_name: String,
    /// Street address.
    pub address: String,
    /// Solarium flag; default `true`.
    pub has_solarium: Option<bool>,
    /// Creation time; default the database's now.
    pub created_at: Option<NaiveDateTime>,
}

impl AsNewLocation for LocationRecord {
    fn location_id(&self) -> Option<i32> {
        self.location_id
    }

    fn as_new_location(&self) -> NewLocation<'_> {
        NewLocation {
            location_name: &self.location_name,
            address: &self.address,
            has_solarium: self.has_solarium,
            created_at: self.created_at,
        }
    }
}

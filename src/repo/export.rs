//! Streaming exports: every user, location or link as CSV to a writer (PostgreSQL's
//! `COPY … TO STDOUT`, SQLite a keyset walk), or as rows to a callback (keyset pages on both).

use std::io::{BufRead, BufWriter, Write};

use diesel::connection::SimpleConnection;
use diesel::pg::{CopyFormat, CopyTarget, Pg};
use diesel::prelude::*;
use diesel::query_builder::AstPass;

use super::dispatch::dispatch;
use super::Repo;
use crate::bulk::{format, ExportError, ExportOptions, Exported, Reporter};
use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::models::{Location, User, UserLocation};
use crate::schema::{locations, userlocations, users};
use crate::validate::PAGE_LIMIT_MAX;

/// Rows a keyset page of the exports holds.
const EXPORT_PAGE: i64 = 10_000;
const _: () = assert!(EXPORT_PAGE <= PAGE_LIMIT_MAX);

/// Buffer of the writer an export writes through.
const WRITE_BUFFER: usize = 64 * 1024;

/// The ordered queries PostgreSQL's exports `COPY` out: `COPY (SELECT …) TO STDOUT`, so the
/// file is ordered by key whatever the order of the table's pages.
///
/// Diesel's `copy_to` takes a [`CopyTarget`], which it implements for tables and columns only;
/// these targets write the query instead.
macro_rules! ordered_target {
    ($name:ident, $table:path, $sql:expr) => {
        #[derive(Default)]
        struct $name;

        impl CopyTarget for $name {
            type Table = $table;
            type SqlType = <$table as diesel::query_builder::AsQuery>::SqlType;

            fn walk_target(mut pass: AstPass<'_, '_, Pg>) -> QueryResult<()> {
                pass.push_sql($sql);
                Ok(())
            }
        }
    };
}

ordered_target!(
    OrderedUsers,
    users::table,
    concat!(
        "(SELECT ",
        crate::models::user::user_columns!(),
        " FROM users ORDER BY user_id)"
    )
);
ordered_target!(
    OrderedLocations,
    locations::table,
    "(SELECT location_id, location_name, address, has_solarium, created_at \
     FROM locations ORDER BY location_id)"
);
ordered_target!(
    OrderedLinks,
    userlocations::table,
    "(SELECT location_id, user_id FROM userlocations ORDER BY user_id, location_id)"
);

/// Counts the rows of CSV text as it passes: line feeds outside quoted fields.
#[derive(Default)]
struct LineCounter {
    quoted: bool,
    lines: u64,
}

impl LineCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' if !self.quoted => self.lines += 1,
                _ => {}
            }
        }
    }
}

/// A writer that counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Counting<W> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.inner.write_all(bytes).map_err(ExportError::Write)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        self.inner.flush().map_err(ExportError::Write)
    }
}

/// The error of reading a `COPY … TO STDOUT`: the database's, when it is one.
fn copy_read_error(error: std::io::Error) -> ExportError {
    let error = match error.into_inner() {
        Some(inner) => match inner.downcast::<diesel::result::Error>() {
            Ok(diesel_error) => Error::from(*diesel_error),
            Err(other) => Error::Query(diesel::result::Error::DeserializationError(other)),
        },
        None => Error::Query(diesel::result::Error::DeserializationError(
            "reading COPY data failed".into(),
        )),
    };
    ExportError::Database(error)
}

impl Repo<'_> {
    /// Writes every user to `out` as CSV, ordered by id, header first (see the
    /// [format](crate::bulk#the-csv-format)), in bounded memory: PostgreSQL's
    /// `COPY (SELECT …) TO STDOUT`, passed through; on SQLite keyset pages of 10 000 users in
    /// one transaction. [`import_users_from`](Repo::import_users_from) with
    /// `bulk::csv::users` (feature `csv`) reads the file back exactly. `out` is
    /// buffered here.
    ///
    /// ```no_run
    /// use userbase::bulk::ExportOptions;
    /// use userbase::Database;
    ///
    /// let db = Database::from_env()?;
    /// let file = std::fs::File::create("users.csv")?;
    /// let exported = db.session()?.repo().export_users(file, ExportOptions::default())?;
    /// println!("{} users, {} bytes", exported.rows, exported.bytes);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ExportError::Write`] when `out` fails; [`ExportError::Database`] when the database
    /// does. What was written before stays written.
    pub fn export_users(
        &mut self,
        out: impl Write,
        options: ExportOptions<'_>,
    ) -> Result<Exported, ExportError> {
        op!(self, ExportUsers, typed ExportError {
            self.export::<OrderedUsers>(out, options, format::USERS_HEADER, |repo, write| {
                repo.each_user(|user| write(&|buf| format::user(buf, user)))
            })
        })
    }

    /// Writes every location to `out` as CSV, ordered by id, as
    /// [`export_users`](Repo::export_users) does users.
    ///
    /// # Errors
    ///
    /// As [`export_users`](Repo::export_users).
    pub fn export_locations(
        &mut self,
        out: impl Write,
        options: ExportOptions<'_>,
    ) -> Result<Exported, ExportError> {
        op!(self, ExportLocations, typed ExportError {
            self.export::<OrderedLocations>(out, options, format::LOCATIONS_HEADER, |repo, write| {
                repo.each_location(|location| write(&|buf| format::location(buf, location)))
            })
        })
    }

    /// Writes every link to `out` as CSV, ordered by user then location, as
    /// [`export_users`](Repo::export_users) does users.
    ///
    /// # Errors
    ///
    /// As [`export_users`](Repo::export_users).
    pub fn export_links(
        &mut self,
        out: impl Write,
        options: ExportOptions<'_>,
    ) -> Result<Exported, ExportError> {
        op!(self, ExportLinks, typed ExportError {
            self.export::<OrderedLinks>(out, options, format::LINKS_HEADER, |repo, write| {
                repo.each_link(|link| write(&|buf| format::link(buf, link)))
            })
        })
    }

    /// An export: `COPY` of `T` on PostgreSQL; on SQLite the header, then `walk` in a
    /// transaction, given a function that writes one row (formatted by its argument).
    fn export<T>(
        &mut self,
        out: impl Write,
        options: ExportOptions<'_>,
        header: &str,
        walk: impl FnOnce(
            &mut Repo<'_>,
            &mut dyn FnMut(&dyn Fn(&mut Vec<u8>)) -> Result<(), ExportError>,
        ) -> Result<u64, ExportError>,
    ) -> Result<Exported, ExportError>
    where
        T: CopyTarget + Default,
    {
        self.check_usable()?;
        let ExportOptions { mut reporter } = options;
        reporter.start();
        let mut out = Counting {
            inner: BufWriter::with_capacity(WRITE_BUFFER, out),
            bytes: 0,
        };
        // One transaction: the SQLite walk sees one snapshot, and a `COPY` that failed on the
        // server leaves it aborted, which the check after the `COPY` sees.
        let rows = self.transaction(|repo| match &mut *repo.conn {
            AnyConnection::Pg(c) => copy_out::<T>(c, &mut out, &mut reporter),
            AnyConnection::Sqlite(_) => {
                out.write_all(header.as_bytes())?;
                let mut line = Vec::with_capacity(256);
                let mut rows = 0_u64;
                let mut write_row = |format: &dyn Fn(&mut Vec<u8>)| {
                    line.clear();
                    format(&mut line);
                    out.write_all(&line)?;
                    rows += 1;
                    reporter.row(rows, Some(out.bytes));
                    Ok(())
                };
                walk(repo, &mut write_row)
            }
        })?;
        out.flush()?;
        reporter.finish(rows, Some(out.bytes));
        Ok(Exported {
            rows,
            bytes: out.bytes,
        })
    }

    /// Calls `f` with every user, ordered by id, read in keyset pages of 10 000 (memory
    /// bounded by a page); returns how many there were. Stops at `f`'s first error.
    ///
    /// # Errors
    ///
    /// `f`'s error; [`Error::Query`] (converted into `E`) when the database fails.
    pub fn each_user<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(&User) -> Result<(), E>,
    ) -> Result<u64, E> {
        op!(self, EachUser, any_error {
            let mut after = None;
            let mut rows = 0;
            loop {
                let page = self.users_page(after, EXPORT_PAGE)?;
                for user in &page {
                    f(user)?;
                }
                rows += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() as i64 == EXPORT_PAGE => after = Some(last.user_id),
                    _ => return Ok(rows),
                }
            }
        })
    }

    /// Calls `f` with every location, ordered by id, as [`each_user`](Repo::each_user) does
    /// users.
    ///
    /// # Errors
    ///
    /// As [`each_user`](Repo::each_user).
    pub fn each_location<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(&Location) -> Result<(), E>,
    ) -> Result<u64, E> {
        op!(self, EachLocation, any_error {
            let mut after = None;
            let mut rows = 0;
            loop {
                let page = self.locations_page(after, EXPORT_PAGE)?;
                for location in &page {
                    f(location)?;
                }
                rows += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() as i64 == EXPORT_PAGE => {
                        after = Some(last.location_id);
                    }
                    _ => return Ok(rows),
                }
            }
        })
    }

    /// Calls `f` with every link, ordered by user then location, as
    /// [`each_user`](Repo::each_user) does users.
    ///
    /// # Errors
    ///
    /// As [`each_user`](Repo::each_user).
    pub fn each_link<E: From<Error>>(
        &mut self,
        mut f: impl FnMut(&UserLocation) -> Result<(), E>,
    ) -> Result<u64, E> {
        op!(self, EachLink, any_error {
            let mut after: Option<UserLocation> = None;
            let mut rows = 0;
            loop {
                let page = self.links_page(after)?;
                for link in &page {
                    f(link)?;
                }
                rows += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() as i64 == EXPORT_PAGE => after = Some(*last),
                    _ => return Ok(rows),
                }
            }
        })
    }

    /// The page of links after `after` (from the first when `None`), ordered by user then
    /// location.
    fn links_page(&mut self, after: Option<UserLocation>) -> Result<Vec<UserLocation>> {
        // The first key of the page: (user, location) at or after it.
        let (user_id, location_id) = match after {
            None => (i64::MIN, i32::MIN),
            Some(last) => match (last.location_id.checked_add(1), last.user_id.checked_add(1)) {
                (Some(next), _) => (last.user_id, next),
                (None, Some(next_user)) => (next_user, i32::MIN),
                (None, None) => return self.check_usable().map(|()| Vec::new()),
            },
        };
        self.run(|c| {
            dispatch!(c => userlocations::table
                .filter(
                    userlocations::user_id.ge(user_id).and(
                        userlocations::user_id
                            .gt(user_id)
                            .or(userlocations::location_id.ge(location_id)),
                    ),
                )
                .order((userlocations::user_id, userlocations::location_id))
                .limit(EXPORT_PAGE)
                .select(UserLocation::as_select())
                .load(c))
        })
    }
}

/// `COPY` of `T` to `out` as CSV with a header; returns the rows.
///
/// Diesel's reader of `COPY … TO STDOUT` leaves the statement's final result unread, which
/// keeps the connection busy; a simple query (`PQexec`) discards it. That query is a `SELECT`
/// in the export's transaction, so a `COPY` the server ended with an error (whose error the
/// discarded result held) fails it: the transaction is aborted.
fn copy_out<T: CopyTarget + Default>(
    c: &mut PgConnection,
    out: &mut Counting<impl Write>,
    reporter: &mut Reporter<'_>,
) -> Result<u64, ExportError> {
    let rows = {
        let mut copy = diesel::copy_to(T::default())
            .with_format(CopyFormat::Csv)
            .with_header(true)
            .load_raw(&mut *c)
            .map_err(|e| ExportError::Database(e.into()))?;
        let rows = pump(&mut copy, out, reporter);
        if rows.is_err() {
            // Read the rest, so the connection leaves the COPY state.
            while let Ok(chunk) = copy.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                copy.consume(n);
            }
        }
        rows
    };
    c.batch_execute("SELECT 1")
        .map_err(|e| ExportError::Database(e.into()))?;
    rows
}

/// Passes the CSV of a `COPY` to `out`, counting its rows; returns them.
fn pump(
    copy: &mut impl BufRead,
    out: &mut Counting<impl Write>,
    reporter: &mut Reporter<'_>,
) -> Result<u64, ExportError> {
    let mut lines = LineCounter::default();
    let mut chunks = 0_u32;
    loop {
        let chunk = copy.fill_buf().map_err(copy_read_error)?;
        if chunk.is_empty() {
            break;
        }
        lines.feed(chunk);
        out.write_all(chunk)?;
        let n = chunk.len();
        copy.consume(n);
        // A chunk is mostly a row: look at the clock every 1 024.
        chunks = chunks.wrapping_add(1);
        if chunks.is_multiple_of(1_024) {
            reporter.tick(lines.lines.saturating_sub(1), Some(out.bytes));
        }
    }
    Ok(lines.lines.saturating_sub(1))
}

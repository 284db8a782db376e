//! Reading the CSV of the [exports](super) back as rows for the imports (feature `csv`).
//!
//! [`users`], [`locations`] and [`links`] wrap any [`Read`] in an iterator of
//! `Result<row, CsvError>`, ready for
//! [`Repo::import_users_from`](crate::Repo::import_users_from) and friends. The first line must
//! be the table's header (see the [format](super#the-csv-format)); a malformed line is a
//! [`CsvError`] naming its line and column, and ends the import.
//!
//! ```no_run
//! use userbase::bulk::{self, ImportOptions};
//! use userbase::Database;
//!
//! let db = Database::from_env()?;
//! let rows = bulk::csv::users(std::fs::File::open("users.csv")?);
//! let options = ImportOptions::default().bytes(rows.byte_count());
//! let imported = db.session()?.repo().import_users_from(rows, options)?;
//! println!("{} users", imported.inserted);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::Read;
use std::marker::PhantomData;

use chrono::NaiveDateTime;

use super::format::{parse_bool, parse_timestamp};
use super::{ByteCount, LocationRecord, UserRecord};
use crate::models::UserLocation;

/// A CSV line that could not be read as a row.
#[derive(Debug)]
pub struct CsvError {
    line: u64,
    column: Option<u64>,
    field: Option<&'static str>,
    message: String,
    source: Option<::csv::Error>,
}

impl CsvError {
    /// The line (counted from 1) the bad row starts on.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The column (counted from 1) at fault, when one is.
    pub fn column(&self) -> Option<u64> {
        self.column
    }

    /// The name of the column at fault, when one is.
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    fn at(line: u64, column: usize, field: &'static str, message: String) -> Self {
        CsvError {
            line,
            column: u64::try_from(column).ok().map(|c| c.saturating_add(1)),
            field: Some(field),
            message,
            source: None,
        }
    }

    fn from_csv(error: ::csv::Error, fields: &'static [&'static str]) -> Self {
        let line = error.position().map_or(0, ::csv::Position::line);
        let (column, message) = match error.kind() {
            ::csv::ErrorKind::Utf8 { err, .. } => (Some(err.field()), "invalid UTF-8".to_owned()),
            ::csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => (
                None,
                format!("{len} fields where the header has {expected_len}"),
            ),
            ::csv::ErrorKind::Io(_) => (None, "reading failed".to_owned()),
            _ => (None, "malformed CSV".to_owned()),
        };
        CsvError {
            line,
            column: column.and_then(|c| u64::try_from(c).ok()).map(|c| c + 1),
            field: column.and_then(|c| fields.get(c).copied()),
            message,
            source: Some(error),
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(column) = self.column {
            write!(f, ", column {column}")?;
        }
        if let Some(field) = self.field {
            write!(f, " ({field})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for CsvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A row type read from CSV: [`UserRecord`], [`LocationRecord`] or [`UserLocation`].
pub trait CsvRow: Sized {
    /// The header's column names, in order.
    const COLUMNS: &'static [&'static str];

    /// The row of `record`, found on line `line`.
    ///
    /// # Errors
    ///
    /// [`CsvError`] naming the line and the column that is not a value of its type.
    fn from_record(record: &::csv::StringRecord, line: u64) -> Result<Self, CsvError>;
}

/// The fields of one record, read by column with errors naming line and column.
struct Fields<'r> {
    record: &'r ::csv::StringRecord,
    line: u64,
    columns: &'static [&'static str],
}

impl Fields<'_> {
    fn raw(&self, i: usize) -> &str {
        self.record.get(i).unwrap_or("")
    }

    fn error(&self, i: usize, message: String) -> CsvError {
        CsvError::at(
            self.line,
            i,
            self.columns.get(i).copied().unwrap_or("?"),
            message,
        )
    }

    fn text(&self, i: usize) -> String {
        self.raw(i).to_owned()
    }

    fn optional_text(&self, i: usize) -> Option<String> {
        Some(self.raw(i))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    fn parsed<T: std::str::FromStr>(&self, i: usize, what: &str) -> Result<T, CsvError> {
        let raw = self.raw(i);
        raw.parse()
            .map_err(|_| self.error(i, format!("{raw:?} is not {what}")))
    }

    fn optional_parsed<T: std::str::FromStr>(
        &self,
        i: usize,
        what: &str,
    ) -> Result<Option<T>, CsvError> {
        if self.raw(i).is_empty() {
            Ok(None)
        } else {
            self.parsed(i, what).map(Some)
        }
    }

    fn optional_bool(&self, i: usize) -> Result<Option<bool>, CsvError> {
        let raw = self.raw(i);
        if raw.is_empty() {
            return Ok(None);
        }
        parse_bool(raw)
            .map(Some)
            .ok_or_else(|| self.error(i, format!("{raw:?} is not a boolean (t or f)")))
    }

    fn optional_timestamp(&self, i: usize) -> Result<Option<NaiveDateTime>, CsvError> {
        let raw = self.raw(i);
        if raw.is_empty() {
            return Ok(None);
        }
        parse_timestamp(raw).map(Some).ok_or_else(|| {
            self.error(
                i,
                format!("{raw:?} is not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff])"),
            )
        })
    }
}

impl CsvRow for UserRecord {
    const COLUMNS: &'static [&'static str] = &[
        "user_id",
        "username",
        "full_name",
        "language",
        "active",
        "logged_as",
        "referrer_id",
        "created_at",
    ];

    fn from_record(record: &::csv::StringRecord, line: u64) -> Result<Self, CsvError> {
        let f = Fields {
            record,
            line,
            columns: Self::COLUMNS,
        };
        Ok(UserRecord {
            user_id: f.parsed(0, "a 64-bit integer")?,
            username: f.optional_text(1),
            full_name: f.text(2),
            language: f.optional_text(3),
            active: f.optional_bool(4)?,
            logged_as: f.optional_text(5),
            referrer_id: f.optional_parsed(6, "a 64-bit integer")?,
            created_at: f.optional_timestamp(7)?,
        })
    }
}

impl CsvRow for LocationRecord {
    const COLUMNS: &'static [&'static str] = &[
        "location_id",
        "location_name",
        "address",
        "has_solarium",
        "created_at",
    ];

    fn from_record(record: &::csv::StringRecord, line: u64) -> Result<Self, CsvError> {
        let f = Fields {
            record,
            line,
            columns: Self::COLUMNS,
        };
        Ok(LocationRecord {
            location_id: f.optional_parsed(0, "a 32-bit integer")?,
            location_name: f.text(1),
            address: f.text(2),
            has_solarium: f.optional_bool(3)?,
            created_at: f.optional_timestamp(4)?,
        })
    }
}

impl CsvRow for UserLocation {
    const COLUMNS: &'static [&'static str] = &["location_id", "user_id"];

    fn from_record(record: &::csv::StringRecord, line: u64) -> Result<Self, CsvError> {
        let f = Fields {
            record,
            line,
            columns: Self::COLUMNS,
        };
        Ok(UserLocation {
            location_id: f.parsed(0, "a 32-bit integer")?,
            user_id: f.parsed(1, "a 64-bit integer")?,
        })
    }
}

/// The rows of a CSV file, one `Result` a line: see [`users`], [`locations`], [`links`].
///
/// Holds one record at a time. After the first error it yields nothing more.
pub struct Records<R, T> {
    reader: ::csv::Reader<R>,
    record: ::csv::StringRecord,
    bytes: ByteCount,
    header_checked: bool,
    failed: bool,
    row: PhantomData<fn() -> T>,
}

impl<R, T> fmt::Debug for Records<R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("bytes", &self.bytes.get())
            .finish_non_exhaustive()
    }
}

impl<R: Read, T: CsvRow> Records<R, T> {
    /// Rows of type `T` read from `reader` (which this buffers itself).
    pub fn new(reader: R) -> Self {
        Records {
            reader: ::csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(reader),
            record: ::csv::StringRecord::new(),
            bytes: ByteCount::new(),
            header_checked: false,
            failed: false,
            row: PhantomData,
        }
    }

    /// The bytes read so far, kept up to date as rows are read: pass it to
    /// [`ImportOptions::bytes`](super::ImportOptions::bytes).
    pub fn byte_count(&self) -> ByteCount {
        self.bytes.clone()
    }

    fn check_header(&mut self) -> Result<(), CsvError> {
        let header = self
            .reader
            .headers()
            .map_err(|e| CsvError::from_csv(e, T::COLUMNS))?;
        let expected = T::COLUMNS;
        if header.iter().eq(expected.iter().copied()) {
            return Ok(());
        }
        let column = header
            .iter()
            .zip(expected)
            .position(|(found, expected)| found != *expected)
            .unwrap_or_else(|| header.len().min(expected.len()));
        Err(CsvError {
            line: 1,
            column: u64::try_from(column).ok().map(|c| c.saturating_add(1)),
            field: None,
            message: format!("the header must be {:?}", expected.join(",")),
            source: None,
        })
    }

    fn read(&mut self) -> Option<Result<T, CsvError>> {
        if !self.header_checked {
            self.header_checked = true;
            if let Err(error) = self.check_header() {
                return Some(Err(error));
            }
        }
        match self.reader.read_record(&mut self.record) {
            Ok(false) => {
                self.bytes.set(self.reader.position().byte());
                None
            }
            Ok(true) => {
                self.bytes.set(self.reader.position().byte());
                let line = self.record.position().map_or(0, ::csv::Position::line);
                Some(T::from_record(&self.record, line))
            }
            Err(error) => Some(Err(CsvError::from_csv(error, T::COLUMNS))),
        }
    }
}

impl<R: Read, T: CsvRow> Iterator for Records<R, T> {
    type Item = Result<T, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.read();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// The users of a CSV file with the users header.
pub fn users<R: Read>(reader: R) -> Records<R, UserRecord> {
    Records::new(reader)
}

/// The locations of a CSV file with the locations header.
pub fn locations<R: Read>(reader: R) -> Records<R, LocationRecord> {
    Records::new(reader)
}

/// The links of a CSV file with the links header.
pub fn links<R: Read>(reader: R) -> Records<R, UserLocation> {
    Records::new(reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bulk::format::{LINKS_HEADER, LOCATIONS_HEADER, USERS_HEADER};

    /// The columns a CSV file is read with are the ones the exports write.
    #[test]
    fn the_columns_read_are_the_headers_written() {
        let header = |columns: &[&str]| format!("{}\n", columns.join(","));
        assert_eq!(header(UserRecord::COLUMNS), USERS_HEADER);
        assert_eq!(header(LocationRecord::COLUMNS), LOCATIONS_HEADER);
        assert_eq!(header(UserLocation::COLUMNS), LINKS_HEADER);
    }
}

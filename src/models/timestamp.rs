//! Reading `created_at` columns: on SQLite a fast path for the text Diesel and SQLite write.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::sql_types::Timestamp;
use diesel::sqlite::Sqlite;

use crate::connection::MultiBackend;

/// A `Timestamp` column read into a `NaiveDateTime` (the models' `deserialize_as` type; `pub`
/// because the derived `Queryable::Row` names it, unreachable from outside the crate).
///
/// On SQLite a timestamp is text. Diesel parses it with chrono's `parse_from_str`, trying up to
/// 18 formats, and interprets each format string again for every value: a third of the time of
/// reading many rows. The text Diesel writes and SQLite's `strftime('%Y-%m-%d %H:%M:%f')`
/// writes is `YYYY-MM-DD HH:MM:SS` with an optional fraction of 1 to 9 digits; that form is
/// parsed here directly, anything else (other formats, leap seconds, out-of-range fields) by
/// Diesel's own parser, so every value reads as it did.
#[derive(Debug, Clone, Copy, diesel::deserialize::FromSqlRow)]
pub struct StoredTimestamp(NaiveDateTime);

impl From<StoredTimestamp> for NaiveDateTime {
    fn from(stored: StoredTimestamp) -> Self {
        stored.0
    }
}

impl FromSql<Timestamp, Pg> for StoredTimestamp {
    fn from_sql(value: <Pg as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        <NaiveDateTime as FromSql<Timestamp, Pg>>::from_sql(value).map(StoredTimestamp)
    }
}

impl FromSql<Timestamp, Sqlite> for StoredTimestamp {
    fn from_sql(mut value: <Sqlite as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        if let Some(at) = value.read_text_checked().ok().and_then(parse) {
            return Ok(StoredTimestamp(at));
        }
        <NaiveDateTime as FromSql<Timestamp, Sqlite>>::from_sql(value).map(StoredTimestamp)
    }
}

impl FromSql<Timestamp, MultiBackend> for StoredTimestamp {
    fn from_sql(value: <MultiBackend as Backend>::RawValue<'_>) -> deserialize::Result<Self> {
        value.from_sql::<Self, Timestamp>()
    }
}

/// Reads the text of a SQLite value that is text (not a number SQLite would convert).
trait TextValue {
    fn read_text_checked(&mut self) -> Result<&str, ()>;
}

impl TextValue for diesel::sqlite::SqliteValue<'_, '_, '_> {
    fn read_text_checked(&mut self) -> Result<&str, ()> {
        match self.value_type() {
            Some(diesel::sqlite::SqliteType::Text) => Ok(self.read_text()),
            _ => Err(()),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` with an optional `.` and 1 to 9 digits, exactly; `None` otherwise
/// (including values chrono's parser would take in another way, which then go to it).
fn parse(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<u32> {
        b.get(from..to)?.iter().try_fold(0_u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(digits(0, 4)?).ok()?;
    let (month, day) = (digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let nano = match &b[19..] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            let n = digits(20, b.len())?;
            n * 10_u32.pow(9 - u32::try_from(fraction.len()).ok()?)
        }
        _ => return None,
    };
    NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_nano_opt(hour, minute, second, nano)
        .filter(|_| second < 60)
}

#[cfg(test)]
mod tests {
    use super::parse;
    use chrono::NaiveDateTime;

    /// Every form the fast path takes reads as chrono's `%F %T%.f` reads it; the others are
    /// left to Diesel's parser.
    #[test]
    fn parses_as_chrono_does() {
        for text in [
            "2024-06-19 02:45:14",
            "2024-06-19 02:45:14.5",
            "2024-06-19 02:45:14.123",
            "2024-06-19 02:45:14.123456",
            "2024-06-19 02:45:14.123456789",
            "1999-12-31 23:59:59.999999",
            "0001-01-01 00:00:00",
            "2024-02-29 12:00:00.000",
        ] {
            let chrono = NaiveDateTime::parse_from_str(text, "%F %T%.f").unwrap();
            assert_eq!(parse(text), Some(chrono), "{text}");
        }
        for text in [
            "2024-06-19T02:45:14",
            "2024-06-19 02:45:14.",
            "2024-06-19 02:45:14.1234567891",
            "2024-06-19 02:45:14+02:00",
            "2024-06-19 02:45:60",
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-06-19 24:00:00",
            "+2024-06-19 02:45:14",
            "2024-6-19 02:45:14",
            "2024-06-19 02:45",
            "2460480.5",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}

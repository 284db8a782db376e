//! [`WalPosition`]: a position in the primary's write-ahead log, the read-your-writes token.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A position in PostgreSQL's write-ahead log (a `pg_lsn`), in its text form `X/Y` (the high
/// and low 32 bits in hexadecimal, as `SELECT pg_current_wal_insert_lsn()` prints it).
///
/// [`Database::last_write`](crate::Database::last_write) gives the position of the last write
/// committed through a [`Database`](crate::Database); a read given it
/// ([`Database::read_after`](crate::Database::read_after)) is served by a replica only once the
/// replica has replayed that far, so it sees the write. Carry it to another process as text:
///
/// ```
/// use userbase::replica::WalPosition;
///
/// let token: WalPosition = "1/2A0".parse()?;
/// assert_eq!(token.as_u64(), (1 << 32) + 0x2A0);
/// assert_eq!(token.to_string(), "1/2A0");
/// assert!(token > "0/FFFFFFFF".parse()?);
/// # Ok::<(), userbase::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalPosition(u64);

impl WalPosition {
    /// The position of byte `lsn` of the WAL (`'X/Y'::pg_lsn - '0/0'`).
    pub const fn from_u64(lsn: u64) -> Self {
        WalPosition(lsn)
    }

    /// The position as a byte offset.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for WalPosition {
    /// PostgreSQL's form: `X/Y`, upper-case hexadecimal without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for WalPosition {
    type Err = Error;

    /// Parses `X/Y` (1 to 8 hexadecimal digits each side, either case), as PostgreSQL does.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for anything else.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::Validation {
            field: "WAL position",
            message: format!("`{s}` is not of the form X/Y (hexadecimal, at most 8 digits each)"),
        };
        let (high, low) = s.trim().split_once('/').ok_or_else(invalid)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u32::from_str_radix(part, 16).map_err(|_| invalid())
        };
        Ok(WalPosition(
            (u64::from(half(high)?) << 32) | u64::from(half(low)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_orders_like_postgres() {
        for (text, value) in [
            ("0/0", 0_u64),
            ("0/16B3748", 0x16B_3748),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let parsed: WalPosition = text.parse().unwrap();
            assert_eq!(parsed.as_u64(), value);
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!("a/b".parse::<WalPosition>().unwrap().to_string(), "A/B");
        assert!("1/0".parse::<WalPosition>().unwrap() > "0/FFFFFFFF".parse().unwrap());
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "123456789/0",
            "g/0",
            "-1/0",
            "+1/0",
        ] {
            assert!(
                matches!(bad.parse::<WalPosition>(), Err(Error::Validation { .. })),
                "{bad}"
            );
        }
    }
}

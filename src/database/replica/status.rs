//! What the router asks a server: its replay position and lag (on a replica), its insert
//! position and whether a transaction wrote (on the primary), whether it is read-only.

use std::sync::OnceLock;
use std::time::Duration;

use diesel::pg::data_types::PgLsn;
use diesel::sql_types::{Bool, Double, Integer, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};

use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// One round trip on a replica: everything the router needs to know about it.
const STATUS_SQL: &str = "SELECT pg_is_in_recovery() AS in_recovery, \
     pg_last_wal_replay_lsn() AS replay, \
     pg_last_wal_receive_lsn() AS receive, \
     (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8 AS lag_ms";

/// A replica's state, as [`STATUS_SQL`] reports it.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub(crate) struct Status {
    #[diesel(sql_type = Bool)]
    pub(crate) in_recovery: bool,
    #[diesel(sql_type = Nullable<diesel::sql_types::PgLsn>)]
    replay: Option<PgLsn>,
    #[diesel(sql_type = Nullable<diesel::sql_types::PgLsn>)]
    receive: Option<PgLsn>,
    #[diesel(sql_type = Nullable<Double>)]
    lag_ms: Option<f64>,
}

impl Status {
    /// A standby that has replayed (and received) up to `lsn`: usable, lag 0.
    #[cfg(test)]
    pub(crate) fn caught_up(lsn: u64) -> Status {
        Status {
            in_recovery: true,
            replay: Some(PgLsn(lsn)),
            receive: Some(PgLsn(lsn)),
            lag_ms: None,
        }
    }

    /// The replay position; `None` on a server not in recovery (it has every write it has) or one
    /// that has replayed nothing yet.
    pub(crate) fn replay(&self) -> Option<u64> {
        self.replay.map(|lsn| lsn.0)
    }

    /// The replica's lag: 0 on a server not in recovery, 0 when it has replayed all the WAL it
    /// received (an idle primary sends nothing, and `pg_last_xact_replay_timestamp()` would keep
    /// ageing), else `now() - pg_last_xact_replay_timestamp()`. `None` when unknown (nothing
    /// replayed yet).
    pub(crate) fn lag(&self) -> Option<Duration> {
        if !self.in_recovery {
            return Some(Duration::ZERO);
        }
        let replay = self.replay?;
        if self.receive.is_some_and(|receive| receive.0 <= replay.0) {
            return Some(Duration::ZERO);
        }
        let ms = self.lag_ms?;
        Some(Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).unwrap_or(Duration::MAX))
    }

    /// Whether a read on this server sees every write up to `need`: GitLab's
    /// `NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= need`.
    pub(crate) fn has_replayed(&self, need: u64) -> bool {
        !self.in_recovery || self.replay().is_some_and(|replay| replay >= need)
    }
}

/// Asks a replica for its [`Status`].
///
/// # Errors
///
/// The query's error (the connection is gone, …); [`Error::Runtime`] on SQLite.
pub(crate) fn status(conn: &mut AnyConnection) -> Result<Status> {
    match conn {
        AnyConnection::Pg(pg) => Ok(diesel::sql_query(STATUS_SQL).get_result(pg)?),
        AnyConnection::Sqlite(_) => Err(Error::Runtime {
            message: "replica status asked of an SQLite connection: replicas are PostgreSQL only"
                .to_owned(),
            source: None,
        }),
    }
}

#[derive(QueryableByName)]
struct Insert {
    #[diesel(sql_type = diesel::sql_types::PgLsn)]
    lsn: PgLsn,
}

/// The primary's WAL insert position (`pg_current_wal_insert_lsn()`): at or beyond the commit
/// record of every transaction committed before it, also with `synchronous_commit = off`; moved
/// back to the start of its page when it lies just past a page header ([`WalLayout::reachable`]),
/// so a standby that has replayed everything reaches it. `layout` caches the server's WAL layout
/// (asked once; left empty when the server does not say). `None` on SQLite.
///
/// # Errors
///
/// The query's error; on a server in recovery, "recovery is in progress".
pub(crate) fn insert_position(
    conn: &mut AnyConnection,
    layout: &OnceLock<Option<WalLayout>>,
) -> Result<Option<u64>> {
    match conn {
        AnyConnection::Pg(pg) => {
            let row: Insert =
                diesel::sql_query("SELECT pg_current_wal_insert_lsn() AS lsn").get_result(pg)?;
            let layout = match layout.get() {
                Some(known) => *known,
                None => *layout.get_or_init(|| WalLayout::ask(pg)),
            };
            Ok(Some(layout.map_or(row.lsn.0, |l| l.reachable(row.lsn.0))))
        }
        AnyConnection::Sqlite(_) => Ok(None),
    }
}

/// A WAL page header's size (`SizeOfXLogShortPHD`) on a server whose `MAXALIGN` is 8 (every
/// 64-bit build).
const SHORT_HEADER: u64 = 24;
/// The header's size on the first page of a segment (`SizeOfXLogLongPHD`), same servers.
const LONG_HEADER: u64 = 40;

/// How a server lays out its WAL, from `pg_control_init()` (executable by everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub(crate) struct WalLayout {
    #[diesel(sql_type = Integer)]
    block: i32,
    #[diesel(sql_type = Integer)]
    segment: i32,
    #[diesel(sql_type = Integer)]
    align: i32,
}

impl WalLayout {
    /// The server's layout; `None` when it cannot be read.
    fn ask(pg: &mut diesel::PgConnection) -> Option<WalLayout> {
        diesel::sql_query(
            "SELECT wal_block_size AS block, bytes_per_wal_segment AS segment, \
             max_data_alignment AS align FROM pg_control_init()",
        )
        .get_result(pg)
        .ok()
    }

    /// `lsn` (an insert position), or the start of its page when it lies just past the page's
    /// header. PostgreSQL reports the insert position of an empty page (the next record's
    /// start) past the header, while a standby's replay position stops at the end of the last
    /// record: the page's start. On an idle primary right after a WAL segment switch
    /// (`archive_timeout`, a base backup, `pg_switch_wal()`), or after a record that ended
    /// exactly at a page's end, no standby reaches the reported position until the next write.
    /// Every record before such a position ends at or before the page's start, so that start is
    /// an equally safe position to wait for. Only for the header sizes known (`MAXALIGN` 8);
    /// `lsn` itself otherwise.
    pub(crate) fn reachable(&self, lsn: u64) -> u64 {
        let (Ok(block), Ok(segment)) = (u64::try_from(self.block), u64::try_from(self.segment))
        else {
            return lsn;
        };
        if self.align != 8 {
            return lsn;
        }
        if lsn.checked_rem(segment) == Some(LONG_HEADER) {
            return lsn - LONG_HEADER;
        }
        if lsn.checked_rem(block) == Some(SHORT_HEADER) {
            return lsn - SHORT_HEADER;
        }
        lsn
    }
}

#[derive(QueryableByName)]
struct Wrote {
    #[diesel(sql_type = Bool)]
    wrote: bool,
}

/// Whether the open transaction on `conn` has written: PostgreSQL gives a transaction an ID at
/// its first write (rows, DDL, a sequence's WAL record, …) and never to one that only reads.
/// `true` on SQLite (nothing to ask there, and nothing uses the answer).
///
/// # Errors
///
/// The query's error (PostgreSQL before 13 has no `pg_current_xact_id_if_assigned()`).
pub(crate) fn wrote(conn: &mut AnyConnection) -> Result<bool> {
    match conn {
        AnyConnection::Pg(pg) => Ok(diesel::sql_query(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS wrote",
        )
        .get_result::<Wrote>(pg)?
        .wrote),
        AnyConnection::Sqlite(_) => Ok(true),
    }
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    transaction_read_only: String,
}

/// Whether the server of `conn` now refuses writes (`SHOW transaction_read_only`): a primary
/// demoted to a standby, or set `default_transaction_read_only`. `false` on SQLite or when the
/// question itself fails (a dead connection is the pool's business).
pub(crate) fn is_read_only(conn: &mut AnyConnection) -> bool {
    match conn {
        AnyConnection::Pg(pg) => diesel::sql_query("SHOW transaction_read_only")
            .get_result::<Setting>(pg)
            .is_ok_and(|s| s.transaction_read_only == "on"),
        AnyConnection::Sqlite(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_just_past_a_page_header_move_back_to_the_page_start() {
        let layout = WalLayout {
            block: 8192,
            segment: 16 << 20,
            align: 8,
        };
        // Seen on PostgreSQL 15 after `pg_switch_wal()`: insert 0/4000028, replay 0/4000000.
        assert_eq!(layout.reachable(0x400_0028), 0x400_0000);
        assert_eq!(layout.reachable(0x400_2018), 0x400_2000);
        for unchanged in [
            0, 0x400_0000, 0x400_0030, 0x400_2000, 0x400_2020, 0x304_21E0,
        ] {
            assert_eq!(layout.reachable(unchanged), unchanged, "{unchanged:X}");
        }
        let unknown_headers = WalLayout { align: 4, ..layout };
        assert_eq!(unknown_headers.reachable(0x400_0028), 0x400_0028);
        let nonsense = WalLayout {
            block: 0,
            segment: -1,
            align: 8,
        };
        assert_eq!(nonsense.reachable(0x400_0028), 0x400_0028);
    }
}

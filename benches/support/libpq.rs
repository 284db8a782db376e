//! A second PostgreSQL baseline: the captured statements run through libpq directly (prepared
//! once, executed with binary results), and every field of every row decoded into an owned
//! value that is kept until the statement is done, as userbase returns its rows.
//!
//! pgbench, the first baseline, receives each result and discards it: for reads of many rows
//! it does none of the decoding a client that returns rows must do. This one does that work
//! by hand, with nothing between libpq and the values, so it is the limit for such reads.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use chrono::{DateTime, NaiveDateTime};
use pq_sys as pq;

/// One decoded field, owned.
#[expect(dead_code, reason = "held until the statement is done, never read")]
enum Owned {
    Int8(i64),
    Int4(i32),
    Bool(bool),
    Text(String),
    Timestamp(NaiveDateTime),
    Null,
    Other,
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// PostgreSQL type oids of the columns the Repo reads.
const INT8: u32 = 20;
const INT4: u32 = 23;
const BOOL: u32 = 16;
const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;
const TIMESTAMP: u32 = 1114;

/// One libpq connection with the captured statements prepared on it.
pub struct Libpq {
    conn: *mut pq::PGconn,
    /// Per statement: its name and its binds as text (`None` for SQL `NULL`), the captured id
    /// marked by `id_at`.
    statements: Vec<(CString, Vec<Option<CString>>, Vec<usize>)>,
}

impl Libpq {
    /// Connects with `conninfo` (a libpq URL) and prepares `statements` (SQL with `$n`
    /// placeholders, and their binds as userbase's echo printed them); a bind equal to
    /// `capture_id` is replaced by the id each call is given.
    pub fn new(conninfo: &str, statements: &[(String, Vec<String>)], capture_id: i64) -> Self {
        let info = CString::new(conninfo).expect("conninfo");
        // SAFETY: a valid NUL-terminated string; the connection is checked and freed in Drop.
        let conn = unsafe { pq::PQconnectdb(info.as_ptr()) };
        // SAFETY: `conn` is the pointer PQconnectdb returned (never null except out of memory).
        assert!(
            !conn.is_null() && unsafe { pq::PQstatus(conn) } == pq::ConnStatusType::CONNECTION_OK,
            "libpq connect failed"
        );
        let mut this = Libpq {
            conn,
            statements: Vec::new(),
        };
        for (i, (sql, binds)) in statements.iter().enumerate() {
            let name = CString::new(format!("s{i}")).expect("name");
            let text = CString::new(sql.as_str()).expect("sql");
            // SAFETY: valid strings; null parameter types let the server infer them, as for
            // pgbench's prepared mode.
            let result = unsafe {
                pq::PQprepare(
                    this.conn,
                    name.as_ptr(),
                    text.as_ptr(),
                    binds.len() as i32,
                    ptr::null(),
                )
            };
            this.check(result, "prepare");
            // SAFETY: a result PQprepare returned, freed once.
            unsafe { pq::PQclear(result) };
            let mut values = Vec::new();
            let mut id_at = Vec::new();
            for (j, bind) in binds.iter().enumerate() {
                let bind = bind
                    .strip_prefix("Some(")
                    .and_then(|b| b.strip_suffix(')'))
                    .unwrap_or(bind);
                if bind == capture_id.to_string() {
                    id_at.push(j);
                }
                values.push(match bind {
                    "None" => None,
                    b => Some(CString::new(b.trim_matches('"')).expect("bind")),
                });
            }
            this.statements.push((name, values, id_at));
        }
        this
    }

    /// Runs every statement once with the captured id replaced by `id`, decoding every row.
    pub fn run(&mut self, id: i64) -> usize {
        let id = CString::new(id.to_string()).expect("id");
        let mut rows = 0;
        for (name, values, id_at) in &self.statements {
            let params: Vec<*const c_char> = values
                .iter()
                .enumerate()
                .map(|(j, v)| match v {
                    _ if id_at.contains(&j) => id.as_ptr(),
                    Some(v) => v.as_ptr(),
                    None => ptr::null(),
                })
                .collect();
            // SAFETY: `params` points at strings that live until the call returns; text
            // parameters (null formats and lengths), binary results (1), as Diesel asks for.
            let result = unsafe {
                pq::PQexecPrepared(
                    self.conn,
                    name.as_ptr(),
                    params.len() as i32,
                    params.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    1,
                )
            };
            self.check(result, "execute");
            rows += decode(result);
            // SAFETY: the result PQexecPrepared returned, freed once.
            unsafe { pq::PQclear(result) };
        }
        rows
    }

    fn check(&self, result: *mut pq::PGresult, what: &str) {
        // SAFETY: `result` is a result of this connection (or null, which PQresultStatus takes).
        let status = unsafe { pq::PQresultStatus(result) };
        if !matches!(
            status,
            pq::ExecStatusType::PGRES_TUPLES_OK | pq::ExecStatusType::PGRES_COMMAND_OK
        ) {
            // SAFETY: the connection is open; libpq's message is NUL-terminated.
            let message = unsafe { CStr::from_ptr(pq::PQerrorMessage(self.conn)) };
            panic!("libpq {what} failed: {}", message.to_string_lossy());
        }
    }
}

impl Drop for Libpq {
    fn drop(&mut self) {
        // SAFETY: the connection PQconnectdb returned, finished once.
        unsafe { pq::PQfinish(self.conn) };
    }
}

/// Decodes every field of every row of `result` (binary format) into an owned value, keeps
/// them until the result is done, and returns the number of rows.
fn decode(result: *mut pq::PGresult) -> usize {
    // SAFETY (whole function): `result` is a valid result with binary fields; every row and
    // column index is below PQntuples / PQnfields, and each value is read within its length.
    let (rows, columns) = unsafe { (pq::PQntuples(result), pq::PQnfields(result)) };
    let types: Vec<u32> = (0..columns)
        .map(|c| unsafe { pq::PQftype(result, c) })
        .collect();
    let mut kept = Vec::with_capacity((rows * columns) as usize);
    for r in 0..rows {
        for (c, &oid) in types.iter().enumerate() {
            let c = c as i32;
            if unsafe { pq::PQgetisnull(result, r, c) } != 0 {
                kept.push(Owned::Null);
                continue;
            }
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    pq::PQgetvalue(result, r, c).cast::<u8>(),
                    pq::PQgetlength(result, r, c) as usize,
                )
            };
            kept.push(match oid {
                INT8 => Owned::Int8(i64::from_be_bytes(bytes.try_into().expect("int8"))),
                INT4 => Owned::Int4(i32::from_be_bytes(bytes.try_into().expect("int4"))),
                BOOL => Owned::Bool(bytes[0] != 0),
                TEXT | VARCHAR => {
                    Owned::Text(String::from_utf8(bytes.to_vec()).expect("utf-8 text"))
                }
                TIMESTAMP => {
                    let micros = i64::from_be_bytes(bytes.try_into().expect("timestamp"));
                    Owned::Timestamp(
                        DateTime::from_timestamp_micros(micros + PG_EPOCH_UNIX_MICROS)
                            .expect("timestamp in range")
                            .naive_utc(),
                    )
                }
                _ => Owned::Other,
            });
        }
    }
    drop(std::hint::black_box(kept));
    rows as usize
}

//! Migrations behind pgbouncer: run them on a direct connection, and refuse a pooler.

use diesel::sql_types::{Integer, Nullable};
use diesel::{Connection, ConnectionError, PgConnection, QueryableByName, RunQueryDsl};

use crate::config::DbUrl;
use crate::connection::AnyConnection;
use crate::database::Database;
use crate::error::{Error, Result};

/// libpq's default port, for a URL that names none.
const DEFAULT_PORT: u16 = 5432;

/// Applies the pending migrations: on a connection of its own to `migration_url` when set, else
/// on a session of `db`; refused when that connection goes through a pooler.
pub(crate) fn run_migrations(db: &Database, migration_url: Option<&DbUrl>) -> Result<Vec<String>> {
    match migration_url {
        Some(url) => {
            let mut conn = AnyConnection::open(url.backend(), &url.driver_target())
                .map_err(|e| Error::connect(url, e))?;
            refuse_pooler(url, &mut conn, "DATABASE_MIGRATION_URL")?;
            crate::migrate::run(&mut conn)
        }
        None => {
            let mut session = db.session()?;
            refuse_pooler(db.url(), session.repo_connection(), "DATABASE_URL")?;
            crate::migrate::run(session.repo_connection())
        }
    }
}

#[derive(QueryableByName)]
struct Port {
    #[diesel(sql_type = Nullable<Integer>)]
    port: Option<i32>,
}

/// [`Error::Config`] naming `variable` when `conn` (made from `url`) goes through a pooler:
/// the server's own port (`inet_server_port()`) is none of the URL's ports, and the same hosts
/// answer for a database named `pgbouncer` with anything but PostgreSQL's "does not exist"
/// (pgbouncer's admin console lives there). One query when the ports match; nothing on SQLite
/// or over a Unix socket.
fn refuse_pooler(url: &DbUrl, conn: &mut AnyConnection, variable: &str) -> Result<()> {
    let AnyConnection::Pg(pg) = conn else {
        return Ok(());
    };
    let Some(port) = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result::<Port>(pg)?
        .port
    else {
        return Ok(());
    };
    let hosts = url.hosts();
    let mut ports = hosts.iter().map(|(_, p)| p.unwrap_or(DEFAULT_PORT));
    if hosts.is_empty() && port == i32::from(DEFAULT_PORT) || ports.any(|p| i32::from(p) == port) {
        return Ok(());
    }
    let probe = url.clone().with_database("pgbouncer");
    match PgConnection::establish(&probe.driver_target()) {
        Err(ConnectionError::BadConnection(message))
            if message.contains("database \"pgbouncer\" does not exist") =>
        {
            Ok(())
        }
        _ => Err(Error::config(
            variable,
            format!(
                "migrations must not run through a connection pooler: {url} reaches a server \
                 listening on port {port} and a pooler's admin database `pgbouncer` answers \
                 there. Its session advisory lock does not survive transaction pooling; set \
                 DATABASE_MIGRATION_URL (Settings::migration_url) to a direct connection to \
                 the primary"
            ),
        )),
    }
}

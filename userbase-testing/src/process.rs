//! Finding and running the PostgreSQL and pgbouncer programs: binary discovery, running them as
//! the `postgres` user when the tests run as root, free loopback ports, pid checks, and the
//! directory under `target/` the private servers live in.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::SetupError;

/// What to install when the server binaries are missing.
const INSTALL_POSTGRES: &str = "install the PostgreSQL server (Debian/Ubuntu: `apt-get install \
                                postgresql`), start a server on 127.0.0.1:5432, or set \
                                TEST_DATABASE_URL=postgres://user@host:port/database";

/// Environment variables of libpq and the server programs that must not leak from the test's
/// environment into the private servers (a `PGPORT` would point `pg_basebackup` elsewhere).
const PG_ENV: [&str; 8] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATA",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
];

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `pg_basebackup` and `psql`.
#[derive(Debug, Clone)]
pub(crate) struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// The server binaries: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`,
    /// else `/usr/local/pgsql/bin`, else the `PATH`. Found once per process.
    pub(crate) fn find() -> Result<PgBin, SetupError> {
        static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
        FOUND
            .get_or_init(find_bindir)
            .clone()
            .map(|dir| PgBin { dir })
            .ok_or_else(|| SetupError::MissingProgram {
                program: "initdb (the PostgreSQL server binaries)".into(),
                looked_in: "`pg_config --bindir`, /usr/lib/postgresql/*/bin, /usr/local/pgsql/bin \
                            and PATH"
                    .into(),
                hint: INSTALL_POSTGRES.into(),
            })
    }

    /// The path of one program of the directory.
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The major version of the server binaries (`15` for 15.8), from `postgres --version`.
    pub(crate) fn major_version(&self) -> Result<String, SetupError> {
        let output = run(Command::new(self.program("postgres")).arg("--version"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .last()
            .and_then(|version| version.split('.').next())
            .map(str::to_owned)
            .ok_or_else(|| SetupError::Command {
                command: "postgres --version".into(),
                status: "unexpected output".into(),
                output: text.trim().to_owned(),
            })
    }
}

fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let local = PathBuf::from("/usr/local/pgsql/bin");
    if has_initdb(&local) {
        return Some(local);
    }
    find_in_path("initdb", &[]).and_then(|path| path.parent().map(Path::to_path_buf))
}

/// `name` in `PATH` or in one of `extra` directories.
pub(crate) fn find_in_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Who the server programs run as: the current user, or `postgres` when the tests run as root
/// (`initdb`, `pg_ctl`, `postgres` and `pgbouncer` all refuse to run as root).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    /// The current user, or `postgres` (from `/etc/passwd`) when the effective uid is 0.
    pub(crate) fn detect() -> Result<RunAs, SetupError> {
        if !rustix::process::geteuid().is_root() {
            return Ok(RunAs { ids: None });
        }
        let passwd = fs::read_to_string("/etc/passwd").map_err(|source| SetupError::Io {
            action: "read /etc/passwd to find the postgres user".into(),
            source,
        })?;
        passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"postgres"))
            .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .map(|ids| RunAs { ids: Some(ids) })
            .ok_or_else(|| SetupError::MissingProgram {
                program: "a `postgres` user".into(),
                looked_in: "/etc/passwd".into(),
                hint: "the tests run as root, and the PostgreSQL server refuses to run as root: \
                       create a `postgres` user (the postgresql package does), run the tests as \
                       another user, or set TEST_DATABASE_URL"
                    .into(),
            })
    }

    /// A command for `program` that runs as this user, in `/`, without the caller's `PG*`
    /// variables, with no standard input.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.current_dir("/").stdin(Stdio::null());
        for var in PG_ENV {
            command.env_remove(var);
        }
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Makes `path` belong to this user (nothing to do when it is the current user).
    pub(crate) fn own(&self, path: &Path) -> Result<(), SetupError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| {
                SetupError::Io {
                    action: format!("give {} to the postgres user", path.display()),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// Runs `command` to completion; a non-zero exit is a [`SetupError::Command`] with its output.
pub(crate) fn run(command: &mut Command) -> Result<Output, SetupError> {
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| SetupError::Io {
            action: format!("run {shown}"),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(SetupError::Command {
            command: shown,
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .trim()
            .to_owned(),
        })
    }
}

/// A loopback port nothing listens on right now (the kernel's pick). Another process may take it
/// before the server binds it: callers retry on "address in use".
pub(crate) fn free_port() -> Result<u16, SetupError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| SetupError::Io {
            action: "find a free loopback port".into(),
            source,
        })
}

/// Whether something accepts TCP connections on `127.0.0.1:port` (within `timeout`).
pub(crate) fn port_answers(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, timeout).is_ok()
}

/// Polls `ready` every 50 ms until it is true or `limit` has passed.
pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool, SetupError>,
) -> Result<(), SetupError> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(SetupError::Timeout {
                what: what.to_owned(),
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is alive and runs `program` (its `comm`), so a recycled pid is not
/// mistaken for ours.
pub(crate) fn process_runs(pid: u32, program: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim() == program)
        .unwrap_or(false)
}

/// The directory the private servers live in: `<target dir>/userbase-postgres`, where the target
/// dir is `CARGO_TARGET_DIR`, else the ancestor of the running executable that holds cargo's
/// `CACHEDIR.TAG` (`target/`), else the system's temporary directory.
pub(crate) fn servers_dir() -> Result<PathBuf, SetupError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("userbase-postgres");
    fs::create_dir_all(&dir).map_err(|source| SetupError::Io {
        action: format!("create {}", dir.display()),
        source,
    })?;
    Ok(dir)
}

//! The string the driver opens for a [`DbUrl`]: what libpq or SQLite is given, never printed.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::tls::default_sslmode;
use super::url::{DbUrl, Secrets, LIBPQ_SAFETY_DEFAULTS};
use super::Backend;

/// Names the in-memory databases of this process apart.
static MEMORY_DATABASES: AtomicUsize = AtomicUsize::new(0);

impl DbUrl {
    /// The string the driver opens: for PostgreSQL the URL with its password, the
    /// [`LIBPQ_SAFETY_DEFAULTS`] it does not set and the default `sslmode` (`config::tls`); for
    /// SQLite the file path, or a shared `memdb` database for `:memory:`. Never printed.
    pub(crate) fn driver_target(&self) -> String {
        match self.backend() {
            Backend::Postgres => {
                let mut with_defaults = self.clone();
                for (key, value) in LIBPQ_SAFETY_DEFAULTS {
                    if with_defaults.query_value(key).is_none() {
                        with_defaults = with_defaults.push_query_param(key, value);
                    }
                }
                if let Some(mode) = default_sslmode(self) {
                    with_defaults = with_defaults.push_query_param("sslmode", mode);
                }
                with_defaults.render(Secrets::Shown)
            }
            // `memdb` with a name starting with `/` is one database shared by every connection
            // of the process (unlike plain `:memory:`, one per connection), with normal locking.
            Backend::Sqlite if self.is_memory() => format!(
                "file:/userbase-{}-{}?vfs=memdb",
                std::process::id(),
                MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed)
            ),
            // Never a `file:` path, which SQLite would read as a URI: no `DbUrl` holds one.
            Backend::Sqlite => self.database().unwrap_or_default().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_safety_defaults_are_added_unless_the_url_sets_them() {
        let url = DbUrl::parse("postgres://bot:pw@db:5432/app?connect_timeout=3").unwrap();
        assert_eq!(
            url.driver_target(),
            "postgres://bot:pw@db:5432/app?connect_timeout=3&keepalives=1&keepalives_idle=30\
             &keepalives_interval=10&keepalives_count=3&tcp_user_timeout=30000&sslmode=require"
        );
    }

    #[test]
    fn sqlite_targets_are_the_path_or_a_shared_memdb() {
        let file = DbUrl::sqlite("data/app.db").unwrap();
        assert_eq!(file.driver_target(), "data/app.db");
        let memory = DbUrl::sqlite(":memory:").unwrap();
        let target = memory.driver_target();
        assert!(target.starts_with("file:/userbase-"), "{target}");
        assert!(target.ends_with("?vfs=memdb"), "{target}");
        assert_ne!(target, memory.driver_target(), "one database per engine");
    }
}

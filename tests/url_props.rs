//! Property tests of `DbUrl`: every URL the builder accepts survives render → parse exactly, no
//! part can become another, and the password never shows in a redacted rendering.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRunner};
use userbase::config::{Secrets, SECRET_QUERY_PARAMS};
use userbase::{DbUrl, Error};

/// Characters that break naive URL code (`@ : / ? # % & = + [ ] ,`, spaces, backslashes,
/// quotes), unicode (accents, CJK, emoji, a right-to-left override, a no-break space), NUL, and
/// ordinary letters and digits so that many URLs are valid. Drawn by index: a cheap strategy.
const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
                     0123456789@:/?#%&=+[] ,.-_~*\\\"';!$@:/?#%&=+[] ,éßΩ日🙂\u{202e}\u{a0}";

fn text_of(alphabet: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    let n = chars.len();
    proptest::collection::vec(0..n, len)
        .prop_map(move |indexes| indexes.into_iter().map(|i| chars[i]).collect())
}

/// A string of [`CHARS`], now and then empty or holding a NUL.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        60 => text_of(CHARS, 1..max),
        1 => Just(String::new()),
        1 => text_of(CHARS, 0..max).prop_map(|t| format!("{t}\0")),
    ]
}

fn name_text() -> impl Strategy<Value = String> {
    text_of("abcdefghijklmnopqrstuvwxyz0123456789-._", 1..20)
}

/// Hosts: mostly valid spellings (names, IPv4, IPv6 with and without brackets and zone ids,
/// socket directories), and arbitrary text, including the injection seen in issue 14.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name_text(),
        2 => any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        2 => any::<[u16; 8]>().prop_map(|s| Ipv6Addr::from(s).to_string()),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
        1 => (any::<[u16; 8]>(), name_text())
            .prop_map(|(s, zone)| format!("{}%{zone}", Ipv6Addr::from(s))),
        1 => text(16).prop_map(|t| format!("/{t}")),
        3 => text(16),
        1 => Just("::1]:6000/otherdb?sslmode=disable&x=".to_owned()),
    ]
}

/// Query keys: arbitrary text, and the libpq secrets in any case.
fn query_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(8),
        2 => (proptest::sample::select(SECRET_QUERY_PARAMS.to_vec()), any::<bool>())
            .prop_map(|(key, upper)| if upper { key.to_uppercase() } else { key.to_owned() }),
    ]
}

#[derive(Debug, Clone)]
struct Parts {
    scheme_long: bool,
    user: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    query: Vec<(String, String)>,
    /// Hosts of a multi-host URL after the first.
    more_hosts: Vec<(String, Option<u16>)>,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        any::<bool>(),
        proptest::option::weighted(0.8, text(12)),
        proptest::option::weighted(0.7, text(16)),
        proptest::option::weighted(0.9, host()),
        proptest::option::weighted(0.7, prop_oneof![20 => 1u16.., 1 => Just(0u16)]),
        proptest::option::weighted(0.8, text(12)),
        proptest::collection::vec((query_key(), text(8)), 0..3),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec((host(), proptest::option::of(1u16..)), 1..3),
        ],
    )
        .prop_map(
            |(scheme_long, user, password, host, port, database, query, more_hosts)| Parts {
                scheme_long,
                user,
                password,
                host,
                port,
                database,
                query,
                more_hosts,
            },
        )
}

fn build(parts: &Parts) -> DbUrl {
    let mut url = if parts.scheme_long {
        DbUrl::parse("postgresql://").unwrap()
    } else {
        DbUrl::postgres()
    };
    if let Some(user) = &parts.user {
        url = url.with_username(user);
    }
    if let Some(password) = &parts.password {
        url = url.with_password(password);
    }
    if let Some(host) = &parts.host {
        url = url.with_host(host);
    }
    if let Some(port) = parts.port {
        url = url.with_port(port);
    }
    if let Some(database) = &parts.database {
        url = url.with_database(database);
    }
    for (key, value) in &parts.query {
        url = url.with_query_param(key, value);
    }
    for (host, port) in &parts.more_hosts {
        url = url.with_additional_host(host, *port);
    }
    url
}

/// Every rendering meant for people: `render(Hidden)`, `Display`, `Debug`, `{:#?}`.
fn redacted(url: &DbUrl) -> [String; 4] {
    [
        url.render(Secrets::Hidden),
        url.to_string(),
        format!("{url:?}"),
        format!("{url:#?}"),
    ]
}

/// The property for one URL; returns whether it was valid (and so round-tripped).
fn check(parts: &Parts) -> Result<bool, TestCaseError> {
    let url = build(parts);
    // Redaction holds for every URL, valid or not: a redacted rendering does not depend on the
    // password or on a secret query value at all, so it cannot hold any of them.
    let mut other = parts.clone();
    other.password = other
        .password
        .map(|_| "a completely different password".to_owned());
    for (key, value) in &mut other.query {
        if SECRET_QUERY_PARAMS.contains(&key.to_lowercase().as_str()) {
            *value = "another secret".to_owned();
        }
    }
    prop_assert_eq!(redacted(&url), redacted(&build(&other)));
    if url.has_password() {
        for shown in redacted(&url) {
            prop_assert!(shown.contains(":***@"), "{}", shown);
        }
    }
    match url.validate() {
        Ok(()) => {
            let rendered = url.render(Secrets::Shown);
            let parsed = DbUrl::parse(&rendered);
            prop_assert!(
                parsed.is_ok(),
                "{:?} rendered {:?}: {:?}",
                parts,
                rendered,
                parsed
            );
            let parsed = parsed.unwrap();
            // Part by part first, so that a failure says which part moved.
            prop_assert_eq!(parsed.username(), url.username(), "{}", rendered);
            prop_assert_eq!(parsed.has_password(), url.has_password(), "{}", rendered);
            prop_assert_eq!(parsed.host(), url.host(), "{}", rendered);
            prop_assert_eq!(parsed.port(), url.port(), "{}", rendered);
            prop_assert_eq!(parsed.hosts(), url.hosts(), "{}", rendered);
            prop_assert_eq!(parsed.database(), url.database(), "{}", rendered);
            prop_assert_eq!(parsed.query(), url.query(), "{}", rendered);
            prop_assert_eq!(&parsed, &url, "{}", rendered);
            // What the builder stored is what was given (brackets around IPv6 aside).
            prop_assert_eq!(url.username(), parts.user.as_deref());
            prop_assert_eq!(url.database(), parts.database.as_deref());
            Ok(true)
        }
        Err(Error::Config { variable, message }) => {
            let variable = variable.unwrap_or_default();
            prop_assert!(variable.starts_with("URL "), "{}: {}", variable, message);
            // The message may quote the part it refuses; a password whose text is also another
            // part (a one-emoji password and an emoji host, say) would be found there.
            let elsewhere = |p: &str| {
                [&parts.user, &parts.host, &parts.database]
                    .into_iter()
                    .flatten()
                    .any(|s| s.contains(p))
                    || parts
                        .query
                        .iter()
                        .any(|(k, v)| k.contains(p) || v.contains(p))
                    || parts.more_hosts.iter().any(|(h, _)| h.contains(p))
            };
            if let Some(password) = parts
                .password
                .as_deref()
                .filter(|p| p.len() > 3 && !elsewhere(p))
            {
                prop_assert!(!message.contains(password), "{}", message);
            }
            Ok(false)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "not a Config error: {other:?}"
        ))),
    }
}

/// A runner for `cases` cases, seeded afresh each run. XorShift instead of the default ChaCha:
/// in an unoptimised test build ChaCha took 80 % of the time.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    })
}

#[test]
fn postgres_urls_round_trip_exactly_and_never_show_the_password() {
    const CASES: u32 = 10_000;
    let mut runner = runner(CASES);
    let valid = std::cell::Cell::new(0u32);
    runner
        .run(&parts(), |parts| {
            if check(&parts)? {
                valid.set(valid.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The round trip must really have been exercised, not only the refusals.
    assert!(valid.get() >= CASES / 4, "only {} valid URLs", valid.get());
}

#[test]
fn sqlite_paths_round_trip_exactly() {
    let mut runner = runner(4_000);
    runner
        .run(&text(24), |path| {
            let url = DbUrl::sqlite(path.clone());
            match url.validate() {
                Ok(()) => {
                    let rendered = url.render(Secrets::Shown);
                    prop_assert_eq!(DbUrl::parse(&rendered).ok(), Some(url), "{}", rendered);
                }
                Err(error) => prop_assert!(
                    path.is_empty() || path.contains('\0') || path.starts_with("file:"),
                    "{:?} refused: {}",
                    path,
                    error
                ),
            }
            Ok(())
        })
        .unwrap();
}

/// Whatever string parses, its rendering parses back to the same URL.
#[test]
fn whatever_parses_renders_back_to_itself() {
    let mut runner = runner(4_000);
    let input = (
        proptest::sample::select(vec!["postgres://", "postgresql://", "sqlite://", ""]),
        text(40),
    );
    runner
        .run(&input, |(scheme, rest)| {
            if let Ok(url) = DbUrl::parse(&format!("{scheme}{rest}")) {
                let rendered = url.render(Secrets::Shown);
                prop_assert_eq!(DbUrl::parse(&rendered).ok(), Some(url), "{}", rendered);
            }
            Ok(())
        })
        .unwrap();
}

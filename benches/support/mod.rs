//! What the bench runners share: environment knobs, a deterministic id generator, and the
//! median / min / max of repeated runs.
#![allow(dead_code)]

/// The value of the environment variable `name` parsed as `T`, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic PRNG (xorshift64*) for ids in `1..=n`.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `1..=n`.
    pub fn below(&mut self, n: i64) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as i64 + 1
    }
}

/// A filter on names read from the environment variable `var`: a name is picked when it
/// contains one of the variable's comma-separated parts; every name is picked when the
/// variable is unset or empty.
pub fn picked_by(var: &str) -> impl Fn(&str) -> bool {
    let filter = std::env::var(var).unwrap_or_default();
    move |name| filter.split(',').any(|part| name.contains(part.trim()))
}

/// Median, min and max.
pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

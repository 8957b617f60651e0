//! Affinity keys on a load's requests: drawn from a Zipf popularity over a
//! fixed key space, sent in the `x-affinity-key` header, and which
//! address served each key in each phase of the run (the server names
//! itself in `x-served-by`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use http::HeaderValue;

use super::Zipf;

/// A key space of `n` keys (`k0` ... `k{n-1}`), their popularity, and the
/// run's current phase (bumped by whoever changes the endpoints, so each
/// request's route is recorded under the phase it was sent in).
#[derive(Debug)]
pub struct Keys {
    values: Vec<HeaderValue>,
    popularity: Zipf,
    phase: AtomicU32,
}

impl Keys {
    /// `n` keys with Zipf(`exponent`) popularity (key 0 the most popular).
    pub fn new(n: usize, exponent: f64) -> Self {
        Self {
            values: (0..n.max(1))
                .map(|i| HeaderValue::from_str(&format!("k{i}")).expect("a valid header value"))
                .collect(),
            popularity: Zipf::new(n.max(1), exponent),
            phase: AtomicU32::new(0),
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Never: there is at least one key.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Draws a key by popularity.
    pub fn draw(&self) -> u32 {
        self.popularity.sample() as u32
    }

    /// Draws a key with `rng` (a repeatable sequence, e.g. the warm-up's).
    pub fn draw_with(&self, rng: &mut fastrand::Rng) -> u32 {
        self.popularity.sample_with(rng) as u32
    }

    /// Key `i`'s header value.
    pub fn value(&self, i: u32) -> &HeaderValue {
        &self.values[i as usize]
    }

    /// The phase requests are sent in now.
    pub fn phase(&self) -> u32 {
        self.phase.load(Relaxed)
    }

    /// Requests sent from now on belong to `phase`.
    pub fn set_phase(&self, phase: u32) {
        self.phase.store(phase, Relaxed);
    }
}

/// Which address served each key, per phase: how many of the key's
/// requests each address answered.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    served: HashMap<(u32, u32), Vec<(HeaderValue, u32)>>,
}

impl Routes {
    /// Key `key`, sent in `phase`, was served by `by`.
    pub fn record(&mut self, phase: u32, key: u32, by: &HeaderValue) {
        let counts = self.served.entry((phase, key)).or_default();
        match counts.iter_mut().find(|(addr, _)| addr == by) {
            Some((_, n)) => *n += 1,
            None => counts.push((by.clone(), 1)),
        }
    }

    /// Adds another record's counts.
    pub fn merge(&mut self, other: &Routes) {
        for ((phase, key), counts) in &other.served {
            for (by, n) in counts {
                for _ in 0..*n {
                    self.record(*phase, *key, by);
                }
            }
        }
    }

    /// Each key served at least `min_requests` times in `phase` and the
    /// address that served it most (ties: the first seen). A key's single
    /// request sent elsewhere (a load-bounded spill) does not decide where
    /// the key lives when it has a few more.
    pub fn endpoint_per_key(&self, phase: u32, min_requests: u32) -> HashMap<u32, HeaderValue> {
        self.served
            .iter()
            .filter(|((p, _), counts)| {
                *p == phase && counts.iter().map(|(_, n)| n).sum::<u32>() >= min_requests
            })
            .filter_map(|((_, key), counts)| {
                let mut best: Option<&(HeaderValue, u32)> = None;
                for entry in counts {
                    if best.is_none_or(|b| entry.1 > b.1) {
                        best = Some(entry);
                    }
                }
                best.map(|(by, _)| (*key, by.clone()))
            })
            .collect()
    }
}

/// Of the keys present in both `before` and `after`, the share whose
/// endpoint differs, and how many were compared.
pub fn moved_fraction(
    before: &HashMap<u32, HeaderValue>,
    after: &HashMap<u32, HeaderValue>,
) -> (f64, usize) {
    let mut compared = 0;
    let mut moved = 0;
    for (key, by) in before {
        if let Some(now) = after.get(key) {
            compared += 1;
            if now != by {
                moved += 1;
            }
        }
    }
    let fraction = if compared > 0 {
        moved as f64 / compared as f64
    } else {
        0.0
    };
    (fraction, compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(name: &'static str) -> HeaderValue {
        HeaderValue::from_static(name)
    }

    #[test]
    fn a_keys_endpoint_is_the_one_that_served_it_most() {
        let mut routes = Routes::default();
        routes.record(0, 1, &by("a"));
        routes.record(0, 1, &by("b"));
        routes.record(0, 1, &by("b"));
        routes.record(1, 1, &by("a"));
        let mut other = Routes::default();
        other.record(0, 2, &by("c"));
        routes.merge(&other);
        let phase0 = routes.endpoint_per_key(0, 1);
        assert_eq!(phase0.get(&1), Some(&by("b")));
        assert_eq!(phase0.get(&2), Some(&by("c")));
        assert_eq!(routes.endpoint_per_key(1, 1).get(&1), Some(&by("a")));
        let often = routes.endpoint_per_key(0, 2);
        assert_eq!(often.get(&1), Some(&by("b")), "served 3 times");
        assert_eq!(often.get(&2), None, "served once");
    }

    #[test]
    fn moved_counts_only_keys_seen_on_both_sides() {
        let before = HashMap::from([(1, by("a")), (2, by("a")), (3, by("b"))]);
        let after = HashMap::from([(1, by("a")), (2, by("c")), (4, by("c"))]);
        assert_eq!(moved_fraction(&before, &after), (0.5, 2));
        assert_eq!(moved_fraction(&before, &HashMap::new()), (0.0, 0));
    }
}

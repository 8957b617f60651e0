//! Which endpoint a request goes to: rendezvous (highest random weight)
//! hashing with bounded load, and power of two choices for requests
//! without a key. Pure functions over the endpoints' ids and loads.
//!
//! The first endpoint of a key's rendezvous order whose load is under the
//! bound is the one with the highest score among those under it, so a
//! choice is one pass over the endpoints, with no order sorted or stored.

use std::net::SocketAddr;

/// A 64-bit finalizer (splitmix64's): every input bit moves every output
/// bit, so scores of one key against different endpoints are unrelated.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a over `bytes`, continuing from `seed`, then mixed: stable across
/// runs and processes, so a key maps to the same endpoint in every client.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// FNV-1a as a `Hasher`, for the maps the request path looks up by short
/// keys (service authorities): no per-process seed is needed there, and
/// SipHash costs several times more per byte.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// An endpoint's id in the hashing: its address.
pub(crate) fn endpoint_id(addr: SocketAddr) -> u64 {
    let port = addr.port().to_be_bytes();
    match addr.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(hash_bytes(4, &ip.octets()), &port),
        std::net::IpAddr::V6(ip) => hash_bytes(hash_bytes(6, &ip.octets()), &port),
    }
}

/// The weight of endpoint `id` for `key`: a key's order is its endpoints by
/// descending score.
pub(crate) fn score(key: u64, id: u64) -> u64 {
    mix(key ^ mix(id))
}

/// The load bound: an endpoint takes one more request while its in-flight
/// requests are under `ceil((1 + epsilon) * (total + 1) / n)` ("Consistent
/// Hashing with Bounded Loads", Mirrokni, Thorup and Zadimoghaddam), and
/// never under `floor`. Some endpoint is always under it: `n` endpoints all
/// at the bound would hold more than `total`.
///
/// The floor is for light load: with few requests in flight the formula
/// gives 1, and would move a key off an endpoint busy with a single
/// request (the paper's guarantee is for `total` well above `n`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    pub(crate) epsilon: f64,
    pub(crate) floor: usize,
}

impl Bound {
    /// The bound with `total` requests in flight over `n` endpoints.
    pub(crate) fn limit(&self, total: usize, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mean = (total + 1) as f64 / n as f64;
        (((1.0 + self.epsilon) * mean).ceil() as usize).max(self.floor)
    }
}

/// One endpoint as a choice sees it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Candidate {
    pub(crate) id: u64,
    pub(crate) load: usize,
    /// Not ejected (or on probation with its probe free).
    pub(crate) eligible: bool,
}

/// The index of the first endpoint in `key`'s order that is eligible, not
/// `skip`, and under `bound`; `None` when there is none.
pub(crate) fn first_under(
    key: u64,
    candidates: &[Candidate],
    bound: usize,
    skip: Option<usize>,
) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible || c.load >= bound || Some(i) == skip {
            continue;
        }
        let s = score(key, c.id);
        if best.is_none_or(|(top, _)| s > top) {
            best = Some((s, i));
        }
    }
    best.map(|(_, i)| i)
}

/// The key's choice: the first eligible endpoint of its order under the
/// bound (for a hot key, under the bound less one, when one is), or, when
/// loads moved under the choice's reads and none is under it, the first
/// eligible one.
pub(crate) fn choose(key: u64, candidates: &[Candidate], bound: Bound, hot: bool) -> Option<usize> {
    let (total, n) = totals(candidates);
    let limit = bound.limit(total, n);
    // A hot key yields one request early, so that the last slot under the
    // bound is left to the endpoint's other keys; if every endpoint is at
    // that, it takes a last slot like any key.
    let early = hot
        .then(|| first_under(key, candidates, limit.saturating_sub(1).max(1), None))
        .flatten();
    early
        .or_else(|| first_under(key, candidates, limit, None))
        .or_else(|| first_under(key, candidates, usize::MAX, None))
}

/// In-flight requests over the eligible endpoints, and their number.
pub(crate) fn totals(candidates: &[Candidate]) -> (usize, usize) {
    candidates
        .iter()
        .filter(|c| c.eligible)
        .fold((0, 0), |(total, n), c| (total + c.load, n + 1))
}

/// Power of two choices over the eligible endpoints under the load bound
/// (over every eligible one if loads moved and none is under it): the less
/// loaded of two drawn at random (`draw(n)` gives an index below `n`).
pub(crate) fn least_loaded_of_two(
    candidates: &[Candidate],
    bound: Bound,
    mut draw: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let (total, n) = totals(candidates);
    let limit = bound.limit(total, n);
    let under = |c: &Candidate| c.eligible && c.load < limit;
    if candidates.iter().any(under) {
        two_choices(candidates, under, &mut draw)
    } else {
        two_choices(candidates, |c| c.eligible, &mut draw)
    }
}

fn two_choices(
    candidates: &[Candidate],
    allowed: impl Fn(&Candidate) -> bool,
    draw: &mut impl FnMut(usize) -> usize,
) -> Option<usize> {
    let count = candidates.iter().filter(|c| allowed(c)).count();
    let nth = |k: usize| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| allowed(c))
            .nth(k)
            .map(|(i, _)| i)
    };
    match count {
        0 => None,
        1 => nth(0),
        n => {
            let a = draw(n);
            let b = (a + 1 + draw(n - 1)) % n;
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if candidates[b].load < candidates[a].load {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ids(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| endpoint_id(SocketAddr::from(([127, 0, 0, 2 + i as u8], 8080))))
            .collect()
    }

    fn idle(ids: &[u64]) -> Vec<Candidate> {
        ids.iter()
            .map(|&id| Candidate {
                id,
                load: 0,
                eligible: true,
            })
            .collect()
    }

    /// The paper's bound (no floor) with `epsilon`.
    fn paper(epsilon: f64) -> Bound {
        Bound { epsilon, floor: 1 }
    }

    /// The key's first endpoint, by id, with no load.
    fn home(key: u64, ids: &[u64]) -> u64 {
        ids[choose(key, &idle(ids), paper(0.25), false).unwrap()]
    }

    #[test]
    fn the_bound_is_the_ceiling_of_the_mean_with_headroom() {
        assert_eq!(paper(0.25).limit(0, 8), 1);
        assert_eq!(paper(0.25).limit(15, 8), 3); // mean 2, 2.5 -> 3
        assert_eq!(paper(0.25).limit(79, 8), 13); // mean 10, 12.5 -> 13
        assert_eq!(paper(0.25).limit(5, 0), 0);
        // Light load: the floor, not 1.
        let floored = Bound {
            epsilon: 0.25,
            floor: 2,
        };
        assert_eq!(floored.limit(1, 8), 2);
        assert_eq!(floored.limit(79, 8), 13);
    }

    #[test]
    fn keys_spread_over_endpoints_about_evenly() {
        let ids = ids(8);
        let mut counts = [0usize; 8];
        for key in 0..8_000u64 {
            let id = home(mix(key), &ids);
            counts[ids.iter().position(|&i| i == id).unwrap()] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn two_choices_take_the_less_loaded_and_skip_the_ineligible() {
        let mut c = idle(&ids(3));
        c[0].load = 5;
        c[1].load = 1;
        c[2].eligible = false;
        for first in 0..2 {
            let mut draws = [first, 0].into_iter();
            assert_eq!(
                least_loaded_of_two(&c, paper(100.0), |_| draws.next().unwrap()),
                Some(1)
            );
        }
        c[1].eligible = false;
        assert_eq!(least_loaded_of_two(&c, paper(0.25), |_| 0), Some(0));
        c[0].eligible = false;
        assert_eq!(least_loaded_of_two(&c, paper(0.25), |_| 0), None);
    }

    #[test]
    fn a_hot_key_yields_its_endpoint_one_request_early() {
        let ids = ids(4);
        let key = mix(42);
        let home = choose(key, &idle(&ids), paper(0.25), false).unwrap();
        let mut c = idle(&ids);
        // Its endpoint holds one request and the bound is 2 (the floor):
        // a cold key stays, a hot key goes to the next endpoint.
        c[home].load = 1;
        let floored = Bound {
            epsilon: 0.25,
            floor: 2,
        };
        assert_eq!(choose(key, &c, floored, false), Some(home));
        assert_ne!(choose(key, &c, floored, true), Some(home));
    }

    #[test]
    fn two_choices_draw_only_under_the_bound() {
        // Loads 3, 3, 0, 0: the bound is ceil(1.25 * 7 / 4) = 3; whatever
        // the draws, the two loaded endpoints are never drawn.
        let mut c = idle(&ids(4));
        c[0].load = 3;
        c[1].load = 3;
        for a in 0..2 {
            for b in 0..1 {
                let mut draws = [a, b].into_iter();
                let i = least_loaded_of_two(&c, paper(0.25), |_| draws.next().unwrap()).unwrap();
                assert!(i >= 2, "drew {i}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Over any sequence of arrivals (keyed) and finishes, no endpoint
        /// holds more than the bound computed when its last request came.
        #[test]
        fn no_endpoint_ever_holds_more_than_the_bound(
            n in 1usize..12,
            epsilon in 0.05f64..2.0,
            floor in 1usize..4,
            steps in prop::collection::vec((any::<bool>(), any::<u64>()), 1..400),
        ) {
            let mut c = idle(&ids(n));
            for (arrive, x) in steps {
                if arrive {
                    let (total, eligible) = totals(&c);
                    let bound = Bound { epsilon, floor };
                    let limit = bound.limit(total, eligible);
                    // Every fourth arrival has no key: two random choices.
                    let i = if x % 4 == 0 {
                        least_loaded_of_two(&c, bound, |n| (x as usize >> 8) % n).unwrap()
                    } else {
                        choose(mix(x), &c, bound, x % 3 == 0).unwrap()
                    };
                    c[i].load += 1;
                    prop_assert!(c[i].load <= limit, "load {} over {}", c[i].load, limit);
                } else {
                    let busy: Vec<usize> = (0..n).filter(|&i| c[i].load > 0).collect();
                    if !busy.is_empty() {
                        c[busy[(x as usize) % busy.len()]].load -= 1;
                    }
                }
            }
        }

        /// Removing one of n endpoints moves only the keys it held.
        #[test]
        fn removing_an_endpoint_moves_only_its_keys(n in 2usize..16, gone in 0usize..16) {
            let before = ids(n);
            let gone = gone % n;
            let mut after = before.clone();
            let removed = after.remove(gone);
            for key in (0..500u64).map(mix) {
                let (old, new) = (home(key, &before), home(key, &after));
                if old != removed {
                    prop_assert_eq!(old, new);
                }
            }
        }

        /// Adding one endpoint to n moves keys only onto it, about 1/(n+1)
        /// of them, and none between two old endpoints.
        #[test]
        fn adding_an_endpoint_moves_about_its_share_onto_it(n in 1usize..16) {
            let after = ids(n + 1);
            let before = after[..n].to_vec();
            let added = after[n];
            let keys = 4_000u64;
            let mut moved = 0;
            for key in (0..keys).map(mix) {
                let (old, new) = (home(key, &before), home(key, &after));
                if old != new {
                    prop_assert_eq!(new, added, "a key moved between old endpoints");
                    moved += 1;
                }
            }
            let share = moved as f64 / keys as f64;
            let expected = 1.0 / (n + 1) as f64;
            prop_assert!((share - expected).abs() < 0.35 * expected + 0.01, "{} vs {}", share, expected);
        }
    }
}

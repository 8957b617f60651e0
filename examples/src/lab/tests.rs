//! The lab's row computation and turn order, without a run.

use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::row::request_figures;
use super::*;
use crate::driver::{LoadOutcome, Recorder};
use crate::results::Environment;
use crate::stacks::Completed;

fn outcome(ids: &[Option<&'static str>]) -> LoadOutcome {
    let mut recorder = Recorder::new();
    for id in ids {
        let done = Completed {
            status: StatusCode::OK,
            request_id: id.map(HeaderValue::from_static),
            body_bytes: 100,
            served_by: None,
        };
        recorder.record(
            Duration::from_millis(1),
            Ok(done),
            &HeaderValue::from_static("1"),
        );
    }
    LoadOutcome {
        recorder,
        elapsed: Duration::from_secs(1),
    }
}

fn results(run: RunResult) -> Results {
    Results {
        version: 1,
        runs: vec![run],
        skipped: Vec::new(),
        environment: Environment {
            command: String::new(),
            cpus: 1,
            client_threads: 1,
            server_threads: 1,
            quick: true,
            target: None,
            turn_seed: 0,
        },
    }
}

/// A response carrying another request's id fails the run; on the
/// embedded server, so does one carrying none.
#[test]
fn a_misdelivered_or_unechoed_response_fails_a_run_on_the_embedded_server() {
    let mut r = RunResult::default();
    request_figures(&mut r, &outcome(&[Some("1"), Some("2")]), true);
    assert_eq!((r.requests, r.misdelivered), (2, 1));
    assert_eq!(results(r).failures().len(), 1);

    let mut r = RunResult::default();
    request_figures(&mut r, &outcome(&[Some("1"), None]), true);
    assert_eq!((r.misdelivered, r.unechoed), (1, 1));
    assert_eq!(results(r).failures().len(), 1);

    let mut r = RunResult::default();
    request_figures(&mut r, &outcome(&[Some("1"), Some("1")]), true);
    assert!(results(r).failures().is_empty());
}

/// An external server may not echo the id: the response is counted,
/// not failed.
#[test]
fn an_unechoed_response_from_an_external_server_is_counted_not_failed() {
    let mut r = RunResult::default();
    request_figures(&mut r, &outcome(&[None, None]), false);
    assert_eq!((r.misdelivered, r.unechoed), (0, 2));
    assert!(results(r).failures().is_empty());
}

/// Every round's order is a permutation, repeatable from the seed, and
/// the order changes between rounds.
#[test]
fn turn_order_is_a_seeded_permutation_per_round() {
    let orders: Vec<Vec<usize>> = (0..8).map(|round| turn_order(7, round, 6)).collect();
    for order in &orders {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..6).collect::<Vec<_>>());
    }
    assert!(orders.iter().any(|o| o != &orders[0]), "{orders:?}");
    assert_eq!(turn_order(7, 3, 6), orders[3]);
}

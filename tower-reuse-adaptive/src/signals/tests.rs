//! The live signals alone: bursts, the server's closes sorted, missed
//! reuses.

use super::*;

#[tokio::test(start_paused = true)]
async fn bursts_are_split_by_quiet_spells() {
    let live = Live::default();
    for _ in 0..3 {
        for _ in 0..4 {
            live.out(true, Duration::ZERO, None);
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        for _ in 0..4 {
            live.back();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // Requests a few milliseconds apart are one burst.
    live.out(true, Duration::ZERO, None);
    live.back();
    tokio::time::advance(Duration::from_millis(5)).await;
    live.out(true, Duration::ZERO, None);
    live.back();
    let samples = live.drain(&mut Bucket::default(), Instant::now());
    assert_eq!(samples.bursts.len(), 3);
    assert!(samples.bursts.iter().all(|b| b.peak == 4));
    assert!(samples.burst_start.is_some());
}

#[tokio::test]
async fn an_end_without_its_start_does_not_wrap() {
    let live = Live::default();
    live.back();
    assert_eq!(live.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn server_closes_are_sorted_into_idle_and_request_limits() {
    let live = Live::default();
    live.closed(
        CloseReason::ServerClosed,
        Some(Duration::from_millis(1000)),
        3,
    );
    live.closed(
        CloseReason::ServerClosed,
        Some(Duration::from_millis(1)),
        10,
    );
    live.closed(CloseReason::ServerHint, None, 10);
    live.closed(CloseReason::ServerClosed, None, 4); // mid-request: neither
    live.stale(Some(Duration::from_millis(990)));
    // HTTP/2: a GOAWAY on an idle connection.
    live.closed(CloseReason::GoAway, Some(Duration::from_millis(995)), 7);
    let mut bucket = Bucket::default();
    let samples = live.drain(&mut bucket, Instant::now());
    assert_eq!(
        samples.idle_closes,
        [
            Duration::from_millis(1000),
            Duration::from_millis(990),
            Duration::from_millis(995)
        ]
    );
    assert_eq!(samples.request_closes, [10, 10]);
    assert_eq!(bucket.counts.stale, 1);
    assert_eq!(bucket.counts.closes.iter().sum::<u64>(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_demand_connect_after_an_expiry_records_the_gap_it_would_have_had() {
    let live = Live::default();
    live.closed(CloseReason::IdleTimeout, Some(Duration::from_secs(2)), 1);
    tokio::time::advance(Duration::from_secs(3)).await;
    live.connect_started(true);
    let mut bucket = Bucket::default();
    live.drain(&mut bucket, Instant::now() - Duration::from_secs(60));
    assert_eq!(bucket.missed.count(), 1);
    assert!(bucket.missed.quantile(1.0).unwrap() >= Duration::from_secs(5));
}

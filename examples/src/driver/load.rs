//! The three load loops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::closed::closed;
use super::{
    Arrivals, Keys, Load, LoadOutcome, POST_BODY, Progress, REQUEST_TIMEOUT, Recorder, Zipf,
};
use crate::server::X_AFFINITY_KEY;
use crate::server::X_REQUEST_ID;
use crate::stacks::{Completed, RequestError, RequestErrorKind, Stack, StackError, WorkerClient};
use crate::target::Target;

/// Late responses are awaited this long after the load ends.
const DRAIN: Duration = Duration::from_secs(1);

/// Runs `load` against `targets` through `stack`. Closed loops send to the
/// first target. `track_in_flight` keeps `progress.in_flight()` exact (one
/// more atomic per request; only needed when the server is external).
///
/// Every request sent is accounted for: a response, an error, or lost (no
/// answer within [`REQUEST_TIMEOUT`], or no record at all, counted against
/// the requests sent).
///
/// `round` numbers the slices of a run that takes turns between stacks
/// (0 otherwise): closed-loop request ids differ between rounds, and the
/// workers' clients go back to the stack at the end of each.
pub async fn run(
    stack: &Stack,
    targets: &Arc<[Target]>,
    load: &Load,
    progress: &Arc<Progress>,
    track_in_flight: bool,
    round: u32,
) -> Result<LoadOutcome, StackError> {
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut recorder = match load {
        Load::Closed { .. } => {
            closed(
                stack,
                targets,
                load,
                &sent,
                progress,
                track_in_flight,
                round,
            )
            .await?
        }
        Load::Steps { steps } => {
            let mut all = Recorder::new();
            for (i, &(workers, duration)) in steps.iter().enumerate() {
                let step = Load::Closed {
                    workers,
                    duration,
                    max_requests: None,
                    think: None,
                    post_every: None,
                    keys: None,
                };
                // Ids apart between steps, as between rounds.
                let round = round + u32::try_from(i).unwrap_or(u32::MAX);
                all.merge(
                    &closed(
                        stack,
                        targets,
                        &step,
                        &sent,
                        progress,
                        track_in_flight,
                        round,
                    )
                    .await?,
                );
            }
            all
        }
        &Load::Periodic {
            bursts,
            size,
            period,
        } => {
            let schedule: Vec<(Duration, Target)> = (0..bursts)
                .map(|b| {
                    (
                        period * u32::try_from(b).unwrap_or(u32::MAX),
                        targets[0].clone(),
                    )
                })
                .collect();
            return timed_bursts(stack, &schedule, size, progress, track_in_flight).await;
        }
        Load::Poisson {
            rate,
            duration,
            max_in_flight,
            zipf_exponent,
            max_requests,
            keys,
        } => {
            let zipf = match zipf_exponent {
                Some(s) => Zipf::new(targets.len(), *s),
                None => Zipf::uniform(targets.len()),
            };
            poisson(
                stack,
                targets,
                &zipf,
                PoissonSpec {
                    rate: *rate,
                    deadline: started + *duration,
                    max_in_flight: *max_in_flight,
                    max_requests: max_requests.unwrap_or(u64::MAX),
                    keys: keys.clone(),
                },
                &sent,
                progress,
                track_in_flight,
            )
            .await?
        }
        Load::Bursts { bursts, size, gap } => {
            let mut all = Recorder::new();
            let mut next_id = 0u64;
            for b in 0..*bursts {
                let mut tasks = JoinSet::new();
                for _ in 0..*size {
                    let client = shared(stack)?;
                    next_id += 1;
                    tasks.spawn(one_shot(
                        client,
                        targets[0].clone(),
                        None,
                        next_id,
                        sent.clone(),
                        progress.clone(),
                        track_in_flight,
                    ));
                }
                let drain_by = Instant::now() + REQUEST_TIMEOUT + DRAIN;
                collect(&mut tasks, &mut all, drain_by).await;
                progress.add_done(*size as u64);
                if b + 1 < *bursts {
                    sleep(*gap).await;
                }
            }
            all
        }
    };
    recorder.reconcile(sent.load(Relaxed));
    Ok(LoadOutcome {
        recorder,
        elapsed: started.elapsed(),
    })
}

fn shared(stack: &Stack) -> Result<WorkerClient, StackError> {
    stack.shared().ok_or_else(|| {
        StackError::new(format!(
            "{}: cannot share one client between tasks (open-loop load)",
            stack.kind()
        ))
    })
}

/// The request every stack receives: the pre-parsed absolute URI, one
/// header, `x-request-id` (and `x-affinity-key` when the load has keys),
/// and an empty body (a GET) or [`POST_BODY`].
fn request(
    target: &Target,
    id: &HeaderValue,
    post: bool,
    key: Option<&HeaderValue>,
) -> Request<Full<Bytes>> {
    let body = if post {
        Bytes::from_static(POST_BODY)
    } else {
        Bytes::new()
    };
    let mut request = Request::new(Full::new(body));
    if post {
        *request.method_mut() = Method::POST;
    }
    *request.uri_mut() = target.uri.clone();
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    if let Some(key) = key {
        request.headers_mut().insert(X_AFFINITY_KEY, key.clone());
    }
    request
}

/// A request's affinity key and the phase it was sent in.
pub(super) type Keyed = Option<(u32, u32)>;

/// Draws a key for the next request, when the load has keys.
pub(super) fn draw(keys: Option<&Keys>) -> Keyed {
    keys.map(|keys| (keys.draw(), keys.phase()))
}

/// A request's fate: `None` when the stack neither answered nor failed
/// within [`REQUEST_TIMEOUT`] (lost).
type Answer = Option<Result<Completed, RequestError>>;

/// Sends one request, counting it in `sent` first.
pub(crate) async fn send(
    client: &mut WorkerClient,
    target: &Target,
    id: &HeaderValue,
    post: bool,
    key: Option<&HeaderValue>,
    sent: &AtomicU64,
) -> (Duration, Answer) {
    let started = Instant::now();
    sent.fetch_add(1, Relaxed);
    let answer = timeout(
        REQUEST_TIMEOUT,
        client.send(request(target, id, post, key), target),
    )
    .await
    .ok();
    (started.elapsed(), answer)
}

pub(crate) fn note(
    recorder: &mut Recorder,
    latency: Duration,
    answer: Answer,
    id: &HeaderValue,
    keyed: Keyed,
) {
    match answer {
        Some(outcome) => {
            if let (Some((key, phase)), Ok(done)) = (keyed, &outcome)
                && let Some(by) = &done.served_by
            {
                recorder.route(phase, key, by);
            }
            recorder.record(latency, outcome, id);
        }
        None => recorder.record_lost(),
    }
}

type Sample = (Duration, Answer, HeaderValue, Keyed);

async fn one_shot(
    mut client: WorkerClient,
    target: Target,
    keys: Option<Arc<Keys>>,
    id: u64,
    sent: Arc<AtomicU64>,
    progress: Arc<Progress>,
    track_in_flight: bool,
) -> Sample {
    let id = HeaderValue::from(id);
    if track_in_flight {
        progress.in_flight_delta(1);
    }
    let keyed = draw(keys.as_deref());
    let key = keys.as_ref().zip(keyed).map(|(k, (i, _))| k.value(i));
    let (latency, answer) = send(&mut client, &target, &id, false, key, &sent).await;
    if track_in_flight {
        progress.in_flight_delta(-1);
    }
    (latency, answer, id, keyed)
}

/// Awaits every task (until `drain_by`, then aborts the rest). A task that
/// failed or was aborted leaves no record: [`Recorder::reconcile`] counts
/// its request lost.
async fn collect(tasks: &mut JoinSet<Sample>, recorder: &mut Recorder, drain_by: Instant) {
    loop {
        match tokio::time::timeout_at(drain_by, tasks.join_next()).await {
            Ok(Some(Ok((latency, answer, id, keyed)))) => {
                note(recorder, latency, answer, &id, keyed)
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => return,
            Err(_) => {
                tasks.abort_all();
                return;
            }
        }
    }
}

struct PoissonSpec {
    rate: f64,
    deadline: Instant,
    max_in_flight: usize,
    max_requests: u64,
    keys: Option<Arc<Keys>>,
}

async fn poisson(
    stack: &Stack,
    targets: &Arc<[Target]>,
    zipf: &Zipf,
    spec: PoissonSpec,
    sent: &Arc<AtomicU64>,
    progress: &Arc<Progress>,
    track_in_flight: bool,
) -> Result<Recorder, StackError> {
    let mut recorder = Recorder::new();
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    let schedule = Arrivals::new(
        spec.rate,
        spec.deadline.saturating_duration_since(start),
        spec.max_requests,
        fastrand::Rng::new(),
    );
    let mut arrivals = 0u64;
    for at in schedule {
        sleep_until(start + at).await;
        harvest(&mut tasks, &mut recorder, progress);
        arrivals += 1;
        if tasks.len() >= spec.max_in_flight {
            recorder.error(RequestError::new(
                RequestErrorKind::Overload,
                format!("{} requests already in flight", spec.max_in_flight),
            ));
            continue;
        }
        let target = targets[zipf.sample()].clone();
        tasks.spawn(one_shot(
            shared(stack)?,
            target,
            spec.keys.clone(),
            arrivals,
            sent.clone(),
            progress.clone(),
            track_in_flight,
        ));
    }
    drain(&mut tasks, &mut recorder, progress).await;
    Ok(recorder)
}

/// Records an open loop's requests answered so far, without waiting.
fn harvest(tasks: &mut JoinSet<Sample>, recorder: &mut Recorder, progress: &Progress) {
    while let Some(done) = tasks.try_join_next() {
        // A failed task leaves no record: reconciled as lost.
        if let Ok((latency, answer, id, keyed)) = done {
            note(recorder, latency, answer, &id, keyed);
        }
        progress.add_done(1);
    }
}

/// Awaits an open loop's outstanding requests once it has sent its last
/// ([`REQUEST_TIMEOUT`] and [`DRAIN`] at most).
async fn drain(tasks: &mut JoinSet<Sample>, recorder: &mut Recorder, progress: &Progress) {
    let outstanding = tasks.len() as u64;
    collect(tasks, recorder, Instant::now() + REQUEST_TIMEOUT + DRAIN).await;
    progress.add_done(outstanding);
}

/// Request ids of [`timed_bursts`] start here, apart from the other loads'.
const BURST_ID_BASE: u64 = 1 << 48;

/// Bursts at fixed times: at each `(at, target)` of `schedule` (offsets
/// from the start, in order), `size` concurrent requests to `target`,
/// whether the earlier bursts are answered or not. Bounded by the
/// schedule in count and time; the last answers are awaited as in the
/// other loads.
pub async fn timed_bursts(
    stack: &Stack,
    schedule: &[(Duration, Target)],
    size: usize,
    progress: &Arc<Progress>,
    track_in_flight: bool,
) -> Result<LoadOutcome, StackError> {
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut recorder = Recorder::new();
    let mut tasks = JoinSet::new();
    let mut next_id = BURST_ID_BASE;
    for (at, target) in schedule {
        sleep_until(started + *at).await;
        harvest(&mut tasks, &mut recorder, progress);
        for _ in 0..size {
            next_id += 1;
            tasks.spawn(one_shot(
                shared(stack)?,
                target.clone(),
                None,
                next_id,
                sent.clone(),
                progress.clone(),
                track_in_flight,
            ));
        }
    }
    drain(&mut tasks, &mut recorder, progress).await;
    recorder.reconcile(sent.load(Relaxed));
    Ok(LoadOutcome {
        recorder,
        elapsed: started.elapsed(),
    })
}

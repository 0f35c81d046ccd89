//! The dynamic batcher with real threads: results reach their own callers, batch sizes,
//! backpressure, keys, failures of the batch function and draining on drop.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use safeguard_engine::scheduler::{Batcher, BatcherConfig, SchedulerError};

fn cfg(max_batch: usize, max_wait_ms: u64, queue_capacity: usize) -> BatcherConfig {
    BatcherConfig {
        max_batch,
        max_wait: Duration::from_millis(max_wait_ms),
        queue_capacity,
    }
}

/// A batch function that answers `(request, batch size)` and records every batch.
fn echo(log: &Arc<Mutex<Vec<Vec<u64>>>>) -> impl FnMut(Vec<u64>) -> Vec<(u64, usize)> {
    let log = Arc::clone(log);
    move |reqs| {
        log.lock().unwrap().push(reqs.clone());
        let n = reqs.len();
        reqs.into_iter().map(|r| (r, n)).collect()
    }
}

#[test]
fn many_concurrent_submitters_each_get_their_own_result() {
    let log = Arc::default();
    let batcher = Batcher::new(cfg(8, 2, 1024), echo(&log)).unwrap();
    let (threads, per_thread) = (16u64, 50u64);
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (batcher, start) = (batcher.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for i in 0..per_thread {
                    let req = t * 1000 + i;
                    let (answer, size) = batcher.submit_wait(req).unwrap().wait().unwrap();
                    assert_eq!(answer, req, "a caller got someone else's result");
                    assert!((1..=8).contains(&size));
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let stats = batcher.stats();
    let total = threads * per_thread;
    assert_eq!((stats.submitted, stats.jobs_run), (total, total));
    let histogram_jobs: u64 = (0u64..).zip(&stats.batch_sizes).map(|(n, c)| n * c).sum();
    assert_eq!(histogram_jobs, total);
    assert_eq!(
        (stats.rejected, stats.failed_batches, stats.queue_depth),
        (0, 0, 0)
    );
    assert!(
        stats.max_batch_size() > 1,
        "16 concurrent callers never shared a batch"
    );
    eprintln!(
        "16 callers: {} batches, mean {:.2}, max {}",
        stats.batches,
        stats.mean_batch_size(),
        stats.max_batch_size()
    );
    let mut seen: Vec<u64> = log.lock().unwrap().concat();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len() as u64, total, "every job ran exactly once");
}

#[test]
fn batches_fill_to_max_batch_under_load() {
    let log = Arc::default();
    // max_wait is long: only full batches may start.
    let batcher = Batcher::new(cfg(8, 10_000, 64), echo(&log)).unwrap();
    let started = Instant::now();
    let tickets: Vec<_> = (0..32).map(|i| batcher.submit(i).unwrap()).collect();
    for (i, t) in (0..).zip(tickets) {
        assert_eq!(t.wait().unwrap(), (i, 8));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "full batches waited"
    );
    let stats = batcher.stats();
    assert_eq!((stats.batches, stats.max_batch_size()), (4, 8));
    assert_eq!(stats.batch_sizes[8], 4);
    let log = log.lock().unwrap();
    assert_eq!(log[0], (0..8).collect::<Vec<_>>(), "submission order");
}

#[test]
fn a_single_caller_runs_alone_after_max_wait() {
    let log = Arc::default();
    let max_wait = Duration::from_millis(30);
    let batcher = Batcher::new(cfg(8, 30, 8), echo(&log)).unwrap();
    for i in 0..5 {
        let t0 = Instant::now();
        assert_eq!(batcher.submit(i).unwrap().wait().unwrap(), (i, 1));
        let waited = t0.elapsed();
        assert!(waited >= max_wait, "ran after {waited:?}, before max_wait");
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    }
    let stats = batcher.stats();
    assert_eq!((stats.batches, stats.max_batch_size()), (5, 1));
}

/// The test's side of [`gated`]: each batch's requests as it starts, and its release.
struct Gate {
    started: mpsc::Receiver<Vec<u64>>,
    release: mpsc::Sender<()>,
}

/// A batch function that reports each batch on `Gate::started` and then blocks until
/// `Gate::release` sends a unit (or is dropped).
fn gated() -> (impl FnMut(Vec<u64>) -> Vec<u64>, Gate) {
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let run = move |reqs: Vec<u64>| {
        started_tx.send(reqs.clone()).unwrap();
        let _ = release_rx.recv();
        reqs
    };
    (run, Gate { started, release })
}

#[test]
fn a_full_queue_rejects_at_once_and_submit_wait_blocks_for_room() {
    let (run, Gate { started, release }) = gated();
    let batcher = Batcher::new(cfg(1, 0, 2), run).unwrap();
    let a = batcher.submit(1).unwrap();
    assert_eq!(
        started.recv().unwrap(),
        [1],
        "the worker took the first job"
    );
    let b = batcher.submit(2).unwrap();
    let c = batcher.submit(3).unwrap();
    let t0 = Instant::now();
    let refused = batcher.submit(4).unwrap_err();
    assert!(t0.elapsed() < Duration::from_millis(100), "submit blocked");
    assert_eq!(refused, SchedulerError::QueueFull { capacity: 2 });
    assert_eq!(batcher.stats().rejected, 1);
    assert_eq!(batcher.stats().queue_depth, 2);
    // submit_wait blocks until the worker takes job 2, then queues job 5.
    let waiter = {
        let batcher = batcher.clone();
        thread::spawn(move || batcher.submit_wait(5).unwrap().wait())
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "submit_wait did not wait for room");
    for _ in 0..4 {
        release.send(()).unwrap();
    }
    assert_eq!((a.wait(), b.wait(), c.wait()), (Ok(1), Ok(2), Ok(3)));
    assert_eq!(waiter.join().unwrap(), Ok(5));
    let stats = batcher.stats();
    assert_eq!((stats.submitted, stats.rejected, stats.jobs_run), (4, 1, 4));
}

#[test]
fn jobs_with_different_keys_never_share_a_batch() {
    let log: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    // Request = key * 1000 + id; the key is the thousands.
    let batcher = Batcher::with_key(cfg(4, 5, 1024), |r: &u64| r / 1000, echo(&log)).unwrap();
    let handles: Vec<_> = (0..12u64)
        .map(|t| {
            let batcher = batcher.clone();
            thread::spawn(move || {
                for i in 0..40 {
                    let req = ((t + i) % 3) * 1000 + t * 40 + i;
                    assert_eq!(batcher.submit_wait(req).unwrap().wait().unwrap().0, req);
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let log = log.lock().unwrap();
    for batch in log.iter() {
        assert!(
            batch.iter().all(|r| r / 1000 == batch[0] / 1000),
            "mixed keys in {batch:?}"
        );
    }
    assert_eq!(log.iter().map(Vec::len).sum::<usize>(), 480);
    assert!(log.iter().any(|b| b.len() > 1), "no batching happened");
}

#[test]
fn other_keys_stay_queued_in_order() {
    let log: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let batcher = Batcher::with_key(cfg(4, 10_000, 64), |r: &u64| r % 2, echo(&log)).unwrap();
    let tickets: Vec<_> = (0..8).map(|i| batcher.submit(i).unwrap()).collect();
    tickets
        .into_iter()
        .for_each(|t| assert_eq!(t.wait().unwrap().1, 4));
    assert_eq!(*log.lock().unwrap(), [vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
}

#[test]
fn a_panic_in_the_batch_function_fails_only_that_batch() {
    let batcher = Batcher::new(cfg(1, 0, 16), |reqs: Vec<u64>| {
        assert_ne!(reqs[0], 13, "unlucky request");
        reqs
    })
    .unwrap();
    let bad = batcher.submit(13).unwrap().wait().unwrap_err();
    match bad {
        SchedulerError::Panicked { message } => assert!(message.contains("unlucky"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The worker survives.
    assert_eq!(batcher.submit(14).unwrap().wait(), Ok(14));
    assert_eq!(batcher.stats().failed_batches, 1);
}

#[test]
fn a_wrong_number_of_results_is_an_error_for_the_batch() {
    let batcher = Batcher::new(cfg(4, 10_000, 16), |mut reqs: Vec<u64>| {
        reqs.pop();
        reqs
    })
    .unwrap();
    let tickets: Vec<_> = (0..4).map(|i| batcher.submit(i).unwrap()).collect();
    for t in tickets {
        assert_eq!(
            t.wait(),
            Err(SchedulerError::ResultCount {
                expected: 4,
                got: 3
            })
        );
    }
}

#[test]
fn dropping_the_batcher_runs_every_queued_job_first() {
    let log = Arc::default();
    // Neither a full batch nor the deadline would start these jobs for 60 s.
    let batcher = Batcher::new(cfg(100, 60_000, 64), echo(&log)).unwrap();
    let tickets: Vec<_> = (0..5).map(|i| batcher.submit(i).unwrap()).collect();
    let clone = batcher.clone();
    drop(batcher);
    assert_eq!(clone.stats().jobs_run, 0, "a clone keeps the batcher open");
    let t0 = Instant::now();
    drop(clone);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "drop waited for max_wait"
    );
    for (i, t) in (0..).zip(tickets) {
        assert_eq!(t.wait(), Ok((i, 5)));
    }
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[test]
fn unusable_configurations_are_refused() {
    for bad in [cfg(0, 1, 1), cfg(1, 1, 0)] {
        let err = Batcher::new(bad, |r: Vec<u8>| r).unwrap_err();
        assert!(matches!(err, SchedulerError::Config { .. }), "{err}");
    }
}

//! A dynamic batcher: concurrent callers submit jobs, one worker thread runs them in batches
//! through a user-supplied batch function, and every caller gets its own result back.
//!
//! - [`Batcher::submit`] queues a job and returns a [`Ticket`]; [`Ticket::wait`] blocks for
//!   its result. When [`BatcherConfig::queue_capacity`] jobs are already waiting, `submit`
//!   fails at once with [`SchedulerError::QueueFull`] (backpressure; the server answers 429),
//!   while [`Batcher::submit_wait`] blocks until there is room.
//! - The worker takes the oldest waiting job and gathers up to [`BatcherConfig::max_batch`]
//!   jobs **with the same key** (see [`Batcher::with_key`]; e.g. the policy, so that one batch
//!   shares one prefix cache), in submission order, leaving the others queued in order. It
//!   starts the batch as soon as it is full, or [`BatcherConfig::max_wait`] after the oldest
//!   job arrived, whichever comes first. A lone caller therefore waits `max_wait` (none by
//!   default) and runs in a batch of one; under load batches fill to `max_batch` without
//!   waiting.
//! - A panic in the batch function, or a result count different from the job count, turns
//!   into an error for that batch's callers; the worker goes on with the next batch.
//! - Dropping the last handle stops accepting jobs, runs every queued job (without waiting for
//!   `max_wait`) and joins the worker.
//!
//! Plain `std` threads, a mutex and condition variables; no async runtime. Async callers
//! (the server) call [`Ticket::wait`] from a blocking task.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How jobs are grouped into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most jobs run together (≥ 1).
    pub max_batch: usize,
    /// Longest time the oldest queued job waits for others before its batch starts.
    pub max_wait: Duration,
    /// Most jobs waiting (queued, not yet running) before `submit` refuses more (≥ 1).
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    /// 8 jobs, no wait, 256 waiting. Without a wait a batch is what queued while the worker
    /// was busy (continuous batching): a lone request starts at once, and under load batches
    /// still fill. On CPU waiting only cost latency and throughput (docs/BENCHMARKS.md,
    /// "Server under load"); raise it where batching is much cheaper than running one by one.
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_wait: Duration::ZERO,
            queue_capacity: 256,
        }
    }
}

/// Why a job was not accepted or got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// `capacity` jobs are already waiting; try again later (HTTP 429).
    #[error("queue full: {capacity} jobs are already waiting")]
    QueueFull {
        /// The configured `queue_capacity`.
        capacity: usize,
    },
    /// The configuration is unusable.
    #[error("invalid batcher configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The batch function panicked while running the batch this job was in.
    #[error("the batch function panicked: {message}")]
    Panicked {
        /// The panic message (when it was a string).
        message: String,
    },
    /// The batch function returned `got` results for `expected` jobs.
    #[error("the batch function returned {got} results for {expected} jobs")]
    ResultCount {
        /// Jobs in the batch.
        expected: usize,
        /// Results returned.
        got: usize,
    },
    /// The worker is gone (it could not start or is shutting down).
    #[error("the batcher is shut down")]
    ShutDown,
}

/// Counters since the batcher started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatcherStats {
    /// Jobs accepted.
    pub submitted: u64,
    /// Jobs refused with [`SchedulerError::QueueFull`].
    pub rejected: u64,
    /// Batches run (including failed ones).
    pub batches: u64,
    /// Jobs run (the sum of all batch sizes).
    pub jobs_run: u64,
    /// Batches whose function panicked or returned the wrong number of results.
    pub failed_batches: u64,
    /// `batch_sizes[n]` = batches of `n` jobs (length `max_batch + 1`; index 0 stays 0).
    pub batch_sizes: Vec<u64>,
    /// Jobs waiting now.
    pub queue_depth: usize,
}

impl BatcherStats {
    /// The largest batch run so far (0 before any).
    pub fn max_batch_size(&self) -> usize {
        self.batch_sizes.iter().rposition(|&n| n > 0).unwrap_or(0)
    }

    /// Mean jobs per batch (0 before any batch).
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.jobs_run as f64 / self.batches as f64
        }
    }
}

/// The pending result of one submitted job.
#[derive(Debug)]
pub struct Ticket<Res> {
    rx: mpsc::Receiver<Result<Res, SchedulerError>>,
}

impl<Res> Ticket<Res> {
    /// Blocks until the job's batch has run and returns its result.
    pub fn wait(self) -> Result<Res, SchedulerError> {
        self.rx.recv().unwrap_or(Err(SchedulerError::ShutDown))
    }
}

type KeyFn<Req> = dyn Fn(&Req) -> u64 + Send + Sync;

struct Job<Req, Res> {
    req: Req,
    key: u64,
    arrived: Instant,
    reply: mpsc::Sender<Result<Res, SchedulerError>>,
}

struct State<Req, Res> {
    queue: VecDeque<Job<Req, Res>>,
    shutting_down: bool,
    stats: BatcherStats,
}

struct Shared<Req, Res> {
    cfg: BatcherConfig,
    state: Mutex<State<Req, Res>>,
    /// Signalled when a job arrives or shutdown starts (the worker waits on it).
    work: Condvar,
    /// Signalled when jobs leave the queue (`submit_wait` waits on it).
    room: Condvar,
    key: Box<KeyFn<Req>>,
}

impl<Req, Res> Shared<Req, Res> {
    /// The state, also after a panic elsewhere poisoned the lock (the state stays consistent:
    /// no user code runs under the lock).
    fn lock(&self) -> MutexGuard<'_, State<Req, Res>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Owns the worker: dropping it (with the last [`Batcher`] clone) drains and joins.
struct Owner<Req, Res> {
    shared: Arc<Shared<Req, Res>>,
    worker: Option<JoinHandle<()>>,
}

impl<Req, Res> Drop for Owner<Req, Res> {
    fn drop(&mut self) {
        self.shared.lock().shutting_down = true;
        self.shared.work.notify_all();
        if let Some(worker) = self.worker.take() {
            // A worker panic has already failed its callers' tickets; nothing more to do.
            let _ = worker.join();
        }
    }
}

/// A handle to the batcher; clones share the same queue and worker.
pub struct Batcher<Req, Res> {
    owner: Arc<Owner<Req, Res>>,
}

impl<Req, Res> Clone for Batcher<Req, Res> {
    fn clone(&self) -> Self {
        Self {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<Req, Res> std::fmt::Debug for Batcher<Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("cfg", &self.owner.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Res: Send + 'static> Batcher<Req, Res> {
    /// Starts the worker thread; every job has the same key (any jobs may share a batch).
    /// `run` gets the requests of one batch in submission order and must return one result per
    /// request, in the same order.
    pub fn new(
        cfg: BatcherConfig,
        run: impl FnMut(Vec<Req>) -> Vec<Res> + Send + 'static,
    ) -> Result<Self, SchedulerError> {
        Self::with_key(cfg, |_: &Req| 0, run)
    }

    /// Like [`Batcher::new`], but only jobs with equal `key(&req)` share a batch (e.g. a hash
    /// of the policy). The key is computed once, in `submit`.
    pub fn with_key(
        cfg: BatcherConfig,
        key: impl Fn(&Req) -> u64 + Send + Sync + 'static,
        run: impl FnMut(Vec<Req>) -> Vec<Res> + Send + 'static,
    ) -> Result<Self, SchedulerError> {
        if cfg.max_batch == 0 || cfg.queue_capacity == 0 {
            return Err(SchedulerError::Config {
                reason: format!(
                    "max_batch ({}) and queue_capacity ({}) must be at least 1",
                    cfg.max_batch, cfg.queue_capacity
                ),
            });
        }
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                shutting_down: false,
                stats: BatcherStats {
                    batch_sizes: vec![0; cfg.max_batch + 1],
                    ..Default::default()
                },
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            key: Box::new(key),
        });
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("safeguard-batcher".into())
                .spawn(move || worker(&shared, run))
                .map_err(|e| SchedulerError::Config {
                    reason: format!("cannot start the worker thread: {e}"),
                })?
        };
        Ok(Self {
            owner: Arc::new(Owner {
                shared,
                worker: Some(worker),
            }),
        })
    }

    /// Queues `req`, or fails at once with [`SchedulerError::QueueFull`] when
    /// `queue_capacity` jobs are waiting.
    pub fn submit(&self, req: Req) -> Result<Ticket<Res>, SchedulerError> {
        self.enqueue(req, false)
    }

    /// Queues `req`, blocking while the queue is full.
    pub fn submit_wait(&self, req: Req) -> Result<Ticket<Res>, SchedulerError> {
        self.enqueue(req, true)
    }

    /// The configuration.
    pub fn config(&self) -> BatcherConfig {
        self.owner.shared.cfg
    }

    /// The counters now.
    pub fn stats(&self) -> BatcherStats {
        let state = self.owner.shared.lock();
        BatcherStats {
            queue_depth: state.queue.len(),
            ..state.stats.clone()
        }
    }

    fn enqueue(&self, req: Req, block: bool) -> Result<Ticket<Res>, SchedulerError> {
        let shared = &self.owner.shared;
        let key = (shared.key)(&req);
        let mut state = shared.lock();
        loop {
            if state.shutting_down {
                return Err(SchedulerError::ShutDown);
            }
            if state.queue.len() < shared.cfg.queue_capacity {
                break;
            }
            if !block {
                state.stats.rejected += 1;
                return Err(SchedulerError::QueueFull {
                    capacity: shared.cfg.queue_capacity,
                });
            }
            state = shared.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let (reply, rx) = mpsc::channel();
        state.queue.push_back(Job {
            req,
            key,
            arrived: Instant::now(),
            reply,
        });
        state.stats.submitted += 1;
        drop(state);
        shared.work.notify_one();
        Ok(Ticket { rx })
    }
}

/// The worker loop: wait for a batch, run it, reply; until shutdown with an empty queue.
fn worker<Req, Res>(shared: &Shared<Req, Res>, mut run: impl FnMut(Vec<Req>) -> Vec<Res>) {
    while let Some(batch) = next_batch(shared) {
        shared.room.notify_all();
        let (reqs, replies): (Vec<Req>, Vec<_>) =
            batch.into_iter().map(|job| (job.req, job.reply)).unzip();
        let n = reqs.len();
        let outcome = match catch_unwind(AssertUnwindSafe(|| run(reqs))) {
            Ok(results) if results.len() == n => Ok(results),
            Ok(results) => Err(SchedulerError::ResultCount {
                expected: n,
                got: results.len(),
            }),
            Err(payload) => Err(SchedulerError::Panicked {
                message: panic_message(payload.as_ref()),
            }),
        };
        {
            let mut state = shared.lock();
            state.stats.batches += 1;
            state.stats.jobs_run += n as u64;
            state.stats.batch_sizes[n] += 1;
            if outcome.is_err() {
                state.stats.failed_batches += 1;
            }
        }
        // A caller that dropped its ticket no longer listens; that is not an error.
        match outcome {
            Ok(results) => replies.into_iter().zip(results).for_each(|(tx, r)| {
                let _ = tx.send(Ok(r));
            }),
            Err(e) => replies.into_iter().for_each(|tx| {
                let _ = tx.send(Err(e.clone()));
            }),
        }
    }
}

/// Blocks until a batch is due and takes it out of the queue; `None` once shutting down with
/// nothing queued.
fn next_batch<Req, Res>(shared: &Shared<Req, Res>) -> Option<Vec<Job<Req, Res>>> {
    let cfg = &shared.cfg;
    let mut state = shared.lock();
    loop {
        let Some(oldest) = state.queue.front() else {
            if state.shutting_down {
                return None;
            }
            state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        // No deadline when `max_wait` is too large to add: only full batches start.
        let (key, deadline) = (oldest.key, oldest.arrived.checked_add(cfg.max_wait));
        let ready = state.queue.iter().filter(|j| j.key == key).count();
        let now = Instant::now();
        let due = deadline.is_some_and(|d| now >= d);
        if ready >= cfg.max_batch || state.shutting_down || due {
            return Some(take_batch(&mut state.queue, key, cfg.max_batch));
        }
        state = match deadline {
            Some(d) => {
                let waited = shared.work.wait_timeout(state, d - now);
                waited.unwrap_or_else(|e| e.into_inner()).0
            }
            None => shared.work.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Removes the first `max` jobs with `key`, in order; the others keep their order.
fn take_batch<Req, Res>(
    queue: &mut VecDeque<Job<Req, Res>>,
    key: u64,
    max: usize,
) -> Vec<Job<Req, Res>> {
    let mut batch = Vec::with_capacity(max);
    let mut rest = VecDeque::with_capacity(queue.len());
    for job in queue.drain(..) {
        if batch.len() < max && job.key == key {
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *queue = rest;
    batch
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: u64, id: u32) -> Job<u32, u32> {
        Job {
            req: id,
            key,
            arrived: Instant::now(),
            reply: mpsc::channel().0,
        }
    }

    #[test]
    fn take_batch_takes_the_first_jobs_of_a_key_and_keeps_the_rest_in_order() {
        let mut q: VecDeque<_> = [(1, 0), (2, 1), (1, 2), (1, 3), (2, 4), (1, 5)]
            .into_iter()
            .map(|(k, i)| job(k, i))
            .collect();
        let batch: Vec<u32> = take_batch(&mut q, 1, 3)
            .into_iter()
            .map(|j| j.req)
            .collect();
        assert_eq!(batch, [0, 2, 3]);
        let rest: Vec<u32> = q.iter().map(|j| j.req).collect();
        assert_eq!(rest, [1, 4, 5]);
    }

    #[test]
    fn stats_summaries() {
        let s = BatcherStats {
            batches: 3,
            jobs_run: 7,
            batch_sizes: vec![0, 1, 1, 0, 1, 0],
            ..Default::default()
        };
        assert_eq!(s.max_batch_size(), 4);
        assert!((s.mean_batch_size() - 7.0 / 3.0).abs() < 1e-12);
        assert_eq!(BatcherStats::default().max_batch_size(), 0);
    }
}

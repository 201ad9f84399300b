//! Micro-batching of concurrent forecasts onto inference threads.
//!
//! Requests enqueue a [`Job`] on a bounded queue and await its answer; a
//! full queue answers [`Error::Overloaded`] at once instead of growing.
//! Forecasts of streams instead wait for room ([`Batcher::forecast_waiting`])
//! in their share of the queue, half of it, so streams are held back rather
//! than refused and never take the room of other requests.
//! Worker threads (inference is synchronous CPU work, so it runs off the
//! async threads) take the first waiting job, gather more until the batch
//! is full or `max_wait` has passed, and run one forward pass per model
//! version in the batch. Jobs whose caller went away (deadline passed,
//! client cancelled) are dropped unrun. Inputs are validated before they
//! are queued; should a batch still fail, each of its jobs is rerun alone
//! so one bad input cannot fail the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardcast_core::{Forecaster, GridStep, QuantileForecast, Timestamp, Window};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::context::GridTail;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::Served;

/// Batching settings; as command-line flags, `shardcast serve`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct BatchConfig {
    /// Most forecasts in one inference batch.
    #[arg(long, env = "SHARDCAST_MAX_BATCH", default_value_t = BATCH.max_batch)]
    pub max_batch: usize,
    /// Longest a forecast waits for others to join its batch, microseconds.
    #[arg(
        long = "max-wait-us",
        env = "SHARDCAST_MAX_WAIT_US",
        default_value = "0",
        value_parser = micros
    )]
    pub max_wait: Duration,
    /// Most forecasts queued; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHARDCAST_QUEUE", default_value_t = BATCH.queue)]
    pub queue: usize,
    /// Inference threads, each running its batches on one core (the server
    /// sets `RAYON_NUM_THREADS=1` unless it is set).
    #[arg(long, env = "SHARDCAST_WORKERS", default_value_t = BATCH.workers)]
    pub workers: usize,
}

/// The default batching.
const BATCH: BatchConfig = BatchConfig {
    max_batch: 64,
    max_wait: Duration::ZERO,
    queue: 1024,
    workers: 1,
};

impl Default for BatchConfig {
    fn default() -> Self {
        BATCH
    }
}

/// A whole number of microseconds.
fn micros(s: &str) -> std::result::Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_micros)
}

/// One forecast to run: a series' history and the names the model knows
/// it by.
#[derive(Debug)]
pub struct Job {
    /// The model version to run (the one current when the request arrived).
    pub served: Arc<Served>,
    /// The series id (a model that never saw it forecasts it as new).
    pub series: String,
    /// Its shard type.
    pub shard_type: String,
    /// History and events.
    pub tail: Arc<GridTail>,
    reply: oneshot::Sender<Result<QuantileForecast>>,
    /// A stream's place in its share of the queue, given back when a worker
    /// takes the job.
    room: Option<OwnedSemaphorePermit>,
}

/// Handle to the queue; clones share it.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    limit: usize,
    metrics: Arc<Metrics>,
    /// Places for streams' jobs in the queue: half of it.
    stream_room: Arc<Semaphore>,
}

impl Batcher {
    /// Starts `cfg.workers` inference threads. They stop when every
    /// `Batcher` clone is dropped and the queue is drained.
    pub fn start(cfg: BatchConfig, metrics: Arc<Metrics>) -> (Self, Vec<JoinHandle<()>>) {
        let cfg = BatchConfig {
            max_batch: cfg.max_batch.max(1),
            queue: cfg.queue.max(1),
            workers: cfg.workers.max(1),
            ..cfg
        };
        let (tx, rx) = sync_channel(cfg.queue);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let handles = (0..cfg.workers)
            .map(|i| {
                let (rx, depth, metrics) =
                    (Arc::clone(&rx), Arc::clone(&depth), Arc::clone(&metrics));
                std::thread::Builder::new()
                    .name(format!("shardcast-infer-{i}"))
                    .spawn(move || worker(&rx, cfg, &depth, &metrics))
                    .expect("spawning an inference thread")
            })
            .collect();
        let batcher = Self {
            tx,
            depth,
            limit: cfg.queue,
            metrics,
            stream_room: Arc::new(Semaphore::new((cfg.queue / 2).max(1))),
        };
        (batcher, handles)
    }

    /// Refuses a request of `n` forecasts up front when the queue has no
    /// room for all of them, so a big request is refused whole instead of
    /// filling the queue with jobs whose request already failed. Each job
    /// is still checked as it is queued: concurrent requests can pass this
    /// together.
    pub fn admit(&self, n: usize) -> Result<()> {
        let queued = self.depth.load(Ordering::SeqCst);
        if queued.saturating_add(n) > self.limit {
            return Err(Error::Overloaded {
                queued,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Queues one forecast and waits for it (the model's horizon and
    /// levels).
    pub async fn forecast(
        &self,
        served: Arc<Served>,
        series: String,
        shard_type: String,
        tail: Arc<GridTail>,
    ) -> Result<QuantileForecast> {
        self.enqueue(served, series, shard_type, tail, None).await
    }

    /// [`forecast`](Self::forecast) for a stream: first waits for a place in
    /// the streams' share of the queue (half of it), so the streams together
    /// never queue more than that. It can still be refused with
    /// [`Error::Overloaded`] when other requests filled the rest.
    pub async fn forecast_waiting(
        &self,
        served: Arc<Served>,
        series: String,
        shard_type: String,
        tail: Arc<GridTail>,
    ) -> Result<QuantileForecast> {
        let room = Arc::clone(&self.stream_room)
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        self.enqueue(served, series, shard_type, tail, Some(room))
            .await
    }

    async fn enqueue(
        &self,
        served: Arc<Served>,
        series: String,
        shard_type: String,
        tail: Arc<GridTail>,
        room: Option<OwnedSemaphorePermit>,
    ) -> Result<QuantileForecast> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            served,
            series,
            shard_type,
            tail,
            reply,
            room,
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.metrics.queue_depth.inc();
        if let Err(e) = self.tx.try_send(job) {
            let now = self.depth.fetch_sub(1, Ordering::SeqCst) - 1;
            self.metrics.queue_depth.dec();
            return Err(match e {
                TrySendError::Full(_) => Error::Overloaded {
                    queued: now,
                    limit: self.limit,
                },
                TrySendError::Disconnected(_) => Error::ShuttingDown,
            });
        }
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, cfg: BatchConfig, depth: &AtomicUsize, metrics: &Metrics) {
    let mut batch = Vec::with_capacity(cfg.max_batch);
    loop {
        {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            let Ok(first) = rx.recv() else { return };
            batch.push(first);
            let until = Instant::now() + cfg.max_wait;
            while batch.len() < cfg.max_batch {
                // Take what is already queued, then wait out max_wait.
                match rx.try_recv() {
                    Ok(job) => {
                        batch.push(job);
                        continue;
                    }
                    Err(_) if cfg.max_wait.is_zero() => break,
                    Err(_) => {}
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        depth.fetch_sub(batch.len(), Ordering::SeqCst);
        metrics.queue_depth.dec_by(batch.len() as i64);
        // Off the queue: streams may queue the next ones.
        batch.iter_mut().for_each(|j| drop(j.room.take()));
        // Jobs whose caller went away are not run.
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.batch_size.observe(batch.len() as f64);
        metrics.forecasts_run.inc_by(batch.len() as u64);
        // A panic in the model answers its batch with an error; the thread
        // lives on, so the server keeps serving.
        let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&batch)))
            .unwrap_or_else(|_| {
                tracing::error!(
                    jobs = batch.len(),
                    "inference panicked; its batch is answered with an error"
                );
                batch
                    .iter()
                    .map(|_| Err(Error::InferencePanicked))
                    .collect()
            });
        for (job, answer) in batch.drain(..).zip(answers) {
            let _ = job.reply.send(answer);
        }
    }
}

/// Runs a batch, one forward pass per model version; answers in job order.
fn run(batch: &[Job]) -> Vec<Result<QuantileForecast>> {
    let mut answers: Vec<Option<Result<QuantileForecast>>> = batch.iter().map(|_| None).collect();
    for (i, job) in batch.iter().enumerate() {
        if answers[i].is_some() {
            continue;
        }
        let served = &job.served;
        let group: Vec<usize> = (i..batch.len())
            .filter(|&k| Arc::ptr_eq(&batch[k].served, served))
            .collect();
        let jobs: Vec<&Job> = group.iter().map(|&k| &batch[k]).collect();
        match forward(served, &jobs) {
            Ok(out) => {
                for (&k, answer) in group.iter().zip(out) {
                    answers[k] = Some(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = group.len(), "batched forecast failed; running its jobs one by one");
                for &k in &group {
                    answers[k] = Some(
                        forward(served, &[&batch[k]])
                            .and_then(|mut one| one.pop().expect("one job, one answer")),
                    );
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.expect("every job answered"))
        .collect()
}

/// One forward pass over `jobs`: an answer per job, or the error that
/// failed them all.
fn forward(served: &Served, jobs: &[&Job]) -> Result<Vec<Result<QuantileForecast>>> {
    let windows: Vec<Window<'_>> = jobs
        .iter()
        .map(|j| {
            Ok(Window {
                series: &j.series,
                shard_type: &j.shard_type,
                start: Timestamp(j.tail.start),
                step: GridStep::from_millis(j.tail.step)?,
                history: &j.tail.values,
                events: Some(&j.tail.events),
            })
        })
        .collect::<Result<_>>()?;
    let out = served.model.forecast_batch(&windows)?;
    if out.len() != jobs.len() {
        return Err(Error::BadModelOutput {
            version: served.version,
            reason: format!("{} forecasts for {} windows", out.len(), jobs.len()),
        });
    }
    Ok(out
        .into_iter()
        .map(|answer| answer.map_err(Error::from))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_bigger_than_the_free_queue_is_refused_whole() {
        let cfg = BatchConfig {
            queue: 4,
            ..BatchConfig::default()
        };
        let (batcher, _workers) = Batcher::start(cfg, Arc::new(Metrics::default()));
        batcher.admit(4).unwrap();
        let err = batcher.admit(5).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Overloaded {
                    queued: 0,
                    limit: 4
                }
            ),
            "{err}"
        );
        batcher.depth.fetch_add(3, Ordering::SeqCst);
        batcher.admit(1).unwrap();
        assert!(batcher.admit(2).is_err());
    }
}

//! Batching across callers: requests from many clients are gathered into batches and run on
//! inference threads of their own, off the async threads.
//!
//! Each request's texts, or its prepared images, are one job in a bounded queue; a full queue
//! refuses the job (the service answers 429). An inference thread takes the queue, gathers jobs
//! until the batch holds `max_batch` inputs or (texts only) `max_tokens` tokens or `max_wait` has
//! passed since its first job (with a zero wait it takes what is already queued, so batches grow by
//! themselves under load), hands the queue to the next thread and runs the model. A batch holds
//! inputs of one kind.
//!
//! A request larger than one batch (more than `max_batch` inputs or, for texts, `max_tokens`
//! tokens) is split into parts that each fit one, since a model's memory grows with its batch
//! (MiniLM: ~1.5 MB of activations per 256-token text; MobileNetV2: several MB per image). At most
//! `workers + 1` parts of one request are queued at a time, so that every inference thread can
//! work on it while other requests still get their turn, and a request that is given up stops
//! between parts. A queued job is dropped unrun when its caller has gone (the reply channel is
//! closed: the handler was dropped on its deadline or a disconnect) or its deadline has passed;
//! such jobs are counted in `flowmesh_encoder_jobs_cancelled_total`.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flowmesh_shared::Deadline;
use tokio::sync::oneshot;

use crate::model::{check_finite, Batch, Inputs, Model};
use crate::preprocess::ImageTensor;

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Inference threads.
    pub workers: usize,
    /// Most inputs (texts or images) in one model call.
    pub max_batch: usize,
    /// Most tokens (as the model counts them) in one model call of texts.
    pub max_tokens: usize,
    /// Longest wait for more jobs after the first job of a batch.
    pub max_wait: Duration,
    /// Most jobs waiting; beyond it callers are refused.
    pub queue_capacity: usize,
}

/// Why a job was not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The queue is full.
    #[error("the encoder's queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    /// The model failed on the batch that held the job.
    #[error("the model failed: {0}")]
    Model(String),
    /// The inference threads are gone.
    #[error("the encoder's inference threads have stopped")]
    Stopped,
    /// The request's deadline passed before its work was done.
    #[error("the request's deadline passed before the encoder finished it")]
    DeadlineExceeded,
}

/// Counts a job dropped unrun, by why: `caller_gone` or `deadline`.
fn count_cancelled(reason: &'static str) {
    metrics::counter!("flowmesh_encoder_jobs_cancelled_total", "reason" => reason).increment(1);
}

type Reply = Result<Vec<Vec<f32>>, BatchError>;

struct Job {
    inputs: Inputs,
    /// The job's share of the token budget (0 for images).
    tokens: usize,
    /// Past it, the job is not worth running.
    deadline: Deadline,
    reply: oneshot::Sender<Reply>,
}

impl Job {
    /// The job if it is still worth running: its caller waits and its deadline has not passed.
    /// A job past its deadline is answered so; one whose caller has gone needs no answer.
    fn live(self) -> Option<Self> {
        if self.reply.is_closed() {
            count_cancelled("caller_gone");
            None
        } else if self.deadline.is_expired() {
            count_cancelled("deadline");
            let _ = self.reply.send(Err(BatchError::DeadlineExceeded));
            None
        } else {
            Some(self)
        }
    }
}

/// The receiving end of the queue, and a job taken from it that did not fit the last batch.
struct Queue {
    rx: Receiver<Job>,
    carried: Option<Job>,
}

/// A queue of embedding jobs served by inference threads.
pub(crate) struct Batcher {
    tx: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    model: Arc<dyn Model>,
    capacity: usize,
    max_batch: usize,
    max_tokens: usize,
    /// Most parts of one request queued at a time.
    window: usize,
}

impl Batcher {
    /// Starts `config.workers` inference threads (at least one) running `model`.
    pub(crate) fn start(model: Arc<dyn Model>, config: &BatchConfig) -> std::io::Result<Self> {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let queue = Arc::new(Mutex::new(Queue { rx, carried: None }));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..config.workers.max(1) {
            let (queue, queued, model, config) =
                (queue.clone(), queued.clone(), model.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("encoder-infer-{i}"))
                .spawn(move || infer_loop(&queue, &queued, model.as_ref(), &config))?;
        }
        Ok(Self {
            tx,
            queued,
            model,
            capacity,
            max_batch: config.max_batch.max(1),
            max_tokens: config.max_tokens.max(1),
            window: config.workers.max(1) + 1,
        })
    }

    /// Whether the queue is full: a new request would be refused.
    pub(crate) fn is_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity
    }

    /// The queue's capacity, in jobs.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Embeds `inputs` in whatever batches they land in, in parts of at most one batch each.
    /// Dropping the future withdraws the parts not run yet; once `deadline` has passed, no
    /// further part is run and the answer is [`BatchError::DeadlineExceeded`].
    pub(crate) async fn embed(&self, inputs: Inputs, deadline: Deadline) -> Reply {
        let count = inputs.len();
        let mut parts = self.split(inputs).into_iter();
        let mut pending = VecDeque::with_capacity(self.window);
        let mut embeddings = Vec::with_capacity(count);
        loop {
            while pending.len() < self.window {
                let Some((part, tokens)) = parts.next() else {
                    break;
                };
                if deadline.is_expired() {
                    count_cancelled("deadline");
                    return Err(BatchError::DeadlineExceeded);
                }
                pending.push_back(self.submit(part, tokens, deadline)?);
            }
            let Some(answer) = pending.pop_front() else {
                break;
            };
            embeddings.extend(answer.await.unwrap_or(Err(BatchError::Stopped))?);
        }
        debug_assert_eq!(embeddings.len(), count, "one embedding per input");
        Ok(embeddings)
    }

    /// `inputs` in parts that each fit one batch, in order, with their tokens: at most
    /// `max_batch` inputs and, for texts, `max_tokens` tokens (a text over the budget by itself,
    /// which the model truncates, is a part of its own).
    fn split(&self, inputs: Inputs) -> Vec<(Inputs, usize)> {
        match inputs {
            Inputs::Images(mut images) => {
                let mut parts = Vec::with_capacity(images.len().div_ceil(self.max_batch));
                while !images.is_empty() {
                    let rest = images.split_off(self.max_batch.min(images.len()));
                    parts.push((Inputs::Images(images), 0));
                    images = rest;
                }
                parts
            }
            Inputs::Texts(texts) => {
                let mut parts = Vec::new();
                let (mut part, mut tokens) = (Vec::new(), 0);
                for text in texts {
                    let cost = self.model.tokens(&text);
                    if !part.is_empty()
                        && (part.len() == self.max_batch || tokens + cost > self.max_tokens)
                    {
                        parts.push((Inputs::Texts(std::mem::take(&mut part)), tokens));
                        tokens = 0;
                    }
                    part.push(text);
                    tokens += cost;
                }
                if !part.is_empty() {
                    parts.push((Inputs::Texts(part), tokens));
                }
                parts
            }
        }
    }

    /// Queues one job; the receiver of its answer.
    fn submit(
        &self,
        inputs: Inputs,
        tokens: usize,
        deadline: Deadline,
    ) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let (reply, answer) = oneshot::channel();
        // Counted before it is sent, so that the thread taking it can never count it out first.
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let refused = match self.tx.try_send(Job {
            inputs,
            tokens,
            deadline,
            reply,
        }) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(BatchError::QueueFull(self.capacity)),
            Err(TrySendError::Disconnected(_)) => Some(BatchError::Stopped),
        };
        if let Some(error) = refused {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(error);
        }
        metrics::gauge!("flowmesh_encoder_queue_depth").set(depth as f64);
        Ok(answer)
    }
}

fn infer_loop(queue: &Mutex<Queue>, queued: &AtomicUsize, model: &dyn Model, config: &BatchConfig) {
    loop {
        let batch = {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            match gather(&mut q, queued, config) {
                Some(batch) => batch,
                // Every sender is gone: the service is shutting down.
                None => return,
            }
        };
        run(batch, model);
    }
}

/// Takes the next batch from the queue; `None` when the queue is closed and empty.
fn gather(q: &mut Queue, queued: &AtomicUsize, config: &BatchConfig) -> Option<Vec<Job>> {
    let taken = |job: Option<Job>| {
        if job.is_some() {
            let depth = queued.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            metrics::gauge!("flowmesh_encoder_queue_depth").set(depth as f64);
        }
        job
    };
    // The first job: wait as long as it takes, skipping jobs no longer worth running.
    let first = loop {
        let job = match q.carried.take() {
            Some(job) => job,
            None => taken(q.rx.recv().ok())?,
        };
        if let Some(job) = job.live() {
            break job;
        }
    };
    let deadline = Instant::now() + config.max_wait;
    let (mut inputs, mut tokens) = (first.inputs.len(), first.tokens);
    let mut batch = vec![first];
    // Image jobs count no tokens: the budget bounds texts only.
    while inputs < config.max_batch && tokens < config.max_tokens {
        let next = if config.max_wait.is_zero() {
            q.rx.try_recv().ok()
        } else {
            q.rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
        };
        let Some(job) = taken(next) else { break };
        let Some(job) = job.live() else {
            continue;
        };
        if inputs + job.inputs.len() > config.max_batch
            || tokens + job.tokens > config.max_tokens
            || !job.inputs.same_kind(&batch[0].inputs)
        {
            q.carried = Some(job);
            break;
        }
        inputs += job.inputs.len();
        tokens += job.tokens;
        batch.push(job);
    }
    Some(batch)
}

/// Runs one batch and answers each of its jobs with its own embeddings.
fn run(mut batch: Vec<Job>, model: &dyn Model) {
    // `gather` puts jobs of one kind in a batch.
    let sizes: Vec<usize> = batch.iter().map(|j| j.inputs.len()).collect();
    let total: usize = sizes.iter().sum();
    let of_images = matches!(batch.first().map(|j| &j.inputs), Some(Inputs::Images(_)));
    let images: Vec<ImageTensor> = if of_images {
        // Moved out of the jobs (no copy); the model stacks them into one tensor.
        batch
            .iter_mut()
            .flat_map(|j| match &mut j.inputs {
                Inputs::Images(i) => std::mem::take(i),
                Inputs::Texts(_) => Vec::new(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let texts: Vec<&str> = batch
        .iter()
        .flat_map(|j| match &j.inputs {
            Inputs::Texts(t) => t.as_slice(),
            Inputs::Images(_) => &[],
        })
        .map(String::as_str)
        .collect();
    let inputs = if of_images {
        Batch::Images(&images)
    } else {
        Batch::Texts(&texts)
    };
    debug_assert_eq!(inputs.len(), total, "one kind per batch");
    metrics::histogram!("flowmesh_encoder_batch_size").record(total as f64);
    let started = Instant::now();
    // A panicking model must not take the thread, and with it the service, down.
    let result = catch_unwind(AssertUnwindSafe(|| model.embed(inputs)));
    metrics::histogram!("flowmesh_encoder_inference_seconds")
        .record(started.elapsed().as_secs_f64());
    let result = result.map(|r| r.and_then(|e| check_finite(&e).map(|()| e)));
    let failure = match result {
        Ok(Ok(embeddings)) if embeddings.len() == total => {
            let mut embeddings = embeddings.into_iter();
            for (job, size) in batch.into_iter().zip(sizes) {
                let mine: Vec<Vec<f32>> = embeddings.by_ref().take(size).collect();
                // The caller may have gone meanwhile; nothing to do then.
                let _ = job.reply.send(Ok(mine));
            }
            return;
        }
        Ok(Ok(embeddings)) => format!("{} embeddings for {total} inputs", embeddings.len()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the model panicked on this batch".to_owned(),
    };
    tracing::error!(error = %failure, inputs = total, "model failed on a batch");
    let error = BatchError::Model(failure);
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}

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
    /// Batch texts of similar token counts together (`--batch-order length`); otherwise texts
    /// run in arrival order, as many as fit one batch.
    pub by_length: bool,
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
    /// What each text costs in tokens, as [`Model::tokens`] counts it (empty for images).
    costs: Vec<usize>,
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
    /// Whether a request's texts are sorted by token count before they are cut into parts.
    by_length: bool,
}

/// A request's inputs cut into parts that each fit one batch.
struct Parts {
    /// Each part with what its texts cost in tokens (empty for images).
    parts: Vec<(Inputs, Vec<usize>)>,
    /// Where the parts' inputs, taken in order, belong in the request: `order[k]` is the
    /// request's index of the k-th input; `None` when they are in the request's order.
    order: Option<Vec<usize>>,
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
            by_length: config.by_length,
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
        let Parts { parts, order } = self.split(inputs);
        let mut parts = parts.into_iter();
        let mut pending = VecDeque::with_capacity(self.window);
        let mut embeddings = Vec::with_capacity(count);
        loop {
            while pending.len() < self.window {
                let Some((part, costs)) = parts.next() else {
                    break;
                };
                if deadline.is_expired() {
                    count_cancelled("deadline");
                    return Err(BatchError::DeadlineExceeded);
                }
                pending.push_back(self.submit(part, costs, deadline)?);
            }
            let Some(answer) = pending.pop_front() else {
                break;
            };
            embeddings.extend(answer.await.unwrap_or(Err(BatchError::Stopped))?);
        }
        debug_assert_eq!(embeddings.len(), count, "one embedding per input");
        Ok(match order {
            Some(order) => unsort(embeddings, &order),
            None => embeddings,
        })
    }

    /// `inputs` in parts that each fit one batch: at most `max_batch` inputs and, for texts,
    /// `max_tokens` tokens (a text over the budget by itself, which the model truncates, is a part
    /// of its own). Images keep their order; texts are taken shortest first when batching by
    /// length, so that each part holds texts of similar lengths.
    fn split(&self, inputs: Inputs) -> Parts {
        match inputs {
            Inputs::Images(mut images) => {
                let mut parts = Vec::with_capacity(images.len().div_ceil(self.max_batch));
                while !images.is_empty() {
                    let rest = images.split_off(self.max_batch.min(images.len()));
                    parts.push((Inputs::Images(images), Vec::new()));
                    images = rest;
                }
                Parts { parts, order: None }
            }
            Inputs::Texts(texts) => {
                let costs: Vec<usize> = texts.iter().map(|t| self.model.tokens(t)).collect();
                let mut texts: Vec<(usize, String, usize)> = texts
                    .into_iter()
                    .zip(costs)
                    .enumerate()
                    .map(|(i, (text, cost))| (i, text, cost))
                    .collect();
                let order = (self.by_length && texts.len() > 1).then(|| {
                    // Stable: texts of one length keep their order.
                    texts.sort_by_key(|(_, _, cost)| *cost);
                    texts.iter().map(|(i, _, _)| *i).collect()
                });
                let mut parts = Vec::new();
                let (mut part, mut part_costs, mut tokens) = (Vec::new(), Vec::new(), 0);
                for (_, text, cost) in texts {
                    if !part.is_empty()
                        && (part.len() == self.max_batch || tokens + cost > self.max_tokens)
                    {
                        parts.push((
                            Inputs::Texts(std::mem::take(&mut part)),
                            std::mem::take(&mut part_costs),
                        ));
                        tokens = 0;
                    }
                    part.push(text);
                    part_costs.push(cost);
                    tokens += cost;
                }
                if !part.is_empty() {
                    parts.push((Inputs::Texts(part), part_costs));
                }
                Parts { parts, order }
            }
        }
    }

    /// Queues one job; the receiver of its answer.
    fn submit(
        &self,
        inputs: Inputs,
        costs: Vec<usize>,
        deadline: Deadline,
    ) -> Result<oneshot::Receiver<Reply>, BatchError> {
        let (reply, answer) = oneshot::channel();
        let tokens = costs.iter().sum();
        // Counted before it is sent, so that the thread taking it can never count it out first.
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let refused = match self.tx.try_send(Job {
            inputs,
            tokens,
            costs,
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
        run(batch, model, config.by_length);
    }
}

/// `items` taken in sorted order back in their original order: `order[k]` is where the k-th
/// belongs.
fn unsort<T: Default>(items: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut out: Vec<T> = std::iter::repeat_with(T::default)
        .take(items.len())
        .collect();
    for (item, &at) in items.into_iter().zip(order) {
        out[at] = item;
    }
    out
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

/// The most a group may waste on padding: a text joins the group of shorter texts before it
/// while the group's padded tokens stay within this share of its model call's tokens.
const MAX_PADDED_SHARE: f64 = 0.2;

/// The fewest texts a group holds before padding may close it: a model call has a fixed cost,
/// which very small groups would pay too often.
const MIN_GROUP: usize = 4;

/// Cuts texts sorted by token count (`costs`, ascending) into consecutive groups, each run as one
/// model call and padded to its longest text: a text starts a new group when adding it would make
/// padding more than [`MAX_PADDED_SHARE`] of the group's tokens, once the group holds
/// [`MIN_GROUP`] texts.
pub(crate) fn length_groups(costs: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut sum) = (0, 0usize);
    for (i, &cost) in costs.iter().enumerate() {
        let held = i - start;
        // Sorted: `cost` would be the group's longest, so every text pads to it.
        let padded = (held + 1) * cost.max(1);
        let real = sum + cost.max(1);
        if held >= MIN_GROUP && (padded - real) as f64 > MAX_PADDED_SHARE * padded as f64 {
            groups.push(start..i);
            (start, sum) = (i, 0);
        }
        sum += cost.max(1);
    }
    if start < costs.len() {
        groups.push(start..costs.len());
    }
    groups
}

/// One model call on `inputs`: its embeddings, checked (one per input, finite), or why not. A
/// panicking model must not take the thread, and with it the service, down.
fn call(model: &dyn Model, inputs: Batch<'_>) -> Result<Vec<Vec<f32>>, String> {
    let total = inputs.len();
    metrics::histogram!("flowmesh_encoder_batch_size").record(total as f64);
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| model.embed(inputs)));
    metrics::histogram!("flowmesh_encoder_inference_seconds")
        .record(started.elapsed().as_secs_f64());
    match result.map(|r| r.and_then(|e| check_finite(&e).map(|()| e))) {
        Ok(Ok(embeddings)) if embeddings.len() == total => Ok(embeddings),
        Ok(Ok(embeddings)) => Err(format!(
            "{} embeddings for {total} inputs",
            embeddings.len()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the model panicked on this batch".to_owned()),
    }
}

/// Runs one batch and answers each of its jobs with its own embeddings: images in one model
/// call; texts in one call in arrival order, or, by length, in groups of similar lengths.
fn run(mut batch: Vec<Job>, model: &dyn Model, by_length: bool) {
    // `gather` puts jobs of one kind in a batch.
    let sizes: Vec<usize> = batch.iter().map(|j| j.inputs.len()).collect();
    let total: usize = sizes.iter().sum();
    let of_images = matches!(batch.first().map(|j| &j.inputs), Some(Inputs::Images(_)));
    let result = if of_images {
        // Moved out of the jobs (no copy); the model stacks them into one tensor.
        let images: Vec<ImageTensor> = batch
            .iter_mut()
            .flat_map(|j| match &mut j.inputs {
                Inputs::Images(i) => std::mem::take(i),
                Inputs::Texts(_) => Vec::new(),
            })
            .collect();
        debug_assert_eq!(images.len(), total, "one kind per batch");
        call(model, Batch::Images(&images))
    } else {
        // Every text of the batch with its cost, in arrival order.
        let texts: Vec<(&str, usize)> = batch
            .iter()
            .flat_map(|j| match &j.inputs {
                Inputs::Texts(t) => t
                    .iter()
                    .map(String::as_str)
                    .zip(j.costs.iter().copied().chain(std::iter::repeat(1)))
                    .collect(),
                Inputs::Images(_) => Vec::new(),
            })
            .collect();
        debug_assert_eq!(texts.len(), total, "one kind per batch");
        run_texts(model, &texts, by_length)
    };
    match result {
        Ok(embeddings) => {
            let mut embeddings = embeddings.into_iter();
            for (job, size) in batch.into_iter().zip(sizes) {
                let mine: Vec<Vec<f32>> = embeddings.by_ref().take(size).collect();
                // The caller may have gone meanwhile; nothing to do then.
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(failure) => {
            tracing::error!(error = %failure, inputs = total, "model failed on a batch");
            let error = BatchError::Model(failure);
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The embeddings of `texts` (with their token costs), in their order: one model call, or, by
/// length, one call per group of similar lengths ([`length_groups`]).
fn run_texts(
    model: &dyn Model,
    texts: &[(&str, usize)],
    by_length: bool,
) -> Result<Vec<Vec<f32>>, String> {
    if !by_length || texts.len() <= MIN_GROUP {
        let plain: Vec<&str> = texts.iter().map(|(t, _)| *t).collect();
        return call(model, Batch::Texts(&plain));
    }
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].1);
    let costs: Vec<usize> = order.iter().map(|&i| texts[i].1).collect();
    let sorted: Vec<&str> = order.iter().map(|&i| texts[i].0).collect();
    let mut embeddings = Vec::with_capacity(texts.len());
    for group in length_groups(&costs) {
        embeddings.extend(call(model, Batch::Texts(&sorted[group]))?);
    }
    Ok(unsort(embeddings, &order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a list of one group, not a range's items
    fn groups_close_when_padding_would_pass_its_share() {
        // Equal lengths never close a group.
        assert_eq!(length_groups(&[5; 10]), [0..10]);
        // Short texts, then long ones: two groups.
        assert_eq!(
            length_groups(&[4, 4, 4, 5, 5, 20, 20, 21, 22]),
            [0..5, 5..9]
        );
        // Fewer than MIN_GROUP texts stay together whatever their lengths.
        assert_eq!(length_groups(&[1, 50, 100]), [0..3]);
        assert_eq!(length_groups(&[]), Vec::<std::ops::Range<usize>>::new());
        // Every group of sorted lengths wastes at most the share on padding, once it holds
        // MIN_GROUP texts.
        let costs: Vec<usize> = (0..200).map(|i| 6 + i / 4).collect();
        let groups = length_groups(&costs);
        assert_eq!(
            groups.iter().map(ExactSizeIterator::len).sum::<usize>(),
            200
        );
        for g in groups {
            let slice = &costs[g];
            let padded = slice.len() * slice[slice.len() - 1];
            let real: usize = slice.iter().sum();
            assert!(
                slice.len() <= MIN_GROUP + 1
                    || (padded - real) as f64 <= MAX_PADDED_SHARE * padded as f64,
                "{slice:?}"
            );
        }
    }

    #[test]
    fn unsort_puts_each_item_back() {
        let order = [2, 0, 3, 1];
        assert_eq!(
            unsort(vec!["c", "a", "d", "b"], &order),
            ["a", "b", "c", "d"]
        );
    }
}

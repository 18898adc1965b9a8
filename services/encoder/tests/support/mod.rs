//! What the encoder's tests share: an encoder over a probe model (the `hash` model recording the
//! batches it runs, optionally held at a gate, optionally answering NaN), and the cosine against
//! a reference embedding.

// Each test binary uses its own part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowmesh_encoder::{Batch, BatchConfig, Encoder, HashModel, InferenceError, Model};

/// What the probe model saw, and the gate that holds its calls.
#[derive(Default)]
pub(crate) struct ProbeState {
    /// The texts of every batch, in the order the model ran them.
    pub(crate) batches: Mutex<Vec<Vec<String>>>,
    /// While set, every call waits for one message on it before answering.
    gate: Mutex<Option<Receiver<()>>>,
    /// Told each time a call starts.
    entered: Mutex<Option<Sender<()>>>,
    /// Answer NaN instead of the embeddings.
    nan: bool,
}

/// The hash model, recording its batches, optionally held at a gate.
struct Probe {
    state: Arc<ProbeState>,
    inner: HashModel,
}

impl Model for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, batch: Batch<'_>) -> Result<Vec<Vec<f32>>, InferenceError> {
        let Batch::Texts(texts) = batch else {
            return Err(InferenceError("texts only".into()));
        };
        let seen = texts.iter().map(|t| (*t).to_owned()).collect();
        self.state.batches.lock().unwrap().push(seen);
        if let Some(entered) = self.state.entered.lock().unwrap().as_ref() {
            let _ = entered.send(());
        }
        if let Some(gate) = self.state.gate.lock().unwrap().as_ref() {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        let mut out = self.inner.embed(batch)?;
        if self.state.nan {
            out[0][0] = f32::NAN;
        }
        Ok(out)
    }
}

/// How a [`Probed`] encoder's model behaves.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProbeOptions {
    /// Every model call waits for [`Probed::open`].
    pub(crate) gated: bool,
    /// The model answers NaN.
    pub(crate) nan: bool,
}

/// An encoder over the probe model, with the controls of its gate.
pub(crate) struct Probed {
    /// What the model saw.
    pub(crate) state: Arc<ProbeState>,
    /// The encoder.
    pub(crate) encoder: Arc<Encoder>,
    open_tx: Sender<()>,
    entered_rx: Receiver<()>,
}

impl Probed {
    /// An encoder batching as `config` says over a probe of the `dim`-dimensional hash model.
    pub(crate) fn new(config: &BatchConfig, dim: usize, options: ProbeOptions) -> Self {
        let (open_tx, gate_rx) = channel();
        let (entered_tx, entered_rx) = channel();
        let mut state = ProbeState {
            nan: options.nan,
            ..ProbeState::default()
        };
        if options.gated {
            state.gate = Mutex::new(Some(gate_rx));
            state.entered = Mutex::new(Some(entered_tx));
        }
        let state = Arc::new(state);
        let model = Probe {
            state: state.clone(),
            inner: HashModel::new(dim).unwrap(),
        };
        Self {
            state,
            encoder: Arc::new(Encoder::batched(Arc::new(model), config).unwrap()),
            open_tx,
            entered_rx,
        }
    }

    /// Waits (off the async threads) until the model has started a call.
    pub(crate) async fn entered(&self) {
        let rx = &self.entered_rx;
        tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(10)))
            .expect("the model was called");
    }

    /// Lets `calls` more model calls through the gate.
    pub(crate) fn open(&self, calls: usize) {
        for _ in 0..calls {
            let _ = self.open_tx.send(());
        }
    }

    /// The size of every batch the model ran, in order.
    pub(crate) fn batch_sizes(&self) -> Vec<usize> {
        self.state
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect()
    }

    /// Every text the model embedded, in order.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.state.batches.lock().unwrap().concat()
    }
}

/// The cosine similarity of an embedding with a reference computed in `f64`.
pub(crate) fn cosine(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "embeddings of one dimension");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A batching configuration with no wait for a batch to fill.
pub(crate) fn batch_config(
    workers: usize,
    max_batch: usize,
    max_tokens: usize,
    queue: usize,
) -> BatchConfig {
    BatchConfig {
        workers,
        max_batch,
        max_tokens,
        max_wait: Duration::ZERO,
        queue_capacity: queue,
        by_length: true,
    }
}

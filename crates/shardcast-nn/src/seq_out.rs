//! The hidden sequence of a fused recurrent op as a second Candle op.
//!
//! The fused LSTM and GRU ops return only the final state; the hidden
//! sequence they computed alongside it is the result of a [`SeqOp`] applied
//! to that final state. A loss that reads only the final state (the usual
//! case: a head on the last hidden state) then never makes Candle's autograd
//! build a `[B, T, H]` gradient: a slice's backward pads its gradient with
//! zeros and accumulates it into a zero tensor, several full-size
//! temporaries, each fresh memory and page faults. When the sequence is
//! used, [`SeqOp`]'s backward hands its gradient over to the recurrent op's,
//! which Candle runs after it (`SeqOp` consumes the recurrent op's result),
//! and one backward pass through time covers both.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// What the recurrent op and its [`SeqOp`] of one forward call share. `S`
/// is what the recurrent op's forward keeps for its backward.
pub(crate) struct Shared<S> {
    op: &'static str,
    saved: OnceLock<S>,
    /// The hidden sequence, from the recurrent op's forward to [`SeqOp`]'s.
    hseq: Mutex<Option<Vec<f32>>>,
    /// The gradient of the hidden sequence, from [`SeqOp`]'s backward to the
    /// recurrent op's.
    dseq: Mutex<Option<Tensor>>,
}

/// Locks `m`; the guarded values are plain hand-over slots, valid whatever a
/// panicking holder left in them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S> Shared<S> {
    /// Empty slots for the op named `op` (in errors).
    pub(crate) fn new(op: &'static str) -> Arc<Self> {
        Arc::new(Self {
            op,
            saved: OnceLock::new(),
            hseq: Mutex::new(None),
            dseq: Mutex::new(None),
        })
    }

    /// Called by the recurrent op's forward with what it keeps for backward
    /// (`None` when nothing) and the hidden sequence `[B, T, H]`.
    pub(crate) fn put(&self, saved: Option<S>, hseq: Vec<f32>) {
        if let Some(saved) = saved {
            // A fresh pair of ops is built per forward call, so this is the
            // only set.
            let _ = self.saved.set(saved);
        }
        *lock(&self.hseq) = Some(hseq);
    }

    /// What the recurrent op's forward kept.
    pub(crate) fn saved(&self) -> Result<&S> {
        self.saved.get().ok_or(Error::NotSaved { op: self.op })
    }

    /// The gradient of the hidden sequence in this backward pass, `None`
    /// when the loss does not read it. Taken: a second backward pass through
    /// the same forward hands over its own.
    pub(crate) fn take_dseq(&self) -> Option<Tensor> {
        lock(&self.dseq).take()
    }
}

/// `[B, state] -> [B, T, H]`: the hidden sequence that the recurrent op
/// computed alongside the final state it returned. Its input is that final
/// state only to order the two in Candle's graph.
pub(crate) struct SeqOp<S> {
    /// The op's name in Candle.
    pub(crate) name: &'static str,
    /// `(B, T, H)`.
    pub(crate) dims: (usize, usize, usize),
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S: Send + Sync> CustomOp1 for SeqOp<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let hseq = lock(&self.shared.hseq)
            .take()
            .ok_or_else(|| candle_core::Error::wrap(Error::NotSaved { op: self.shared.op }))?;
        Ok((CpuStorage::F32(hseq), Shape::from(self.dims)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        *lock(&self.shared.dseq) = Some(grad.clone());
        // A (zero) gradient for the final state makes sure that Candle runs
        // the recurrent op's backward even when only the sequence is used.
        Ok(Some(arg.zeros_like()?))
    }
}

//! The network of one ensemble member: a recurrent encoder over the context
//! and a per-horizon-step head that emits ordered quantiles.
//!
//! The head combines the encoder's final hidden state, the static window
//! features and embeddings, each horizon step's known features (seasonal
//! lags, calendar, events) and a learned per-step bias through one hidden
//! layer. A linear skip from the known features adds to the median, so the
//! seasonal-naive and last-value forecasts are one weight away.
//!
//! Quantiles do not cross by construction: the head emits the median and,
//! for every other level, a softplus gap to its inner neighbour; the levels
//! are the median plus cumulative gaps outwards (one matmul with a fixed
//! signed triangular matrix).

use candle_core::{D, Device, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use super::config::{CellKind, ModelConfig};
use super::features::{Batch, STATIC};
use crate::error::Result;
use shardcast_nn::{Cell, Gru, Lstm, Rnn, RnnConfig};

/// The recurrent encoder.
#[derive(Debug, Clone)]
enum Encoder {
    Lstm(Lstm),
    Gru(Gru),
}

/// One member's network.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    encoder: Encoder,
    series_emb: Embedding,
    type_emb: Embedding,
    static_in: Linear,
    future_in: Linear,
    step_bias: Tensor,
    out: Linear,
    skip: Linear,
    /// `[Q, Q]` cumulative-gap matrix.
    gaps: Tensor,
    median: usize,
    cfg: ModelConfig,
}

impl Network {
    /// Builds (or loads) the network under `vb` for a model that knows
    /// `n_series` series and `n_types` shard types (row 0 of each is the
    /// "unknown" row).
    pub(crate) fn new(
        cfg: &ModelConfig,
        n_series: usize,
        n_types: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        cfg.validate()?;
        let rnn = RnnConfig {
            input_size: cfg.input_size(),
            hidden_size: cfg.hidden_size,
            num_layers: cfg.num_layers,
            bias: true,
        };
        let encoder = match cfg.cell {
            CellKind::Lstm => Encoder::Lstm(Lstm::new(rnn, vb.pp("rnn"))?),
            CellKind::Gru => Encoder::Gru(Gru::new(rnn, vb.pp("rnn"))?),
        };
        let d = cfg.head_hidden;
        let static_width =
            cfg.hidden_size + STATIC + cfg.series_embedding + cfg.shard_type_embedding;
        let q = cfg.quantiles.len();
        let median = cfg.median_index();
        let mut gaps = vec![0f32; q * q];
        for k in 0..q {
            for j in 0..q {
                if median < k && k <= j {
                    gaps[k * q + j] = 1.0;
                } else if j <= k && k < median {
                    gaps[k * q + j] = -1.0;
                }
            }
        }
        Ok(Self {
            encoder,
            series_emb: candle_nn::embedding(n_series + 1, cfg.series_embedding, vb.pp("series"))?,
            type_emb: candle_nn::embedding(n_types + 1, cfg.shard_type_embedding, vb.pp("type"))?,
            static_in: candle_nn::linear(static_width, d, vb.pp("head.static"))?,
            future_in: candle_nn::linear_no_bias(cfg.future_size(), d, vb.pp("head.future"))?,
            step_bias: vb.get_with_hints(
                (cfg.horizon, d),
                "head.step_bias",
                candle_nn::Init::Const(0.0),
            )?,
            out: candle_nn::linear(d, q, vb.pp("head.out"))?,
            skip: candle_nn::linear_no_bias(cfg.future_size(), 1, vb.pp("head.skip"))?,
            gaps: Tensor::from_vec(gaps, (q, q), vb.device())?,
            median,
            cfg: cfg.clone(),
        })
    }

    /// The device its weights live on.
    pub(crate) fn device(&self) -> &Device {
        self.gaps.device()
    }

    /// Quantiles `[n, horizon, Q]` in normalised units. `train` records the
    /// recurrence for autograd; otherwise the no-grad path runs.
    pub(crate) fn forward(&self, b: &Batch, train: bool) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dev = self.device();
        let (n, h) = (b.n, cfg.horizon);
        let ctx = Tensor::from_slice(&b.context, (n, cfg.context, cfg.input_size()), dev)?;
        let hidden = match &self.encoder {
            Encoder::Lstm(lstm) => last_hidden(lstm, &ctx, train)?,
            Encoder::Gru(gru) => last_hidden(gru, &ctx, train)?,
        };
        let sid = Tensor::from_slice(&b.series, n, dev)?;
        let tid = Tensor::from_slice(&b.shard_types, n, dev)?;
        let stat = Tensor::from_slice(&b.statics, (n, STATIC), dev)?;
        let whole = Tensor::cat(
            &[
                &hidden,
                &stat,
                &self.series_emb.forward(&sid)?,
                &self.type_emb.forward(&tid)?,
            ],
            1,
        )?;
        let a = self.static_in.forward(&whole)?; // [n, d]
        let fut = Tensor::from_slice(&b.future, (n * h, cfg.future_size()), dev)?;
        let d = cfg.head_hidden;
        let f = self.future_in.forward(&fut)?.reshape((n, h, d))?;
        let u = f
            .broadcast_add(&a.unsqueeze(1)?)?
            .broadcast_add(&self.step_bias)?
            .relu()?
            .reshape((n * h, d))?;
        let raw = self.out.forward(&u)?; // [n*h, Q]
        let med = (raw.narrow(1, self.median, 1)? + self.skip.forward(&fut)?)?;
        let gaps = softplus(&raw)?.matmul(&self.gaps)?;
        let q = gaps.broadcast_add(&med)?;
        Ok(q.reshape((n, h, cfg.quantiles.len()))?)
    }
}

/// The last layer's final hidden state `[n, hidden]` over the context
/// `ctx`; `train` records the recurrence for autograd.
fn last_hidden<C: Cell>(rnn: &Rnn<C>, ctx: &Tensor, train: bool) -> Result<Tensor> {
    let out = if train {
        rnn.forward(ctx)?
    } else {
        rnn.infer(ctx, None)?
    };
    let last = out.states.last().expect("at least one layer");
    Ok(C::hidden(last).clone())
}

/// `log(1 + e^x)`, computed without overflow.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    Ok((x.relu()? + tail)?)
}

/// Mean pinball loss of quantiles `q` `[n, h, Q]` against `target` `[n, h]`.
pub(crate) fn pinball_loss(q: &Tensor, target: &Tensor, levels: &Tensor) -> Result<Tensor> {
    let diff = target.unsqueeze(D::Minus1)?.broadcast_sub(q)?;
    let over = diff.broadcast_mul(levels)?;
    let under = diff.broadcast_mul(&(levels - 1.0)?)?;
    Ok(over.maximum(&under)?.mean_all()?)
}

/// The levels as a tensor on `dev` for [`pinball_loss`].
pub(crate) fn levels_tensor(levels: &[f64], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_iter(levels.iter().map(|&x| x as f32), dev)?)
}

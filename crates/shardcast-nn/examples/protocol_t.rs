//! Protocol T (`shared/bench/PROTOCOL.md`): training and inference speed of
//! the recurrent model, ours against candle-nn's `LSTM` in the same process,
//! and the same work with a GRU layer against candle-nn's `GRU`.
//!
//! Work: one LSTM (or GRU) layer, 8 input features, hidden 64, sequence 96,
//! batch 64, a linear head of 24 outputs on the last hidden state, MSE loss,
//! AdamW, f32. Figures: median milliseconds per training step, median
//! forward latency at batch 1 and batch 256. Run it on one thread to
//! compare with the recorded references:
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p shardcast-nn --example protocol_t
//! ```
//!
//! `--fused-only` skips candle-nn's side (for profiling the fused one);
//! `--lstm-only` skips the GRU rows.
#![allow(clippy::print_stdout)]

use std::fmt;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::rnn::RNN;
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use shardcast_nn::{Cell, Gru, GruConfig, Lstm, LstmConfig, Rnn};

/// What a failed run reports.
type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

fn main() -> Result<()> {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let settings = ProtocolT {
        reference: !flag("--fused-only"),
        gru: !flag("--lstm-only"),
        ..Default::default()
    };
    println!("{}", protocol_t(&settings)?);
    Ok(())
}

/// Sizes and repetition counts of a protocol T run.
#[derive(Debug, Clone, Copy)]
struct ProtocolT {
    /// Input features per step.
    input: usize,
    /// Hidden width.
    hidden: usize,
    /// Sequence length.
    seq: usize,
    /// Training batch.
    batch: usize,
    /// Outputs of the linear head.
    outputs: usize,
    /// Untimed training steps before the timed ones.
    warmup: usize,
    /// Timed training steps.
    steps: usize,
    /// Timed forward passes per batch size.
    forward_runs: usize,
    /// Whether to also time candle-nn's `LSTM` and `GRU` (off only for
    /// profiling).
    reference: bool,
    /// Whether to also run the work with a GRU layer.
    gru: bool,
}

impl Default for ProtocolT {
    fn default() -> Self {
        Self {
            input: 8,
            hidden: 64,
            seq: 96,
            batch: 64,
            outputs: 24,
            warmup: 3,
            steps: 20,
            forward_runs: 20,
            reference: true,
            gru: true,
        }
    }
}

/// Median timings of one implementation, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timings {
    /// One training step: forward, loss, backward, AdamW update.
    train_step_ms: f64,
    /// Forward at batch 1.
    forward_b1_ms: f64,
    /// Forward at batch 256.
    forward_b256_ms: f64,
}

/// Both sides of one recurrent layer kind, plus the final training losses
/// as a sanity check that both actually trained the same model.
#[derive(Debug, Clone, PartialEq)]
struct Comparison {
    /// The fused op of this crate.
    fused: Timings,
    /// candle-nn's layer of the same kind, unless the run left it out.
    candle_nn: Option<Timings>,
    /// Loss after the last timed step (fused, candle-nn).
    final_loss: (f32, Option<f32>),
}

/// A whole protocol T run.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    /// Rayon threads the run had.
    threads: usize,
    /// The LSTM: the protocol's own figures.
    lstm: Comparison,
    /// The same work with a GRU layer, unless the run left it out.
    gru: Option<Comparison>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "protocol T (rayon threads: {}), median ms, lower is better",
            self.threads
        )?;
        writeln!(
            f,
            "| model | figure               | shardcast fused | candle-nn | speed-up |"
        )?;
        writeln!(
            f,
            "|-------|----------------------|-----------------|-----------|----------|"
        )?;
        let models: Vec<(&str, &Comparison)> = std::iter::once(("LSTM", &self.lstm))
            .chain(self.gru.as_ref().map(|c| ("GRU", c)))
            .collect();
        for &(model, c) in &models {
            let rows = [
                (
                    "train step (b=64)",
                    c.fused.train_step_ms,
                    c.candle_nn.map(|t| t.train_step_ms),
                ),
                (
                    "forward b=1",
                    c.fused.forward_b1_ms,
                    c.candle_nn.map(|t| t.forward_b1_ms),
                ),
                (
                    "forward b=256",
                    c.fused.forward_b256_ms,
                    c.candle_nn.map(|t| t.forward_b256_ms),
                ),
            ];
            for (name, ours, theirs) in rows {
                match theirs {
                    Some(theirs) => writeln!(
                        f,
                        "| {model:<5} | {name:<20} | {ours:>15.3} | {theirs:>9.3} | {:>7.1}x |",
                        theirs / ours
                    )?,
                    None => writeln!(
                        f,
                        "| {model:<5} | {name:<20} | {ours:>15.3} | {:>9} | {:>8} |",
                        "-", "-"
                    )?,
                }
            }
        }
        write!(f, "final loss:")?;
        let mut sep = " ";
        for &(model, c) in &models {
            write!(f, "{sep}{model} fused {:.5}", c.final_loss.0)?;
            if let Some(l) = c.final_loss.1 {
                write!(f, ", candle-nn {l:.5}")?;
            }
            sep = "; ";
        }
        Ok(())
    }
}

/// The model under test: a recurrent core plus the linear head.
trait Model {
    /// Last hidden state `[batch, hidden]`, recording for autograd.
    fn last_hidden(&self, x: &Tensor) -> Result<Tensor>;
    /// Same, on the serving path.
    fn last_hidden_infer(&self, x: &Tensor) -> Result<Tensor> {
        self.last_hidden(x)
    }
}

impl<C: Cell> Model for Rnn<C> {
    fn last_hidden(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.forward(x)?;
        Ok(C::hidden(&out.states[0]).clone())
    }
    fn last_hidden_infer(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.infer(x, None)?;
        Ok(C::hidden(&out.states[0]).clone())
    }
}

impl Model for candle_nn::LSTM {
    fn last_hidden(&self, x: &Tensor) -> Result<Tensor> {
        let states = self.seq(x)?;
        let last = states
            .last()
            .ok_or(candle_core::Error::Msg("empty sequence".to_owned()))?;
        Ok(last.h.clone())
    }
}

impl Model for candle_nn::GRU {
    fn last_hidden(&self, x: &Tensor) -> Result<Tensor> {
        let states = self.seq(x)?;
        let last = states
            .last()
            .ok_or(candle_core::Error::Msg("empty sequence".to_owned()))?;
        Ok(last.h.clone())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

fn time_ms(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn inputs(dims: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut rng = shardcast_core::rng::SplitMix64::new(seed);
    let v: Vec<f32> = (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

fn run_side<M: Model>(
    p: &ProtocolT,
    build: impl FnOnce(VarBuilder<'_>) -> Result<M>,
) -> Result<(Timings, f32)> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let model = build(vb.pp("rnn"))?;
    let head = candle_nn::linear(p.hidden, p.outputs, vb.pp("head"))?;
    let mut opt = AdamW::new(vm.all_vars(), ParamsAdamW::default())?;
    let x = inputs(&[p.batch, p.seq, p.input], 1)?;
    let y = inputs(&[p.batch, p.outputs], 2)?;

    let step = |opt: &mut AdamW| -> Result<f32> {
        let pred = head.forward(&model.last_hidden(&x)?)?;
        let loss = (pred - &y)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    for _ in 0..p.warmup {
        step(&mut opt)?;
    }
    let mut times = Vec::with_capacity(p.steps);
    let mut loss = f32::NAN;
    for _ in 0..p.steps {
        times.push(time_ms(|| {
            loss = step(&mut opt)?;
            Ok(())
        })?);
    }
    let train_step_ms = median(times);

    let forward = |batch: usize| -> Result<f64> {
        let x = inputs(&[batch, p.seq, p.input], 3)?;
        let run = || -> Result<()> {
            let out = head.forward(&model.last_hidden_infer(&x)?)?;
            // Force the result, as a server would when encoding it.
            let _ = out.flatten_all()?.to_vec1::<f32>()?;
            Ok(())
        };
        run()?;
        let times = (0..p.forward_runs)
            .map(|_| time_ms(run))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(times))
    };
    let timings = Timings {
        train_step_ms,
        forward_b1_ms: forward(1)?,
        forward_b256_ms: forward(256)?,
    };
    Ok((timings, loss))
}

/// Runs protocol T for the fused LSTM and candle-nn's `LSTM`, then (unless
/// `p.gru` is off) the same work for the fused GRU and candle-nn's `GRU`.
fn protocol_t(p: &ProtocolT) -> Result<Report> {
    let lstm = compare(
        p,
        |vb| Ok(Lstm::new(LstmConfig::new(p.input, p.hidden), vb)?),
        |vb| {
            Ok(candle_nn::rnn::lstm(
                p.input,
                p.hidden,
                candle_nn::rnn::LSTMConfig::default(),
                vb,
            )?)
        },
    )?;
    let gru = if p.gru {
        Some(compare(
            p,
            |vb| Ok(Gru::new(GruConfig::new(p.input, p.hidden), vb)?),
            |vb| {
                Ok(candle_nn::rnn::gru(
                    p.input,
                    p.hidden,
                    candle_nn::rnn::GRUConfig::default(),
                    vb,
                )?)
            },
        )?)
    } else {
        None
    };
    Ok(Report {
        threads: rayon::current_num_threads(),
        lstm,
        gru,
    })
}

/// Times the fused layer and, unless `p.reference` is off, candle-nn's.
fn compare<F: Model, R: Model>(
    p: &ProtocolT,
    fused: impl FnOnce(VarBuilder<'_>) -> Result<F>,
    reference: impl FnOnce(VarBuilder<'_>) -> Result<R>,
) -> Result<Comparison> {
    let (fused, fused_loss) = run_side(p, fused)?;
    let reference = if p.reference {
        Some(run_side(p, reference)?)
    } else {
        None
    };
    Ok(Comparison {
        fused,
        candle_nn: reference.map(|r| r.0),
        final_loss: (fused_loss, reference.map(|r| r.1)),
    })
}

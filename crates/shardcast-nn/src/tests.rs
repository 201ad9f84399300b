//! The tests of the layers, generic over the cell and run for both: against
//! candle-nn's `LSTM` and `GRU`, finite differences, the portable kernels
//! and the standard-op recurrence, training, loading and rejecting input.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_nn::rnn::{GRUConfig, GRUState, LSTMConfig, LSTMState, RNN};

use crate::cell::Cell;
use crate::fused::{self, Dims};
use crate::test_util::{
    TestResult, assert_same_grads, max_abs_diff, rel_diff, tensor, values, var, varmap,
};
use crate::{Error, GruCell, LstmCell, Rnn, RnnConfig, RnnLayer, StackOutput};

/// A cell with candle-nn's layer of the same kind to compare against.
trait Reference: Cell {
    type Layer;

    /// candle-nn's layer on the weights of `vb` (named as layer 0).
    fn reference(
        input: usize,
        hidden: usize,
        bias: bool,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<Self::Layer>;

    /// Runs it over `x` `[batch, seq, input]` from the state's parts (zeros
    /// when `None`): the hidden sequence `[batch, seq, hidden]` and the
    /// final state's parts.
    fn run(
        layer: &Self::Layer,
        x: &Tensor,
        init: Option<&[Tensor]>,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)>;
}

impl Reference for LstmCell {
    type Layer = candle_nn::LSTM;

    fn reference(
        input: usize,
        hidden: usize,
        bias: bool,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<candle_nn::LSTM> {
        let cfg = if bias {
            LSTMConfig::default()
        } else {
            LSTMConfig::default_no_bias()
        };
        candle_nn::rnn::lstm(input, hidden, cfg, vb)
    }

    fn run(
        layer: &candle_nn::LSTM,
        x: &Tensor,
        init: Option<&[Tensor]>,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let seq = match init {
            Some(p) => layer.seq_init(x, &LSTMState::new(p[0].clone(), p[1].clone()))?,
            None => layer.seq(x)?,
        };
        let last = seq
            .last()
            .ok_or(candle_core::Error::Msg("no step".into()))?;
        let parts = vec![last.h.clone(), last.c.clone()];
        Ok((layer.states_to_tensor(&seq)?, parts))
    }
}

impl Reference for GruCell {
    type Layer = candle_nn::GRU;

    fn reference(
        input: usize,
        hidden: usize,
        bias: bool,
        vb: VarBuilder<'_>,
    ) -> candle_core::Result<candle_nn::GRU> {
        let cfg = if bias {
            GRUConfig::default()
        } else {
            GRUConfig::default_no_bias()
        };
        candle_nn::rnn::gru(input, hidden, cfg, vb)
    }

    fn run(
        layer: &candle_nn::GRU,
        x: &Tensor,
        init: Option<&[Tensor]>,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let seq = match init {
            Some(p) => layer.seq_init(x, &GRUState { h: p[0].clone() })?,
            None => layer.seq(x)?,
        };
        let last = seq
            .last()
            .ok_or(candle_core::Error::Msg("no step".into()))?;
        let parts = vec![last.h.clone()];
        // candle-nn's GRU concatenates the steps to `[batch, seq * hidden]`.
        let (b, t) = (x.dim(0)?, x.dim(1)?);
        let hseq = layer.states_to_tensor(&seq)?.reshape((b, t, ()))?;
        Ok((hseq, parts))
    }
}

/// A stack of `C` as a configuration says.
fn stack<C: Cell>(config: RnnConfig, vb: VarBuilder<'_>) -> crate::Result<Rnn<C>> {
    Rnn::new(config, vb)
}

fn config(input: usize, hidden: usize, layers: usize) -> RnnConfig {
    RnnConfig {
        num_layers: layers,
        ..RnnConfig::new(input, hidden)
    }
}

/// A state whose parts are `f(part)`.
fn state_of<C: Cell>(
    f: impl Fn(usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<C::State> {
    let parts = (0..C::STATE.len())
        .map(f)
        .collect::<candle_core::Result<_>>()?;
    Ok(C::from_parts(parts))
}

struct Case {
    batch: usize,
    seq: usize,
    input: usize,
    hidden: usize,
    layers: usize,
    bias: bool,
    with_state: bool,
    /// Which outputs the loss reads: the hidden sequence, then the last
    /// layer's final state parts (`h`, and the LSTM's `c`); `None`: all.
    terms: Option<Vec<bool>>,
}

const fn case(batch: usize, seq: usize, input: usize, hidden: usize) -> Case {
    Case {
        batch,
        seq,
        input,
        hidden,
        layers: 1,
        bias: true,
        with_state: true,
        terms: None,
    }
}

/// Runs our stack and candle-nn's per-layer layers on the same variables,
/// backpropagates the same random weighting of every output through both,
/// and compares outputs and the gradients of input, weights and states.
fn compare_with_candle_nn<C: Reference>(c: &Case) -> TestResult {
    let (vm, vb) = varmap();
    let mut config = config(c.input, c.hidden, c.layers);
    config.bias = c.bias;
    let ours = stack::<C>(config, vb.pp("rnn"))?;
    // The VarMap hands both the same variables; biases get values unlike
    // the weights' (and each other's) so that a mixed-up slot shows.
    for (name, v) in vm.data().lock().map_err(|e| e.to_string())?.iter() {
        if name.contains("bias") {
            let n = v.elem_count();
            v.set(&tensor(
                &[n],
                n as u64 + 7 + u64::from(name.contains("hh")),
            )?)?;
        }
    }
    // candle-nn's GRU only knows layer 0's names: hand each reference layer
    // k its variables (the same tensors, so gradients land on the same
    // ids) under those.
    let reference: Vec<C::Layer> = {
        let data = vm.data().lock().map_err(|e| e.to_string())?;
        (0..c.layers)
            .map(|k| {
                let mut renamed = HashMap::new();
                for part in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                    if let Some(v) = data.get(&format!("rnn.{part}_l{k}")) {
                        renamed.insert(format!("{part}_l0"), v.as_tensor().clone());
                    }
                }
                let vb = VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu);
                let input = if k == 0 { c.input } else { c.hidden };
                C::reference(input, c.hidden, c.bias, vb)
            })
            .collect::<candle_core::Result<_>>()?
    };

    let x = var(&[c.batch, c.seq, c.input], 1)?;
    // Layer k's state part p.
    let states: Vec<Vec<Var>> = (0..c.layers)
        .map(|k| {
            (0..C::STATE.len())
                .map(|p| var(&[c.batch, c.hidden], 10 + 10 * p as u64 + k as u64))
                .collect()
        })
        .collect::<candle_core::Result<_>>()?;
    let parts_of =
        |k: usize| -> Vec<Tensor> { states[k].iter().map(|v| v.as_tensor().clone()).collect() };
    let w_out = tensor(&[c.batch, c.seq, c.hidden], 3)?;
    let w_state: Vec<Tensor> = (0..C::STATE.len())
        .map(|p| tensor(&[c.batch, c.hidden], 4 + p as u64))
        .collect::<candle_core::Result<_>>()?;

    let our_states: Vec<C::State> = (0..c.layers).map(|k| C::from_parts(parts_of(k))).collect();
    let out =
        ours.forward_with_state(x.as_tensor(), c.with_state.then_some(our_states.as_slice()))?;
    let our_last: Vec<Tensor> = C::parts(out.states.last().ok_or("no state")?)
        .into_iter()
        .cloned()
        .collect();
    let our_seq = out.hidden;

    let mut input = x.as_tensor().clone();
    let mut ref_last = Vec::new();
    for (k, layer) in reference.iter().enumerate() {
        let init = c.with_state.then(|| parts_of(k));
        (input, ref_last) = C::run(layer, &input, init.as_deref())?;
    }
    let ref_seq = input;

    assert!(max_abs_diff(&our_seq, &ref_seq)? < 1e-5, "hidden sequence");
    for (p, (a, b)) in our_last.iter().zip(&ref_last).enumerate() {
        assert!(max_abs_diff(a, b)? < 1e-5, "final {}", C::STATE[p]);
    }

    let terms = c
        .terms
        .clone()
        .unwrap_or_else(|| vec![true; 1 + C::STATE.len()]);
    let loss = |s: &Tensor, last: &[Tensor]| -> candle_core::Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        if terms[0] {
            total = (total + (s * &w_out)?.sum_all()?)?;
        }
        for ((on, out), w) in terms[1..].iter().zip(last).zip(&w_state) {
            if *on {
                total = (total + (out * w)?.sum_all()?)?;
            }
        }
        Ok(total)
    };
    let g_ours = loss(&our_seq, &our_last)?.backward()?;
    let g_ref = loss(&ref_seq, &ref_last)?.backward()?;

    let mut checked: Vec<(String, &Tensor)> = vec![("x".to_owned(), x.as_tensor())];
    let vars = vm.all_vars();
    let data = vm.data().lock().map_err(|e| e.to_string())?;
    for (name, v) in data.iter() {
        checked.push((name.clone(), v.as_tensor()));
    }
    if c.with_state {
        for (k, parts) in states.iter().enumerate() {
            for (p, v) in parts.iter().enumerate() {
                checked.push((format!("{} of layer {k}", C::STATE[p]), v.as_tensor()));
            }
        }
    }
    let per_layer = if c.bias { 4 } else { 2 };
    assert_eq!(vars.len(), data.len());
    assert_eq!(data.len(), per_layer * c.layers);
    for (name, t) in checked {
        let a = g_ours
            .get(t)
            .ok_or(format!("no gradient for {name} (ours)"))?;
        let b = g_ref
            .get(t)
            .ok_or(format!("no gradient for {name} (candle-nn)"))?;
        let rel = rel_diff(a, b)?;
        assert!(rel < 1e-4, "gradient of {name}: relative difference {rel}");
    }
    Ok(())
}

fn matches_candle_nn_with_one_output_in_the_loss<C: Reference>() -> TestResult {
    // The final state and the hidden sequence come from two ops whose
    // backward passes cooperate; each must work without the other.
    for on in 0..1 + C::STATE.len() {
        for layers in [1, 2] {
            compare_with_candle_nn::<C>(&Case {
                layers,
                terms: Some((0..1 + C::STATE.len()).map(|k| k == on).collect()),
                ..case(3, 6, 2, 5)
            })?;
        }
    }
    Ok(())
}

fn backward_twice_through_one_forward<C: Cell>() -> TestResult {
    let (vm, vb) = varmap();
    let rnn = stack::<C>(RnnConfig::new(3, 4), vb)?;
    let x = var(&[2, 5, 3], 1)?;
    let out = rnn.forward(x.as_tensor())?;
    let seq_loss = out.hidden.sum_all()?;
    let h_loss = C::hidden(&out.states[0]).sum_all()?;
    let both = (&seq_loss + &h_loss)?;
    // In either order, each pass sees only its own loss's gradients.
    let g_seq = seq_loss.backward()?;
    let g_h = h_loss.backward()?;
    let g_both = both.backward()?;
    let g_h_again = h_loss.backward()?;
    for v in vm
        .all_vars()
        .iter()
        .map(Var::as_tensor)
        .chain([x.as_tensor()])
    {
        let (a, b, c, d) = (
            g_seq.get(v).ok_or("seq grad")?,
            g_h.get(v).ok_or("h grad")?,
            g_both.get(v).ok_or("both grad")?,
            g_h_again.get(v).ok_or("h grad again")?,
        );
        assert!(max_abs_diff(&(a + b)?, c)? < 1e-5);
        assert!(max_abs_diff(b, d)? < 1e-7);
    }
    Ok(())
}

fn matches_candle_nn_small<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&case(2, 5, 3, 4))
}

fn matches_candle_nn_batch_one<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&case(1, 9, 4, 16))
}

fn matches_candle_nn_seq_one<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&case(3, 1, 2, 5))
}

fn matches_candle_nn_long_sequence<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&case(2, 120, 3, 8))
}

fn matches_candle_nn_odd_hidden_large_batch<C: Reference>() -> TestResult {
    // 13 rows: two full 6-row blocks and a remainder; hidden 9 leaves a
    // partial SIMD tile in every gate, and for the GRU 3H = 27 puts the
    // r/z | n split of the hidden projection inside a GEMM tile.
    compare_with_candle_nn::<C>(&case(13, 7, 5, 9))
}

fn matches_candle_nn_protocol_shape<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&case(8, 12, 8, 64))
}

fn matches_candle_nn_without_bias_or_state<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&Case {
        bias: false,
        with_state: false,
        ..case(4, 6, 3, 7)
    })
}

fn matches_candle_nn_two_layer_stack<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&Case {
        layers: 2,
        ..case(5, 6, 4, 11)
    })
}

fn matches_candle_nn_three_layer_stack<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&Case {
        layers: 3,
        ..case(5, 6, 4, 11)
    })
}

fn matches_candle_nn_two_layer_stack_without_bias<C: Reference>() -> TestResult {
    compare_with_candle_nn::<C>(&Case {
        layers: 2,
        bias: false,
        ..case(1, 10, 3, 24)
    })
}

fn threaded_batch_split_matches_candle_nn<C: Reference>() -> TestResult {
    // Inside a 3-thread pool a batch of 40 is cut into several chunks that
    // run in parallel; the result must not change.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build()?;
    pool.install(|| {
        assert!(crate::kernel::batch_chunk_rows(40) < 40);
        // Also with only the final `h` in the loss: no sequence gradient
        // for any chunk.
        let only_h = (0..1 + C::STATE.len()).map(|k| k == 1).collect();
        for terms in [None, Some(only_h)] {
            compare_with_candle_nn::<C>(&Case {
                terms,
                ..case(40, 4, 3, 6)
            })
            .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;
    Ok(())
}

fn infer_matches_tracked_forward<C: Cell>() -> TestResult {
    let (_vm, vb) = varmap();
    let rnn = stack::<C>(config(3, 10, 2), vb)?;
    let x = tensor(&[7, 5, 3], 2)?;
    let states = (0..2)
        .map(|k| state_of::<C>(|p| tensor(&[7, 10], 3 + k + p as u64)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tracked = rnn.forward_with_state(&x, Some(&states))?;
    let inferred = rnn.infer(&x, Some(&states))?;
    assert!(max_abs_diff(&tracked.hidden, &inferred.hidden)? < 1e-6);
    for (a, b) in tracked.states.iter().zip(&inferred.states) {
        for (a, b) in C::parts(a).into_iter().zip(C::parts(b)) {
            assert!(max_abs_diff(a, b)? < 1e-6);
        }
    }
    // The final `h` is the last step of the hidden sequence.
    let last = inferred.hidden.narrow(1, 4, 1)?.squeeze(1)?;
    assert!(max_abs_diff(&last, C::hidden(&inferred.states[1]))? == 0.0);
    Ok(())
}

/// Central differences of `sum(hidden * w) + sum(part * w_p)` over the final
/// state's parts, accumulated in f64, against the op's gradients for every
/// element of every argument.
fn finite_differences<C: Cell>(
    (b, t, i, h): (usize, usize, usize, usize),
    (has_b_ih, has_b_hh): (bool, bool),
    with_state: bool,
) -> TestResult {
    let g = C::GATES * h;
    let x = var(&[b, t, i], 31)?;
    let w_ih = var(&[g, i], 32)?;
    let w_hh = var(&[g, h], 33)?;
    let b_ih = var(&[g], 34)?;
    let b_hh = var(&[g], 35)?;
    let state0: Vec<Var> = (0..C::STATE.len())
        .map(|p| var(&[b, h], 36 + p as u64))
        .collect::<candle_core::Result<_>>()?;
    let w_out = tensor(&[b, t, h], 38)?;
    let w_state: Vec<Tensor> = (0..C::STATE.len())
        .map(|p| tensor(&[b, h], 39 + p as u64))
        .collect::<candle_core::Result<_>>()?;
    let mut all = vec![&x, &w_ih, &w_hh];
    if has_b_ih {
        all.push(&b_ih);
    }
    if has_b_hh {
        all.push(&b_hh);
    }
    if with_state {
        all.extend(&state0);
    }

    let loss_f64 = |track: bool| -> crate::Result<(f64, Option<Tensor>)> {
        let layer = RnnLayer::<C>::from_tensors(
            w_ih.as_tensor().clone(),
            w_hh.as_tensor().clone(),
            has_b_ih.then(|| b_ih.as_tensor().clone()),
            has_b_hh.then(|| b_hh.as_tensor().clone()),
        )?;
        let state = with_state
            .then(|| C::from_parts(state0.iter().map(|v| v.as_tensor().clone()).collect()));
        let out = if track {
            layer.forward(x.as_tensor(), state.as_ref())?
        } else {
            layer.infer(x.as_tensor(), state.as_ref())?
        };
        let mut terms = vec![(out.hidden, &w_out)];
        terms.extend(C::parts(&out.state).into_iter().cloned().zip(&w_state));
        let mut total = 0.0f64;
        let mut loss = None::<Tensor>;
        for (o, w) in terms {
            let o64 = o.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let w64 = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            total += o64.iter().zip(&w64).map(|(a, b)| a * b).sum::<f64>();
            if track {
                let term = (o * w)?.sum_all()?;
                loss = Some(match loss {
                    Some(l) => (l + term)?,
                    None => term,
                });
            }
        }
        Ok((total, loss))
    };

    let (_, loss) = loss_f64(true)?;
    let grads = loss.ok_or("no loss")?.backward()?;
    let eps = 1e-2f32;
    for v in all {
        let analytic = grads
            .get(v.as_tensor())
            .ok_or("missing gradient")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let base = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for (idx, &a) in analytic.iter().enumerate() {
            let mut bumped = base.clone();
            bumped[idx] = base[idx] + eps;
            v.set(&Tensor::from_vec(bumped.clone(), v.shape(), &Device::Cpu)?)?;
            let (up, _) = loss_f64(false)?;
            bumped[idx] = base[idx] - eps;
            v.set(&Tensor::from_vec(bumped, v.shape(), &Device::Cpu)?)?;
            let (down, _) = loss_f64(false)?;
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu)?)?;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let err = (numeric - f64::from(a)).abs();
            assert!(
                err < 2e-3 * (1.0 + numeric.abs()),
                "{:?} element {idx}: analytic {a}, numeric {numeric}",
                v.dims()
            );
        }
    }
    Ok(())
}

fn finite_differences_with_biases_and_state<C: Cell>() -> TestResult {
    finite_differences::<C>((2, 4, 3, 5), (true, true), true)
}

fn finite_differences_batch_one_simd_width<C: Cell>() -> TestResult {
    // Hidden 9: one full 8-lane vector and a scalar tail per gate.
    finite_differences::<C>((1, 3, 2, 9), (true, true), true)
}

fn finite_differences_one_bias_no_state<C: Cell>() -> TestResult {
    finite_differences::<C>((3, 2, 2, 4), (false, true), false)?;
    finite_differences::<C>((2, 1, 3, 3), (true, false), false)
}

fn portable_kernels_match_simd_ones<C: Cell>() -> TestResult {
    // Batch 7: a full 6-row block and a single row; hidden 11: one 8-lane
    // vector and a scalar tail per gate.
    let d = Dims {
        batch: 7,
        seq: 5,
        input: 3,
        hidden: 11,
    };
    let (b, t, i, h, g) = (d.batch, d.seq, d.input, d.hidden, d.gates::<C>());
    let sw = d.state::<C>();
    let x = values(b * t * i, 1);
    let w_ih = values(g * i, 2);
    let w_hh = values(g * h, 3);
    let bias = values(C::BIAS.len(g), 4);
    let state0 = values(b * sw, 5);
    let dout = values(b * t * h, 6);
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        let err = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "{what}: max difference {err}");
    };
    let (out, fin, saved) = fused::forward::<C>(d, &x, &w_ih, &w_hh, &bias, Some(&state0), true);
    let (out_p, fin_p, saved_p) =
        fused::forward_portable::<C>(d, &x, &w_ih, &w_hh, &bias, Some(&state0), true);
    let (saved, saved_p) = (saved.ok_or("not saved")?, saved_p.ok_or("not saved")?);
    close(&out, &out_p, "hidden sequence");
    close(&fin, &fin_p, "final state");
    close(&saved.gates, &saved_p.gates, "saved gates");
    close(&saved.xh, &saved_p.xh, "saved GEMM rows");
    close(&saved.cseq, &saved_p.cseq, "saved state parts");
    let dfin = values(b * sw, 7);
    let grads = |simd: bool| {
        let backward = if simd {
            fused::backward::<C>
        } else {
            fused::backward_portable::<C>
        };
        backward(d, &saved, Some(&dout), &dfin, &w_ih, &w_hh, &state0)
    };
    let (simd, portable) = (grads(true), grads(false));
    close(&simd.dw_t, &portable.dw_t, "weight gradients");
    close(&simd.sums, &portable.sums, "bias gradients");
    close(&simd.dx, &portable.dx, "dx");
    close(&simd.dstate0, &portable.dstate0, "initial state gradient");
    Ok(())
}

fn adamw_step_reduces_loss<C: Cell>() -> TestResult {
    // Two layers: the last layer's final state is the loss's only input,
    // so the first layer learns through its hidden sequence alone.
    for layers in [1, 2] {
        adamw_steps_reduce_loss::<C>(layers)?;
    }
    Ok(())
}

fn adamw_steps_reduce_loss<C: Cell>(layers: usize) -> TestResult {
    use candle_nn::Optimizer;
    let (vm, vb) = varmap();
    let rnn = stack::<C>(config(2, 8, layers), vb)?;
    let x = tensor(&[4, 6, 2], 5)?;
    let target = tensor(&[4, 8], 6)?.affine(0.5, 0.0)?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let loss = |rnn: &Rnn<C>| -> crate::Result<Tensor> {
        let out = rnn.forward(&x)?;
        let h = C::hidden(&out.states[layers - 1]);
        Ok((h - &target)?.sqr()?.mean_all()?)
    };
    let first = loss(&rnn)?.to_scalar::<f32>()?;
    for _ in 0..20 {
        let l = loss(&rnn)?;
        opt.backward_step(&l)?;
    }
    let last = loss(&rnn)?.to_scalar::<f32>()?;
    assert!(
        last < first * 0.8,
        "{layers} layers: loss {first} -> {last}"
    );
    Ok(())
}

fn loads_weights_by_pytorch_names<C: Cell>() -> TestResult {
    let (h, i) = (4, 3);
    let g = C::GATES * h;
    let mut ts = HashMap::new();
    for (name, dims, seed) in [
        ("rnn.weight_ih_l0", vec![g, i], 1),
        ("rnn.weight_hh_l0", vec![g, h], 2),
        ("rnn.bias_ih_l0", vec![g], 3),
        ("rnn.bias_hh_l0", vec![g], 4),
        ("rnn.weight_ih_l1", vec![g, h], 5),
        ("rnn.weight_hh_l1", vec![g, h], 6),
        ("rnn.bias_ih_l1", vec![g], 7),
        ("rnn.bias_hh_l1", vec![g], 8),
    ] {
        ts.insert(name.to_owned(), tensor(&dims, seed)?);
    }
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    let config = config(i, h, 2);
    let rnn = stack::<C>(config, vb.pp("rnn"))?;
    assert_eq!(rnn.config(), &config);
    assert_eq!(rnn.layers().len(), 2);
    assert_eq!(rnn.layers()[1].input_size(), h);
    assert_eq!(rnn.layers()[1].hidden_size(), h);
    let out = rnn.infer(&tensor(&[2, 3, i], 9)?, None)?;
    assert_eq!(out.hidden.dims(), &[2, 3, h]);
    assert_eq!(out.states.len(), 2);
    for part in C::parts(&out.states[0]) {
        assert_eq!(part.dims(), &[2, h]);
    }
    Ok(())
}

fn rejects_bad_input<C: Cell>() -> TestResult {
    let (_vm, vb) = varmap();
    let rnn = stack::<C>(RnnConfig::new(3, 4), vb)?;
    let wrong_features = tensor(&[2, 5, 4], 1)?;
    assert!(matches!(
        rnn.forward(&wrong_features),
        Err(Error::Shape { .. })
    ));
    let empty = Tensor::zeros((2, 0, 3), DType::F32, &Device::Cpu)?;
    assert!(matches!(rnn.forward(&empty), Err(Error::Shape { .. })));
    let two_dims = tensor(&[2, 3], 1)?;
    assert!(matches!(rnn.forward(&two_dims), Err(Error::Shape { .. })));
    let f64_input = tensor(&[2, 5, 3], 1)?.to_dtype(DType::F64)?;
    assert!(matches!(rnn.forward(&f64_input), Err(Error::DType { .. })));
    let x = tensor(&[2, 5, 3], 1)?;
    let wrong_state = [state_of::<C>(|_| tensor(&[3, 4], 2))?];
    assert!(matches!(
        rnn.forward_with_state(&x, Some(&wrong_state)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        rnn.infer(&x, Some(&[])),
        Err(Error::Config { .. })
    ));
    // Gate rows that are no multiple of the cell's gate count.
    let rows = C::GATES + 1;
    assert!(matches!(
        RnnLayer::<C>::from_tensors(
            tensor(&[rows, 3], 1)?,
            tensor(&[rows, rows], 2)?,
            None,
            None
        ),
        Err(Error::Shape { .. })
    ));
    let (_vm, vb) = varmap();
    let mut zero_layers = RnnConfig::new(3, 4);
    zero_layers.num_layers = 0;
    assert!(matches!(
        stack::<C>(zero_layers, vb),
        Err(Error::Config { .. })
    ));
    Ok(())
}

/// The standard-op recurrence (what runs on CUDA) against the fused op on
/// the CPU: outputs and the gradients of every weight, the input and the
/// states of a two-layer stack.
fn portable_recurrence_matches_the_fused_op<C: Cell>() -> TestResult {
    let (vm, vb) = varmap();
    let rnn = stack::<C>(config(3, 6, 2), vb)?;
    let x = var(&[5, 7, 3], 11)?;
    let states = (0..2)
        .map(|k| state_of::<C>(|p| Ok(var(&[5, 6], 20 + 10 * p as u64 + k)?.as_tensor().clone())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let wh = tensor(&[5, 7, 6], 40)?;
    // Part p of every final state weighs 0.5^(p + 1).
    let loss = |out: &StackOutput<C>| -> candle_core::Result<Tensor> {
        let mut l = (&out.hidden * &wh)?.sum_all()?;
        for s in &out.states {
            for (p, part) in C::parts(s).into_iter().enumerate() {
                l = (l + (part.sum_all()? * 0.5f64.powi(p as i32 + 1))?)?;
            }
        }
        Ok(l)
    };
    let fused = rnn.forward_with_state(x.as_tensor(), Some(&states))?;
    let portable = rnn.run_portable(x.as_tensor(), Some(&states))?;
    assert!(max_abs_diff(&fused.hidden, &portable.hidden)? < 1e-5);
    for (a, b) in fused.states.iter().zip(&portable.states) {
        for (a, b) in C::parts(a).into_iter().zip(C::parts(b)) {
            assert!(max_abs_diff(a, b)? < 1e-5);
        }
    }
    let (gf, gp) = (loss(&fused)?.backward()?, loss(&portable)?.backward()?);
    let mut tracked: Vec<Tensor> = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    tracked.push(x.as_tensor().clone());
    tracked.extend(states.iter().flat_map(|s| C::parts(s).into_iter().cloned()));
    assert_same_grads(&gf, &gp, &tracked)?;
    Ok(())
}

#[test]
fn config_round_trips_and_rejects_unknown_fields() -> TestResult {
    let c: RnnConfig = serde_json::from_str(r#"{"input_size": 8, "hidden_size": 64}"#)?;
    assert_eq!(c, RnnConfig::new(8, 64));
    let back: RnnConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
    assert_eq!(back, c);
    assert!(
        serde_json::from_str::<RnnConfig>(r#"{"input_size": 8, "hidden_size": 64, "x": 1}"#)
            .is_err()
    );
    Ok(())
}

/// Every test above, once per cell: `tests::lstm::*` and `tests::gru::*`.
macro_rules! per_cell {
    ($($name:ident),+ $(,)?) => {
        mod lstm {
            $(
                #[test]
                fn $name() -> crate::test_util::TestResult {
                    super::$name::<crate::LstmCell>()
                }
            )+
        }

        mod gru {
            $(
                #[test]
                fn $name() -> crate::test_util::TestResult {
                    super::$name::<crate::GruCell>()
                }
            )+
        }
    };
}

per_cell!(
    matches_candle_nn_with_one_output_in_the_loss,
    backward_twice_through_one_forward,
    matches_candle_nn_small,
    matches_candle_nn_batch_one,
    matches_candle_nn_seq_one,
    matches_candle_nn_long_sequence,
    matches_candle_nn_odd_hidden_large_batch,
    matches_candle_nn_protocol_shape,
    matches_candle_nn_without_bias_or_state,
    matches_candle_nn_two_layer_stack,
    matches_candle_nn_three_layer_stack,
    matches_candle_nn_two_layer_stack_without_bias,
    threaded_batch_split_matches_candle_nn,
    infer_matches_tracked_forward,
    finite_differences_with_biases_and_state,
    finite_differences_batch_one_simd_width,
    finite_differences_one_bias_no_state,
    portable_kernels_match_simd_ones,
    adamw_step_reduces_loss,
    loads_weights_by_pytorch_names,
    rejects_bad_input,
    portable_recurrence_matches_the_fused_op,
);

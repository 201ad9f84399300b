use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_nn::rnn::{GRUConfig, GRUState, RNN};

use super::*;
use crate::test_util::{
    TestResult, assert_same_grads, max_abs_diff, rel_diff, tensor, var, varmap,
};

struct Case {
    batch: usize,
    seq: usize,
    input: usize,
    hidden: usize,
    layers: usize,
    bias: bool,
    with_state: bool,
    /// Which outputs the loss reads: hidden sequence, final h.
    terms: [bool; 2],
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
        terms: [true; 2],
    }
}

/// Runs our stack and candle-nn's per-layer `GRU` on the same variables,
/// backpropagates the same random weighting of every output through both,
/// and compares outputs and the gradients of input, weights and states.
fn compare_with_candle_nn(c: &Case) -> TestResult {
    let (vm, vb) = varmap();
    let mut config = GruConfig::new(c.input, c.hidden);
    config.num_layers = c.layers;
    config.bias = c.bias;
    let ours = Gru::new(config, vb.pp("gru"))?;
    // The VarMap hands both the same variables; biases get values unlike
    // the weights' so that a mixed-up slot shows.
    for (name, v) in vm.data().lock().map_err(|e| e.to_string())?.iter() {
        if name.contains("bias") {
            let n = v.elem_count();
            v.set(&tensor(
                &[n],
                n as u64 + 7 + u64::from(name.contains("hh")),
            )?)?;
        }
    }
    // candle-nn's GRU only knows layer 0's names: hand it layer k's
    // variables (the same tensors, so gradients land on the same ids)
    // under those.
    let reference: Vec<_> = {
        let data = vm.data().lock().map_err(|e| e.to_string())?;
        (0..c.layers)
            .map(|k| {
                let mut renamed = HashMap::new();
                for part in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                    if let Some(v) = data.get(&format!("gru.{part}_l{k}")) {
                        renamed.insert(format!("{part}_l0"), v.as_tensor().clone());
                    }
                }
                let vb = VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu);
                let cfg = if c.bias {
                    GRUConfig::default()
                } else {
                    GRUConfig::default_no_bias()
                };
                let input = if k == 0 { c.input } else { c.hidden };
                candle_nn::rnn::gru(input, c.hidden, cfg, vb)
            })
            .collect::<candle_core::Result<_>>()?
    };

    let x = var(&[c.batch, c.seq, c.input], 1)?;
    let states: Vec<Var> = (0..c.layers)
        .map(|k| var(&[c.batch, c.hidden], 10 + k as u64))
        .collect::<candle_core::Result<_>>()?;
    let w_out = tensor(&[c.batch, c.seq, c.hidden], 3)?;
    let w_h = tensor(&[c.batch, c.hidden], 4)?;

    let our_states: Vec<Tensor> = states.iter().map(|h| h.as_tensor().clone()).collect();
    let out =
        ours.forward_with_state(x.as_tensor(), c.with_state.then_some(our_states.as_slice()))?;
    let our_h = out.states.last().ok_or("no state")?.clone();
    let our_seq = out.hidden;

    let mut input = x.as_tensor().clone();
    let mut ref_last = None;
    for (k, layer) in reference.iter().enumerate() {
        let seq = if c.with_state {
            let init = GRUState {
                h: states[k].as_tensor().clone(),
            };
            layer.seq_init(&input, &init)?
        } else {
            layer.seq(&input)?
        };
        // candle-nn's GRU concatenates the steps to `[batch, seq * hidden]`.
        input = layer
            .states_to_tensor(&seq)?
            .reshape((c.batch, c.seq, c.hidden))?;
        ref_last = seq.last().cloned();
    }
    let ref_h = ref_last.ok_or("no reference state")?.h;
    let ref_seq = input;

    assert!(max_abs_diff(&our_seq, &ref_seq)? < 1e-5, "hidden sequence");
    assert!(max_abs_diff(&our_h, &ref_h)? < 1e-5, "final h");

    let loss = |s: &Tensor, h: &Tensor| -> candle_core::Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (on, out, w) in [(0, s, &w_out), (1, h, &w_h)] {
            if c.terms[on] {
                total = (total + (out * w)?.sum_all()?)?;
            }
        }
        Ok(total)
    };
    let g_ours = loss(&our_seq, &our_h)?.backward()?;
    let g_ref = loss(&ref_seq, &ref_h)?.backward()?;

    let mut checked: Vec<(String, &Tensor)> = vec![("x".to_owned(), x.as_tensor())];
    let vars = vm.all_vars();
    let data = vm.data().lock().map_err(|e| e.to_string())?;
    for (name, v) in data.iter() {
        checked.push((name.clone(), v.as_tensor()));
    }
    if c.with_state {
        for (k, h) in states.iter().enumerate() {
            checked.push((format!("h0 of layer {k}"), h.as_tensor()));
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

#[test]
fn matches_candle_nn_with_one_output_in_the_loss() -> TestResult {
    // The final state and the hidden sequence come from two ops whose
    // backward passes cooperate; each must work without the other.
    for terms in [[true, false], [false, true]] {
        for layers in [1, 2] {
            compare_with_candle_nn(&Case {
                layers,
                terms,
                ..case(3, 6, 2, 5)
            })?;
        }
    }
    Ok(())
}

#[test]
fn backward_twice_through_one_forward() -> TestResult {
    let (vm, vb) = varmap();
    let gru = Gru::new(GruConfig::new(3, 4), vb)?;
    let x = var(&[2, 5, 3], 1)?;
    let out = gru.forward(x.as_tensor())?;
    let seq_loss = out.hidden.sum_all()?;
    let h_loss = out.states[0].sum_all()?;
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

#[test]
fn matches_candle_nn_small() -> TestResult {
    compare_with_candle_nn(&case(2, 5, 3, 4))
}

#[test]
fn matches_candle_nn_batch_one() -> TestResult {
    compare_with_candle_nn(&case(1, 9, 4, 16))
}

#[test]
fn matches_candle_nn_seq_one() -> TestResult {
    compare_with_candle_nn(&case(3, 1, 2, 5))
}

#[test]
fn matches_candle_nn_long_sequence() -> TestResult {
    compare_with_candle_nn(&case(2, 120, 3, 8))
}

#[test]
fn matches_candle_nn_odd_hidden_large_batch() -> TestResult {
    // 13 rows: two full 6-row blocks and a remainder; hidden 9 leaves a
    // partial SIMD tile in every gate, and 3H = 27 puts the r/z | n split
    // of the hidden projection inside a GEMM tile.
    compare_with_candle_nn(&case(13, 7, 5, 9))
}

#[test]
fn matches_candle_nn_protocol_shape() -> TestResult {
    compare_with_candle_nn(&case(8, 12, 8, 64))
}

#[test]
fn matches_candle_nn_without_bias_or_state() -> TestResult {
    compare_with_candle_nn(&Case {
        bias: false,
        with_state: false,
        ..case(4, 6, 3, 7)
    })
}

#[test]
fn matches_candle_nn_two_layer_stack() -> TestResult {
    compare_with_candle_nn(&Case {
        layers: 2,
        ..case(5, 6, 4, 11)
    })
}

#[test]
fn matches_candle_nn_two_layer_stack_without_bias() -> TestResult {
    compare_with_candle_nn(&Case {
        layers: 2,
        bias: false,
        ..case(1, 10, 3, 24)
    })
}

#[test]
fn threaded_batch_split_matches_candle_nn() -> TestResult {
    // Inside a 3-thread pool a batch of 40 is cut into several chunks that
    // run in parallel; the result must not change.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build()?;
    pool.install(|| {
        assert!(crate::kernel::batch_chunk_rows(40) < 40);
        // Also with only the final state in the loss: no sequence gradient
        // for any chunk.
        for terms in [[true, true], [false, true]] {
            compare_with_candle_nn(&Case {
                terms,
                ..case(40, 4, 3, 6)
            })
            .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;
    Ok(())
}

#[test]
fn infer_matches_tracked_forward() -> TestResult {
    let (_vm, vb) = varmap();
    let mut config = GruConfig::new(3, 10);
    config.num_layers = 2;
    let gru = Gru::new(config, vb)?;
    let x = tensor(&[7, 5, 3], 2)?;
    let states = vec![tensor(&[7, 10], 3)?, tensor(&[7, 10], 4)?];
    let tracked = gru.forward_with_state(&x, Some(&states))?;
    let inferred = gru.infer(&x, Some(&states))?;
    assert!(max_abs_diff(&tracked.hidden, &inferred.hidden)? < 1e-6);
    for (a, b) in tracked.states.iter().zip(&inferred.states) {
        assert!(max_abs_diff(a, b)? < 1e-6);
    }
    // The final state is the last step of the hidden sequence.
    let last = inferred.hidden.narrow(1, 4, 1)?.squeeze(1)?;
    assert!(max_abs_diff(&last, &inferred.states[1])? == 0.0);
    Ok(())
}

/// Central differences of `sum(hidden * w) + sum(h_T * w_h)`, accumulated in
/// f64, against the op's gradients for every element of every argument.
fn finite_differences(
    (b, t, i, h): (usize, usize, usize, usize),
    (has_b_ih, has_b_hh): (bool, bool),
    with_state: bool,
) -> TestResult {
    let x = var(&[b, t, i], 31)?;
    let w_ih = var(&[3 * h, i], 32)?;
    let w_hh = var(&[3 * h, h], 33)?;
    let b_ih = var(&[3 * h], 34)?;
    let b_hh = var(&[3 * h], 35)?;
    let h0 = var(&[b, h], 36)?;
    let w_out = tensor(&[b, t, h], 38)?;
    let w_h = tensor(&[b, h], 39)?;
    let mut all = vec![&x, &w_ih, &w_hh];
    if has_b_ih {
        all.push(&b_ih);
    }
    if has_b_hh {
        all.push(&b_hh);
    }
    if with_state {
        all.push(&h0);
    }

    let loss_f64 = |track: bool| -> crate::Result<(f64, Option<Tensor>)> {
        let layer = GruLayer::from_tensors(
            w_ih.as_tensor().clone(),
            w_hh.as_tensor().clone(),
            has_b_ih.then(|| b_ih.as_tensor().clone()),
            has_b_hh.then(|| b_hh.as_tensor().clone()),
        )?;
        let state = with_state.then(|| h0.as_tensor().clone());
        let out = if track {
            layer.forward(x.as_tensor(), state.as_ref())?
        } else {
            layer.infer(x.as_tensor(), state.as_ref())?
        };
        let mut total = 0.0f64;
        let mut loss = None::<Tensor>;
        for (o, w) in [(out.hidden, &w_out), (out.state, &w_h)] {
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

#[test]
fn finite_differences_with_biases_and_state() -> TestResult {
    finite_differences((2, 4, 3, 5), (true, true), true)
}

#[test]
fn finite_differences_batch_one_simd_width() -> TestResult {
    // Hidden 9: one full 8-lane vector and a scalar tail per gate.
    finite_differences((1, 3, 2, 9), (true, true), true)
}

#[test]
fn finite_differences_one_bias_no_state() -> TestResult {
    finite_differences((3, 2, 2, 4), (false, true), false)?;
    finite_differences((2, 1, 3, 3), (true, false), false)
}

#[test]
fn portable_kernels_match_simd_ones() -> TestResult {
    // Batch 7: a full 6-row block and a single row; hidden 11: one 8-lane
    // vector and a scalar tail per gate.
    let d = cell::Dims {
        batch: 7,
        seq: 5,
        input: 3,
        hidden: 11,
    };
    let (b, t, i, h) = (d.batch, d.seq, d.input, d.hidden);
    let x = crate::test_util::values(b * t * i, 1);
    let w_ih = crate::test_util::values(3 * h * i, 2);
    let w_hh = crate::test_util::values(3 * h * h, 3);
    let bias = crate::test_util::values(6 * h, 4);
    let h0 = crate::test_util::values(b * h, 5);
    let dout = crate::test_util::values(b * t * h, 6);
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        let err = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-5, "{what}: max difference {err}");
    };
    let (out, saved) = cell::forward(d, &x, &w_ih, &w_hh, &bias, Some(&h0), true);
    let (out_p, saved_p) = cell::forward_portable(d, &x, &w_ih, &w_hh, &bias, Some(&h0), true);
    let (saved, saved_p) = (saved.ok_or("not saved")?, saved_p.ok_or("not saved")?);
    close(&out, &out_p, "hidden sequence");
    close(&saved.gates, &saved_p.gates, "saved gates");
    close(&saved.xh, &saved_p.xh, "saved GEMM rows");
    let dfin = crate::test_util::values(b * h, 7);
    let g = cell::backward(d, &saved, Some(&dout), &dfin, &w_ih, &w_hh);
    let g_p = cell::backward_portable(d, &saved, Some(&dout), &dfin, &w_ih, &w_hh);
    close(&g.dw_t, &g_p.dw_t, "weight gradients");
    close(&g.sums, &g_p.sums, "bias gradients");
    close(&g.dx, &g_p.dx, "dx");
    close(&g.dh0, &g_p.dh0, "dh0");
    Ok(())
}

#[test]
fn adamw_step_reduces_loss() -> TestResult {
    // Two layers: the last layer's final state is the loss's only input,
    // so the first layer learns through its hidden sequence alone.
    for layers in [1, 2] {
        adamw_steps_reduce_loss(layers)?;
    }
    Ok(())
}

fn adamw_steps_reduce_loss(layers: usize) -> TestResult {
    use candle_nn::Optimizer;
    let (vm, vb) = varmap();
    let gru = Gru::new(
        GruConfig {
            num_layers: layers,
            ..GruConfig::new(2, 8)
        },
        vb,
    )?;
    let x = tensor(&[4, 6, 2], 5)?;
    let target = tensor(&[4, 8], 6)?.affine(0.5, 0.0)?;
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let loss = |gru: &Gru| -> crate::Result<Tensor> {
        let out = gru.forward(&x)?;
        Ok((&out.states[layers - 1] - &target)?.sqr()?.mean_all()?)
    };
    let first = loss(&gru)?.to_scalar::<f32>()?;
    for _ in 0..20 {
        let l = loss(&gru)?;
        opt.backward_step(&l)?;
    }
    let last = loss(&gru)?.to_scalar::<f32>()?;
    assert!(
        last < first * 0.8,
        "{layers} layers: loss {first} -> {last}"
    );
    Ok(())
}

#[test]
fn loads_weights_by_pytorch_names() -> TestResult {
    let (h, i) = (4, 3);
    let mut ts = HashMap::new();
    for (name, dims, seed) in [
        ("rnn.weight_ih_l0", vec![3 * h, i], 1),
        ("rnn.weight_hh_l0", vec![3 * h, h], 2),
        ("rnn.bias_ih_l0", vec![3 * h], 3),
        ("rnn.bias_hh_l0", vec![3 * h], 4),
        ("rnn.weight_ih_l1", vec![3 * h, h], 5),
        ("rnn.weight_hh_l1", vec![3 * h, h], 6),
        ("rnn.bias_ih_l1", vec![3 * h], 7),
        ("rnn.bias_hh_l1", vec![3 * h], 8),
    ] {
        ts.insert(name.to_owned(), tensor(&dims, seed)?);
    }
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    let config = GruConfig {
        num_layers: 2,
        ..GruConfig::new(i, h)
    };
    let gru = Gru::new(config, vb.pp("rnn"))?;
    assert_eq!(gru.config(), &config);
    assert_eq!(gru.layers().len(), 2);
    assert_eq!(gru.layers()[1].input_size(), h);
    assert_eq!(gru.layers()[1].hidden_size(), h);
    let out = gru.infer(&tensor(&[2, 3, i], 9)?, None)?;
    assert_eq!(out.hidden.dims(), &[2, 3, h]);
    assert_eq!(out.states.len(), 2);
    assert_eq!(out.states[0].dims(), &[2, h]);
    Ok(())
}

#[test]
fn rejects_bad_input() -> TestResult {
    let (_vm, vb) = varmap();
    let gru = Gru::new(GruConfig::new(3, 4), vb)?;
    let wrong_features = tensor(&[2, 5, 4], 1)?;
    assert!(matches!(
        gru.forward(&wrong_features),
        Err(Error::Shape { .. })
    ));
    let empty = Tensor::zeros((2, 0, 3), DType::F32, &Device::Cpu)?;
    assert!(matches!(gru.forward(&empty), Err(Error::Shape { .. })));
    let two_dims = tensor(&[2, 3], 1)?;
    assert!(matches!(gru.forward(&two_dims), Err(Error::Shape { .. })));
    let f64_input = tensor(&[2, 5, 3], 1)?.to_dtype(DType::F64)?;
    assert!(matches!(gru.forward(&f64_input), Err(Error::DType { .. })));
    let x = tensor(&[2, 5, 3], 1)?;
    let wrong_state = [tensor(&[3, 4], 2)?];
    assert!(matches!(
        gru.forward_with_state(&x, Some(&wrong_state)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        gru.infer(&x, Some(&[])),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        GruLayer::from_tensors(tensor(&[4, 3], 1)?, tensor(&[4, 4], 2)?, None, None),
        Err(Error::Shape { .. })
    ));
    let (_vm, vb) = varmap();
    let mut zero_layers = GruConfig::new(3, 4);
    zero_layers.num_layers = 0;
    assert!(matches!(
        Gru::new(zero_layers, vb),
        Err(Error::Config { .. })
    ));
    Ok(())
}

#[test]
fn config_round_trips_and_rejects_unknown_fields() -> TestResult {
    let c: GruConfig = serde_json::from_str(r#"{"input_size": 8, "hidden_size": 64}"#)?;
    assert_eq!(c, GruConfig::new(8, 64));
    let back: GruConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
    assert_eq!(back, c);
    assert!(
        serde_json::from_str::<GruConfig>(r#"{"input_size": 8, "hidden_size": 64, "x": 1}"#)
            .is_err()
    );
    Ok(())
}

/// The standard-op recurrence (what runs on CUDA) against the fused op on
/// the CPU: outputs and the gradients of every weight, the input and the
/// states of a two-layer stack.
#[test]
fn portable_recurrence_matches_the_fused_op() -> TestResult {
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mut config = GruConfig::new(3, 6);
    config.num_layers = 2;
    let gru = Gru::new(config, vb)?;
    let x = var(&[5, 7, 3], 11)?;
    let states: Vec<Tensor> = (0..2)
        .map(|k| Ok(var(&[5, 6], 20 + k)?.as_tensor().clone()))
        .collect::<candle_core::Result<_>>()?;
    let wh = tensor(&[5, 7, 6], 40)?;
    let loss = |out: &GruStackOutput| -> candle_core::Result<Tensor> {
        let mut l = (&out.hidden * &wh)?.sum_all()?;
        for s in &out.states {
            l = (l + (s.sum_all()? * 0.5)?)?;
        }
        Ok(l)
    };
    let fused = gru.forward_with_state(x.as_tensor(), Some(&states))?;
    let portable = gru.run_portable(x.as_tensor(), Some(&states))?;
    assert!(max_abs_diff(&fused.hidden, &portable.hidden)? < 1e-5);
    for (a, b) in fused.states.iter().zip(&portable.states) {
        assert!(max_abs_diff(a, b)? < 1e-5);
    }
    let (gf, gp) = (loss(&fused)?.backward()?, loss(&portable)?.backward()?);
    let mut tracked: Vec<Tensor> = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    tracked.push(x.as_tensor().clone());
    tracked.extend(states.iter().cloned());
    assert_same_grads(&gf, &gp, &tracked)?;
    Ok(())
}

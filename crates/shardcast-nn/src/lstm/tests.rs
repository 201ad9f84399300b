use candle_core::{DType, Device, Tensor, Var};
use candle_nn::rnn::{LSTMConfig, LSTMState, RNN};

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
    /// Which outputs the loss reads: hidden sequence, final h, final c.
    terms: [bool; 3],
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
        terms: [true; 3],
    }
}

/// Runs our stack and candle-nn's per-layer `LSTM` on the same variables,
/// backpropagates the same random weighting of every output through both,
/// and compares outputs and the gradients of input, weights and states.
fn compare_with_candle_nn(c: &Case) -> TestResult {
    let (vm, vb) = varmap();
    let mut config = LstmConfig::new(c.input, c.hidden);
    config.num_layers = c.layers;
    config.bias = c.bias;
    let ours = Lstm::new(config, vb.pp("lstm"))?;
    let reference: Vec<_> = (0..c.layers)
        .map(|k| {
            let mut cfg = if c.bias {
                LSTMConfig::default()
            } else {
                LSTMConfig::default_no_bias()
            };
            cfg.layer_idx = k;
            let input = if k == 0 { c.input } else { c.hidden };
            candle_nn::rnn::lstm(input, c.hidden, cfg, vb.pp("lstm"))
        })
        .collect::<candle_core::Result<_>>()?;
    // The VarMap hands both the same variables; biases start non-zero so
    // they matter.
    for (name, v) in vm.data().lock().map_err(|e| e.to_string())?.iter() {
        if name.contains("bias") {
            let n = v.elem_count();
            v.set(&tensor(&[n], n as u64 + 7)?)?;
        }
    }

    let x = var(&[c.batch, c.seq, c.input], 1)?;
    let states: Vec<(Var, Var)> = (0..c.layers)
        .map(|k| {
            Ok((
                var(&[c.batch, c.hidden], 10 + k as u64)?,
                var(&[c.batch, c.hidden], 20 + k as u64)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let w_out = tensor(&[c.batch, c.seq, c.hidden], 3)?;
    let w_h = tensor(&[c.batch, c.hidden], 4)?;
    let w_c = tensor(&[c.batch, c.hidden], 5)?;

    let our_states: Vec<LstmState> = states
        .iter()
        .map(|(h, c)| LstmState {
            h: h.as_tensor().clone(),
            c: c.as_tensor().clone(),
        })
        .collect();
    let out =
        ours.forward_with_state(x.as_tensor(), c.with_state.then_some(our_states.as_slice()))?;
    let last = out.states.last().ok_or("no state")?;
    let (our_seq, our_h, our_c) = (out.hidden, last.h.clone(), last.c.clone());

    let mut input = x.as_tensor().clone();
    let mut ref_last = None;
    for (k, layer) in reference.iter().enumerate() {
        let seq = if c.with_state {
            let init = LSTMState::new(
                states[k].0.as_tensor().clone(),
                states[k].1.as_tensor().clone(),
            );
            layer.seq_init(&input, &init)?
        } else {
            layer.seq(&input)?
        };
        input = layer.states_to_tensor(&seq)?;
        ref_last = seq.last().cloned();
    }
    let ref_last = ref_last.ok_or("no reference state")?;
    let (ref_seq, ref_h, ref_c) = (input, ref_last.h, ref_last.c);

    assert!(max_abs_diff(&our_seq, &ref_seq)? < 1e-5, "hidden sequence");
    assert!(max_abs_diff(&our_h, &ref_h)? < 1e-5, "final h");
    assert!(max_abs_diff(&our_c, &ref_c)? < 1e-5, "final c");

    let loss = |s: &Tensor, h: &Tensor, cc: &Tensor| -> candle_core::Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for (on, out, w) in [(0, s, &w_out), (1, h, &w_h), (2, cc, &w_c)] {
            if c.terms[on] {
                total = (total + (out * w)?.sum_all()?)?;
            }
        }
        Ok(total)
    };
    let g_ours = loss(&our_seq, &our_h, &our_c)?.backward()?;
    let g_ref = loss(&ref_seq, &ref_h, &ref_c)?.backward()?;

    let mut checked: Vec<(String, &Tensor)> = vec![("x".to_owned(), x.as_tensor())];
    let vars = vm.all_vars();
    let data = vm.data().lock().map_err(|e| e.to_string())?;
    for (name, v) in data.iter() {
        checked.push((name.clone(), v.as_tensor()));
    }
    if c.with_state {
        for (h, cc) in &states {
            checked.push(("h0".to_owned(), h.as_tensor()));
            checked.push(("c0".to_owned(), cc.as_tensor()));
        }
    }
    assert_eq!(vars.len(), data.len());
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
    for terms in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
    ] {
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
    let lstm = Lstm::new(LstmConfig::new(3, 4), vb)?;
    let x = var(&[2, 5, 3], 1)?;
    let out = lstm.forward(x.as_tensor())?;
    let seq_loss = out.hidden.sum_all()?;
    let h_loss = out.states[0].h.sum_all()?;
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
fn matches_candle_nn_odd_hidden_large_batch() -> TestResult {
    // 13 rows: two full 6-row blocks and a remainder; hidden 9 leaves a
    // partial SIMD tile in every gate.
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
fn matches_candle_nn_three_layer_stack() -> TestResult {
    compare_with_candle_nn(&Case {
        layers: 3,
        ..case(5, 6, 4, 11)
    })
}

#[test]
fn threaded_batch_split_matches_candle_nn() -> TestResult {
    // Inside a 3-thread pool a batch of 40 is cut into several chunks that
    // run in parallel; the result must not change.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build()?;
    pool.install(|| {
        assert!(crate::kernel::batch_chunk_rows(40) < 40);
        compare_with_candle_nn(&case(40, 4, 3, 6)).map_err(|e| e.to_string())
    })?;
    Ok(())
}

#[test]
fn infer_matches_tracked_forward() -> TestResult {
    let (_vm, vb) = varmap();
    let mut config = LstmConfig::new(3, 10);
    config.num_layers = 2;
    let lstm = Lstm::new(config, vb)?;
    let x = tensor(&[7, 5, 3], 2)?;
    let states = vec![
        LstmState {
            h: tensor(&[7, 10], 3)?,
            c: tensor(&[7, 10], 4)?,
        };
        2
    ];
    let tracked = lstm.forward_with_state(&x, Some(&states))?;
    let inferred = lstm.infer(&x, Some(&states))?;
    assert!(max_abs_diff(&tracked.hidden, &inferred.hidden)? < 1e-6);
    for (a, b) in tracked.states.iter().zip(&inferred.states) {
        assert!(max_abs_diff(&a.h, &b.h)? < 1e-6);
        assert!(max_abs_diff(&a.c, &b.c)? < 1e-6);
    }
    Ok(())
}

/// Central differences of `sum(hidden * w) + sum(h_T * w_h) + sum(c_T * w_c)`,
/// accumulated in f64, against the op's gradients for every element of
/// every argument.
#[test]
fn finite_differences() -> TestResult {
    let (b, t, i, h) = (2, 4, 3, 5);
    let x = var(&[b, t, i], 31)?;
    let w_ih = var(&[4 * h, i], 32)?;
    let w_hh = var(&[4 * h, h], 33)?;
    let b_ih = var(&[4 * h], 34)?;
    let b_hh = var(&[4 * h], 35)?;
    let h0 = var(&[b, h], 36)?;
    let c0 = var(&[b, h], 37)?;
    let w_out = tensor(&[b, t, h], 38)?;
    let w_h = tensor(&[b, h], 39)?;
    let w_c = tensor(&[b, h], 40)?;
    let all = [&x, &w_ih, &w_hh, &b_ih, &b_hh, &h0, &c0];

    let loss_f64 = |track: bool| -> crate::Result<(f64, Option<Tensor>)> {
        let layer = LstmLayer::from_tensors(
            w_ih.as_tensor().clone(),
            w_hh.as_tensor().clone(),
            Some(b_ih.as_tensor().clone()),
            Some(b_hh.as_tensor().clone()),
        )?;
        let state = LstmState {
            h: h0.as_tensor().clone(),
            c: c0.as_tensor().clone(),
        };
        let out = if track {
            layer.forward(x.as_tensor(), Some(&state))?
        } else {
            layer.infer(x.as_tensor(), Some(&state))?
        };
        let terms = [
            (out.hidden, &w_out),
            (out.state.h, &w_h),
            (out.state.c, &w_c),
        ];
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
                "element {idx}: analytic {a}, numeric {numeric}"
            );
        }
    }
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
    let lstm = Lstm::new(
        LstmConfig {
            num_layers: layers,
            ..LstmConfig::new(2, 8)
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
    let loss = |lstm: &Lstm| -> crate::Result<Tensor> {
        let out = lstm.forward(&x)?;
        let h = &out.states[layers - 1].h;
        Ok((h - &target)?.sqr()?.mean_all()?)
    };
    let first = loss(&lstm)?.to_scalar::<f32>()?;
    for _ in 0..20 {
        let l = loss(&lstm)?;
        opt.backward_step(&l)?;
    }
    let last = loss(&lstm)?.to_scalar::<f32>()?;
    assert!(
        last < first * 0.8,
        "{layers} layers: loss {first} -> {last}"
    );
    Ok(())
}

#[test]
fn rejects_bad_input() -> TestResult {
    let (_vm, vb) = varmap();
    let lstm = Lstm::new(LstmConfig::new(3, 4), vb)?;
    let wrong_features = tensor(&[2, 5, 4], 1)?;
    assert!(matches!(
        lstm.forward(&wrong_features),
        Err(Error::Shape { .. })
    ));
    let empty = Tensor::zeros((2, 0, 3), DType::F32, &Device::Cpu)?;
    assert!(matches!(lstm.forward(&empty), Err(Error::Shape { .. })));
    let two_dims = tensor(&[2, 3], 1)?;
    assert!(matches!(lstm.forward(&two_dims), Err(Error::Shape { .. })));
    let f64_input = tensor(&[2, 5, 3], 1)?.to_dtype(DType::F64)?;
    assert!(matches!(lstm.forward(&f64_input), Err(Error::DType { .. })));
    let (_vm, vb) = varmap();
    let mut zero_layers = LstmConfig::new(3, 4);
    zero_layers.num_layers = 0;
    assert!(matches!(
        Lstm::new(zero_layers, vb),
        Err(Error::Config { .. })
    ));
    Ok(())
}

#[test]
fn config_round_trips_and_rejects_unknown_fields() -> TestResult {
    let c: LstmConfig = serde_json::from_str(r#"{"input_size": 8, "hidden_size": 64}"#)?;
    assert_eq!(c, LstmConfig::new(8, 64));
    let back: LstmConfig = serde_json::from_str(&serde_json::to_string(&c)?)?;
    assert_eq!(back, c);
    assert!(
        serde_json::from_str::<LstmConfig>(r#"{"input_size": 8, "hidden_size": 64, "x": 1}"#)
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
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mut config = LstmConfig::new(3, 6);
    config.num_layers = 2;
    let lstm = Lstm::new(config, vb)?;
    let x = var(&[5, 7, 3], 11)?;
    let states: Vec<LstmState> = (0..2)
        .map(|k| {
            Ok(LstmState {
                h: var(&[5, 6], 20 + k)?.as_tensor().clone(),
                c: var(&[5, 6], 30 + k)?.as_tensor().clone(),
            })
        })
        .collect::<candle_core::Result<_>>()?;
    let wh = tensor(&[5, 7, 6], 40)?;
    let loss = |out: &LstmStackOutput| -> candle_core::Result<Tensor> {
        let mut l = (&out.hidden * &wh)?.sum_all()?;
        for s in &out.states {
            l = (l + (s.h.sum_all()? * 0.5)? + (s.c.sum_all()? * 0.25)?)?;
        }
        Ok(l)
    };
    let fused = lstm.forward_with_state(x.as_tensor(), Some(&states))?;
    let portable = lstm.run_portable(x.as_tensor(), Some(&states))?;
    assert!(max_abs_diff(&fused.hidden, &portable.hidden)? < 1e-5);
    for (a, b) in fused.states.iter().zip(&portable.states) {
        assert!(max_abs_diff(&a.h, &b.h)? < 1e-5 && max_abs_diff(&a.c, &b.c)? < 1e-5);
    }
    let (gf, gp) = (loss(&fused)?.backward()?, loss(&portable)?.backward()?);
    let mut tracked: Vec<Tensor> = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    tracked.push(x.as_tensor().clone());
    tracked.extend(states.iter().flat_map(|s| [s.h.clone(), s.c.clone()]));
    assert_same_grads(&gf, &gp, &tracked)?;
    Ok(())
}

//! Helpers shared by the unit tests of the recurrent layers.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

pub(crate) type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A fresh `VarMap` and a builder over it, on the CPU in f32.
pub(crate) fn varmap() -> (VarMap, VarBuilder<'static>) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    (vm, vb)
}

/// Deterministic pseudo-random values in [-1, 1).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = shardcast_core::rng::SplitMix64::new(seed);
    (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()
}

pub(crate) fn var(dims: &[usize], seed: u64) -> candle_core::Result<Var> {
    let n = dims.iter().product();
    Var::from_tensor(&Tensor::from_vec(values(n, seed), dims, &Device::Cpu)?)
}

pub(crate) fn tensor(dims: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(values(n, seed), dims, &Device::Cpu)
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// `max |a - b| / max(max |b|, 1e-3)`.
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let scale = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        .max(1e-3);
    Ok(max_abs_diff(a, b)? / scale)
}

/// Asserts that two backward passes `a` and `b` give every tensor of
/// `tracked` the same gradient (relative difference below `1e-4`).
pub(crate) fn assert_same_grads(
    a: &candle_core::backprop::GradStore,
    b: &candle_core::backprop::GradStore,
    tracked: &[Tensor],
) -> candle_core::Result<()> {
    for t in tracked {
        let (ga, gb) = (
            a.get(t).expect("first gradient"),
            b.get(t).expect("second gradient"),
        );
        let d = rel_diff(ga, gb)?;
        assert!(
            d < 1e-4,
            "gradient of a {:?} tensor differs by {d}",
            t.dims()
        );
    }
    Ok(())
}

//! Borrowing `f32` slices out of Candle CPU storage, with typed errors for
//! the devices and dtypes the fused kernels do not handle.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Storage, Tensor};

use crate::error::{Error, Result};

/// The contiguous `f32` data behind `storage` as described by `layout`.
pub(crate) fn cpu_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
    tensor: &'static str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => {
            return Err(Error::DType {
                op,
                tensor,
                dtype: other.dtype(),
            });
        }
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(Error::Shape {
            op,
            tensor,
            actual: layout.dims().to_vec(),
            expected: "a contiguous layout".to_owned(),
        });
    };
    Ok(&data[start..end])
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    op: &'static str,
    tensor: &'static str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_f32(cpu, layout, op, tensor)?),
        _ => Err(Error::Device {
            op,
            device: t.device().location(),
        }),
    }
}

/// Checks that a tensor is an `f32` CPU tensor of the given dimensions.
pub(crate) fn check(
    t: &Tensor,
    op: &'static str,
    tensor: &'static str,
    dims: &[usize],
) -> Result<()> {
    if !t.device().is_cpu() {
        return Err(Error::Device {
            op,
            device: t.device().location(),
        });
    }
    if t.dtype() != candle_core::DType::F32 {
        return Err(Error::DType {
            op,
            tensor,
            dtype: t.dtype(),
        });
    }
    if t.dims() != dims {
        return Err(Error::Shape {
            op,
            tensor,
            actual: t.dims().to_vec(),
            expected: format!("{dims:?}"),
        });
    }
    Ok(())
}

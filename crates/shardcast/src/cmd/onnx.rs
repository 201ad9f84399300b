//! `shardcast export-onnx`: a model directory to a standard ONNX file and
//! its input contract, checked by loading it back.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shardcast_model::forecaster::Model;
use shardcast_model::versions;
use shardcast_onnx::{self as onnx, OnnxModel};

/// Settings of `shardcast export-onnx`.
#[derive(Debug, Args)]
pub(crate) struct ExportOnnxArgs {
    /// Model directory (`models/<name>/<version>`), or `models/<name>` for
    /// its newest version.
    #[arg(long, env = "SHARDCAST_MODEL", default_value = "models/default")]
    pub(crate) model: PathBuf,
    /// Output file (default: `model.onnx` in the model directory). The input
    /// contract is written beside it as `<file>.json`.
    #[arg(long, env = "SHARDCAST_ONNX_OUT")]
    pub(crate) out: Option<PathBuf>,
}

pub(crate) async fn export(args: ExportOnnxArgs) -> Result<()> {
    let dir = versions::resolve(&args.model).with_context(|| {
        format!(
            "{} is neither a model directory (no config.json) nor a model with versions",
            args.model.display()
        )
    })?;
    let out = args.out.unwrap_or_else(|| dir.join("model.onnx"));
    let (contract, bytes) = tokio::task::spawn_blocking({
        let (dir, out) = (dir.clone(), out.clone());
        move || -> Result<_> {
            let model = Model::load(&dir)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            onnx::export(&model, &out)?;
            // Loading it back checks the file and prepares it in tract.
            let loaded = OnnxModel::load(&out)?;
            let bytes = std::fs::metadata(&out)
                .with_context(|| format!("cannot stat {}", out.display()))?
                .len();
            Ok((loaded.contract().clone(), bytes))
        }
    })
    .await??;
    println!(
        "model {} -> {} ({:.1} KiB, opset {})",
        dir.display(),
        out.display(),
        bytes as f64 / 1024.0,
        contract.opset
    );
    println!("contract -> {}", onnx::contract_path(&out).display());
    for i in contract.inputs.iter().chain(&contract.outputs) {
        let shape: Vec<String> = i.shape.iter().map(ToString::to_string).collect();
        println!("  {:<14} {:<8} [{}]", i.name, i.dtype, shape.join(", "));
    }
    Ok(())
}

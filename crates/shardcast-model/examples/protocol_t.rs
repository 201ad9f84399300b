//! Protocol T: training and inference speed of the fused LSTM and GRU
//! against candle-nn's, printed as a table.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p shardcast-model --example protocol_t
//! ```
//!
//! `--fused-only` skips candle-nn's side (for profiling the fused one);
//! `--lstm-only` skips the GRU rows.
#![allow(clippy::print_stdout)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let settings = shardcast_model::bench::ProtocolT {
        reference: !flag("--fused-only"),
        gru: !flag("--lstm-only"),
        ..Default::default()
    };
    let report = shardcast_model::bench::protocol_t(&settings)?;
    println!("{report}");
    Ok(())
}

//! The CUDA forward seam, on the CPU emulation of the device, against the CPU engine on the
//! built-in model through the unchanged sampler (`srdd_gpu::forward_vs_cpu`): with the CPU's
//! tokens forced the decoded images agree to ≥ 50 dB PSNR, Markov and causal, sampled and
//! greedy; free-running runs report their token agreement.

use srdd_core::aligned::AlignedBytes;
use srdd_core::{Attention, Model, SampleOptions};

#[test]
fn emulated_forward_matches_the_cpu_on_the_builtin_model() {
    let gpu = srdd_gpu_emu::gpu();
    let path = std::env::var("SRDD_TEST_MODEL").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/default-int8.srdd"
        )
        .into()
    });
    let bytes = AlignedBytes::read(std::path::Path::new(&path)).expect("built-in model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("model");
    let mut failed = Vec::new();
    // Sampled Markov and greedy causal (the parity test covers the other pairs).
    for (attention, greedy) in [(Attention::Markov, false), (Attention::Causal, true)] {
        {
            let mut opts = SampleOptions::for_model(&model, 2);
            opts.seed = 11;
            opts.attention = attention;
            if greedy {
                opts.top_k = 1;
            }
            let c = srdd_gpu::forward_vs_cpu(&gpu, &model, opts, 2).expect("both backends run");
            let (same, all) = c.same_tokens;
            println!(
                "{attention:?} greedy={greedy}: forced-token PSNR {:?} dB; free-running tokens {:.2}% ({same}/{all})",
                c.psnr_db.iter().map(|d| (d * 10.0).round() / 10.0).collect::<Vec<_>>(),
                100.0 * same as f64 / all as f64
            );
            if !c.ok() {
                failed.push(format!("{attention:?} greedy={greedy}"));
            }
        }
    }
    assert!(failed.is_empty(), "images below 50 dB: {failed:?}");
}

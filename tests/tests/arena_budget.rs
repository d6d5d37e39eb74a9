//! The edge arena budgets of docs/EMBEDDED.md, from the config alone: VAR-d16 + its VQVAE with
//! int8 weights at 256 px fits 8 MiB (ESP32-S3-class PSRAM) in the low-memory configuration.

use srdd_core::config::{Attention, VaeConfig, VarConfig};
use srdd_core::generate::{Plan, SampleOptions};
use srdd_core::{vae, ModelConfig, Schedule, WeightFormat};

/// VAR-d16 (1024 wide, 16 heads, FFN 4096, 1000 classes, Markov) with the VQVAE of the released
/// checkpoint (ch 160, ch_mult (1,1,2,2,4), Cvae 32, V 4096), int8 weights, 256 px.
fn d16_config() -> ModelConfig {
    let patch_nums: [u16; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
    let seq_len: u32 = patch_nums.iter().map(|p| *p as u32 * *p as u32).sum();
    let cfg = ModelConfig {
        var: VarConfig {
            depth: 16,
            embed_dim: 1024,
            num_heads: 16,
            ffn_hidden: 4096,
            num_classes: 1000,
            shared_aln: false,
            attn_l2_norm: true,
            norm_eps: 1e-6,
            seq_len,
        },
        vae: VaeConfig {
            vocab_size: 4096,
            cvae: 32,
            ch: 160,
            ch_mult: [1, 1, 2, 2, 4].into_iter().collect(),
            num_res_blocks: 2,
            using_sa: true,
            using_mid_sa: true,
            num_phi: 4,
            quant_resi: 0.5,
            gn_groups: 32,
            gn_eps: 1e-6,
            has_encoder: false,
        },
        patch_nums: patch_nums.into_iter().collect(),
        level_index: (0..10).collect(),
        phi_index: (0..10)
            .map(|si| srdd_core::config::official_phi_index(4, 10, si) as u8)
            .collect(),
        attention: Attention::Markov,
        weights: WeightFormat::Int8,
    };
    cfg.validate().unwrap();
    cfg
}

/// 8 MiB of PSRAM.
const BUDGET: usize = 8 << 20;

#[test]
fn d16_low_memory_arena_fits_8_mib() {
    let cfg = d16_config();
    let sched = Schedule::full(&cfg);
    let o = SampleOptions::low_memory(0);
    let plan = Plan::new(&cfg, &o, &sched).unwrap();
    let bytes = plan.arena_bytes();
    // The decoder's band-1 scratch is the peak; the plan accounts for it exactly.
    assert_eq!(plan.decode_bytes, vae::decoder_scratch_bytes(&cfg, 1));
    assert!(plan.decode_bytes > plan.step_bytes);
    assert!(
        bytes <= BUDGET,
        "d16 low-memory arena {bytes} B > {BUDGET} B"
    );
    println!(
        "d16 int8 low-memory arena {bytes} B ({:.2} MiB): persistent {}, step {}, decoder {}; \
         {} B under 8 MiB",
        bytes as f64 / (1 << 20) as f64,
        plan.persistent_bytes,
        plan.step_bytes,
        plan.decode_bytes,
        BUDGET - bytes
    );
}

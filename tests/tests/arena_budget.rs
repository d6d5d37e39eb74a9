//! The edge arena budgets of docs/EMBEDDED.md, from the config alone: VAR-d16 + its VQVAE with
//! int8 weights at 256 px fits 8 MiB (ESP32-S3-class PSRAM) in the low-memory configuration.

mod common;

use common::d16_config;
use srdd_core::generate::{Plan, SampleOptions};
use srdd_core::{vae, Schedule};

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

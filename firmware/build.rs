//! Puts memory-an386.x (memory-an547.x for the Cortex-M55 target) as memory.x where cortex-m-rt's link.x finds it, and computes the exact arena of the
//! embedded model for the firmware's options at build time: `$OUT_DIR/arena.rs` holds
//! `const ARENA_BYTES: usize`, so the `static` arena is exactly as large as the plan needs.
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Plan, SampleOptions};
use srdd_core::{Model, Schedule};
use std::{env, fs, path::PathBuf};

/// Must match `CLASS`/`SEED`-independent options in `src/main.rs` (the plan depends on the
/// model, the guidance rows, the attention policy and the schedule, not on class or seed).
fn options(model: &Model<'_>) -> SampleOptions {
    // As main.rs: the model's defaults, low-memory plan (the label does not change the size).
    SampleOptions::for_model_low_memory(model, 0)
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // The Cortex-M55 target runs on QEMU's mps3-an547 (`cfg(an547)`: its memory map and clock).
    println!("cargo:rustc-check-cfg=cfg(an547)");
    let an547 = env::var("TARGET").unwrap().starts_with("thumbv8m.main");
    let memory: &[u8] = if an547 {
        println!("cargo:rustc-cfg=an547");
        include_bytes!("memory-an547.x")
    } else {
        include_bytes!("memory-an386.x")
    };
    fs::write(out.join("memory.x"), memory).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory-an386.x");
    println!("cargo:rerun-if-changed=memory-an547.x");
    let model_path = PathBuf::from("../models/default-int8.srdd");
    println!("cargo:rerun-if-changed={}", model_path.display());
    let bytes = AlignedBytes::read(&model_path).expect("read the embedded model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("the embedded model is valid");
    let plan = Plan::new(
        &model.config,
        &options(&model),
        &Schedule::full(&model.config),
    )
    .expect("plan");
    fs::write(
        out.join("arena.rs"),
        format!(
            "/// Exact arena bytes of one CFG sample with the embedded model (computed by build.rs).\npub const ARENA_BYTES: usize = {};\n",
            plan.arena_bytes()
        ),
    )
    .unwrap();
}

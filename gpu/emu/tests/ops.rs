//! Every CUDA kernel family, run on the CPU emulation, against the CPU engine's kernel of the
//! same op within the CUDA issue's bounds (the check `scripts/gpu-check` runs on a GPU).

#[test]
fn every_emulated_op_matches_the_cpu_within_its_bound() {
    let gpu = srdd_gpu_emu::gpu();
    let checks = srdd_gpu::backend_ops(&gpu).expect("op checks run");
    let mut bad = Vec::new();
    for c in &checks {
        println!(
            "{:<44} nmse {:.3e} (bound {:.0e}) {}",
            c.name,
            c.nmse,
            c.bound,
            if c.ok() { "ok" } else { "FAIL" }
        );
        if !c.ok() {
            bad.push(c.name.clone());
        }
    }
    assert!(!checks.is_empty());
    assert!(bad.is_empty(), "ops beyond their bounds: {bad:?}");
}

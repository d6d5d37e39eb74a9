//! Every kernel family against the CPU engine's kernel of the same op (`srdd_gpu::backend_ops`),
//! within the CUDA issue's bounds. Needs a CUDA driver and device; without one it prints
//! "skipped: no CUDA driver" (CI has none; `scripts/gpu-check` runs it on a GPU machine).

#[test]
fn every_op_matches_the_cpu_within_its_bound() {
    let gpu = match srdd_gpu::Gpu::open(0) {
        Ok(g) => g,
        Err(srdd_gpu::GpuError::NoDriver) => {
            println!("skipped: no CUDA driver");
            return;
        }
        Err(e) => panic!("a CUDA driver is present but the device does not open: {e}"),
    };
    let (ma, mi) = gpu.compute_capability();
    println!("{} (sm_{ma}{mi})", gpu.name());
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
    assert!(bad.is_empty(), "ops beyond their bounds: {bad:?}");
}

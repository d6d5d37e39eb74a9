use srdd_core::kernels::{linear, LinearScratch};
use srdd_core::parallel::Sequential;
use srdd_core::weights::{Linear, Weight};
use std::time::Instant;
fn main() {
    let (n, din, dout) = (64, 1024, 1024);
    let x: Vec<f32> = (0..n * din).map(|i| (i as f32).sin()).collect();
    let w: Vec<f32> = (0..dout * din).map(|i| (i as f32).cos()).collect();
    let mut y = vec![0f32; n * dout];
    let l = Linear {
        w: Weight::F32(&w),
        b: None,
        out_dim: dout,
        in_dim: din,
    };
    let (mut f, mut q) = (vec![0f32; n], vec![0i8; 0]);
    for _ in 0..8 {
        let t = Instant::now();
        linear(
            &x,
            n,
            &l,
            &mut y,
            &mut LinearScratch {
                f: &mut f,
                q: &mut q,
            },
            &Sequential,
        );
        let e = t.elapsed().as_secs_f64();
        println!(
            "lin {:.2} GMAC/s {}",
            (n * din * dout) as f64 / e / 1e9,
            y[5]
        );
    }
}

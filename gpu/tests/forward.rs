//! The CUDA forward seam against the CPU one on the built-in model, through the unchanged
//! sampler: with the CPU's tokens forced, the decoded images agree to ≥ 50 dB PSNR; free-running
//! runs report their token agreement. Needs a CUDA driver; without one it prints
//! "skipped: no CUDA driver".

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Compute, StepHook};
use srdd_core::parallel::StdThreads;
use srdd_core::resample::{KeepAll, ResamplePolicy};
use srdd_core::{Forward, Model, Plan, SampleOptions, Sampler, Schedule};

const IMAGES: usize = 3;

/// Records each step's tokens, or forces the recorded ones.
struct Tokens {
    steps: Vec<Vec<u32>>,
    force: bool,
}

impl StepHook for Tokens {
    fn force(&mut self, k: usize, _pn: usize, tokens: &mut [u32]) {
        if self.force {
            tokens.copy_from_slice(&self.steps[k]);
        }
    }
    fn scale_done(&mut self, k: usize, tokens: &[u32], _f: &[f32]) {
        if !self.force {
            assert_eq!(self.steps.len(), k);
            self.steps.push(tokens.to_vec());
        }
    }
}

/// Runs a batch to the end and decodes it; returns the images (RGB floats).
fn run<F: Forward>(s: &mut Sampler<'_, '_, F>, hooks: &mut [Tokens]) -> Vec<Vec<f32>> {
    let mut keep: Vec<KeepAll> = (0..IMAGES).map(|_| KeepAll).collect();
    while !s.finished() {
        let mut h: Vec<&mut dyn StepHook> = hooks.iter_mut().map(|t| t as _).collect();
        let mut p: Vec<&mut dyn ResamplePolicy> = keep.iter_mut().map(|p| p as _).collect();
        s.step(&mut h, &mut p).expect("step");
    }
    (0..IMAGES)
        .map(|i| {
            let mut img = Vec::new();
            s.decode(i, &mut |_, row| img.extend_from_slice(row))
                .expect("decode");
            img
        })
        .collect()
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    // Values in [−1, 1]: peak-to-peak 2.
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse.max(1e-30)).log10()
}

#[test]
fn cuda_forward_matches_the_cpu_on_the_builtin_model() {
    let gpu = match srdd_gpu::Gpu::open(0) {
        Ok(g) => g,
        Err(srdd_gpu::GpuError::NoDriver) => {
            println!("skipped: no CUDA driver");
            return;
        }
        Err(e) => panic!("a CUDA driver is present but the device does not open: {e}"),
    };
    let bytes = AlignedBytes::read(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/default-int8.srdd"
    )))
    .expect("built-in model");
    let model = Model::from_bytes(bytes.as_bytes()).expect("model");
    let sched = Schedule::full(&model.config);
    let par = StdThreads(4);
    let dm = srdd_gpu::DeviceModel::upload(&gpu, &model).expect("upload");
    for greedy in [false, true] {
        let mut opts = SampleOptions::for_model(&model, 1);
        opts.seed = 11;
        if greedy {
            opts.top_k = 1;
        }
        let labels = |i: usize| (i as u32 * 7) % model.config.var.num_classes;
        let mut cpu_plan_bytes = AlignedBytes::zeroed(
            Plan::batch(&model.config, &opts, &sched, IMAGES, Compute::Cpu)
                .unwrap()
                .arena_bytes(),
        );
        let mut o = opts;
        o.label = labels(0);
        let mut cpu = Sampler::cpu(
            &model,
            o,
            sched.clone(),
            IMAGES,
            cpu_plan_bytes.as_bytes_mut(),
            &par,
        )
        .expect("cpu sampler");
        let mut rec: Vec<Tokens> = (0..IMAGES)
            .map(|_| Tokens {
                steps: vec![],
                force: false,
            })
            .collect();
        let want = run(&mut cpu, &mut rec);
        for force in [true, false] {
            let plan = Plan::batch(&model.config, &o, &sched, IMAGES, Compute::Device).unwrap();
            let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
            let fwd = srdd_gpu::CudaForward::new(&dm, &o, &sched, IMAGES).expect("cuda forward");
            let mut s = Sampler::with_forward(
                &model,
                o,
                sched.clone(),
                IMAGES,
                arena.as_bytes_mut(),
                fwd,
                &par,
            )
            .expect("cuda sampler");
            let mut hooks: Vec<Tokens> = rec
                .iter()
                .map(|t| Tokens {
                    steps: if force { t.steps.clone() } else { vec![] },
                    force,
                })
                .collect();
            let got = run(&mut s, &mut hooks);
            if force {
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    let db = psnr(w, g);
                    println!(
                        "greedy={greedy} image {i}: forced tokens, PSNR {db:.1} dB vs the CPU"
                    );
                    assert!(db >= 50.0, "image {i}: {db:.1} dB < 50 dB");
                }
            } else {
                let (mut same, mut all) = (0usize, 0usize);
                for (a, b) in rec.iter().zip(&hooks) {
                    for (x, y) in a.steps.iter().zip(&b.steps) {
                        same += x.iter().zip(y).filter(|(p, q)| p == q).count();
                        all += x.len();
                    }
                }
                println!(
                    "greedy={greedy}: free-running token agreement {:.2}% ({same}/{all})",
                    100.0 * same as f64 / all as f64
                );
            }
        }
    }
}

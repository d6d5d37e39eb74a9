//! End-to-end: one CFG image (sampling + decoding) with the packed parity fixture models, f32 and
//! int8, Markov and causal attention, and Markov in the low-memory configuration. Model files come from `SRDD_BENCH_MODELS` (a directory with
//! `*.srdd` files); by default the built-in default model `models/default-int8.srdd`.

use criterion::{criterion_group, criterion_main, Criterion};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::{Attention, Model, NoHook, Schedule};
use std::path::PathBuf;

fn models() -> Vec<PathBuf> {
    match std::env::var_os("SRDD_BENCH_MODELS") {
        Some(dir) => {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|r| {
                    r.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "srdd"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }
        None => vec![PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/default-int8.srdd"
        ))],
    }
}

fn bench_sample(c: &mut Criterion) {
    let mut g = c.benchmark_group("sample_one_image");
    g.sample_size(10);
    for path in models() {
        let bytes = AlignedBytes::read(&path).expect("model file");
        let model = Model::from_bytes(bytes.as_bytes()).expect("valid model");
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        for (att, low, an) in [
            (Attention::Markov, false, "markov"),
            (Attention::Causal, false, "causal"),
            (Attention::Markov, true, "markov-low-memory"),
        ] {
            // Low memory: one-token chunks and a one-row banded decoder (identical results).
            let mut opts = if low {
                SampleOptions::for_model_low_memory(&model, 1)
            } else {
                SampleOptions::for_model(&model, 1)
            };
            opts.attention = att;
            let sched = Schedule::full(&model.config);
            let plan = Plan::new(&model.config, &opts, &sched).unwrap();
            let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
            g.bench_function(format!("{name}/{an}"), |b| {
                b.iter(|| {
                    let mut gen =
                        Generator::new(&model, opts, sched.clone(), arena.as_bytes_mut()).unwrap();
                    gen.run(&mut NoHook).unwrap();
                    let mut s = 0f32;
                    gen.decode(&mut |_, row| s += row[0]).unwrap();
                    s
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_sample);
criterion_main!(benches);

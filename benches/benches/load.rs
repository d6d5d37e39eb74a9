//! Loading a model: `Model::from_bytes` (parse, validation, the non-finite check of issue #13)
//! and the non-finite check alone over as many values as the model's float tensors and int8
//! scales hold, for the built-in model and, when `SRDD_BENCH_MODEL` names one, another `.srdd`
//! file (the d16 pack of docs/PERFORMANCE.md, say). After the criterion groups each case is timed
//! once more with a plain clock (the fastest of ≥ 5 calls) and printed with the value counts.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::Criterion;
use half::f16;
use srdd_core::aligned::AlignedBytes;
use srdd_core::format::{all_finite_f16, all_finite_f32, parse, TensorDType, TensorEntry};
use srdd_core::Model;

fn models() -> Vec<(String, AlignedBytes)> {
    let builtin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default-int8.srdd");
    let mut paths = vec![builtin];
    if let Some(p) = std::env::var_os("SRDD_BENCH_MODEL") {
        paths.push(PathBuf::from(p));
    }
    paths
        .into_iter()
        .map(|p| {
            let bytes = AlignedBytes::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// Values the check reads: (f32 values incl. int8 scales, f16 values).
fn checked_values(bytes: &[u8]) -> (usize, usize) {
    let file = parse(bytes).expect("a valid model");
    let mut table = file.table;
    let (mut n32, mut n16) = (0, 0);
    for _ in 0..file.header.tensor_count {
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).expect("entry");
        table = rest;
        let numel: usize = e.shape.iter().map(|&d| d as usize).product();
        match e.dtype {
            TensorDType::F32 => n32 += numel,
            TensorDType::F16 => n16 += numel,
            TensorDType::I8 | TensorDType::I8A16 => n32 += e.shape[0] as usize,
        }
    }
    (n32, n16)
}

fn fastest(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let models = models();
    let mut lines = Vec::new();
    for (name, bytes) in &models {
        let (n32, n16) = checked_values(bytes.as_bytes());
        let v32 = vec![0.5f32; n32];
        let v16 = vec![f16::from_f32(0.5); n16];
        let mut g = c.benchmark_group(format!("load/{name}"));
        g.bench_function("from_bytes", |b| {
            b.iter(|| Model::from_bytes(black_box(bytes.as_bytes())).is_ok())
        });
        g.bench_function("non_finite_check", |b| {
            b.iter(|| all_finite_f32(black_box(&v32)) && all_finite_f16(black_box(&v16)))
        });
        g.finish();
        let load = fastest(|| assert!(Model::from_bytes(black_box(bytes.as_bytes())).is_ok()));
        let check =
            fastest(|| assert!(all_finite_f32(black_box(&v32)) && all_finite_f16(black_box(&v16))));
        lines.push(format!(
            "{name}: {} B; from_bytes {:.3} ms; the non-finite check alone {:.3} ms over {n32} f32 values (incl. int8 scales) and {n16} f16",
            bytes.as_bytes().len(),
            load * 1e3,
            check * 1e3
        ));
    }
    c.final_summary();
    let cpu = srdd::bench::cpu_info();
    println!("\nCPU: {cpu:?}");
    for l in lines {
        println!("{l}");
    }
}

//! Images per second of the CUDA backend through the unchanged sampler, with the time split by
//! seam call (prepare = transformer, logits = head + copy to the host, decode = VQVAE) and the
//! rest (the host sampler: guidance, top-k/top-p draws, f_hat updates).
//!
//! ```text
//! cargo run --release -p srdd-gpu --example cuda_throughput -- MODEL.srdd [BATCH…] [--cfg X] [--causal]
//! ```

use srdd_core::aligned::AlignedBytes;
use srdd_core::forward::{Chunk, Io, Step};
use srdd_core::generate::{Compute, StepHook};
use srdd_core::parallel::StdThreads;
use srdd_core::resample::{KeepAll, ResamplePolicy};
use srdd_core::{Attention, Forward, Model, NoHook, Plan, SampleOptions, Sampler, Schedule};
use std::time::{Duration, Instant};

/// Times each seam call of the wrapped backend.
struct Timed<F> {
    inner: F,
    prepare: Duration,
    logits: Duration,
    decode: Duration,
}

impl<F: Forward> Forward for Timed<F> {
    fn max_rows(&self) -> usize {
        self.inner.max_rows()
    }
    fn prepare(&mut self, step: &Step<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        let t = Instant::now();
        let r = self.inner.prepare(step, io);
        self.prepare += t.elapsed();
        r
    }
    fn logits(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        let t = Instant::now();
        let r = self.inner.logits(step, chunk, io);
        self.logits += t.elapsed();
        r
    }
    fn decode(
        &mut self,
        f: &[f32],
        s: &mut [u8],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> srdd_core::Result<()> {
        let t = Instant::now();
        let r = self.inner.decode(f, s, sink);
        self.decode += t.elapsed();
        r
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .expect("usage: cuda_throughput MODEL.srdd [BATCH…] [--cfg X] [--causal]");
    let mut batches = Vec::new();
    let mut cfg_scale = None;
    let mut causal = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cfg" => cfg_scale = it.next().and_then(|v| v.parse::<f32>().ok()),
            "--causal" => causal = true,
            b => batches.push(b.parse::<usize>().expect("a batch size")),
        }
    }
    if batches.is_empty() {
        batches = vec![1, 16, 64];
    }
    let bytes = AlignedBytes::read(std::path::Path::new(path)).expect("model file");
    let model = Model::from_bytes(bytes.as_bytes()).expect("model");
    let gpu = srdd_gpu::Gpu::open(0).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let par = StdThreads(threads);
    let t = Instant::now();
    let dm = srdd_gpu::DeviceModel::upload(&gpu, &model).expect("upload");
    println!(
        "{} (sm_{}{}), {} host threads; model {path}: {:?} weights, upload {:.2} s, {:.1} MiB",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        threads,
        model.config.weights,
        t.elapsed().as_secs_f64(),
        dm.bytes() as f64 / (1 << 20) as f64
    );
    let sched = Schedule::full(&model.config);
    for &b in &batches {
        for rep in 0..2 {
            let mut opts = SampleOptions::for_model(&model, 0);
            if let Some(c) = cfg_scale {
                opts.cfg = c;
            }
            if causal {
                opts.attention = Attention::Causal;
            }
            opts.seed = rep as u64;
            let plan = Plan::batch(&model.config, &opts, &sched, b, Compute::Device).expect("plan");
            let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
            let start = Instant::now();
            let fwd = srdd_gpu::CudaForward::new(&dm, &opts, &sched, b).expect("cuda forward");
            let timed = Timed {
                inner: fwd,
                prepare: Duration::ZERO,
                logits: Duration::ZERO,
                decode: Duration::ZERO,
            };
            let mut s = Sampler::with_forward(
                &model,
                opts,
                sched.clone(),
                b,
                arena.as_bytes_mut(),
                timed,
                &par,
            )
            .expect("sampler");
            let mut hooks: Vec<NoHook> = (0..b).map(|_| NoHook).collect();
            let mut keep: Vec<KeepAll> = (0..b).map(|_| KeepAll).collect();
            while !s.finished() {
                let mut h: Vec<&mut dyn StepHook> = hooks.iter_mut().map(|t| t as _).collect();
                let mut p: Vec<&mut dyn ResamplePolicy> = keep.iter_mut().map(|p| p as _).collect();
                if let Err(e) = s.step(&mut h, &mut p) {
                    let detail = s.forward().inner.last_error().map(|e| e.to_string());
                    panic!("step: {e} ({detail:?})");
                }
            }
            let mut px = 0usize;
            for i in 0..b {
                s.decode(i, &mut |_, row| px += row.len()).expect("decode");
            }
            let wall = start.elapsed().as_secs_f64();
            let f = s.forward();
            let (p, l, d) = (
                f.prepare.as_secs_f64(),
                f.logits.as_secs_f64(),
                f.decode.as_secs_f64(),
            );
            println!(
                "batch {b:>3} rep {rep}: {:.3} img/s  wall {wall:.3} s = transformer {p:.3} + head {l:.3} + decode {d:.3} + host sampler {:.3}  ({px} values)",
                b as f64 / wall,
                wall - p - l - d
            );
        }
    }
}

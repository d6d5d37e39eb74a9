//! `srdd bench`: sampling throughput of a model on this machine, as llama-bench users expect it:
//! images/s, seconds per phase (each scale, the decoder), GMAC/s against the int8 micro-kernel peak
//! of the active ISA measured on the spot ([`int8_peak_probe`]), a `linear` figure on a
//! cache-resident shape, peak RSS, the kernels' ISA and the CPU.
//!
//! The batches run one after another on one pool of `threads` threads (not on outer threads as
//! `srdd sample` does), so that each phase's time is the time of that phase alone. With
//! `--backend cuda` the phases run on the GPU (the weights uploaded once, before the warm-up);
//! the peaks stay the CPU's.

use std::time::{Duration, Instant};

use srdd_core::aligned::AlignedBytes;
use srdd_core::config::WeightFormat;
use srdd_core::forward::MAX_BATCH;
use srdd_core::generate::{Compute, Plan, SampleOptions, Sampler, StepHook};
use srdd_core::kernels::dispatch::Isa;
use srdd_core::kernels::{
    int8_peak_probe, linear, linear_scratch_len, pack_panels, panels_len, LinearScratch, PanelsI8,
};
use srdd_core::macs::sample_macs;
use srdd_core::parallel::{Parallel, Sequential};
use srdd_core::resample::ResamplePolicy;
use srdd_core::weights::{Linear, Weight};
use srdd_core::{Forward, Model, Schedule};
use srdd_gpu::{CudaForward, DeviceModel, GpuError};

use crate::backend::Backend;
use crate::pool::Pool;
use crate::{rgb_image, ResampleChoice};

/// Most images one run may sample (as `srdd sample --count`).
pub const MAX_IMAGES: usize = 4096;

/// What to measure.
pub struct BenchSettings {
    /// Images measured (after the warm-up batch).
    pub images: usize,
    /// Images per batch.
    pub batch: usize,
    /// Worker threads of the pool.
    pub threads: usize,
    /// Sampling options (class label, seed, guidance, attention…); image `i` uses seed
    /// `opts.seed + i`.
    pub opts: SampleOptions,
    /// Scales run.
    pub sched: Schedule,
}

/// One measured phase: a scale of the schedule, or the decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// `Some(k)` for step `k`, `None` for the decoder.
    pub step: Option<usize>,
    /// Patch size of the step (0 for the decoder).
    pub pn: usize,
    /// Seconds, summed over every measured batch.
    pub seconds: f64,
}

/// The peaks the phases are compared with, measured on the spot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// GMAC/s of the active ISA's int8 micro-kernel ([`int8_peak_probe`]) on one thread.
    pub kernel_one_thread: f64,
    /// Threads of the bench's pool: the ideal is [`Peak::kernel_one_thread`] times this.
    pub threads: usize,
    /// GMAC/s of `linear` on [`PEAK_SHAPE`] in the model's weight format, on one thread.
    pub linear_one_thread: f64,
    /// The same on the bench's pool.
    pub linear_all_threads: f64,
}

impl Peak {
    /// The micro-kernel peak of every thread of the pool: one thread's times the threads (the
    /// ideal; shared caches, SMT and clocks keep real threads below it).
    pub fn kernel_ideal(&self) -> f64 {
        self.kernel_one_thread * self.threads as f64
    }
}

/// CPU identity as `/proc/cpuinfo` gives it (`None` where it is absent).
#[derive(Clone, Debug, PartialEq)]
pub struct CpuInfo {
    /// The first `model name`.
    pub model: Option<String>,
    /// Which of avx2, avx512f, avx512_vnni, avxvnni (`avx_vnni` in cpuinfo) are present.
    pub flags: Option<[(&'static str, bool); 4]>,
}

/// What a bench run measured.
pub struct BenchReport {
    /// Images measured.
    pub images: usize,
    /// Wall seconds of the measured batches (arena, sampling, decoding).
    pub wall_s: f64,
    /// Scales then the decoder.
    pub phases: Vec<Phase>,
    /// Transformer MACs of all measured images.
    pub transformer_macs: u64,
    /// Decoder MACs of all measured images.
    pub decoder_macs: u64,
    /// The measured peaks.
    pub peak: Peak,
    /// `VmHWM` in bytes.
    pub peak_rss: Option<u64>,
    /// The kernels' ISA.
    pub isa: Isa,
    /// This CPU.
    pub cpu: CpuInfo,
    /// The backend the phases ran on (`cpu`, `cuda`).
    pub backend: &'static str,
    /// Its device (the GPU's name), `None` on the CPU.
    pub device: Option<String>,
}

/// Checks the counts before any work: one-line messages naming the flag.
pub fn check_counts(images: usize, batch: usize) -> Result<(), String> {
    if images == 0 || images > MAX_IMAGES {
        return Err(format!("--images must be in 1..={MAX_IMAGES}"));
    }
    if batch == 0 || batch > MAX_BATCH {
        return Err(format!("--batch must be in 1..={MAX_BATCH}"));
    }
    Ok(())
}

struct NoHook;
impl StepHook for NoHook {}

/// Runs `sampler`'s batch to the end and decodes it, adding each step's and the
/// decoder's seconds to `phases` (steps first, the decoder last); `why` turns the core's errors
/// into the message (the backend's own error behind [`srdd_core::Error::Backend`]).
fn time_batch<F: Forward>(
    model: &Model<'_>,
    sampler: &mut Sampler<'_, '_, F>,
    phases: &mut [f64],
    why: fn(&mut F, srdd_core::Error) -> String,
) -> Result<(), String> {
    let len = sampler.images();
    let mut hooks: Vec<NoHook> = (0..len).map(|_| NoHook).collect();
    // The sampling command's default policy (it only matters with refinement passes).
    let mut policies: Vec<Box<dyn ResamplePolicy>> = (0..len)
        .map(|_| ResampleChoice::Fraction(0.25).instance())
        .collect();
    while !sampler.finished() {
        let k = sampler.steps_done();
        let mut h: Vec<&mut dyn StepHook> = hooks.iter_mut().map(|t| t as _).collect();
        let mut p: Vec<&mut dyn ResamplePolicy> =
            policies.iter_mut().map(|p| p.as_mut() as _).collect();
        let t0 = Instant::now();
        sampler
            .step(&mut h, &mut p)
            .map_err(|e| why(sampler.forward(), e))?;
        phases[k] += t0.elapsed().as_secs_f64();
    }
    let side = model.config.image_side();
    let steps = sampler.schedule().len();
    let t0 = Instant::now();
    for i in 0..len {
        let img = rgb_image(side, |sink| sampler.decode(i, sink))
            .map_err(|e| why(sampler.forward(), e))?;
        std::hint::black_box(img.rgb);
    }
    phases[steps] += t0.elapsed().as_secs_f64();
    Ok(())
}

/// Samples one batch of `len` images with `opts` on the CPU (see [`time_batch`]).
fn run_batch_cpu(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    len: usize,
    par: &dyn Parallel,
    phases: &mut [f64],
) -> Result<(), String> {
    let err = |e: srdd_core::Error| e.to_string();
    let plan = Plan::batch(&model.config, &opts, sched, len, Compute::Cpu).map_err(err)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut sampler =
        Sampler::cpu(model, opts, sched.clone(), len, arena.as_bytes_mut(), par).map_err(err)?;
    time_batch(model, &mut sampler, phases, |_, e| e.to_string())
}

/// Samples one batch of `len` images with `opts` on the CUDA backend over the uploaded `dm`
/// (see [`time_batch`]).
fn run_batch_cuda(
    dm: &DeviceModel<'_>,
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
    len: usize,
    par: &dyn Parallel,
    phases: &mut [f64],
) -> Result<(), String> {
    let err = |e: srdd_core::Error| e.to_string();
    let forward = CudaForward::new(dm, &opts, sched, len).map_err(|e| e.to_string())?;
    let plan = Plan::batch(&model.config, &opts, sched, len, Compute::Device).map_err(err)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut sampler = Sampler::with_forward(
        model,
        opts,
        sched.clone(),
        len,
        arena.as_bytes_mut(),
        forward,
        par,
    )
    .map_err(err)?;
    time_batch(model, &mut sampler, phases, |f, e| match e {
        srdd_core::Error::Backend(_) => f
            .last_error()
            .cloned()
            .unwrap_or(GpuError::Core(e))
            .to_string(),
        e => e.to_string(),
    })
}

/// Samples one warm-up batch, then `s.images` images in batches of `s.batch` on `backend`, and
/// measures.
pub fn run(model: &Model<'_>, s: &BenchSettings, backend: &Backend) -> Result<BenchReport, String> {
    check_counts(s.images, s.batch)?;
    let steps = s.sched.len();
    let pool = Pool::new(s.threads.max(1));
    let opts = s.opts;
    let dm = match backend {
        Backend::Cpu => None,
        Backend::Cuda(gpu) => Some(DeviceModel::upload(gpu, model).map_err(|e| e.to_string())?),
    };
    let batch = |o: SampleOptions, len: usize, phases: &mut [f64]| match &dm {
        None => run_batch_cpu(model, o, &s.sched, len, &pool, phases),
        Some(dm) => run_batch_cuda(dm, model, o, &s.sched, len, &pool, phases),
    };
    // Validate and warm up (caches, pool threads, page faults) before measuring.
    let mut scratch = vec![0f64; steps + 1];
    batch(opts, s.batch.min(s.images), &mut scratch)?;
    let mut phase_s = vec![0f64; steps + 1];
    let t0 = Instant::now();
    for i0 in (0..s.images).step_by(s.batch) {
        let mut o = opts;
        o.seed = opts.seed.wrapping_add(i0 as u64);
        let len = s.batch.min(s.images - i0);
        batch(o, len, &mut phase_s)?;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let macs = sample_macs(model, &opts, &s.sched);
    let phases = phase_s
        .iter()
        .enumerate()
        .map(|(k, &seconds)| Phase {
            step: (k < steps).then_some(k),
            pn: if k < steps { s.sched.pn[k] as usize } else { 0 },
            seconds,
        })
        .collect();
    let isa = Isa::active();
    let peak = Peak {
        kernel_one_thread: int8_kernel_peak(isa),
        threads: pool.width(),
        linear_one_thread: linear_peak(model.config.weights, &Sequential),
        linear_all_threads: linear_peak(model.config.weights, &pool),
    };
    Ok(BenchReport {
        images: s.images,
        wall_s,
        phases,
        transformer_macs: macs.transformer * s.images as u64,
        decoder_macs: macs.decoder * s.images as u64,
        peak,
        peak_rss: peak_rss(),
        isa,
        cpu: cpu_info(),
        backend: backend.name(),
        device: backend.device().map(str::to_string),
    })
}

/// Iterations of [`int8_peak_probe`] per timed call: about ten microseconds of SIMD work (tens of
/// milliseconds of the scalar reference), long against a clock read.
const PROBE_ITERS: usize = 4096;

/// GMAC/s of `isa`'s int8 micro-kernel on this thread ([`int8_peak_probe`]): the best of 8
/// windows of 25 ms after a warm-up call (which also lets the core reach its vector clock). The
/// best, not the mean: on a shared machine a window without interference shows what the core
/// can do. 0 when `isa` is not supported.
pub fn int8_kernel_peak(isa: Isa) -> f64 {
    if int8_peak_probe(isa, PROBE_ITERS).is_none() {
        return 0.0;
    }
    let window = Duration::from_millis(25);
    (0..8)
        .map(|_| {
            let t0 = Instant::now();
            let mut macs = 0u64;
            while t0.elapsed() < window {
                macs += int8_peak_probe(isa, PROBE_ITERS).unwrap_or(0);
            }
            macs as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Shape of the `linear` measurement: 64 tokens × 256 → 256, whose weights (64 KiB in int8) and
/// activations stay in L2, so the time is the kernel's, not memory's.
const PEAK_SHAPE: (usize, usize, usize) = (64, 256, 256);

/// GMAC/s of `linear` on [`PEAK_SHAPE`] in the weight format `format`, timed for about 0.2 s.
pub fn linear_peak(format: WeightFormat, par: &dyn Parallel) -> f64 {
    let (n, din, dout) = PEAK_SHAPE;
    // Values in [−1, 1) from a xorshift: the kernels' speed does not depend on them.
    let mut state = 0x9e37_79b9u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    let x: Vec<f32> = (0..n * din).map(|_| next()).collect();
    let w: Vec<f32> = (0..dout * din).map(|_| next()).collect();
    let b: Vec<f32> = (0..dout).map(|_| next()).collect();
    let rows: Vec<i8> = w.iter().map(|v| (v * 127.0).round() as i8).collect();
    let mut q = vec![0i8; panels_len(dout, din)];
    pack_panels(&rows, dout, din, &mut q);
    let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    let scales = vec![1.0 / 127.0; dout];
    let weight = match format {
        WeightFormat::F32 => Weight::F32(&w),
        WeightFormat::F16 => Weight::F16(&h),
        WeightFormat::Int8 => {
            Weight::I8(PanelsI8::new(&q, &scales, dout, din, 1).expect("packed lengths"))
        }
    };
    let l = Linear {
        w: weight,
        b: Some(&b),
        out_dim: dout,
        in_dim: din,
    };
    let mut y = vec![0f32; n * dout];
    let (lf, lq) = linear_scratch_len(n, din);
    let (mut sf, mut sq) = (vec![0f32; lf], vec![0i8; lq]);
    let mut call = || {
        linear(
            &x,
            n,
            &l,
            &mut y,
            &mut LinearScratch {
                f: &mut sf,
                q: &mut sq,
            },
            par,
        );
    };
    call();
    let budget = Duration::from_millis(200);
    let t0 = Instant::now();
    let mut calls = 0u64;
    while t0.elapsed() < budget {
        for _ in 0..8 {
            call();
        }
        calls += 8;
    }
    let secs = t0.elapsed().as_secs_f64();
    (calls * (n * din * dout) as u64) as f64 / secs / 1e9
}

/// `VmHWM` of this process in bytes, from `/proc/self/status`.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The flags reported, as cpuinfo spells them (`avx_vnni` is reported as `avxvnni`).
const FLAGS: [(&str, &str); 4] = [
    ("avx2", "avx2"),
    ("avx512f", "avx512f"),
    ("avx512_vnni", "avx512_vnni"),
    ("avxvnni", "avx_vnni"),
];

/// The CPU model and flags of `/proc/cpuinfo`.
pub fn cpu_info() -> CpuInfo {
    parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// [`cpu_info`] of a cpuinfo text.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let flags = field("flags").map(|f| {
        let present: Vec<&str> = f.split_whitespace().collect();
        FLAGS.map(|(name, spelled)| (name, present.contains(&spelled)))
    });
    CpuInfo {
        model: field("model name"),
        flags,
    }
}

fn gmacs(macs: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        macs as f64 / seconds / 1e9
    } else {
        0.0
    }
}

impl BenchReport {
    /// Seconds of the transformer (every step).
    pub fn transformer_s(&self) -> f64 {
        self.phase_seconds(true)
    }

    /// Seconds of the decoder.
    pub fn decoder_s(&self) -> f64 {
        self.phase_seconds(false)
    }

    /// Seconds of the step phases (`steps`) or of the decoder.
    fn phase_seconds(&self, steps: bool) -> f64 {
        self.phases
            .iter()
            .filter(|p| p.step.is_some() == steps)
            .map(|p| p.seconds)
            .sum()
    }

    /// Transformer GMAC/s.
    pub fn transformer_gmacs(&self) -> f64 {
        gmacs(self.transformer_macs, self.transformer_s())
    }

    /// Decoder GMAC/s.
    pub fn decoder_gmacs(&self) -> f64 {
        gmacs(self.decoder_macs, self.decoder_s())
    }

    /// Images per wall second.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.wall_s
    }

    /// The report as one JSON object.
    pub fn json(&self, s: &BenchSettings, model: &Model<'_>) -> serde_json::Value {
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .map(|p| match p.step {
                Some(k) => serde_json::json!({
                    "phase": "step", "step": k, "pn": p.pn, "seconds": p.seconds,
                }),
                None => serde_json::json!({ "phase": "decoder", "seconds": p.seconds }),
            })
            .collect();
        let flags: serde_json::Map<String, serde_json::Value> = self
            .cpu
            .flags
            .iter()
            .flatten()
            .map(|(n, on)| (n.to_string(), (*on).into()))
            .collect();
        serde_json::json!({
            "images": self.images,
            "wall_s": self.wall_s,
            "images_per_s": self.images_per_s(),
            "ms_per_image": 1e3 * self.wall_s / self.images as f64,
            "phases": phases,
            "transformer_s": self.transformer_s(),
            "decoder_s": self.decoder_s(),
            "transformer_gmac": self.transformer_macs as f64 / 1e9,
            "decoder_gmac": self.decoder_macs as f64 / 1e9,
            "transformer_gmac_per_s": self.transformer_gmacs(),
            "decoder_gmac_per_s": self.decoder_gmacs(),
            "int8_kernel_peak_gmac_per_s_one_thread": self.peak.kernel_one_thread,
            "int8_kernel_peak_gmac_per_s_ideal": self.peak.kernel_ideal(),
            "transformer_fraction_of_int8_kernel_peak": self.transformer_gmacs() / self.peak.kernel_ideal(),
            "decoder_fraction_of_int8_kernel_peak": self.decoder_gmacs() / self.peak.kernel_ideal(),
            "linear_peak_shape": [PEAK_SHAPE.0, PEAK_SHAPE.1, PEAK_SHAPE.2],
            "linear_peak_gmac_per_s_one_thread": self.peak.linear_one_thread,
            "linear_peak_gmac_per_s_all_threads": self.peak.linear_all_threads,
            "peak_rss_bytes": self.peak_rss,
            "isa": format!("{:?}", self.isa),
            "cpu_model": self.cpu.model,
            "cpu_flags": flags,
            "threads": s.threads,
            "batch": s.batch,
            "class": s.opts.label,
            "schedule": s.sched.pn.as_slice(),
            "attention": format!("{:?}", s.opts.attention),
            "weights": format!("{:?}", model.config.weights),
            "backend": self.backend,
            "device": self.device,
        })
    }

    /// The report as text lines.
    pub fn text(&self, s: &BenchSettings, model: &Model<'_>) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "settings: backend {}, threads {}, batch {}, class {}, schedule {:?}, attention {:?}, weights {:?}",
            match &self.device {
                Some(d) => format!("{} ({d})", self.backend),
                None => self.backend.to_string(),
            },
            s.threads,
            s.batch,
            s.opts.label,
            s.sched.pn.as_slice(),
            s.opts.attention,
            model.config.weights
        );
        let _ = writeln!(
            o,
            "{} images in {:.3} s: {:.2} images/s, {:.2} ms/image (wall, after one warm-up batch)",
            self.images,
            self.wall_s,
            self.images_per_s(),
            1e3 * self.wall_s / self.images as f64
        );
        let _ = writeln!(o, "phase seconds (summed over batches):");
        for p in &self.phases {
            match p.step {
                Some(k) => writeln!(
                    o,
                    "  step {k:2} {:<7} {:.4}",
                    format!("{0}x{0}", p.pn),
                    p.seconds
                ),
                None => writeln!(o, "  decoder         {:.4}", p.seconds),
            }
            .ok();
        }
        let ideal = self.peak.kernel_ideal();
        let threads = self.peak.threads;
        let t = self.transformer_gmacs();
        let _ = writeln!(
            o,
            "transformer: {:.3} GMAC in {:.3} s = {:.2} GMAC/s ({:.1}% of the int8 micro-kernel peak x {threads})",
            self.transformer_macs as f64 / 1e9,
            self.transformer_s(),
            t,
            100.0 * t / ideal,
        );
        let d = self.decoder_gmacs();
        let _ = writeln!(
            o,
            "decoder:     {:.3} GMAC in {:.3} s = {:.2} GMAC/s ({:.1}% of the int8 micro-kernel peak x {threads})",
            self.decoder_macs as f64 / 1e9,
            self.decoder_s(),
            d,
            100.0 * d / ideal,
        );
        let _ = writeln!(
            o,
            "int8 micro-kernel peak ({:?}, measured now): {:.2} GMAC/s on 1 thread, ideal x {threads} = {:.2} GMAC/s",
            self.isa, self.peak.kernel_one_thread, ideal
        );
        let (n, din, dout) = PEAK_SHAPE;
        let _ = writeln!(
            o,
            "linear {n}x{din}x{dout} ({:?}, L2-resident): {:.2} GMAC/s on 1 thread, {:.2} GMAC/s on {threads}",
            model.config.weights, self.peak.linear_one_thread, self.peak.linear_all_threads
        );
        let _ = writeln!(
            o,
            "peak RSS: {}",
            self.peak_rss.map_or("n/a".to_string(), |b| format!(
                "{:.1} MiB",
                b as f64 / 1048576.0
            ))
        );
        let _ = writeln!(o, "isa: {:?}", self.isa);
        let flags = match &self.cpu.flags {
            Some(f) => f
                .iter()
                .map(|(n, on)| format!("{n} {}", if *on { "yes" } else { "no" }))
                .collect::<Vec<_>>()
                .join(", "),
            None => "n/a".into(),
        };
        let _ = write!(
            o,
            "cpu: {} ({flags})",
            self.cpu.model.as_deref().unwrap_or("n/a")
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_model_and_flags() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 3GHz\nflags\t\t: fpu avx2 avx_vnni\n\
                    processor\t: 1\nmodel name\t: Other\n";
        let c = parse_cpuinfo(text);
        assert_eq!(c.model.as_deref(), Some("Some CPU @ 3GHz"));
        assert_eq!(
            c.flags,
            Some([
                ("avx2", true),
                ("avx512f", false),
                ("avx512_vnni", false),
                ("avxvnni", true)
            ])
        );
        assert_eq!(
            parse_cpuinfo(""),
            CpuInfo {
                model: None,
                flags: None
            }
        );
    }

    #[test]
    fn counts_are_checked() {
        assert!(check_counts(0, 1).is_err());
        assert!(check_counts(1, 0).is_err());
        assert!(check_counts(1, MAX_BATCH + 1).is_err());
        assert!(check_counts(MAX_IMAGES + 1, 1).is_err());
        assert!(check_counts(2, 2).is_ok());
    }
}

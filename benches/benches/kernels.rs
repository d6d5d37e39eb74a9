//! Kernel throughput per ISA, on one thread (`Sequential`), so each figure compares with the
//! per-core int8 micro-kernel peak ([`int8_peak_probe`]):
//!
//! - int8 `linear_with` at d16 shapes (tokens × in × out),
//! - int8 3×3 `conv2d_with` at decoder shapes (channels, side),
//! - f32 `linear_with` on one shape,
//!
//! on every ISA this CPU supports (the others are skipped with a printed line; `Avx` runs the
//! int8 GEMM on the scalar reference, so only its f32 Linear is measured). Throughput is in
//! elements = multiply-accumulates (criterion's "elem/s" is MAC/s). After the criterion groups,
//! each case is timed once more with a plain clock (the fastest of ≥ 3 calls over ≥ 0.3 s) and
//! printed as GMAC/s and as a fraction of the ISA's peak measured then.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use srdd::bench::int8_kernel_peak;
use srdd_core::kernels::{
    conv2d_with, conv_scratch_len, linear_scratch_len, linear_with, pack_official, pack_panels,
    panels_len, ConvInput, ConvScratch, Isa, LinearScratch, Pad, PanelsI8,
};
use srdd_core::parallel::Sequential;
use srdd_core::weights::{Conv, Linear, Weight};

/// int8 Linear shapes of d16 (tokens, in, out): attention projections and the MLP at the 16×16
/// scale, and the MLP's fc1 at the 4×4 scale (GEMV-like).
const LINEAR_SHAPES: [(usize, usize, usize); 4] = [
    (256, 1024, 1024),
    (256, 1024, 4096),
    (256, 4096, 1024),
    (16, 1024, 4096),
];
/// Decoder 3×3 convs (channels in = out, side).
const CONV_SHAPES: [(usize, usize); 2] = [(160, 64), (320, 32)];
/// The f32 Linear shape.
const F32_LINEAR: (usize, usize, usize) = (256, 1024, 1024);

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Crude int8 codes of weights in [−1, 1) (scale 1/127): throughput does not depend on them.
fn int8_codes(w: &[f32]) -> Vec<i8> {
    w.iter().map(|v| (v * 127.0).round() as i8).collect()
}

/// One measured kernel call with its buffers.
trait Case {
    /// Criterion id: kernel and shape.
    fn id(&self) -> String;
    /// Multiply-accumulates of one call.
    fn macs(&self) -> u64;
    /// Whether the weights are int8 (compared with the int8 peak).
    fn int8(&self) -> bool;
    /// One call on `isa`'s kernels, one thread.
    fn run(&mut self, isa: Isa);
}

/// A Linear in f32 or int8 (packed panels).
struct LinearCase {
    n: usize,
    din: usize,
    dout: usize,
    x: Vec<f32>,
    b: Vec<f32>,
    /// f32 weights (empty for int8).
    w: Vec<f32>,
    /// Packed int8 weights (empty for f32).
    q: Vec<i8>,
    scales: Vec<f32>,
    y: Vec<f32>,
    sf: Vec<f32>,
    sq: Vec<i8>,
}

impl LinearCase {
    fn new((n, din, dout): (usize, usize, usize), int8: bool) -> Self {
        let w = data(dout * din, 2);
        let (w, q) = if int8 {
            let mut q = vec![0i8; panels_len(dout, din)];
            assert!(pack_panels(&int8_codes(&w), dout, din, &mut q));
            (Vec::new(), q)
        } else {
            (w, Vec::new())
        };
        let (lf, lq) = linear_scratch_len(n, din);
        LinearCase {
            n,
            din,
            dout,
            x: data(n * din, 1),
            b: data(dout, 3),
            w,
            q,
            scales: vec![1.0 / 127.0; dout],
            y: vec![0f32; n * dout],
            sf: vec![0f32; lf],
            sq: vec![0i8; lq],
        }
    }
}

impl Case for LinearCase {
    fn id(&self) -> String {
        let kind = if self.int8() { "int8" } else { "f32" };
        format!("linear_{kind}/{}x{}x{}", self.n, self.din, self.dout)
    }

    fn macs(&self) -> u64 {
        (self.n * self.din * self.dout) as u64
    }

    fn int8(&self) -> bool {
        !self.q.is_empty()
    }

    fn run(&mut self, isa: Isa) {
        let w = if self.int8() {
            Weight::I8(PanelsI8::new(&self.q, &self.scales, self.dout, self.din, 1).unwrap())
        } else {
            Weight::F32(&self.w)
        };
        let l = Linear {
            w,
            b: Some(&self.b),
            out_dim: self.dout,
            in_dim: self.din,
        };
        let mut s = LinearScratch {
            f: &mut self.sf,
            q: &mut self.sq,
        };
        linear_with(isa, &Sequential, &self.x, self.n, &l, &mut self.y, &mut s);
        black_box(&self.y);
    }
}

/// An int8 3×3 conv, stride 1, padding 1, `ch` channels in and out on a `side × side` map.
struct ConvCase {
    ch: usize,
    side: usize,
    x: Vec<f32>,
    b: Vec<f32>,
    q: Vec<i8>,
    scales: Vec<f32>,
    y: Vec<f32>,
    unfold: Vec<i8>,
    qrow: Vec<i8>,
    row_scale: Vec<f32>,
}

impl ConvCase {
    fn new((ch, side): (usize, usize)) -> Self {
        let codes = int8_codes(&data(ch * ch * 9, 5));
        let mut q = vec![0i8; 3 * panels_len(ch, 3 * ch)];
        assert!(pack_official(&codes, &[ch, ch, 3, 3], &mut q));
        let (a, r, f) = conv_scratch_len(ch, side, side, side, 3);
        ConvCase {
            ch,
            side,
            x: data(ch * side * side, 4),
            b: data(ch, 6),
            q,
            scales: vec![1.0 / 127.0; ch],
            y: vec![0f32; ch * side * side],
            unfold: vec![0i8; a],
            qrow: vec![0i8; r],
            row_scale: vec![0f32; f],
        }
    }
}

impl Case for ConvCase {
    fn id(&self) -> String {
        format!("conv3x3_int8/{}ch_{}px", self.ch, self.side)
    }

    fn macs(&self) -> u64 {
        (self.ch * self.ch * 9 * self.side * self.side) as u64
    }

    fn int8(&self) -> bool {
        true
    }

    fn run(&mut self, isa: Isa) {
        let ch = self.ch;
        let c = Conv {
            w: Weight::I8(PanelsI8::new(&self.q, &self.scales, ch, 3 * ch, 3).unwrap()),
            b: &self.b,
            cout: ch,
            cin: ch,
            k: 3,
        };
        let input = ConvInput {
            x: &self.x,
            h: self.side,
            w: self.side,
            stride: 1,
            pad: Pad::same(1),
        };
        let mut s = ConvScratch {
            unfold: &mut self.unfold,
            qrow: &mut self.qrow,
            row_scale: &mut self.row_scale,
        };
        conv2d_with(isa, &Sequential, &input, &c, &mut self.y, Some(&mut s));
        black_box(&self.y);
    }
}

/// Every case: the int8 Linears, the int8 convs, then the f32 Linear.
fn cases() -> Vec<Box<dyn Case>> {
    let mut v: Vec<Box<dyn Case>> = Vec::new();
    for shape in LINEAR_SHAPES {
        v.push(Box::new(LinearCase::new(shape, true)));
    }
    for shape in CONV_SHAPES {
        v.push(Box::new(ConvCase::new(shape)));
    }
    v.push(Box::new(LinearCase::new(F32_LINEAR, false)));
    v
}

/// The ISAs measured, and whether their int8 cases run (`Avx`'s int8 GEMM is the scalar
/// reference, measured under `Scalar`). Prints a line for each ISA left out.
fn isas() -> Vec<(Isa, bool)> {
    let mut v = Vec::new();
    for isa in Isa::ALL {
        if !isa.supported() {
            println!("{isa:?}: not supported by this CPU, skipped");
        } else if isa == Isa::Avx {
            println!("{isa:?}: int8 runs the scalar reference (see Scalar); f32 only");
            v.push((isa, false));
        } else {
            v.push((isa, true));
        }
    }
    v
}

/// GMAC/s of `case` on `isa`: the fastest of at least 3 timed calls spanning at least 0.3 s,
/// after one warm-up call (the fastest: the figure least touched by other load).
fn gmacs(case: &mut dyn Case, isa: Isa) -> f64 {
    case.run(isa);
    let (start, mut best, mut calls) = (Instant::now(), f64::INFINITY, 0);
    while calls < 3 || start.elapsed() < Duration::from_millis(300) {
        let t0 = Instant::now();
        case.run(isa);
        best = best.min(t0.elapsed().as_secs_f64());
        calls += 1;
    }
    case.macs() as f64 / best / 1e9
}

fn bench_kernels(c: &mut Criterion, isas: &[(Isa, bool)], cases: &mut [Box<dyn Case>]) {
    for &(isa, int8) in isas {
        let mut g = c.benchmark_group(format!("{isa:?}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_secs(1))
            // Calls of tens of milliseconds to seconds: the same count per sample.
            .sampling_mode(SamplingMode::Flat);
        for case in cases.iter_mut().filter(|cs| int8 || !cs.int8()) {
            g.throughput(Throughput::Elements(case.macs()));
            let id = case.id();
            let (kernel, shape) = id.split_once('/').unwrap_or((&id, ""));
            g.bench_function(BenchmarkId::new(kernel, shape), |b| {
                b.iter(|| case.run(isa))
            });
        }
        g.finish();
    }
}

/// Each ISA's measured peak, then each case's GMAC/s on it and its fraction of that peak.
fn peak_summary(isas: &[(Isa, bool)], cases: &mut [Box<dyn Case>]) {
    println!(
        "\nGMAC/s on 1 thread (plain clock, fastest call) and fraction of the int8 micro-kernel \
         peak measured now (best of 8 windows):"
    );
    for &(isa, int8) in isas {
        let peak = int8.then(|| int8_kernel_peak(isa));
        match peak {
            Some(p) => println!("{isa:?}: int8 micro-kernel peak {p:.2} GMAC/s"),
            None => println!("{isa:?}: f32 only"),
        }
        for case in cases.iter_mut().filter(|cs| int8 || !cs.int8()) {
            let r = gmacs(case.as_mut(), isa);
            match peak.filter(|_| case.int8()) {
                Some(p) => println!(
                    "  {:<32} {r:8.2} GMAC/s  {:5.1}% of peak",
                    case.id(),
                    100.0 * r / p
                ),
                None => println!("  {:<32} {r:8.2} GMAC/s  (f32)", case.id()),
            }
        }
    }
}

fn main() {
    let isas = isas();
    let mut cases = cases();
    let mut c = Criterion::default().configure_from_args();
    bench_kernels(&mut c, &isas, &mut cases);
    c.final_summary();
    // `--test` (cargo test --benches) and `--list` run nothing: no summary either.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        peak_summary(&isas, &mut cases);
    }
}

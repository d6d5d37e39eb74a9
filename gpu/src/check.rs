//! The backend's op check (ggml's `test-backend-ops` habit): every kernel family on random
//! inputs, against the CPU engine's kernel of the same op, by NMSE. The bounds are the CUDA
//! issue's: 1e-7 for f32 ops (element-wise and f32 GEMMs), 5e-4 for int8 matmul outputs, and 0
//! (bit equality) for the raw i32 sums of the int8 GEMM.

use crate::driver::Args;
use crate::driver::Gpu;
use crate::error::Result;
use crate::model::{DevConv, DevLinear, DevNorm};
use crate::ops::{self, ConvScratch, KeySet, QuantScratch};
use half::f16;
use srdd_core::kernels::attention::{attend_row, KeyValues};
use srdd_core::kernels::{
    conv2d, conv_scratch_len, gelu_tanh, group_norm, layer_norm, linear, linear_scratch_len,
    pack_official, pack_panels, panels_len, Conv, ConvScratch as CpuConvScratch, Isa, Linear,
    LinearScratch, Norm, Pad, PanelsI8, Weight,
};
use srdd_core::parallel::Sequential;

/// Bound on f32 ops (element-wise and f32 GEMMs).
pub const F32_BOUND: f64 = 1e-7;
/// Bound on int8 matmul outputs.
pub const INT8_BOUND: f64 = 5e-4;
/// Bound on int8 Linears with two-pass activations: the kernels compute the CPU's bits, and a
/// residual pass that is skipped or rounds differently measures orders of magnitude above it.
pub const A16_BOUND: f64 = 1e-12;

/// One op's comparison.
#[derive(Debug, Clone)]
pub struct OpCheck {
    /// Op and shape.
    pub name: String,
    /// Σ(gpu − cpu)² / Σ cpu².
    pub nmse: f64,
    /// The bound it must keep.
    pub bound: f64,
}

impl OpCheck {
    /// Whether the op keeps its bound.
    pub fn ok(&self) -> bool {
        self.nmse <= self.bound
    }
}

/// NMSE of `b` against the reference `a` (0 when both are all zero, infinite on a NaN).
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = *x as f64 - *y as f64;
        num += d * d;
        den += *x as f64 * *x as f64;
    }
    if a.len() != b.len() || num.is_nan() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    num / den
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [−1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() >> 56) as u8 as i8).collect()
    }
}

/// Runs every op check on `gpu` (int8 GEMMs on both the tensor cores, where the device has
/// them, and dp4a).
pub fn backend_ops(gpu: &Gpu) -> Result<Vec<OpCheck>> {
    gpu.bind()?;
    let mut out = Vec::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let variants: &[bool] = if gpu.compute_capability().0 >= 8 {
        &[false, true]
    } else {
        &[true]
    };
    for &dp4a in variants {
        gpu.use_dp4a(dp4a);
        let tag = if dp4a { "dp4a" } else { "mma" };
        if !dp4a {
            out.push(int8_sums(gpu, &mut rng, 77, 300, 136)?);
            out.push(int8_sums(gpu, &mut rng, 130, 1024, 64)?);
        }
        for &(m, k, n) in &[(77, 300, 136), (5, 258, 40), (200, 1024, 3072)] {
            out.push(linear_check(gpu, &mut rng, m, k, n, 2, tag)?);
        }
        for &(m, k, n) in &[(77, 300, 136), (5, 258, 40)] {
            out.push(linear_check(gpu, &mut rng, m, k, n, 3, tag)?);
        }
        for &(cin, cout, side, k) in &[(32, 48, 9, 3), (6, 20, 7, 3), (64, 64, 16, 1)] {
            out.push(conv_check(gpu, &mut rng, cin, cout, side, k, true, tag)?);
        }
    }
    gpu.use_dp4a(false);
    for &(m, k, n) in &[(77, 300, 136), (64, 1024, 256)] {
        out.push(linear_check(gpu, &mut rng, m, k, n, 0, "f32")?);
        out.push(linear_check(gpu, &mut rng, m, k, n, 1, "f16")?);
    }
    for &(cin, cout, side, k) in &[(32, 48, 9, 3), (3, 16, 12, 3), (40, 24, 8, 1)] {
        out.push(conv_check(gpu, &mut rng, cin, cout, side, k, false, "f32")?);
    }
    out.push(ln_check(gpu, &mut rng)?);
    out.push(gn_check(gpu, &mut rng)?);
    out.push(gelu_check(gpu, &mut rng)?);
    for &(n, heads, hd, l2) in &[(37, 4, 64, false), (100, 2, 32, true), (20, 3, 128, false)] {
        out.push(attention_check(gpu, &mut rng, n, heads, hd, l2)?);
    }
    Ok(out)
}

fn int8_sums(gpu: &Gpu, rng: &mut Rng, m: usize, k: usize, n: usize) -> Result<OpCheck> {
    let k4 = k.div_ceil(4);
    // Activations as the quantizer makes them ([−127, 127]); weights over the whole i8 range.
    let mut a: Vec<i8> = rng
        .i8s(m * 4 * k4)
        .into_iter()
        .map(|v| v.max(-127))
        .collect();
    for (i, v) in a.iter_mut().enumerate() {
        if i % (4 * k4) >= k {
            *v = 0;
        }
    }
    let w = rng.i8s(n * k);
    let mut packed = vec![0i8; panels_len(n, k)];
    pack_panels(&w, n, k, &mut packed);
    let (da, dw, ds) = (
        gpu.upload(&a)?,
        gpu.upload(&packed)?,
        gpu.alloc::<i32>(m * n)?,
    );
    ops::int8_sums(gpu, &da, m, &dw, k4, n, &ds)?;
    let mut got = vec![0i32; m * n];
    gpu.read(&ds, 0, &mut got)?;
    let mut wrong = 0usize;
    for t in 0..m {
        for o in 0..n {
            let s: i32 = (0..k)
                .map(|i| a[t * 4 * k4 + i] as i32 * w[o * k + i] as i32)
                .sum();
            wrong += (s != got[t * n + o]) as usize;
        }
    }
    Ok(OpCheck {
        name: format!("int8 sums (mma) {m}x{k}x{n}: {wrong} wrong"),
        nmse: wrong as f64,
        bound: 0.0,
    })
}

/// `kind`: 0 f32, 1 f16, 2 int8 weights, 3 int8 weights with two-pass activations.
fn linear_check(
    gpu: &Gpu,
    rng: &mut Rng,
    m: usize,
    k: usize,
    n: usize,
    kind: u8,
    tag: &str,
) -> Result<OpCheck> {
    let x = rng.vec(m * k, 2.0);
    let wf = rng.vec(n * k, 0.1);
    let b = rng.vec(n, 0.5);
    let w16: Vec<f16> = wf.iter().map(|v| f16::from_f32(*v)).collect();
    let q: Vec<i8> = rng.i8s(n * k);
    let scales = rng.vec(n, 0.01);
    let mut packed = vec![0i8; panels_len(n, k)];
    pack_panels(&q, n, k, &mut packed);
    let w = match kind {
        0 => Weight::F32(&wf),
        1 => Weight::F16(&w16),
        _ => Weight::I8(
            PanelsI8::new(&packed, &scales, n, k, 1)
                .expect("packed lengths")
                .with_act16(kind == 3),
        ),
    };
    let l = Linear {
        w,
        b: Some(&b),
        out_dim: n,
        in_dim: k,
    };
    let mut want = vec![0f32; m * n];
    let (fl, ql) = linear_scratch_len(m, k);
    let (mut sf, mut sq) = (vec![0f32; fl], vec![0i8; ql]);
    let mut s = LinearScratch {
        f: &mut sf,
        q: &mut sq,
    };
    linear(&x, m, &l, &mut want, &mut s, &Sequential);
    let dl = DevLinear::new(gpu, &l)?;
    let (dx, dy) = (gpu.upload(&x)?, gpu.alloc::<f32>(m * n)?);
    let qs = QuantScratch::new(gpu, m, k)?;
    ops::linear(gpu, dx.ptr(), k, m, &dl, dy.ptr(), n, &qs)?;
    let mut got = vec![0f32; m * n];
    gpu.read(&dy, 0, &mut got)?;
    let (tag, bound) = match kind {
        2 => (tag.to_string(), INT8_BOUND),
        3 => (format!("a16 {tag}"), A16_BOUND),
        _ => (tag.to_string(), F32_BOUND),
    };
    Ok(OpCheck {
        name: format!("linear {tag} {m}x{k}x{n}"),
        nmse: nmse(&want, &got),
        bound,
    })
}

#[allow(clippy::too_many_arguments)]
fn conv_check(
    gpu: &Gpu,
    rng: &mut Rng,
    cin: usize,
    cout: usize,
    side: usize,
    k: usize,
    int8: bool,
    tag: &str,
) -> Result<OpCheck> {
    let pad = k / 2;
    let x = rng.vec(cin * side * side, 1.5);
    let wf = rng.vec(cout * cin * k * k, 0.2);
    let b = rng.vec(cout, 0.3);
    let q = rng.i8s(cout * cin * k * k);
    let scales = rng.vec(cout, 0.01);
    let mut packed = vec![0i8; k * panels_len(cout, k * cin)];
    pack_official(&q, &[cout, cin, k, k], &mut packed);
    let w = if int8 {
        Weight::I8(PanelsI8::new(&packed, &scales, cout, k * cin, k).expect("packed lengths"))
    } else {
        Weight::F32(&wf)
    };
    let c = Conv {
        w,
        b: &b,
        cout,
        cin,
        k,
    };
    let mut want = vec![0f32; cout * side * side];
    let (ul, rl, fl) = conv_scratch_len(cin, side, side, side, k);
    let (mut u, mut r, mut f) = (vec![0i8; ul], vec![0i8; rl], vec![0f32; fl]);
    let mut cs = CpuConvScratch {
        unfold: &mut u,
        qrow: &mut r,
        row_scale: &mut f,
    };
    let cs = int8.then_some(&mut cs);
    conv2d(
        &x,
        side,
        side,
        &c,
        1,
        Pad::same(pad),
        &mut want,
        cs,
        &Sequential,
    );
    let dc = DevConv::new(gpu, &c)?;
    let (dx, dy) = (gpu.upload(&x)?, gpu.alloc::<f32>(cout * side * side)?);
    let s = ConvScratch::new(gpu, (side + 2 * pad) * side * cin, side)?;
    ops::conv(gpu, dx.ptr(), (side, side), &dc, pad, dy.ptr(), &s)?;
    let mut got = vec![0f32; cout * side * side];
    gpu.read(&dy, 0, &mut got)?;
    Ok(OpCheck {
        name: format!("conv {tag} {cin}->{cout} {side}x{side} k{k}"),
        nmse: nmse(&want, &got),
        bound: if int8 { INT8_BOUND } else { F32_BOUND },
    })
}

fn ln_check(gpu: &Gpu, rng: &mut Rng) -> Result<OpCheck> {
    let (rows, n, t0, m, c) = (3, 20, 4, 11, 96);
    let x = rng.vec(rows * n * c, 3.0);
    let ada = rng.vec(rows * 6 * c, 0.5);
    let mut want = vec![0f32; rows * m * c];
    for r in 0..rows {
        for i in 0..m {
            let at = (r * n + t0 + i) * c;
            let y = &mut want[(r * m + i) * c..(r * m + i + 1) * c];
            layer_norm(&x[at..at + c], y, c, 1e-6);
            for (j, v) in y.iter_mut().enumerate() {
                *v = *v * (ada[(r * 6 + 2) * c + j] + 1.0) + ada[(r * 6 + 4) * c + j];
            }
        }
    }
    let (dx, da, dy) = (
        gpu.upload(&x)?,
        gpu.upload(&ada)?,
        gpu.alloc::<f32>(rows * m * c)?,
    );
    ops::ln_modulate(
        gpu,
        dx.ptr(),
        (rows, n, t0, m, c),
        1e-6,
        da.ptr(),
        (6, 2, 4),
        dy.ptr(),
    )?;
    let mut got = vec![0f32; rows * m * c];
    gpu.read(&dy, 0, &mut got)?;
    Ok(OpCheck {
        name: "layernorm + adaln modulation".into(),
        nmse: nmse(&want, &got),
        bound: F32_BOUND,
    })
}

fn gn_check(gpu: &Gpu, rng: &mut Rng) -> Result<OpCheck> {
    let (c, hw, groups) = (64, 81, 32);
    let x: Vec<f32> = rng.vec(c * hw, 2.0).iter().map(|v| v + 0.7).collect();
    let (w, b) = (rng.vec(c, 1.0), rng.vec(c, 0.5));
    let norm = Norm { w: &w, b: &b };
    let mut want = vec![0f32; c * hw];
    group_norm(&x, &mut want, c, hw, groups, 1e-6, &norm, true, &Sequential);
    let dn = DevNorm::new(gpu, &norm)?;
    let (dx, dy, st) = (
        gpu.upload(&x)?,
        gpu.alloc::<f32>(c * hw)?,
        gpu.alloc::<f64>(2 * groups)?,
    );
    ops::group_norm(
        gpu,
        dx.ptr(),
        dy.ptr(),
        (c, hw),
        (groups, 1e-6),
        &dn,
        true,
        &st,
    )?;
    let mut got = vec![0f32; c * hw];
    gpu.read(&dy, 0, &mut got)?;
    Ok(OpCheck {
        name: "groupnorm + silu".into(),
        nmse: nmse(&want, &got),
        bound: F32_BOUND,
    })
}

fn gelu_check(gpu: &Gpu, rng: &mut Rng) -> Result<OpCheck> {
    let x = rng.vec(5000, 6.0);
    let want: Vec<f32> = x.iter().map(|v| gelu_tanh(*v)).collect();
    let dx = gpu.upload(&x)?;
    ops::each(
        gpu,
        "gelu_inplace",
        x.len(),
        Args::new().p(dx.ptr()).p(x.len() as u64),
    )?;
    let mut got = vec![0f32; x.len()];
    gpu.read(&dx, 0, &mut got)?;
    Ok(OpCheck {
        name: "gelu (tanh)".into(),
        nmse: nmse(&want, &got),
        bound: F32_BOUND,
    })
}

fn attention_check(
    gpu: &Gpu,
    rng: &mut Rng,
    n: usize,
    heads: usize,
    hd: usize,
    l2: bool,
) -> Result<OpCheck> {
    let rows = 2;
    let c = heads * hd;
    let qkv = rng.vec(rows * n * 3 * c, 1.0);
    let scale = if l2 { 1.0 } else { 0.25 / (hd as f32).sqrt() };
    let mut want = vec![0f32; rows * n * c];
    let mut scores = vec![0f32; n];
    for r in 0..rows {
        let base = r * n * 3 * c;
        let kv = KeyValues {
            keys: &qkv[base + c..],
            vals: &qkv[base + 2 * c..],
            stride: 3 * c,
            n,
        };
        for i in 0..n {
            let q = &qkv[base + i * 3 * c..base + i * 3 * c + c];
            let out = &mut want[(r * n + i) * c..(r * n + i + 1) * c];
            attend_row(Isa::Scalar, q, &kv, heads, hd, scale, &mut scores, out);
        }
    }
    let (dq, dout) = (gpu.upload(&qkv)?, gpu.alloc::<f32>(rows * n * c)?);
    let f = std::mem::size_of::<f32>() as u64;
    let keys = KeySet {
        k: dq.ptr() + c as u64 * f,
        v: dq.ptr() + 2 * c as u64 * f,
        stride: 3 * c,
        row_stride: n * 3 * c,
        slots: 0,
        count: n,
    };
    ops::attention(
        gpu,
        dq.ptr(),
        3 * c,
        (rows, n, heads, hd),
        &keys,
        scale,
        dout.ptr(),
    )?;
    let mut got = vec![0f32; rows * n * c];
    gpu.read(&dout, 0, &mut got)?;
    Ok(OpCheck {
        name: format!("attention markov n{n} heads{heads} hd{hd}"),
        nmse: nmse(&want, &got),
        bound: F32_BOUND,
    })
}

/// One forward comparison ([`forward_vs_cpu`]).
#[derive(Debug, Clone)]
pub struct ForwardCheck {
    /// PSNR in dB of each decoded image against the CPU's, with the CPU's tokens forced.
    pub psnr_db: Vec<f64>,
    /// Free-running tokens equal to the CPU's, and all tokens.
    pub same_tokens: (usize, usize),
}

/// Bound on decoded images: PSNR against the CPU's with the same tokens.
pub const IMAGE_PSNR_DB: f64 = 50.0;

impl ForwardCheck {
    /// Whether every forced image keeps [`IMAGE_PSNR_DB`].
    pub fn ok(&self) -> bool {
        self.psnr_db.iter().all(|d| *d >= IMAGE_PSNR_DB)
    }
}

/// Records each step's tokens, or forces recorded ones.
struct Tokens {
    steps: Vec<Vec<u32>>,
    force: bool,
}

impl srdd_core::StepHook for Tokens {
    fn force(&mut self, k: usize, _pn: usize, tokens: &mut [u32]) {
        if self.force {
            tokens.copy_from_slice(&self.steps[k]);
        }
    }
    fn scale_done(&mut self, _k: usize, tokens: &[u32], _f: &[f32]) {
        if !self.force {
            self.steps.push(tokens.to_vec());
        }
    }
}

/// Runs a batch to the end and decodes it (RGB floats per image).
fn run_batch<F: srdd_core::Forward>(
    s: &mut srdd_core::Sampler<'_, '_, F>,
    hooks: &mut [Tokens],
) -> srdd_core::Result<Vec<Vec<f32>>> {
    use srdd_core::resample::{KeepAll, ResamplePolicy};
    let mut keep: Vec<KeepAll> = hooks.iter().map(|_| KeepAll).collect();
    while !s.finished() {
        let mut h: Vec<&mut dyn srdd_core::StepHook> = hooks.iter_mut().map(|t| t as _).collect();
        let mut p: Vec<&mut dyn ResamplePolicy> = keep.iter_mut().map(|p| p as _).collect();
        s.step(&mut h, &mut p)?;
    }
    (0..hooks.len())
        .map(|i| {
            let mut img = Vec::new();
            s.decode(i, &mut |_, row| img.extend_from_slice(row))?;
            Ok(img)
        })
        .collect()
}

/// PSNR in dB of `b` against `a`, both in [−1, 1] (peak-to-peak 2).
pub fn psnr_db(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    10.0 * (4.0 / mse.max(1e-30)).log10()
}

/// Samples `images` images with `opts` on the CPU engine and on `gpu` through the unchanged
/// sampler: once with the CPU's tokens forced (the decoded images compared by PSNR), once
/// free-running (the tokens compared).
pub fn forward_vs_cpu(
    gpu: &Gpu,
    model: &srdd_core::Model<'_>,
    opts: srdd_core::SampleOptions,
    images: usize,
) -> Result<ForwardCheck> {
    use srdd_core::aligned::AlignedBytes;
    use srdd_core::generate::Compute;
    use srdd_core::{Plan, Sampler, Schedule};
    let sched = Schedule::full(&model.config);
    let par = srdd_core::parallel::StdThreads(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let plan = Plan::batch(&model.config, &opts, &sched, images, Compute::Cpu)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut cpu = Sampler::cpu(
        model,
        opts,
        sched.clone(),
        images,
        arena.as_bytes_mut(),
        &par,
    )?;
    let mut rec: Vec<Tokens> = (0..images)
        .map(|_| Tokens {
            steps: vec![],
            force: false,
        })
        .collect();
    let want = run_batch(&mut cpu, &mut rec)?;
    let dm = crate::DeviceModel::upload(gpu, model)?;
    let mut check = ForwardCheck {
        psnr_db: vec![],
        same_tokens: (0, 0),
    };
    for force in [true, false] {
        let plan = Plan::batch(&model.config, &opts, &sched, images, Compute::Device)?;
        let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
        let fwd = crate::CudaForward::new(&dm, &opts, &sched, images)?;
        let mut s = Sampler::with_forward(
            model,
            opts,
            sched.clone(),
            images,
            arena.as_bytes_mut(),
            fwd,
            &par,
        )?;
        let mut hooks: Vec<Tokens> = rec
            .iter()
            .map(|t| Tokens {
                steps: if force { t.steps.clone() } else { vec![] },
                force,
            })
            .collect();
        let got = match run_batch(&mut s, &mut hooks) {
            Ok(g) => g,
            Err(e) => {
                return Err(s
                    .forward()
                    .last_error()
                    .cloned()
                    .unwrap_or(crate::GpuError::Core(e)))
            }
        };
        if force {
            check.psnr_db = want.iter().zip(&got).map(|(w, g)| psnr_db(w, g)).collect();
        } else {
            for (a, b) in rec.iter().zip(&hooks) {
                for (x, y) in a.steps.iter().zip(&b.steps) {
                    check.same_tokens.0 += x.iter().zip(y).filter(|(p, q)| p == q).count();
                    check.same_tokens.1 += x.len();
                }
            }
        }
    }
    Ok(check)
}

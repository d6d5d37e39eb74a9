//! Numeric kernels: dot products, Linear, Conv2d, norms, activations, softmax.
//!
//! Every kernel writes into caller-provided buffers and states its scratch needs; none allocates.
//! Float sums use eight independent accumulators in a fixed order, so results are identical on
//! every target (the compiler may vectorize the lanes but never reorders them). Integer paths
//! (int8 × int8 → i32) are exact by construction.

use crate::parallel::{split, split_count, Parallel, SharedMut};
use crate::weights::{Conv, Linear, Norm, Weight};

/// `Σ a[i]·b[i]` with eight accumulator lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// 4 tokens × 2 weight rows of dot products at once, each bit-identical to [`dot`] (the same eight
/// lanes, the same reduction tree, separate multiply and add). Loads are shared across the block.
/// On x86-64 builds with AVX this is written with intrinsics, because LLVM's autovectorization of
/// the portable version turned out fragile (2–20 GMAC/s depending on the surrounding code).
#[inline]
fn dot_block(x: [&[f32]; 4], w: [&[f32]; 2], n: usize) -> [[f32; 2]; 4] {
    for s in x.iter().chain(w.iter()) {
        assert!(s.len() >= n);
    }
    let full = n / 8 * 8;
    let mut acc = [[[0f32; 8]; 2]; 4];
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    // SAFETY: every load reads 8 floats at offset i < full ≤ n ≤ the slice's length (asserted).
    unsafe {
        use core::arch::x86_64::*;
        let mut a = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = 0;
        while i < full {
            let w0 = _mm256_loadu_ps(w[0].as_ptr().add(i));
            let w1 = _mm256_loadu_ps(w[1].as_ptr().add(i));
            for t in 0..4 {
                let xv = _mm256_loadu_ps(x[t].as_ptr().add(i));
                a[t][0] = _mm256_add_ps(a[t][0], _mm256_mul_ps(xv, w0));
                a[t][1] = _mm256_add_ps(a[t][1], _mm256_mul_ps(xv, w1));
            }
            i += 8;
        }
        for t in 0..4 {
            for o in 0..2 {
                _mm256_storeu_ps(acc[t][o].as_mut_ptr(), a[t][o]);
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
    {
        let mut i = 0;
        while i < full {
            for t in 0..4 {
                for o in 0..2 {
                    for l in 0..8 {
                        acc[t][o][l] += x[t][i + l] * w[o][i + l];
                    }
                }
            }
            i += 8;
        }
    }
    let mut out = [[0f32; 2]; 4];
    for t in 0..4 {
        for o in 0..2 {
            let a = acc[t][o];
            let mut tail = 0f32;
            for j in full..n {
                tail += x[t][j] * w[o][j];
            }
            out[t][o] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail;
        }
    }
    out
}

/// `Σ a[i]·b[i]` over int8 values, exact in i32 for lengths below 2^17.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] as i32 * y[l] as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += *x as i32 * *y as i32;
    }
    s
}

/// Symmetric dynamic quantization of one activation vector to [−127, 127]; returns the scale.
#[inline]
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(libm::fabsf(*v)));
    if amax.partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !amax.is_finite() {
        q.iter_mut().for_each(|v| *v = 0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / amax;
    for (o, v) in q.iter_mut().zip(x) {
        *o = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// `Σ a[i]·b[i]` with f16 `b`, in the same lane order as [`dot`].
#[inline]
pub fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l].to_f32();
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y.to_f32();
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Scratch for [`linear`] with int8 weights: per-row activation scales and int8 activations.
pub struct LinearScratch<'s> {
    /// At least `n` floats.
    pub f: &'s mut [f32],
    /// At least `n · in_dim` bytes (int8 weights only).
    pub q: &'s mut [i8],
}

/// Scratch sizes (f32 count, i8 count) [`linear`] needs for `n` rows of `in_dim`.
pub fn linear_scratch_len(n: usize, in_dim: usize) -> (usize, usize) {
    (n, n * in_dim)
}

/// Tokens per block in [`linear`]: a block of activations stays in cache while the weight rows
/// stream past it.
const TOKEN_BLOCK: usize = 64;

/// 4 × 2 int8 dot products at once (exact i32, so identical to [`dot_i8`] by construction):
/// AVX2 sign-extends 16 values to i16 and pair-sums with `vpmaddwd`.
#[inline]
fn dot_i8_block(x: [&[i8]; 4], w: [&[i8]; 2], n: usize) -> [[i32; 2]; 4] {
    for s in x.iter() {
        assert!(s.len() >= n);
    }
    for s in w.iter() {
        assert!(s.len() >= n);
    }
    let mut out = [[0i32; 2]; 4];
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    let done = 0;
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: every 16-byte load starts at i < full ≤ n ≤ the slice's length (asserted).
    let done = unsafe {
        use core::arch::x86_64::*;
        let full = n / 16 * 16;
        let mut a = [[_mm256_setzero_si256(); 2]; 4];
        let mut i = 0;
        while i < full {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w[0].as_ptr().add(i) as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w[1].as_ptr().add(i) as *const __m128i));
            for t in 0..4 {
                let xv =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(x[t].as_ptr().add(i) as *const __m128i));
                a[t][0] = _mm256_add_epi32(a[t][0], _mm256_madd_epi16(xv, w0));
                a[t][1] = _mm256_add_epi32(a[t][1], _mm256_madd_epi16(xv, w1));
            }
            i += 16;
        }
        for t in 0..4 {
            for o in 0..2 {
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, a[t][o]);
                out[t][o] = lanes.iter().sum();
            }
        }
        full
    };
    for t in 0..4 {
        for o in 0..2 {
            out[t][o] += dot_i8(&x[t][done..n], &w[o][done..n]);
        }
    }
    out
}

/// Output columns `o0..o1` of a Linear for `n` token rows: 4 tokens × 2 output rows go through
/// the register block `block`, the ragged edges through `single`; `out(t, per_o(o), acc)` turns
/// an accumulator into the output value, with the per-output parameters (bias, scale) fetched
/// once per output row, outside the token loop (bounds checks in that loop measurably slow the
/// block down). The same loop serves f32 (`dot_block`/`dot`) and int8 (`dot_i8_block`/`dot_i8`)
/// weights; every value equals `out(t, per_o(o), single(x[t], w[o]))`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn blocked_outputs<T, A: Copy, P: Copy>(
    x: &[T],
    n: usize,
    din: usize,
    dout: usize,
    w: &[T],
    (o0, o1): (usize, usize),
    y: &SharedMut<'_, f32>,
    block: impl Fn([&[T]; 4], [&[T]; 2], usize) -> [[A; 2]; 4],
    single: impl Fn(&[T], &[T]) -> A,
    per_o: impl Fn(usize) -> P,
    out: impl Fn(usize, P, A) -> f32,
) {
    let xr = |t: usize| &x[t * din..(t + 1) * din];
    let wr = |o: usize| &w[o * din..(o + 1) * din];
    let o_even = o0 + (o1 - o0) / 2 * 2;
    for t0 in (0..n).step_by(TOKEN_BLOCK) {
        let t1 = (t0 + TOKEN_BLOCK).min(n);
        let t4 = t0 + (t1 - t0) / 4 * 4;
        for o in (o0..o_even).step_by(2) {
            let po = [per_o(o), per_o(o + 1)];
            for t in (t0..t4).step_by(4) {
                let r = block(
                    [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)],
                    [wr(o), wr(o + 1)],
                    din,
                );
                for (dt, row) in r.iter().enumerate() {
                    for (dq, acc) in row.iter().enumerate() {
                        // SAFETY: output columns o0..o1 belong to the calling task only.
                        unsafe { y.set((t + dt) * dout + o + dq, out(t + dt, po[dq], *acc)) };
                    }
                }
            }
        }
        for o in o0..o1 {
            let ts = if o < o_even { t4 } else { t0 };
            let po = per_o(o);
            for t in ts..t1 {
                // SAFETY: as above.
                unsafe { y.set(t * dout + o, out(t, po, single(xr(t), wr(o)))) };
            }
        }
    }
}

/// `y[t] = x[t] Wᵀ + b` for `n` rows; x is `n × in_dim`, y is `n × out_dim`, both row-major.
/// int8 weights use int8 activations quantized per row and i32 accumulation. Output channels are
/// split across `par`'s tasks; every value is computed exactly as the sequential loop would.
pub fn linear(
    x: &[f32],
    n: usize,
    l: &Linear<'_>,
    y: &mut [f32],
    s: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    let (din, dout) = (l.in_dim, l.out_dim);
    let x = &x[..n * din];
    let y = SharedMut::new(&mut y[..n * dout]);
    let tasks = split_count(dout, par.width() * 4, 16);
    let bias = |o: usize| l.b.map_or(0.0, |b| b[o]);
    match l.w {
        Weight::F32(w) => par.run(tasks, &|i| {
            let (o0, o1) = split(dout, par.width() * 4, 16, i);
            blocked_outputs(
                x,
                n,
                din,
                dout,
                w,
                (o0, o1),
                &y,
                dot_block,
                dot,
                bias,
                |_, b, v| v + b,
            );
        }),
        Weight::F16(w) => par.run(tasks, &|i| {
            let (o0, o1) = split(dout, par.width() * 4, 16, i);
            for t0 in (0..n).step_by(TOKEN_BLOCK) {
                let t1 = (t0 + TOKEN_BLOCK).min(n);
                for o in o0..o1 {
                    let row = &w[o * din..(o + 1) * din];
                    for t in t0..t1 {
                        let v = dot_f16(&x[t * din..(t + 1) * din], row) + bias(o);
                        // SAFETY: output column o belongs to this task only.
                        unsafe { y.set(t * dout + o, v) };
                    }
                }
            }
        }),
        Weight::I8 { q: w, scales } => {
            let qx = &mut s.q[..n * din];
            let sx = &mut s.f[..n];
            for t in 0..n {
                sx[t] = quantize_row(&x[t * din..(t + 1) * din], &mut qx[t * din..(t + 1) * din]);
            }
            let (qx, sx) = (&*qx, &*sx);
            par.run(tasks, &|i| {
                let (o0, o1) = split(dout, par.width() * 4, 16, i);
                blocked_outputs(
                    qx,
                    n,
                    din,
                    dout,
                    w,
                    (o0, o1),
                    &y,
                    dot_i8_block,
                    dot_i8,
                    |o| (scales[o], bias(o)),
                    |t, (so, b), acc| acc as f32 * (sx[t] * so) + b,
                );
            });
        }
    }
}

/// LayerNorm without affine parameters over each `c`-wide row of `x`, written to `y`.
pub fn layer_norm(x: &[f32], y: &mut [f32], c: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mut s = 0f64;
        for v in xr {
            s += *v as f64;
        }
        let mean = s / c as f64;
        let mut q = 0f64;
        for v in xr {
            let d = *v as f64 - mean;
            q += d * d;
        }
        let var = q / c as f64;
        let rstd = (1.0 / libm::sqrt(var + eps as f64)) as f32;
        let mean = mean as f32;
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = (*v - mean) * rstd;
        }
    }
}

/// Adds the values of `x` and their squares to `sum` and `sumsq` (f64, in order): GroupNorm's
/// per-channel statistics. A channel fed in consecutive pieces (image rows, in order) gives the
/// same bits as the whole plane at once, which is what makes the row-band decoder exact.
#[inline]
pub fn gn_accumulate(x: &[f32], sum: &mut f64, sumsq: &mut f64) {
    let (mut s, mut q) = (*sum, *sumsq);
    for v in x {
        let v = *v as f64;
        s += v;
        q += v * v;
    }
    *sum = s;
    *sumsq = q;
}

/// Mean and `1/sqrt(var + eps)` of one GroupNorm group from the sums of its channels (each from
/// [`gn_accumulate`], added in channel order) over `count` values: one pass, variance
/// `sumsq/count − mean²` in f64, clamped at 0.
pub fn gn_group_stats(sum: f64, sumsq: f64, count: usize, eps: f32) -> (f64, f64) {
    let n = count as f64;
    let mean = sum / n;
    let var = (sumsq / n - mean * mean).max(0.0);
    (mean, 1.0 / libm::sqrt(var + eps as f64))
}

/// Per-channel `(scale, shift)` of GroupNorm with affine weight `w` and bias `b`:
/// `y = x · scale + shift`.
#[inline]
pub fn gn_channel_affine(mean: f64, rstd: f64, w: f32, b: f32) -> (f32, f32) {
    let scale = (rstd * w as f64) as f32;
    let shift = (b as f64 - mean * rstd * w as f64) as f32;
    (scale, shift)
}

/// `y = x · scale + shift`, optionally followed by SiLU (the application step of GroupNorm).
#[inline]
pub fn gn_apply(x: &[f32], y: &mut [f32], scale: f32, shift: f32, silu_after: bool) {
    for (o, v) in y.iter_mut().zip(x) {
        let t = *v * scale + shift;
        *o = if silu_after { silu(t) } else { t };
    }
}

/// GroupNorm (with affine) of a `c × hw` map into `y`, optionally followed by SiLU. Statistics:
/// per channel [`gn_accumulate`] over the plane, channels of a group summed in order,
/// [`gn_group_stats`], [`gn_channel_affine`].
pub fn group_norm(
    x: &[f32],
    y: &mut [f32],
    c: usize,
    hw: usize,
    groups: usize,
    eps: f32,
    n: &Norm<'_>,
    silu_after: bool,
) {
    let cg = c / groups;
    for g in 0..groups {
        let (mut s, mut q) = (0f64, 0f64);
        for ci in g * cg..(g + 1) * cg {
            let (mut cs, mut cq) = (0f64, 0f64);
            gn_accumulate(&x[ci * hw..(ci + 1) * hw], &mut cs, &mut cq);
            s += cs;
            q += cq;
        }
        let (mean, rstd) = gn_group_stats(s, q, cg * hw, eps);
        for ci in g * cg..(g + 1) * cg {
            let (scale, shift) = gn_channel_affine(mean, rstd, n.w[ci], n.b[ci]);
            gn_apply(
                &x[ci * hw..(ci + 1) * hw],
                &mut y[ci * hw..(ci + 1) * hw],
                scale,
                shift,
                silu_after,
            );
        }
    }
}

/// `x · sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + crate::math::exp(-x))
}

/// Tanh-approximated GELU: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + crate::math::tanh(K * (x + 0.044715 * x * x * x)))
}

/// In-place softmax of one row.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = crate::math::exp(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Zero padding of a convolution: top, left, bottom, right.
#[derive(Clone, Copy, Debug)]
pub struct Pad {
    /// Rows added above.
    pub top: usize,
    /// Columns added left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added right.
    pub right: usize,
}

impl Pad {
    /// The same padding on every side.
    pub const fn same(p: usize) -> Pad {
        Pad {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }
}

/// Output side of a convolution (0 when the padded input is smaller than the kernel).
pub const fn conv_out_side(
    n: usize,
    k: usize,
    stride: usize,
    pad_lo: usize,
    pad_hi: usize,
) -> usize {
    if n + pad_lo + pad_hi < k {
        0
    } else {
        (n + pad_lo + pad_hi - k) / stride + 1
    }
}

/// Scratch for [`conv2d`] with int8 weights.
pub struct ConvScratch<'s> {
    /// Unfolded int8 input, `h · wo · cin · k` bytes: for each input row and output column, the
    /// `cin × k` patch row the kernel sees (zero outside the image).
    pub unfold: &'s mut [i8],
    /// One quantized input row, `cin · w` bytes.
    pub qrow: &'s mut [i8],
    /// Per-input-row activation scales, `h` floats.
    pub row_scale: &'s mut [f32],
}

/// Scratch sizes (unfold i8, row i8, f32) of [`conv2d`] with int8 weights on a `cin × h × w`
/// input with kernel `k` and `wo` output columns.
pub fn conv_scratch_len(
    cin: usize,
    h: usize,
    w: usize,
    wo: usize,
    k: usize,
) -> (usize, usize, usize) {
    (h * wo * cin * k, cin * w, h)
}

const ROW_TILE: usize = 2;

/// Valid output columns `[lo, hi)` for kernel column `kx`.
#[inline]
fn ox_range(w: usize, wo: usize, kx: usize, stride: usize, pad_left: usize) -> (usize, usize) {
    // ix = ox·stride + kx − pad_left must lie in [0, w).
    let lo = if kx >= pad_left {
        0
    } else {
        (pad_left - kx).div_ceil(stride)
    };
    let hi_excl = if w + pad_left > kx {
        ((w + pad_left - kx - 1) / stride + 1).min(wo)
    } else {
        0
    };
    (lo, hi_excl.max(lo))
}

/// Output channels and columns of one register block of the stride-1 float conv.
const CO_BLOCK: usize = 4;
const COL_BLOCK: usize = 16;

/// `acc[c][j] += wk[c] · xs[j]` for the whole register tile (separate multiply and add, so it
/// is bit-identical to the scalar loop; intrinsics on x86-64 with AVX for the same reason as
/// [`dot_block`]).
#[inline(always)]
fn axpy_tile(acc: &mut [[f32; COL_BLOCK]; CO_BLOCK], wk: &[f32; CO_BLOCK], xs: &[f32; COL_BLOCK]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    // SAFETY: all pointers address whole fixed-size arrays of 16 floats (two 8-float vectors).
    unsafe {
        use core::arch::x86_64::*;
        let x0 = _mm256_loadu_ps(xs.as_ptr());
        let x1 = _mm256_loadu_ps(xs.as_ptr().add(8));
        for c in 0..CO_BLOCK {
            let wv = _mm256_set1_ps(wk[c]);
            let p = acc[c].as_mut_ptr();
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(wv, x0)));
            _mm256_storeu_ps(
                p.add(8),
                _mm256_add_ps(_mm256_loadu_ps(p.add(8)), _mm256_mul_ps(wv, x1)),
            );
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
    for c in 0..CO_BLOCK {
        for j in 0..COL_BLOCK {
            acc[c][j] += wk[c] * xs[j];
        }
    }
}

/// One interior register tile of the stride-1 conv with f32 weights on AVX: outputs
/// `co..co+4 × (oy, x0..x0+16)`, accumulators in registers for the whole (ci, ky, kx) sum, in the
/// same order and with the same separate multiply/add as the scalar loop (bit-identical).
/// The caller guarantees every column `x0 + kx − pad_left .. +16` lies inside the row.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[allow(clippy::too_many_arguments)]
fn conv_tile_avx<const NV: usize>(
    // NV is 1 or 2 (8 or 16 columns); CO_BLOCK is 4.
    x: &[f32],
    h: usize,
    w: usize,
    k: usize,
    pad: Pad,
    cin: usize,
    co: usize,
    oy: usize,
    x0: usize,
    wts: &[f32],
    b: &[f32],
) -> [[[f32; 8]; NV]; CO_BLOCK] {
    use core::arch::x86_64::*;
    const { assert!(CO_BLOCK == 4 && (NV == 1 || NV == 2)) };
    assert!(
        x.len() >= cin * h * w
            && wts.len() >= (co + CO_BLOCK) * cin * k * k
            && b.len() >= co + CO_BLOCK
    );
    // Input columns this tile reads: x0 − pad_left .. x0 − pad_left + 8·NV + k − 1; when some lie
    // outside the row, the vector is gathered into a zero-padded buffer (adding w·0 instead of
    // skipping changes at most the sign of a zero).
    let interior = x0 >= pad.left && x0 + k + 8 * NV <= w + pad.left + 1;
    let mut out = [[[0f32; 8]; NV]; CO_BLOCK];
    // SAFETY: the asserts above bound every pointer offset used below.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); NV]; CO_BLOCK];
        for (c, ac) in a.iter_mut().enumerate() {
            for v in ac.iter_mut() {
                *v = _mm256_set1_ps(b[co + c]);
            }
        }
        for ci in 0..cin {
            for ky in 0..k {
                let iy = (oy + ky) as isize - pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row_start = (ci * h + iy as usize) * w;
                let wrow = wts.as_ptr().add(((co * cin + ci) * k + ky) * k);
                // The row segment this tile reads, zero-padded outside the image when needed.
                let mut seg = [0f32; 8 * 2 + 8];
                let seg_len = 8 * NV + k - 1;
                let base: *const f32 = if interior {
                    x.as_ptr().add(row_start + x0 - pad.left)
                } else {
                    for (j, sv) in seg.iter_mut().enumerate().take(seg_len) {
                        let ix = (x0 + j) as isize - pad.left as isize;
                        if ix >= 0 && (ix as usize) < w {
                            *sv = x[row_start + ix as usize];
                        }
                    }
                    seg.as_ptr()
                };
                for kx in 0..k {
                    let xv0 = _mm256_loadu_ps(base.add(kx));
                    let xv1 = if NV == 2 {
                        _mm256_loadu_ps(base.add(kx + 8))
                    } else {
                        xv0
                    };
                    let w0 = _mm256_set1_ps(*wrow.add(kx));
                    let w1 = _mm256_set1_ps(*wrow.add(cin * k * k + kx));
                    let w2 = _mm256_set1_ps(*wrow.add(2 * cin * k * k + kx));
                    let w3 = _mm256_set1_ps(*wrow.add(3 * cin * k * k + kx));
                    a[0][0] = _mm256_add_ps(a[0][0], _mm256_mul_ps(w0, xv0));
                    a[1][0] = _mm256_add_ps(a[1][0], _mm256_mul_ps(w1, xv0));
                    a[2][0] = _mm256_add_ps(a[2][0], _mm256_mul_ps(w2, xv0));
                    a[3][0] = _mm256_add_ps(a[3][0], _mm256_mul_ps(w3, xv0));
                    if NV == 2 {
                        a[0][NV - 1] = _mm256_add_ps(a[0][NV - 1], _mm256_mul_ps(w0, xv1));
                        a[1][NV - 1] = _mm256_add_ps(a[1][NV - 1], _mm256_mul_ps(w1, xv1));
                        a[2][NV - 1] = _mm256_add_ps(a[2][NV - 1], _mm256_mul_ps(w2, xv1));
                        a[3][NV - 1] = _mm256_add_ps(a[3][NV - 1], _mm256_mul_ps(w3, xv1));
                    }
                }
            }
        }
        for (c, ac) in a.iter().enumerate() {
            for v in 0..NV {
                _mm256_storeu_ps(out[c][v].as_mut_ptr(), ac[v]);
            }
        }
    }
    out
}

/// Stride-1 float conv of output channels `co .. co + nc` (nc ≤ CO_BLOCK): each output is the
/// bias plus the products summed over (ci, ky, kx) in that order, as in the plain loop, but
/// `CO_BLOCK × COL_BLOCK` outputs stay in registers while the input row is read once.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn conv_s1_block(
    x: &[f32],
    h: usize,
    w: usize,
    k: usize,
    pad: Pad,
    cin: usize,
    co: usize,
    nc: usize,
    (oy0, oy1): (usize, usize),
    ho: usize,
    wo: usize,
    wv: &dyn Fn(usize) -> f32,
    f32w: Option<&[f32]>,
    b: &[f32],
    y: &SharedMut<'_, f32>,
) {
    let plane_len = ho * wo;
    // Columns [x0, x0 + ncols) of output row oy, any position (taps outside the row skipped).
    let generic = |oy: usize, x0: usize, ncols: usize| {
        let mut acc = [[0f32; COL_BLOCK]; CO_BLOCK];
        for (c, a) in acc.iter_mut().enumerate().take(nc) {
            a.iter_mut().for_each(|v| *v = b[co + c]);
        }
        for ci in 0..cin {
            let xp = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                let iy = (oy + ky) as isize - pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let xrow = &xp[iy as usize * w..(iy as usize + 1) * w];
                for kx in 0..k {
                    let mut wk = [0f32; CO_BLOCK];
                    for (c, v) in wk.iter_mut().enumerate().take(nc) {
                        *v = wv((((co + c) * cin + ci) * k + ky) * k + kx);
                    }
                    let start = (x0 + kx) as isize - pad.left as isize;
                    if ncols == COL_BLOCK && start >= 0 && start as usize + COL_BLOCK <= w {
                        let xs: &[f32; COL_BLOCK] = xrow
                            [start as usize..start as usize + COL_BLOCK]
                            .try_into()
                            .unwrap();
                        axpy_tile(&mut acc, &wk, xs);
                    } else {
                        for j in 0..ncols {
                            let ix = start + j as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let xv = xrow[ix as usize];
                            for c in 0..nc {
                                acc[c][j] += wk[c] * xv;
                            }
                        }
                    }
                }
            }
        }
        for (c, a) in acc.iter().enumerate().take(nc) {
            // SAFETY: output planes co..co+nc belong to the calling task only.
            let dst = unsafe { y.slice((co + c) * plane_len + oy * wo + x0, ncols) };
            dst.copy_from_slice(&a[..ncols]);
        }
    };
    for oy in oy0..oy1 {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        if let Some(wts) = f32w {
            if nc == CO_BLOCK && wo >= 8 {
                // Tiles of 16 (or 8) columns over the whole row, the last one shifted left to end
                // at `wo` (overlapping columns are recomputed to the same values).
                let tile = if wo >= COL_BLOCK { COL_BLOCK } else { 8 };
                let mut x0 = 0;
                loop {
                    let xs = x0.min(wo - tile);
                    let put = |c: usize, v: usize, vals: &[f32; 8]| {
                        // SAFETY: output planes co..co+nc belong to the calling task only.
                        let dst =
                            unsafe { y.slice((co + c) * plane_len + oy * wo + xs + 8 * v, 8) };
                        dst.copy_from_slice(vals);
                    };
                    if tile == COL_BLOCK {
                        let acc = conv_tile_avx::<2>(x, h, w, k, pad, cin, co, oy, xs, wts, b);
                        for (c, a) in acc.iter().enumerate() {
                            put(c, 0, &a[0]);
                            put(c, 1, &a[1]);
                        }
                    } else {
                        let acc = conv_tile_avx::<1>(x, h, w, k, pad, cin, co, oy, xs, wts, b);
                        for (c, a) in acc.iter().enumerate() {
                            put(c, 0, &a[0]);
                        }
                    }
                    if xs + tile >= wo {
                        break;
                    }
                    x0 += tile;
                }
                continue;
            }
        }
        let _ = f32w;
        for x0 in (0..wo).step_by(COL_BLOCK) {
            generic(oy, x0, (wo - x0).min(COL_BLOCK));
        }
    }
}

/// 2-D convolution of a `cin × h × w` map (channel-major) into `cout × ho × wo`.
/// f32/f16 weights accumulate in f32 over (ci, ky, kx); int8 weights quantize the input per
/// image row (over all channels), accumulate each kernel row in i32 and rescale once per row,
/// so the result does not depend on how the image is split into row bands. Output channels are
/// split across `par`'s tasks. int8 weights need `s`; without it the output is NaN.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    h: usize,
    w: usize,
    c: &Conv<'_>,
    stride: usize,
    pad: Pad,
    y: &mut [f32],
    s: Option<&mut ConvScratch<'_>>,
    par: &dyn Parallel,
) {
    let (cin, cout, k) = (c.cin, c.cout, c.k);
    let ho = conv_out_side(h, k, stride, pad.top, pad.bottom);
    let wo = conv_out_side(w, k, stride, pad.left, pad.right);
    let plane_len = ho * wo;
    let y = SharedMut::new(&mut y[..cout * plane_len]);
    let iy_of = |oy: usize, ky: usize| -> Option<usize> {
        let iy = (oy * stride + ky) as isize - pad.top as isize;
        if iy < 0 || iy >= h as isize {
            None
        } else {
            Some(iy as usize)
        }
    };
    let tasks = split_count(cout, par.width() * 2, 1);
    match c.w {
        Weight::F32(_) | Weight::F16(_) => {
            let wv = |idx: usize| -> f32 {
                match c.w {
                    Weight::F32(w) => w[idx],
                    Weight::F16(w) => w[idx].to_f32(),
                    Weight::I8 { .. } => f32::NAN,
                }
            };
            if stride == 1 {
                par.run(tasks, &|task| {
                    let (c0, c1) = split(cout, par.width() * 2, 1, task);
                    let f32w = if let Weight::F32(wt) = c.w {
                        Some(wt)
                    } else {
                        None
                    };
                    // Row tiles outside, channel blocks inside: the few input rows a tile reads
                    // stay in cache while every output channel of the task passes over them.
                    for oy0 in (0..ho).step_by(ROW_TILE) {
                        let oy1 = (oy0 + ROW_TILE).min(ho);
                        let mut co = c0;
                        while co < c1 {
                            let nc = (c1 - co).min(CO_BLOCK);
                            conv_s1_block(
                                x,
                                h,
                                w,
                                k,
                                pad,
                                cin,
                                co,
                                nc,
                                (oy0, oy1),
                                ho,
                                wo,
                                &wv,
                                f32w,
                                c.b,
                                &y,
                            );
                            co += nc;
                        }
                    }
                });
                return;
            }
            par.run(tasks, &|task| {
                let (c0, c1) = split(cout, par.width() * 2, 1, task);
                for co in c0..c1 {
                    // SAFETY: output plane co belongs to this task only.
                    let plane = unsafe { y.slice(co * plane_len, plane_len) };
                    plane.iter_mut().for_each(|v| *v = c.b[co]);
                    for oy0 in (0..ho).step_by(ROW_TILE) {
                        let oy1 = (oy0 + ROW_TILE).min(ho);
                        for ci in 0..cin {
                            let xp = &x[ci * h * w..(ci + 1) * h * w];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let wgt = wv(((co * cin + ci) * k + ky) * k + kx);
                                    let (lo, hi) = ox_range(w, wo, kx, stride, pad.left);
                                    if lo >= hi {
                                        continue;
                                    }
                                    for oy in oy0..oy1 {
                                        let Some(iy) = iy_of(oy, ky) else { continue };
                                        let yrow = &mut plane[oy * wo + lo..oy * wo + hi];
                                        let xrow = &xp[iy * w..(iy + 1) * w];
                                        if stride == 1 {
                                            let xs = &xrow[lo + kx - pad.left..hi + kx - pad.left];
                                            for (o, v) in yrow.iter_mut().zip(xs) {
                                                *o += wgt * *v;
                                            }
                                        } else {
                                            for (j, o) in yrow.iter_mut().enumerate() {
                                                *o += wgt * xrow[(lo + j) * stride + kx - pad.left];
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
        Weight::I8 { q: wq, scales } => {
            let Some(s) = s else {
                // SAFETY: no tasks run; exclusive access.
                unsafe { y.slice(0, cout * plane_len) }
                    .iter_mut()
                    .for_each(|v| *v = f32::NAN);
                return;
            };
            // int8 conv weights are stored [cout, kh, cin, kw] so that one kernel row is one
            // contiguous `cin·k` vector matching an unfolded patch row.
            let kk = cin * k;
            let unfold = &mut s.unfold[..h * wo * kk];
            let qrow = &mut s.qrow[..cin * w];
            let rs = &mut s.row_scale[..h];
            for iy in 0..h {
                let mut amax = 0f32;
                for ci in 0..cin {
                    for v in &x[(ci * h + iy) * w..(ci * h + iy + 1) * w] {
                        amax = amax.max(libm::fabsf(*v));
                    }
                }
                let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                rs[iy] = amax / 127.0;
                for ci in 0..cin {
                    let src = &x[(ci * h + iy) * w..(ci * h + iy + 1) * w];
                    for (q, v) in qrow[ci * w..(ci + 1) * w].iter_mut().zip(src) {
                        *q = libm::roundf(*v * inv).clamp(-127.0, 127.0) as i8;
                    }
                }
                for ox in 0..wo {
                    let dst = &mut unfold[(iy * wo + ox) * kk..(iy * wo + ox + 1) * kk];
                    for ci in 0..cin {
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad.left as isize;
                            dst[ci * k + kx] = if ix >= 0 && (ix as usize) < w {
                                qrow[ci * w + ix as usize]
                            } else {
                                0
                            };
                        }
                    }
                }
            }
            let (unfold, rs) = (&*unfold, &*rs);
            par.run(tasks, &|task| {
                let (c0, c1) = split(cout, par.width() * 2, 1, task);
                let wrow = |co: usize, ky: usize| &wq[(co * k + ky) * kk..(co * k + ky + 1) * kk];
                let mut co = c0;
                while co < c1 {
                    // Two output channels at a time share every unfolded patch row they read.
                    let pair = co + 1 < c1;
                    for oy in 0..ho {
                        for cc in co..co + if pair { 2 } else { 1 } {
                            // SAFETY: output plane cc belongs to this task only.
                            let yrow = unsafe { y.slice(cc * plane_len + oy * wo, wo) };
                            yrow.iter_mut().for_each(|v| *v = c.b[cc]);
                        }
                        for ky in 0..k {
                            let Some(iy) = iy_of(oy, ky) else { continue };
                            let urow = &unfold[iy * wo * kk..(iy + 1) * wo * kk];
                            let u = |ox: usize| &urow[ox * kk..(ox + 1) * kk];
                            let sc0 = rs[iy] * scales[co];
                            // SAFETY: output planes co (and co + 1) belong to this task only.
                            let y0 = unsafe { y.slice(co * plane_len + oy * wo, wo) };
                            if pair {
                                let sc1 = rs[iy] * scales[co + 1];
                                // SAFETY: as above.
                                let y1 = unsafe { y.slice((co + 1) * plane_len + oy * wo, wo) };
                                let (w0, w1) = (wrow(co, ky), wrow(co + 1, ky));
                                let ox4 = wo / 4 * 4;
                                for ox in (0..ox4).step_by(4) {
                                    let r = dot_i8_block(
                                        [u(ox), u(ox + 1), u(ox + 2), u(ox + 3)],
                                        [w0, w1],
                                        kk,
                                    );
                                    for j in 0..4 {
                                        y0[ox + j] += r[j][0] as f32 * sc0;
                                        y1[ox + j] += r[j][1] as f32 * sc1;
                                    }
                                }
                                for ox in ox4..wo {
                                    y0[ox] += dot_i8(u(ox), w0) as f32 * sc0;
                                    y1[ox] += dot_i8(u(ox), w1) as f32 * sc1;
                                }
                            } else {
                                let w0 = wrow(co, ky);
                                for ox in 0..wo {
                                    y0[ox] += dot_i8(u(ox), w0) as f32 * sc0;
                                }
                            }
                        }
                    }
                    co += if pair { 2 } else { 1 };
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        let a: [f32; 37] = core::array::from_fn(|i| (i as f32 * 0.37).sin());
        let b: [f32; 37] = core::array::from_fn(|i| (i as f32 * 0.11).cos());
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
        let qa: [i8; 37] = core::array::from_fn(|i| (i as i32 * 7 % 255 - 127) as i8);
        let qb: [i8; 37] = core::array::from_fn(|i| (i as i32 * 13 % 255 - 127) as i8);
        let n: i32 = qa.iter().zip(&qb).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot_i8(&qa, &qb), n);
    }

    #[test]
    fn ox_range_is_exact() {
        for w in 1..9 {
            for stride in 1..3 {
                for k in [1usize, 3] {
                    for pl in 0..2 {
                        if w + pl + 1 < k {
                            continue;
                        }
                        let wo = conv_out_side(w, k, stride, pl, 1);
                        for kx in 0..k {
                            let (lo, hi) = ox_range(w, wo, kx, stride, pl);
                            for ox in 0..wo {
                                let ix = (ox * stride + kx) as isize - pl as isize;
                                let valid = ix >= 0 && (ix as usize) < w;
                                assert_eq!(
                                    valid,
                                    ox >= lo && ox < hi,
                                    "w{w} s{stride} k{k} pl{pl} kx{kx} ox{ox}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod kernel_tests {
    extern crate std;

    use super::*;
    use crate::parallel::{Parallel, Sequential};
    use half::f16;
    use std::vec;
    use std::vec::Vec;

    /// Deterministic pseudo-random values in [−1, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, gain: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * gain).collect()
        }
    }

    /// Runs the tasks in reverse order and claims a width of 3: a correct kernel gives the same
    /// bits as [`Sequential`] (every task writes its own outputs, computed the sequential way).
    struct Reversed;
    impl Parallel for Reversed {
        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            for i in (0..n).rev() {
                f(i);
            }
        }
        fn width(&self) -> usize {
            3
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// A `cin × h × w` map whose rows have very different magnitudes (so per-row, per-band and
    /// per-tensor activation scales all differ).
    fn banded_input(rng: &mut Lcg, cin: usize, h: usize, w: usize) -> Vec<f32> {
        let gains = [
            0.05f32, 3.0, 0.4, 12.0, 1.0, 0.002, 7.5, 0.9, 0.03, 2.2, 40.0, 0.6, 1.7, 0.25,
        ];
        let mut x = vec![0f32; cin * h * w];
        for ci in 0..cin {
            for iy in 0..h {
                for ix in 0..w {
                    x[(ci * h + iy) * w + ix] = rng.next() * gains[iy % gains.len()];
                }
            }
        }
        x
    }

    /// Rows `a..b` of every channel of a `cin × h × w` map.
    fn rows(x: &[f32], cin: usize, h: usize, w: usize, a: usize, b: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(cin * (b - a) * w);
        for ci in 0..cin {
            out.extend_from_slice(&x[(ci * h + a) * w..(ci * h + b) * w]);
        }
        out
    }

    /// A random int8 conv: `q` in the kernel's storage layout `[cout, kh, cin, kw]`, and the
    /// dequantized weights `deq` in the official layout `[cout, cin, kh, kw]` (f32 path).
    struct Int8Conv {
        q: Vec<i8>,
        scales: Vec<f32>,
        deq: Vec<f32>,
        bias: Vec<f32>,
    }

    fn int8_conv(rng: &mut Lcg, cout: usize, cin: usize, k: usize) -> Int8Conv {
        let official: Vec<i8> = (0..cout * cin * k * k)
            .map(|i| {
                if i % 7 == 3 {
                    0
                } else {
                    (rng.next() * 127.0) as i8
                }
            })
            .collect();
        let scales: Vec<f32> = (0..cout)
            .map(|_| 0.001 + 0.01 * (rng.next() + 1.0))
            .collect();
        let per = cin * k * k;
        let deq = official
            .iter()
            .enumerate()
            .map(|(i, v)| *v as f32 * scales[i / per])
            .collect();
        let mut q = vec![0i8; official.len()];
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        q[((co * k + ky) * cin + ci) * k + kx] =
                            official[((co * cin + ci) * k + ky) * k + kx];
                    }
                }
            }
        }
        let bias = rng.vec(cout, 0.5);
        Int8Conv {
            q,
            scales,
            deq,
            bias,
        }
    }

    fn run_conv_on(
        x: &[f32],
        h: usize,
        w: usize,
        c: &Conv<'_>,
        stride: usize,
        pad: Pad,
        par: &dyn Parallel,
    ) -> (Vec<f32>, usize, usize) {
        let ho = conv_out_side(h, c.k, stride, pad.top, pad.bottom);
        let wo = conv_out_side(w, c.k, stride, pad.left, pad.right);
        let mut y = vec![f32::NAN; c.cout * ho * wo];
        let (nu, nr, nf) = conv_scratch_len(c.cin, h, w, wo, c.k);
        let (mut u, mut r, mut f) = (vec![0x55i8; nu], vec![0x55i8; nr], vec![f32::NAN; nf]);
        let mut s = ConvScratch {
            unfold: &mut u,
            qrow: &mut r,
            row_scale: &mut f,
        };
        conv2d(x, h, w, c, stride, pad, &mut y, Some(&mut s), par);
        (y, ho, wo)
    }

    fn run_conv(
        x: &[f32],
        h: usize,
        w: usize,
        c: &Conv<'_>,
        stride: usize,
        pad: Pad,
    ) -> (Vec<f32>, usize, usize) {
        run_conv_on(x, h, w, c, stride, pad, &Sequential)
    }

    /// Output rows `r0..r0 + n` of a `cout × ho × wo` map.
    fn out_rows(y: &[f32], cout: usize, ho: usize, wo: usize, r0: usize, n: usize) -> Vec<u32> {
        let mut v = Vec::new();
        for co in 0..cout {
            v.extend(
                y[(co * ho + r0) * wo..(co * ho + r0 + n) * wo]
                    .iter()
                    .map(|f| f.to_bits()),
            );
        }
        v
    }

    #[test]
    fn conv_rows_do_not_depend_on_the_band_split() {
        let mut rng = Lcg(1);
        let (cin, cout, k, h, w) = (5, 6, 3, 12, 9);
        let x = banded_input(&mut rng, cin, h, w);
        let wt = int8_conv(&mut rng, cout, cin, k);
        for int8 in [true, false] {
            let conv = Conv {
                w: if int8 {
                    Weight::I8 {
                        q: &wt.q,
                        scales: &wt.scales,
                    }
                } else {
                    Weight::F32(&wt.deq)
                },
                b: &wt.bias,
                cout,
                cin,
                k,
            };
            // Stride 1, padding 1 (decoder convs).
            let (full, ho, wo) = run_conv(&x, h, w, &conv, 1, Pad::same(1));
            assert_eq!(ho, h);
            assert!(full.iter().all(|v| v.is_finite()));
            for r in 1..h {
                // Output rows 0..r read input rows 0..=r; rows r..h read r-1..h.
                let top = rows(&x, cin, h, w, 0, r + 1);
                let pad_top = Pad {
                    top: 1,
                    left: 1,
                    bottom: 0,
                    right: 1,
                };
                let (yt, hot, _) = run_conv(&top, r + 1, w, &conv, 1, pad_top);
                assert_eq!(hot, r);
                assert_eq!(
                    out_rows(&yt, cout, hot, wo, 0, r),
                    out_rows(&full, cout, ho, wo, 0, r),
                    "int8 {int8} split {r}: top band"
                );
                let bot = rows(&x, cin, h, w, r - 1, h);
                let pad_bot = Pad {
                    top: 0,
                    left: 1,
                    bottom: 1,
                    right: 1,
                };
                let (yb, hob, _) = run_conv(&bot, h - r + 1, w, &conv, 1, pad_bot);
                assert_eq!(hob, h - r);
                assert_eq!(
                    out_rows(&yb, cout, hob, wo, 0, h - r),
                    out_rows(&full, cout, ho, wo, r, h - r),
                    "int8 {int8} split {r}: bottom band"
                );
            }
            // Stride 2, padding right/bottom only (encoder downsampling).
            let down = Pad {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1,
            };
            let (full, ho, wo) = run_conv(&x, h, w, &conv, 2, down);
            assert_eq!(ho, h / 2);
            for r in 1..ho {
                let top = rows(&x, cin, h, w, 0, 2 * r + 1);
                let (yt, hot, _) =
                    run_conv(&top, 2 * r + 1, w, &conv, 2, Pad { bottom: 0, ..down });
                assert_eq!(hot, r);
                assert_eq!(
                    out_rows(&yt, cout, hot, wo, 0, r),
                    out_rows(&full, cout, ho, wo, 0, r),
                    "int8 {int8} stride 2 split {r}: top"
                );
                let bot = rows(&x, cin, h, w, 2 * r, h);
                let (yb, hob, _) = run_conv(&bot, h - 2 * r, w, &conv, 2, down);
                assert_eq!(hob, ho - r);
                assert_eq!(
                    out_rows(&yb, cout, hob, wo, 0, ho - r),
                    out_rows(&full, cout, ho, wo, r, ho - r),
                    "int8 {int8} stride 2 split {r}: bottom"
                );
            }
        }
    }

    #[test]
    fn int8_conv_error_is_bounded_by_the_activation_rounding() {
        // x = q·s + e with |e| ≤ s/2 per row, so |y_int8 − y_f32(dequantized W)| ≤ Σ |w|·s/2.
        // This also pins the int8 storage layout: a transposed kernel would break the bound.
        let mut rng = Lcg(2);
        let (cin, cout, k, h, w) = (6, 3, 3, 10, 7);
        let x = banded_input(&mut rng, cin, h, w);
        let wt = int8_conv(&mut rng, cout, cin, k);
        let c8 = Conv {
            w: Weight::I8 {
                q: &wt.q,
                scales: &wt.scales,
            },
            b: &wt.bias,
            cout,
            cin,
            k,
        };
        let cf = Conv {
            w: Weight::F32(&wt.deq),
            ..c8
        };
        let (y8, ho, wo) = run_conv(&x, h, w, &c8, 1, Pad::same(1));
        let (yf, _, _) = run_conv(&x, h, w, &cf, 1, Pad::same(1));
        let row_scale: Vec<f32> = (0..h)
            .map(|iy| {
                (0..cin)
                    .flat_map(|ci| &x[(ci * h + iy) * w..(ci * h + iy + 1) * w])
                    .fold(0f32, |m, v| m.max(v.abs()))
                    / 127.0
            })
            .collect();
        let mut worst = 0f64;
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut bound = 0f64;
                    let mut mag = 0f64;
                    for ci in 0..cin {
                        for ky in 0..k {
                            let iy = oy as isize + ky as isize - 1;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let ix = ox as isize + kx as isize - 1;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let wv = wt.deq[((co * cin + ci) * k + ky) * k + kx].abs() as f64;
                                bound += wv * row_scale[iy as usize] as f64 / 2.0;
                                mag +=
                                    wv * x[(ci * h + iy as usize) * w + ix as usize].abs() as f64;
                            }
                        }
                    }
                    let i = (co * ho + oy) * wo + ox;
                    let d = (y8[i] - yf[i]).abs() as f64;
                    // Float rounding of both paths on top of the quantization bound.
                    assert!(
                        d <= bound * 1.0001 + 1e-5 * (mag + 1.0),
                        "({co},{oy},{ox}): |d| {d} > bound {bound}"
                    );
                    worst = worst.max(d / bound.max(1e-30));
                }
            }
        }
        // The bound is not vacuous: the error uses a fair part of it somewhere.
        assert!(worst > 0.05, "worst error / bound = {worst}");
    }

    #[test]
    fn f16_conv_equals_f32_conv_on_f16_values() {
        let mut rng = Lcg(7);
        let (cin, cout, k, h, w) = (3, 5, 3, 7, 19);
        let x = rng.vec(cin * h * w, 2.0);
        let w16: Vec<f16> = (0..cout * cin * k * k)
            .map(|_| f16::from_f32(rng.next()))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let b = rng.vec(cout, 1.0);
        for (stride, pad) in [
            (1, Pad::same(1)),
            (
                2,
                Pad {
                    top: 0,
                    left: 0,
                    bottom: 1,
                    right: 1,
                },
            ),
        ] {
            let c16 = Conv {
                w: Weight::F16(&w16),
                b: &b,
                cout,
                cin,
                k,
            };
            let c32 = Conv {
                w: Weight::F32(&w32),
                ..c16
            };
            let (a, _, _) = run_conv(&x, h, w, &c16, stride, pad);
            let (z, _, _) = run_conv(&x, h, w, &c32, stride, pad);
            assert_eq!(bits(&a), bits(&z), "stride {stride}");
        }
    }

    #[test]
    fn f16_linear_equals_f32_linear_on_f16_values() {
        let mut rng = Lcg(3);
        for (n, din, dout) in [
            (1usize, 8usize, 3usize),
            (5, 37, 11),
            (17, 64, 9),
            (9, 16, 33),
        ] {
            let w16: Vec<f16> = (0..din * dout)
                .map(|_| f16::from_f32(rng.next() * 2.0))
                .collect();
            let w32: Vec<f32> = w16.iter().map(|h| h.to_f32()).collect();
            let b = rng.vec(dout, 1.0);
            let x = rng.vec(n * din, 3.0);
            let mut y = [vec![0f32; n * dout], vec![0f32; n * dout]];
            for (yi, w) in y.iter_mut().zip([Weight::F32(&w32), Weight::F16(&w16)]) {
                let (nf, _) = linear_scratch_len(n, din);
                let mut f = vec![f32::NAN; nf];
                let mut s = LinearScratch {
                    f: &mut f,
                    q: &mut [],
                };
                let l = Linear {
                    w,
                    b: Some(&b),
                    out_dim: dout,
                    in_dim: din,
                };
                linear(&x, n, &l, yi, &mut s, &Sequential);
            }
            assert_eq!(bits(&y[0]), bits(&y[1]), "n {n} in {din} out {dout}");
            // And both are the dot products.
            for t in 0..n {
                for o in 0..dout {
                    let want: f64 = (0..din)
                        .map(|i| x[t * din + i] as f64 * w32[o * din + i] as f64)
                        .sum::<f64>()
                        + b[o] as f64;
                    assert!((y[0][t * dout + o] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()));
                }
            }
        }
    }

    #[test]
    fn int8_linear_error_is_bounded() {
        let mut rng = Lcg(4);
        let (n, din, dout) = (6usize, 40usize, 7usize);
        let wf = rng.vec(din * dout, 0.5);
        let mut q = vec![0i8; din * dout];
        let mut scales = vec![0f32; dout];
        for o in 0..dout {
            scales[o] = quantize_row(&wf[o * din..(o + 1) * din], &mut q[o * din..(o + 1) * din]);
        }
        let deq: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, v)| *v as f32 * scales[i / din])
            .collect();
        let mut x = rng.vec(n * din, 1.0);
        for (t, row) in x.chunks_exact_mut(din).enumerate() {
            row.iter_mut()
                .for_each(|v| *v *= [0.01f32, 1.0, 30.0, 0.5, 4.0, 0.1][t]);
        }
        let (nf, nq) = linear_scratch_len(n, din);
        let run = |w: Weight<'_>| {
            let (mut f, mut qs) = (vec![0f32; nf], vec![0i8; nq]);
            let mut s = LinearScratch {
                f: &mut f,
                q: &mut qs,
            };
            let mut y = vec![0f32; n * dout];
            linear(
                &x,
                n,
                &Linear {
                    w,
                    b: None,
                    out_dim: dout,
                    in_dim: din,
                },
                &mut y,
                &mut s,
                &Sequential,
            );
            y
        };
        let y8 = run(Weight::I8 {
            q: &q,
            scales: &scales,
        });
        let yf = run(Weight::F32(&deq));
        for t in 0..n {
            let sx = x[t * din..(t + 1) * din]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                / 127.0;
            for o in 0..dout {
                let bound: f32 = deq[o * din..(o + 1) * din]
                    .iter()
                    .map(|w| w.abs() * sx / 2.0)
                    .sum();
                let d = (y8[t * dout + o] - yf[t * dout + o]).abs();
                assert!(d <= bound * 1.001 + 1e-6, "row {t} out {o}: {d} > {bound}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_executor() {
        let mut rng = Lcg(8);
        // Linear in every storage type, with ragged token and output counts.
        let (n, din, dout) = (13usize, 24usize, 37usize);
        let wf = rng.vec(din * dout, 0.3);
        let w16: Vec<f16> = wf.iter().map(|v| f16::from_f32(*v)).collect();
        let mut q = vec![0i8; din * dout];
        let scales: Vec<f32> = (0..dout)
            .map(|o| quantize_row(&wf[o * din..(o + 1) * din], &mut q[o * din..(o + 1) * din]))
            .collect();
        let b = rng.vec(dout, 0.1);
        let x = rng.vec(n * din, 1.0);
        let (nf, nq) = linear_scratch_len(n, din);
        for w in [
            Weight::F32(&wf),
            Weight::F16(&w16),
            Weight::I8 {
                q: &q,
                scales: &scales,
            },
        ] {
            let l = Linear {
                w,
                b: Some(&b),
                out_dim: dout,
                in_dim: din,
            };
            let mut outs = Vec::new();
            for par in [&Sequential as &dyn Parallel, &Reversed] {
                let (mut f, mut qs) = (vec![0f32; nf], vec![0i8; nq]);
                let mut y = vec![f32::NAN; n * dout];
                linear(
                    &x,
                    n,
                    &l,
                    &mut y,
                    &mut LinearScratch {
                        f: &mut f,
                        q: &mut qs,
                    },
                    par,
                );
                assert!(y.iter().all(|v| v.is_finite()));
                outs.push(bits(&y));
            }
            assert_eq!(outs[0], outs[1], "linear {:?}", core::mem::discriminant(&w));
        }
        // Conv in every storage type.
        let (cin, cout, k, h, wd) = (4, 9, 3, 6, 21);
        let xc = banded_input(&mut rng, cin, h, wd);
        let wt = int8_conv(&mut rng, cout, cin, k);
        let d16: Vec<f16> = wt.deq.iter().map(|v| f16::from_f32(*v)).collect();
        for w in [
            Weight::F32(&wt.deq),
            Weight::F16(&d16),
            Weight::I8 {
                q: &wt.q,
                scales: &wt.scales,
            },
        ] {
            let c = Conv {
                w,
                b: &wt.bias,
                cout,
                cin,
                k,
            };
            for (stride, pad) in [
                (1, Pad::same(1)),
                (
                    2,
                    Pad {
                        top: 0,
                        left: 0,
                        bottom: 1,
                        right: 1,
                    },
                ),
            ] {
                let (a, _, _) = run_conv_on(&xc, h, wd, &c, stride, pad, &Sequential);
                let (z, _, _) = run_conv_on(&xc, h, wd, &c, stride, pad, &Reversed);
                assert!(a.iter().all(|v| v.is_finite()));
                assert_eq!(bits(&a), bits(&z), "conv stride {stride}");
            }
        }
    }

    #[test]
    fn quantize_row_round_trip_error_is_at_most_half_a_step() {
        let mut rng = Lcg(5);
        for (len, gain) in [
            (1usize, 1.0f32),
            (7, 0.001),
            (64, 1.0),
            (300, 250.0),
            (33, 1e-20),
        ] {
            let x = rng.vec(len, gain);
            let mut q = vec![0i8; len];
            let s = quantize_row(&x, &mut q);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(s, amax / 127.0);
            for (v, qi) in x.iter().zip(&q) {
                assert!((-127..=127).contains(qi));
                let err = (*qi as f32 * s - v).abs();
                assert!(
                    err <= s / 2.0 * (1.0 + 1e-6),
                    "len {len}: x {v} q {qi} s {s} err {err}"
                );
            }
            // The largest magnitude maps to ±127.
            let i = x.iter().position(|v| v.abs() == amax).unwrap();
            assert_eq!(q[i].unsigned_abs(), 127, "len {len}");
        }
        // All zeros: scale 0, codes 0.
        let mut q = [5i8; 4];
        assert_eq!(quantize_row(&[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        // A non-finite maximum: NaN scale, codes 0 (never garbage).
        let mut q = [5i8; 3];
        assert!(quantize_row(&[1.0, f32::INFINITY, -2.0], &mut q).is_nan());
        assert_eq!(q, [0; 3]);
    }

    #[test]
    fn softmax_and_layer_norm_basics() {
        let mut rng = Lcg(6);
        let mut x = rng.vec(50, 20.0);
        x[3] = 1000.0; // no overflow
        softmax(&mut x);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-5 && x.iter().all(|v| *v >= 0.0));
        assert!(x[3] > 0.99);
        let x = rng.vec(3 * 64, 5.0);
        let mut y = vec![0f32; x.len()];
        layer_norm(&x, &mut y, 64, 1e-6);
        for r in y.chunks_exact(64) {
            let mean: f64 = r.iter().map(|v| *v as f64).sum::<f64>() / 64.0;
            let var: f64 = r.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 64.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
                "mean {mean} var {var}"
            );
        }
    }
}

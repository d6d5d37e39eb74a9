//! Linear (`y = x Wᵀ + b`) in f32, f16 and int8 weights, blocked 4 tokens × 2 output rows, with
//! its scratch type and scratch-size function.

use super::dot::{dot, dot_block_with, dot_f16};
use super::gemm::{act_row_len, encode_activations, gemm_i8_with};
use super::layers::{Linear, Weight};
use super::quant::quantize_row_with;
use super::Isa;
use crate::parallel::{for_rows, split, split_count, Parallel, SharedMut};

/// Scratch for [`linear`] with int8 weights: per-row activation scales and int8 activations.
pub struct LinearScratch<'s> {
    /// At least `n` floats.
    pub f: &'s mut [f32],
    /// At least `n · act_row_len(in_dim)` bytes (int8 weights only): each row quantized once
    /// and read by every output channel.
    pub q: &'s mut [i8],
}

/// Scratch sizes (f32 count, i8 count) [`linear`] needs for `n` rows of `in_dim`.
pub fn linear_scratch_len(n: usize, in_dim: usize) -> (usize, usize) {
    (n, n * act_row_len(in_dim))
}

/// Tokens per block in [`linear`]: a block of activations stays in cache while the weight rows
/// stream past it.
const TOKEN_BLOCK: usize = 64;

/// Output columns `o0..o1` of a Linear for `n` token rows: 4 tokens × 2 output rows go through
/// the register block `block`, the ragged edges through `single`; `out(t, per_o(o), acc)` turns
/// an accumulator into the output value, with the per-output parameters (bias, scale) fetched
/// once per output row, outside the token loop (bounds checks in that loop measurably slow the
/// block down). Every value equals `out(t, per_o(o), single(x[t], w[o]))`.
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
/// Runs on [`Isa::active`].
pub fn linear(
    x: &[f32],
    n: usize,
    l: &Linear<'_>,
    y: &mut [f32],
    s: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    linear_with(Isa::active(), par, x, n, l, y, s)
}

/// [`linear`] on the kernels of `isa` (which must be [supported](Isa::supported); the results are
/// the same bits on every ISA) and `par`'s tasks.
pub fn linear_with(
    isa: Isa,
    par: &dyn Parallel,
    x: &[f32],
    n: usize,
    l: &Linear<'_>,
    y: &mut [f32],
    s: &mut LinearScratch<'_>,
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
                |x, w, n| dot_block_with(isa, x, w, n),
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
        Weight::I8(wp) => {
            // Each token row is quantized once (one scale per row) and read by every output
            // channel, in the encoding `isa`'s GEMM wants.
            let lda = act_row_len(din);
            let qx = &mut s.q[..n * lda];
            let sx = &mut s.f[..n];
            {
                let (rows, scales) = (SharedMut::new(&mut *qx), SharedMut::new(&mut *sx));
                for_rows(par, n, din, &|lo, hi| {
                    for t in lo..hi {
                        // SAFETY: row t (and its scale) belongs to this call only.
                        let (qrow, st) = unsafe { (rows.slice(t * lda, lda), scales.get_mut(t)) };
                        *st = quantize_row_with(isa, &x[t * din..(t + 1) * din], &mut qrow[..din]);
                        qrow[din..].iter_mut().for_each(|v| *v = 0);
                        encode_activations(isa, qrow);
                    }
                });
            }
            let (qx, sx) = (&*qx, &*sx);
            par.run(tasks, &|i| {
                let (o0, o1) = split(dout, par.width() * 4, 16, i);
                gemm_i8_with(isa, qx, lda, n, &wp, (o0, o1), |t, o, sums| {
                    // SAFETY: output columns o0..o1 belong to this task only.
                    let yr = unsafe { y.slice(t * dout + o, sums.len()) };
                    let scales = &wp.scales[wp.o0 + o..][..sums.len()];
                    let st = sx[t];
                    // Zipped slices, no per-value branch: the loop vectorizes.
                    let ys = yr.iter_mut().zip(sums).zip(scales);
                    match l.b {
                        Some(b) => {
                            for ((yv, acc), (so, bv)) in ys
                                .zip(&b[o..o + sums.len()])
                                .map(|(((yv, acc), so), bv)| ((yv, acc), (so, bv)))
                            {
                                *yv = *acc as f32 * (st * so) + bv;
                            }
                        }
                        None => {
                            for ((yv, acc), so) in ys {
                                *yv = *acc as f32 * (st * so) + 0.0;
                            }
                        }
                    }
                });
            });
        }
    }
}

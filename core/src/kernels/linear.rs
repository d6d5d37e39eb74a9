//! Linear (`y = x Wᵀ + b`) in f32, f16 and int8 weights, blocked 4 tokens × 2 output rows, with
//! its scratch type and scratch-size function.

use super::dot::{dot, dot_block_lanes, dot_block_with, dot_f16, f16_to_f32, reduce_lanes};
use super::gemm::{act_row_len, encode_activations, gemm_i8_with, wants_offset_activations};
use super::layers::{Linear, PanelsI8, Weight};
use super::quant::{quantize_residual, quantize_row_with};
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
/// int8 weights use int8 activations quantized per row and i32 accumulation; with two-pass
/// activations ([`PanelsI8::act16`]) each row's rounding residual is quantized too and a second
/// GEMM adds `acc₂ · (s₂ · s_w)` to every output (bias once, in the first). Output channels are
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
        // With AVX the widened chunks feed the vector register block; elsewhere (the scalar
        // lanes of Cortex-M and AArch64) one dot product per output keeps its eight lanes in
        // registers, which measured cheaper on the Cortex-M4 (docs/QUANTIZATION.md). Same bits.
        Weight::F16(w) if f16_blocked(isa) => par.run(tasks, &|i| {
            let (o0, o1) = split(dout, par.width() * 4, 16, i);
            f16_outputs(isa, x, n, din, dout, w, (o0, o1), &y, bias);
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
            let lda = quantize_activations(isa, par, x, n, din, s);
            for &accumulate in passes(wp.act16) {
                if accumulate {
                    quantize_residuals(isa, par, x, n, din, lda, s);
                }
                let codes = (&s.q[..n * lda], lda, &s.f[..n]);
                int8_outputs(isa, par, codes, n, l, &wp, &y, accumulate);
            }
        }
    }
}

/// Whether f16 weights go through [`f16_outputs`] (AVX's vector register block) rather than one
/// dot product per output.
fn f16_blocked(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa.has_avx();
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// f16 weight columns widened to f32 at a time: a multiple of 8, so the lane sums chain across
/// chunks to the bits of one pass (2 rows: 1 KiB of stack).
const F16_CHUNK: usize = 128;
/// Tokens whose lane sums are held while a chunk of two weight rows is reused (2 KiB of stack).
const F16_TOKENS: usize = 32;

/// Output columns `o0..o1` of a Linear with f16 weights: each chunk of two weight rows is widened
/// once into f32 and runs through the f32 register block for every 4 tokens of a token block,
/// the lane sums carried across chunks. Every value has the bits of the f32 Linear on the widened
/// weights (and of [`super::dot::dot_f16`]): the same lanes in the same order, the same tail and
/// reduction. Stack only, no scratch (a precision plan's f16 weights run on a microcontroller).
#[allow(clippy::too_many_arguments)]
fn f16_outputs(
    isa: Isa,
    x: &[f32],
    n: usize,
    din: usize,
    dout: usize,
    w: &[half::f16],
    (o0, o1): (usize, usize),
    y: &SharedMut<'_, f32>,
    bias: impl Fn(usize) -> f32,
) {
    let full = din / 8 * 8;
    let mut wb = [[0f32; F16_CHUNK]; 2];
    for t0 in (0..n).step_by(F16_TOKENS) {
        let t1 = (t0 + F16_TOKENS).min(n);
        let groups = (t1 - t0) / 4;
        let mut o = o0;
        while o < o1 {
            // Two rows, or the last one (its lanes also fill the second slot; not written).
            let rows = if o + 1 < o1 { 2 } else { 1 };
            let mut acc = [[[[0f32; 8]; 2]; 4]; F16_TOKENS / 4];
            let mut rest = [[[0f32; 8]; 2]; 4];
            let mut k0 = 0;
            while k0 < full {
                let kc = (full - k0).min(F16_CHUNK);
                for r in 0..2 {
                    let src = &w[(o + r.min(rows - 1)) * din + k0..][..kc];
                    for (d, s) in wb[r][..kc].iter_mut().zip(src) {
                        *d = f16_to_f32(*s);
                    }
                }
                let ws = [&wb[0][..kc], &wb[1][..kc]];
                for (g, a) in acc.iter_mut().enumerate().take(groups) {
                    let t = t0 + 4 * g;
                    let xs = [0, 1, 2, 3].map(|d| &x[(t + d) * din + k0..][..kc]);
                    dot_block_lanes(isa, xs, ws, kc, a);
                }
                for (d, t) in (t0 + 4 * groups..t1).enumerate() {
                    let xt = &x[t * din + k0..][..kc];
                    for r in 0..rows {
                        for (i, (a, b)) in xt.iter().zip(ws[r]).enumerate() {
                            rest[d][r][i % 8] += a * b;
                        }
                    }
                }
                k0 += kc;
            }
            let put = |t: usize, lanes: &[[f32; 8]; 2]| {
                for r in 0..rows {
                    let wr = &w[(o + r) * din..(o + r + 1) * din];
                    let mut tail = 0f32;
                    for j in full..din {
                        tail += x[t * din + j] * f16_to_f32(wr[j]);
                    }
                    let v = reduce_lanes(&lanes[r], tail) + bias(o + r);
                    // SAFETY: output columns o0..o1 belong to the calling task only.
                    unsafe { y.set(t * dout + o + r, v) };
                }
            };
            for (g, a) in acc.iter().enumerate().take(groups) {
                for (d, lanes) in a.iter().enumerate() {
                    put(t0 + 4 * g + d, lanes);
                }
            }
            for (d, t) in (t0 + 4 * groups..t1).enumerate() {
                put(t, &rest[d]);
            }
            o += rows;
        }
    }
}

/// Quantizes each of the `n` rows of `x` once (one scale per row, into `s.f`) into `s.q`, padded
/// and encoded for `isa`'s GEMM; returns the row stride.
fn quantize_activations(
    isa: Isa,
    par: &dyn Parallel,
    x: &[f32],
    n: usize,
    din: usize,
    s: &mut LinearScratch<'_>,
) -> usize {
    let lda = act_row_len(din);
    let (rows, scales) = (
        SharedMut::new(&mut s.q[..n * lda]),
        SharedMut::new(&mut s.f[..n]),
    );
    for_rows(par, n, din, &|lo, hi| {
        for t in lo..hi {
            // SAFETY: row t (and its scale) belongs to this call only.
            let (qrow, st) = unsafe { (rows.slice(t * lda, lda), scales.get_mut(t)) };
            *st = quantize_row_with(isa, &x[t * din..(t + 1) * din], &mut qrow[..din]);
            qrow[din..].iter_mut().for_each(|v| *v = 0);
            encode_activations(isa, qrow);
        }
    });
    lda
}

/// The passes of an int8 Linear: the plain one, and with two-pass activations the accumulating
/// residual pass after it.
fn passes(act16: bool) -> &'static [bool] {
    if act16 {
        &[false, true]
    } else {
        &[false]
    }
}

/// Replaces the codes and scales that [`quantize_activations`] left in `s` by those of each row's
/// rounding residual ([`quantize_residual`]), in place: the second pass of two-pass activations.
fn quantize_residuals(
    isa: Isa,
    par: &dyn Parallel,
    x: &[f32],
    n: usize,
    din: usize,
    lda: usize,
    s: &mut LinearScratch<'_>,
) {
    let (rows, scales) = (
        SharedMut::new(&mut s.q[..n * lda]),
        SharedMut::new(&mut s.f[..n]),
    );
    let offset = wants_offset_activations(isa);
    for_rows(par, n, din, &|lo, hi| {
        for t in lo..hi {
            // SAFETY: row t (and its scale) belongs to this call only.
            let (qrow, st) = unsafe { (rows.slice(t * lda, din), scales.get_mut(t)) };
            if offset {
                qrow.iter_mut().for_each(|v| *v = (*v as u8 ^ 0x80) as i8);
            }
            *st = quantize_residual(&x[t * din..(t + 1) * din], *st, qrow);
            encode_activations(isa, qrow);
        }
    });
}

/// The outputs of an int8 Linear from quantized activations `(codes, stride, scales)`:
/// `y[t][o] = acc · (scale_t · scale_o) + b[o]`, output channels split over `par`'s tasks; with
/// `accumulate`, `y[t][o] = acc · (scale_t · scale_o) + y[t][o]` (the residual pass).
#[allow(clippy::too_many_arguments)]
fn int8_outputs(
    isa: Isa,
    par: &dyn Parallel,
    (qx, lda, sx): (&[i8], usize, &[f32]),
    n: usize,
    l: &Linear<'_>,
    wp: &PanelsI8<'_>,
    y: &SharedMut<'_, f32>,
    accumulate: bool,
) {
    let dout = l.out_dim;
    let tasks = split_count(dout, par.width() * 4, 16);
    par.run(tasks, &|i| {
        let (o0, o1) = split(dout, par.width() * 4, 16, i);
        gemm_i8_with(isa, qx, lda, n, wp, (o0, o1), |t, o, sums| {
            // SAFETY: output columns o0..o1 belong to this task only.
            let yr = unsafe { y.slice(t * dout + o, sums.len()) };
            let scales = &wp.scales[wp.o0 + o..][..sums.len()];
            let st = sx[t];
            // Zipped slices, no per-value branch: the loop vectorizes.
            let ys = yr.iter_mut().zip(sums).zip(scales);
            match l.b {
                _ if accumulate => {
                    // One rounded addition, as CUDA's linear_out with y as the bias.
                    for ((yv, acc), so) in ys {
                        *yv += *acc as f32 * (st * so);
                    }
                }
                Some(b) => {
                    for (((yv, acc), so), bv) in ys.zip(&b[o..o + sums.len()]) {
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

/// Several Linears of the same input: `ys[i] = x Wᵢᵀ + bᵢ` for `n` rows. With int8 weights the
/// rows are quantized once and shared by every Linear (the attention's q and k/v from one
/// LayerNorm output); the results are the same bits as one [`linear`] call each.
pub fn linear_shared<const N: usize>(
    x: &[f32],
    n: usize,
    mut outs: [(&Linear<'_>, &mut [f32]); N],
    s: &mut LinearScratch<'_>,
    par: &dyn Parallel,
) {
    let isa = Isa::active();
    let din = outs.first().map_or(0, |(l, _)| l.in_dim);
    let act16 = |l: &Linear<'_>| matches!(l.w, Weight::I8(wp) if wp.act16);
    let first_act16 = outs.first().is_some_and(|(l, _)| act16(l));
    let all_int8 = outs
        .iter()
        .all(|(l, _)| matches!(l.w, Weight::I8(_)) && l.in_dim == din && act16(l) == first_act16);
    if !all_int8 || N < 2 {
        for (l, y) in outs.iter_mut() {
            linear_with(isa, par, x, n, l, y, s);
        }
        return;
    }
    let lda = quantize_activations(isa, par, &x[..n * din], n, din, s);
    for &accumulate in passes(first_act16) {
        if accumulate {
            quantize_residuals(isa, par, &x[..n * din], n, din, lda, s);
        }
        for (l, y) in outs.iter_mut() {
            if let Weight::I8(wp) = l.w {
                let y = SharedMut::new(&mut y[..n * l.out_dim]);
                let codes = (&s.q[..n * lda], lda, &s.f[..n]);
                int8_outputs(isa, par, codes, n, l, &wp, &y, accumulate);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    extern crate std;

    use super::*;
    use crate::parallel::Sequential;
    use std::vec;

    /// The residual pass reads codes stored for the kernel: the VNNI kernels' offset bytes must
    /// decode to the same residual codes as the plain ones (this needs no VNNI CPU: only the
    /// byte encoding differs).
    #[test]
    fn residual_codes_do_not_depend_on_the_activation_encoding() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let (n, din) = (3usize, 45usize);
        let x: std::vec::Vec<f32> = (0..n * din)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i % 3) as f32)
            .collect();
        let codes = |isa: Isa| {
            let (nf, nq) = linear_scratch_len(n, din);
            let (mut f, mut q) = (vec![0f32; nf], vec![0i8; nq]);
            let mut s = LinearScratch {
                f: &mut f,
                q: &mut q,
            };
            let lda = quantize_activations(isa, &Sequential, &x, n, din, &mut s);
            quantize_residuals(isa, &Sequential, &x, n, din, lda, &mut s);
            if wants_offset_activations(isa) {
                s.q.iter_mut().for_each(|v| *v = (*v as u8 ^ 0x80) as i8);
            }
            (s.q[..n * lda].to_vec(), s.f[..n].to_vec())
        };
        let plain = codes(Isa::Avx2);
        assert!(plain.0.iter().any(|c| *c != 0));
        assert_eq!(codes(Isa::Avx512Vnni), plain);
        assert_eq!(codes(Isa::AvxVnni), plain);
    }
}

//! Kernel behaviour tests: reference accuracy, band-split and executor independence, storage
//! types against each other. (SIMD-versus-reference checks are in `isa_tests.rs`.)

extern crate std;

use super::conv::ox_range;
use super::*;
use crate::parallel::{Parallel, Sequential};
use half::f16;
use std::vec;
use std::vec::Vec;

/// Padding of the encoder's stride-2 downsampling conv: right and bottom only.
pub(super) const DOWNSAMPLE_PAD: Pad = Pad {
    top: 0,
    left: 0,
    bottom: 1,
    right: 1,
};

/// The VQVAE's two conv geometries `(stride, pad)`: decoder/ResBlock convs, encoder downsampling.
pub(super) const VAE_CONV_GEOMETRIES: [(usize, Pad); 2] = [(1, Pad::same(1)), (2, DOWNSAMPLE_PAD)];

/// The same weights in the three storage types: f32, f16, int8 (a packed weight).
pub(super) fn storage_types<'a>(f: &'a [f32], h: &'a [f16], int8: Weight<'a>) -> [Weight<'a>; 3] {
    [Weight::F32(f), Weight::F16(h), int8]
}

/// Row-major `dout × din` int8 codes packed into panels.
pub(super) fn packed(q: &[i8], dout: usize, din: usize) -> Vec<i8> {
    let mut p = vec![0i8; panels_len(dout, din)];
    assert!(pack_panels(q, dout, din, &mut p));
    p
}

/// The int8 Linear weight of packed codes `p` (from [`packed`]) and per-row `scales`.
pub(super) fn int8_linear<'a>(
    p: &'a [i8],
    scales: &'a [f32],
    dout: usize,
    din: usize,
) -> Weight<'a> {
    Weight::I8(PanelsI8::new(p, scales, dout, din, 1).unwrap())
}

/// [`int8_linear`] with two-pass activations.
pub(super) fn int8_linear_a16<'a>(
    p: &'a [i8],
    scales: &'a [f32],
    dout: usize,
    din: usize,
) -> Weight<'a> {
    Weight::I8(
        PanelsI8::new(p, scales, dout, din, 1)
            .unwrap()
            .with_act16(true),
    )
}

/// A `dout × din` Linear with weights `w` and bias `b`.
pub(super) fn linear_layer<'a>(
    w: Weight<'a>,
    b: Option<&'a [f32]>,
    din: usize,
    dout: usize,
) -> Linear<'a> {
    Linear {
        w,
        b,
        out_dim: dout,
        in_dim: din,
    }
}

/// Deterministic pseudo-random values in [−1, 1).
pub(super) struct Lcg(pub(super) u64);
impl Lcg {
    pub(super) fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub(super) fn vec(&mut self, n: usize, gain: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * gain).collect()
    }
}

/// Runs the tasks in reverse order and claims a width of 3: a correct kernel gives the same
/// bits as [`Sequential`] (every task writes its own outputs, computed the sequential way).
pub(super) struct Reversed;
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

pub(super) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// A `cin × h × w` map whose rows have very different magnitudes (so per-row, per-band and
/// per-tensor activation scales all differ).
pub(super) fn banded_input(rng: &mut Lcg, cin: usize, h: usize, w: usize) -> Vec<f32> {
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
pub(super) struct Int8Conv {
    pub(super) q: Vec<i8>,
    pub(super) scales: Vec<f32>,
    pub(super) deq: Vec<f32>,
    pub(super) bias: Vec<f32>,
    cout: usize,
    cin: usize,
    k: usize,
}

impl Int8Conv {
    /// The int8 weights `q` with their `scales`.
    pub(super) fn int8(&self) -> Weight<'_> {
        let (cout, k) = (self.cout, self.k);
        Weight::I8(PanelsI8::new(&self.q, &self.scales, cout, self.cin * k, k).unwrap())
    }

    /// This conv's layer with weights `w` (in any storage type) and its bias.
    pub(super) fn layer<'a>(&'a self, w: Weight<'a>) -> Conv<'a> {
        Conv {
            w,
            b: &self.bias,
            cout: self.cout,
            cin: self.cin,
            k: self.k,
        }
    }
}

pub(super) fn int8_conv(rng: &mut Lcg, cout: usize, cin: usize, k: usize) -> Int8Conv {
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
    let mut q = vec![0i8; k * panels_len(cout, cin * k)];
    assert!(pack_official(&official, &[cout, cin, k, k], &mut q));
    let bias = rng.vec(cout, 0.5);
    Int8Conv {
        q,
        scales,
        deq,
        bias,
        cout,
        cin,
        k,
    }
}

/// [`conv2d_with`] on `isa` and `par`, its scratch and output filled with junk first: the output
/// and its sides.
pub(super) fn conv_on(
    isa: Isa,
    par: &dyn Parallel,
    input: &ConvInput<'_>,
    c: &Conv<'_>,
) -> (Vec<f32>, usize, usize) {
    let (ho, wo) = input.out_sides(c.k);
    let mut y = vec![f32::NAN; c.cout * ho * wo];
    let (nu, nr, nf) = conv_scratch_len(c.cin, input.h, input.w, wo, c.k);
    let (mut u, mut r, mut f) = (vec![0x55i8; nu], vec![0x55i8; nr], vec![f32::NAN; nf]);
    let mut s = ConvScratch {
        unfold: &mut u,
        qrow: &mut r,
        row_scale: &mut f,
    };
    conv2d_with(isa, par, input, c, &mut y, Some(&mut s));
    (y, ho, wo)
}

/// [`conv_on`] the active ISA with a `cin × h × w` map `x` and `(stride, pad)`.
fn run_conv(
    x: &[f32],
    h: usize,
    w: usize,
    c: &Conv<'_>,
    (stride, pad): (usize, Pad),
    par: &dyn Parallel,
) -> (Vec<f32>, usize, usize) {
    let input = ConvInput {
        x,
        h,
        w,
        stride,
        pad,
    };
    conv_on(Isa::active(), par, &input, c)
}

/// [`linear_with`] of the `n` rows `x` on `isa` and `par`, its scratch and output filled with junk
/// first.
pub(super) fn linear_on(
    isa: Isa,
    par: &dyn Parallel,
    x: &[f32],
    n: usize,
    l: &Linear<'_>,
) -> Vec<f32> {
    let (nf, nq) = linear_scratch_len(n, l.in_dim);
    let (mut f, mut q) = (vec![f32::NAN; nf], vec![0x55i8; nq]);
    let mut s = LinearScratch {
        f: &mut f,
        q: &mut q,
    };
    let mut y = vec![f32::NAN; n * l.out_dim];
    linear_with(isa, par, x, n, l, &mut y, &mut s);
    y
}

/// A [`banded_input`] `cin × h × w` map and an [`int8_conv`] `cin → cout` of side `k` from `rng`.
fn banded_case(
    mut rng: Lcg,
    cin: usize,
    cout: usize,
    k: usize,
    (h, w): (usize, usize),
) -> (Vec<f32>, Int8Conv) {
    let x = banded_input(&mut rng, cin, h, w);
    (x, int8_conv(&mut rng, cout, cin, k))
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
    let (cin, cout, k, h, w) = (5, 6, 3, 12, 9);
    let (x, wt) = banded_case(Lcg(1), cin, cout, k, (h, w));
    for int8 in [true, false] {
        let conv = wt.layer(if int8 {
            wt.int8()
        } else {
            Weight::F32(&wt.deq)
        });
        // Stride 1, padding 1 (decoder convs).
        let (full, ho, wo) = run_conv(&x, h, w, &conv, (1, Pad::same(1)), &Sequential);
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
            let (yt, hot, _) = run_conv(&top, r + 1, w, &conv, (1, pad_top), &Sequential);
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
            let (yb, hob, _) = run_conv(&bot, h - r + 1, w, &conv, (1, pad_bot), &Sequential);
            assert_eq!(hob, h - r);
            assert_eq!(
                out_rows(&yb, cout, hob, wo, 0, h - r),
                out_rows(&full, cout, ho, wo, r, h - r),
                "int8 {int8} split {r}: bottom band"
            );
        }
        // Stride 2, padding right/bottom only (encoder downsampling).
        let down = DOWNSAMPLE_PAD;
        let (full, ho, wo) = run_conv(&x, h, w, &conv, (2, down), &Sequential);
        assert_eq!(ho, h / 2);
        for r in 1..ho {
            let top = rows(&x, cin, h, w, 0, 2 * r + 1);
            let (yt, hot, _) = run_conv(
                &top,
                2 * r + 1,
                w,
                &conv,
                (2, Pad { bottom: 0, ..down }),
                &Sequential,
            );
            assert_eq!(hot, r);
            assert_eq!(
                out_rows(&yt, cout, hot, wo, 0, r),
                out_rows(&full, cout, ho, wo, 0, r),
                "int8 {int8} stride 2 split {r}: top"
            );
            let bot = rows(&x, cin, h, w, 2 * r, h);
            let (yb, hob, _) = run_conv(&bot, h - 2 * r, w, &conv, (2, down), &Sequential);
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
    let (cin, cout, k, h, w) = (6, 3, 3, 10, 7);
    let (x, wt) = banded_case(Lcg(2), cin, cout, k, (h, w));
    let c8 = wt.layer(wt.int8());
    let cf = wt.layer(Weight::F32(&wt.deq));
    let (y8, ho, wo) = run_conv(&x, h, w, &c8, (1, Pad::same(1)), &Sequential);
    let (yf, _, _) = run_conv(&x, h, w, &cf, (1, Pad::same(1)), &Sequential);
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
                            mag += wv * x[(ci * h + iy as usize) * w + ix as usize].abs() as f64;
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
    for (stride, pad) in VAE_CONV_GEOMETRIES {
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
        let (a, _, _) = run_conv(&x, h, w, &c16, (stride, pad), &Sequential);
        let (z, _, _) = run_conv(&x, h, w, &c32, (stride, pad), &Sequential);
        assert_eq!(bits(&a), bits(&z), "stride {stride}");
    }
}

#[test]
fn f16_linear_equals_f32_linear_on_f16_values() {
    let mut rng = Lcg(3);
    // Past the 128-column widening chunk and the 32-token block, odd row counts, ragged tails.
    for (n, din, dout) in [
        (1usize, 8usize, 3usize),
        (5, 37, 11),
        (17, 64, 9),
        (9, 16, 33),
        (70, 300, 7),
        (35, 1030, 4),
        (3, 129, 1),
    ] {
        let w16: Vec<f16> = (0..din * dout)
            .map(|_| f16::from_f32(rng.next() * 2.0))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|h| h.to_f32()).collect();
        let b = rng.vec(dout, 1.0);
        let x = rng.vec(n * din, 3.0);
        let y = [Weight::F32(&w32), Weight::F16(&w16)].map(|w| {
            let l = linear_layer(w, Some(&b), din, dout);
            linear_on(Isa::active(), &Sequential, &x, n, &l)
        });
        assert_eq!(bits(&y[0]), bits(&y[1]), "n {n} in {din} out {dout}");
        // The same bits on every ISA this CPU runs (the scalar lanes and the AVX block).
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let l = linear_layer(Weight::F16(&w16), Some(&b), din, dout);
            let z = linear_on(isa, &Sequential, &x, n, &l);
            assert_eq!(bits(&z), bits(&y[1]), "{isa:?}: n {n} in {din} out {dout}");
        }
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
    let run = |w: Weight<'_>| {
        let l = linear_layer(w, None, din, dout);
        linear_on(Isa::active(), &Sequential, &x, n, &l)
    };
    let p = packed(&q, dout, din);
    let y8 = run(int8_linear(&p, &scales, dout, din));
    let y16 = run(int8_linear_a16(&p, &scales, dout, din));
    let yf = run(Weight::F32(&deq));
    let (mut worst8, mut worst16) = (0f32, 0f32);
    for t in 0..n {
        let sx = x[t * din..(t + 1) * din]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            / 127.0;
        for o in 0..dout {
            let sum_w: f32 = deq[o * din..(o + 1) * din].iter().map(|w| w.abs()).sum();
            // One step of s_x per activation, or of s_x / 254 with the residual pass; the
            // f32 reference's own rounding is below 1e-6 here.
            let (bound8, bound16) = (sum_w * sx / 2.0, sum_w * sx / 508.0);
            let (yo, i) = (yf[t * dout + o], t * dout + o);
            let (d8, d16) = ((y8[i] - yo).abs(), (y16[i] - yo).abs());
            assert!(
                d8 <= bound8 * 1.001 + 1e-6,
                "row {t} out {o}: {d8} > {bound8}"
            );
            assert!(
                d16 <= bound16 * 1.001 + 1e-6,
                "a16 row {t} out {o}: {d16} > {bound16}"
            );
            worst8 = worst8.max(d8 / yo.abs().max(1e-3));
            worst16 = worst16.max(d16 / yo.abs().max(1e-3));
        }
    }
    // The residual pass carries about 8 more bits: far more accurate, not merely within bound.
    assert!(worst16 * 50.0 < worst8, "a16 {worst16} vs int8 {worst8}");
}

#[test]
fn linear_shared_equals_one_linear_call_each() {
    let mut rng = Lcg(21);
    let (n, din, dq, dkv) = (11usize, 37usize, 20usize, 33usize);
    let x = rng.vec(n * din, 1.5);
    let weight = |rng: &mut Lcg, dout: usize| {
        let wf = rng.vec(din * dout, 0.4);
        let mut q = vec![0i8; din * dout];
        let scales: Vec<f32> = (0..dout)
            .map(|o| quantize_row(&wf[o * din..(o + 1) * din], &mut q[o * din..(o + 1) * din]))
            .collect();
        (packed(&q, dout, din), scales, rng.vec(dout, 0.2))
    };
    let (pq, sq, bq) = weight(&mut rng, dq);
    let (pk, sk, bk) = weight(&mut rng, dkv);
    // Both plain, both two-pass, and mixed (which falls back to one call each).
    for (aq, ak) in [(false, false), (true, true), (true, false), (false, true)] {
        let wq = PanelsI8::new(&pq, &sq, dq, din, 1).unwrap().with_act16(aq);
        let wk = PanelsI8::new(&pk, &sk, dkv, din, 1).unwrap().with_act16(ak);
        let lq = linear_layer(Weight::I8(wq), Some(&bq), din, dq);
        let lk = linear_layer(Weight::I8(wk), Some(&bk), din, dkv);
        let (want_q, want_k) = (
            linear_on(Isa::active(), &Sequential, &x, n, &lq),
            linear_on(Isa::active(), &Sequential, &x, n, &lk),
        );
        let (nf, nq) = linear_scratch_len(n, din);
        let (mut f, mut qs) = (vec![f32::NAN; nf], vec![0x55i8; nq]);
        let mut s = LinearScratch {
            f: &mut f,
            q: &mut qs,
        };
        let (mut yq, mut yk) = (vec![f32::NAN; n * dq], vec![f32::NAN; n * dkv]);
        linear_shared(&x, n, [(&lq, &mut yq), (&lk, &mut yk)], &mut s, &Sequential);
        assert_eq!(bits(&yq), bits(&want_q), "q, a16 {aq}/{ak}");
        assert_eq!(bits(&yk), bits(&want_k), "kv, a16 {aq}/{ak}");
    }
}

#[test]
fn quantize_residual_adds_eight_bits() {
    let mut rng = Lcg(22);
    for (len, gain) in [(1usize, 1.0f32), (9, 0.003), (64, 1.0), (300, 250.0)] {
        let x = rng.vec(len, gain);
        let mut q = vec![0i8; len];
        let s1 = quantize_row(&x, &mut q);
        let q1 = q.clone();
        let s2 = quantize_residual(&x, s1, &mut q);
        assert_eq!(s2, s1 / 254.0);
        for ((v, a), b) in x.iter().zip(&q1).zip(&q) {
            assert!((-127..=127).contains(b));
            let err = (*a as f32 * s1 + *b as f32 * s2 - v).abs();
            // Half a fine step, plus the f32 rounding of the residual itself.
            assert!(
                err <= s2 / 2.0 + s1 * 1e-6,
                "len {len}: x {v} err {err} s2 {s2}"
            );
        }
    }
    // A zero row, a NaN scale and an underflowing one code to 0.
    for s1 in [0.0, f32::NAN, 1e-45] {
        let mut q = [5i8; 3];
        quantize_residual(&[0.0, 1e-45, 0.0], s1, &mut q);
        assert_eq!(q, [0; 3], "s1 {s1}");
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
    let p = packed(&q, dout, din);
    for w in storage_types(&wf, &w16, int8_linear(&p, &scales, dout, din)) {
        let l = linear_layer(w, Some(&b), din, dout);
        let mut outs = Vec::new();
        for par in [&Sequential as &dyn Parallel, &Reversed] {
            let y = linear_on(Isa::active(), par, &x, n, &l);
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
    for w in storage_types(&wt.deq, &d16, wt.int8()) {
        let c = wt.layer(w);
        for (stride, pad) in VAE_CONV_GEOMETRIES {
            let (a, _, _) = run_conv(&xc, h, wd, &c, (stride, pad), &Sequential);
            let (z, _, _) = run_conv(&xc, h, wd, &c, (stride, pad), &Reversed);
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

#[test]
fn round_half_away_equals_libm_roundf() {
    use super::quant::round_half_away;
    let mut cases = vec![
        0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 127.0, 127.49,
    ];
    for k in -300..=300 {
        let h = k as f32 * 0.5;
        // The halves, and their neighbours one ulp away on both sides.
        cases.extend([
            h,
            f32::from_bits(h.to_bits() + 1),
            f32::from_bits(h.to_bits().max(1) - 1),
        ]);
    }
    let mut rng = Lcg(77);
    cases.extend(rng.vec(10_000, 130.0));
    for r in cases {
        assert_eq!(round_half_away(r), libm::roundf(r) as i32, "{r:e}");
    }
    assert_eq!(round_half_away(f32::NAN), libm::roundf(f32::NAN) as i32);
}

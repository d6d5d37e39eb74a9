//! Every kernel with a SIMD variant against the scalar reference, bit for bit, on random and
//! adversarial inputs (int8 extremes ±127/−128, zero rows, all-equal rows, wide magnitudes,
//! subnormals, odd lengths). An ISA this build or this CPU lacks is reported as skipped.

extern crate std;

use super::conv::{axpy_tile_with, COL_BLOCK, CO_BLOCK};
use super::dot::dot_block_with;
use super::gemm::{encode_activations, gemm_i8_with};
use super::pack::PANEL_NR;
use super::tests::{
    bits, conv_on, int8_conv, int8_linear, int8_linear_a16, linear_layer, linear_on, packed,
    storage_types, Lcg, VAE_CONV_GEOMETRIES,
};
use super::*;
use crate::parallel::Sequential;
use half::f16;
use std::println;
use std::vec;
use std::vec::Vec;

/// Odd and boundary lengths around the 8-lane (f32) and 16-lane (int8) chunks.
const LENGTHS: [usize; 16] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 127, 129];

/// Whether this CPU has `isa`: asked at run time, whatever the core's `std` feature.
fn on_this_cpu(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let avx2 = has!("avx") && has!("avx2");
        let avx512 = avx2 && has!("avx512f") && has!("avx512bw");
        match isa {
            Isa::Scalar => true,
            Isa::ArmDsp | Isa::ArmMve | Isa::Neon | Isa::NeonDot | Isa::NeonI8mm => false,
            Isa::Avx => has!("avx"),
            Isa::Avx2 => avx2,
            Isa::AvxVnni => avx2 && has!("avxvnni"),
            Isa::Avx512Bw => avx512,
            Isa::Avx512Vnni => avx512 && has!("avx512vnni"),
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        match isa {
            Isa::Scalar => true,
            Isa::Neon => has!("neon"),
            Isa::NeonDot => has!("neon") && has!("dotprod"),
            Isa::NeonI8mm => has!("neon") && has!("i8mm"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        isa == Isa::Scalar
    }
}

/// The SIMD ISAs to compare against [`Isa::Scalar`]; prints each one that is skipped.
fn simd_isas(test: &str) -> Vec<Isa> {
    let mut isas = Vec::new();
    for isa in Isa::ALL {
        if isa == Isa::Scalar {
            continue;
        }
        if isa.compiled() && on_this_cpu(isa) {
            isas.push(isa);
        } else {
            println!(
                "{test}: SKIPPED {isa:?} (compiled in: {}, on this CPU: {})",
                isa.compiled(),
                on_this_cpu(isa)
            );
        }
    }
    isas
}

/// f32 test rows of length `n`: random, zero, all-equal, wide magnitudes (so every change of
/// summation order shows in the bits), alternating cancellation, subnormals.
fn f32_rows(rng: &mut Lcg, n: usize) -> Vec<Vec<f32>> {
    let wide = (0..n)
        .map(|i| rng.next() * libm::ldexpf(1.0, (i as i32 * 37) % 80 - 40))
        .collect();
    let cancel = (0..n)
        .map(|i| if i % 2 == 0 { 1e15 } else { -1e15 } + rng.next())
        .collect();
    let subnormal = (0..n).map(|_| rng.next() * 1e-39).collect();
    vec![
        rng.vec(n, 1.0),
        vec![0.0; n],
        vec![0.1; n],
        wide,
        cancel,
        subnormal,
    ]
}

/// Every 4 × 2 dot block of `rows`: four consecutive rows as tokens, two consecutive rows as
/// weight rows.
fn dot_blocks<T>(rows: &[Vec<T>]) -> impl Iterator<Item = ([&[T]; 4], [&[T]; 2])> {
    rows.windows(4).flat_map(move |xs| {
        rows.windows(2)
            .map(move |ws| ([&xs[0][..], &xs[1], &xs[2], &xs[3]], [&ws[0][..], &ws[1]]))
    })
}

/// A 4 tokens × 2 weight rows dot-block kernel on an ISA, over the first `n` values.
type DotBlock<T, A> = fn(Isa, [&[T]; 4], [&[T]; 2], usize) -> [[A; 2]; 4];

/// Checks a 4 × 2 dot-block kernel on every block of `rows` of each length: the scalar block
/// against the one-row references (`check_entry(x row, w row, value)`), every SIMD ISA against
/// the scalar block, entry by entry through `bits_of`.
fn check_dot_block<T, A: Copy, K: PartialEq + core::fmt::Debug>(
    test: &str,
    mut rng: Lcg,
    rows: fn(&mut Lcg, usize) -> Vec<Vec<T>>,
    block: DotBlock<T, A>,
    check_entry: impl Fn(&[T], &[T], A),
    bits_of: fn(A) -> K,
) {
    let isas = simd_isas(test);
    for n in LENGTHS {
        for (x, w) in dot_blocks(&rows(&mut rng, n)) {
            let reference = block(Isa::Scalar, x, w, n);
            for t in 0..4 {
                for o in 0..2 {
                    check_entry(x[t], w[o], reference[t][o]);
                }
            }
            for &isa in &isas {
                let got = block(isa, x, w, n).map(|r| r.map(bits_of));
                assert_eq!(got, reference.map(|r| r.map(bits_of)), "{isa:?} n {n}");
            }
        }
    }
}

#[test]
fn f32_dot_block_matches_the_reference() {
    check_dot_block(
        "f32_dot_block_matches_the_reference",
        Lcg(11),
        f32_rows,
        dot_block_with,
        |x, w, value| assert_eq!(value.to_bits(), dot(x, w).to_bits()),
        f32::to_bits,
    );
}

/// int8 GEMM activation rows of length `k`: random, and the extremes the quantizer can give
/// (±127; never −128), which with −128 weights make the largest `vpmaddubsw` pair sums
/// (2 · 128 · 127 = 32,512, just under the i16 limit).
fn gemm_activation_rows(rng: &mut Lcg, k: usize) -> Vec<Vec<i8>> {
    let random = (0..k).map(|_| (rng.next() * 127.5) as i8).collect();
    let alternating = (0..k)
        .map(|i| if i % 2 == 0 { 127 } else { -127 })
        .collect();
    vec![random, vec![127; k], vec![-127; k], vec![0; k], alternating]
}

/// int8 GEMM weights `rows × k`: random over the full byte range, −128 and 127 runs, zeros.
fn gemm_weights(rng: &mut Lcg, rows: usize, k: usize) -> Vec<i8> {
    (0..rows * k)
        .map(|i| match (i / k) % 4 {
            0 => (rng.next() * 128.0) as i8,
            1 => -128,
            2 => {
                if i % 2 == 0 {
                    -128
                } else {
                    127
                }
            }
            _ => [0, 127, -128, 1][i % 4],
        })
        .collect()
}

#[test]
fn int8_gemm_matches_the_exact_sums_on_every_isa() {
    let isas = simd_isas("int8_gemm_matches_the_exact_sums_on_every_isa");
    let mut rng = Lcg(12);
    let mut compared = 0;
    for k in LENGTHS.into_iter().chain([480, 1027]) {
        for rows in [1usize, 5, 16, 17, 40] {
            let w = gemm_weights(&mut rng, rows, k);
            let p = packed(&w, rows, k);
            let scales = vec![1.0f32; rows];
            let full = match int8_linear(&p, &scales, rows, k) {
                Weight::I8(full) => full,
                _ => unreachable!(),
            };
            let lda = act_row_len(k) + 3;
            let mut act = Vec::new();
            for r in 0..3 {
                act.extend(gemm_activation_rows(&mut rng, k).into_iter().skip(r));
            }
            let m = act.len();
            let mut a = vec![0i8; m * lda];
            for (t, row) in act.iter().enumerate() {
                a[t * lda..t * lda + k].copy_from_slice(row);
            }
            // Views: the whole weight, and one starting inside a panel with a sub-range.
            let views = [
                (0usize, 0usize, rows),
                (rows / 3, rows / 7, rows - rows / 3),
            ];
            for (o0, c0, c1) in views {
                let view = PanelsI8 { o0, ..full };
                let exact = |t: usize, o: usize| -> i64 {
                    (0..k)
                        .map(|i| act[t][i] as i64 * w[(o0 + o) * k + i] as i64)
                        .sum()
                };
                let run = |isa: Isa| {
                    let mut enc = a.clone();
                    encode_activations(isa, &mut enc);
                    let mut out = vec![None; m * rows];
                    gemm_i8_with(isa, &enc, lda, m, &view, (c0, c1), |t, o, sums| {
                        for (j, acc) in sums.iter().enumerate() {
                            let slot = &mut out[t * rows + o + j];
                            assert!(slot.replace(*acc).is_none(), "written twice");
                        }
                    });
                    out
                };
                let reference = run(Isa::Scalar);
                for t in 0..m {
                    for o in 0..rows {
                        let want = (c0..c1).contains(&o).then(|| exact(t, o) as i32);
                        assert_eq!(reference[t * rows + o], want, "scalar t {t} o {o} k {k}");
                    }
                }
                for &isa in &isas {
                    assert_eq!(run(isa), reference, "{isa:?} k {k} rows {rows} view {o0}");
                    compared += 1;
                }
            }
        }
    }
    assert!(isas.is_empty() || compared > 0);
    assert_eq!(PANEL_NR, 16);
}

#[test]
fn conv_axpy_tile_matches_the_reference() {
    let mut rng = Lcg(13);
    let isas = simd_isas("conv_axpy_tile_matches_the_reference");
    let rows = f32_rows(&mut rng, COL_BLOCK + CO_BLOCK + COL_BLOCK);
    for r in &rows {
        for s in &rows {
            let xs: [f32; COL_BLOCK] = r[..COL_BLOCK].try_into().unwrap();
            let wk: [f32; CO_BLOCK] = s[COL_BLOCK..COL_BLOCK + CO_BLOCK].try_into().unwrap();
            let acc0: [[f32; COL_BLOCK]; CO_BLOCK] =
                core::array::from_fn(|c| core::array::from_fn(|j| s[(c * 5 + j) % s.len()]));
            let mut reference = acc0;
            axpy_tile_with(Isa::Scalar, &mut reference, &wk, &xs);
            for &isa in &isas {
                let mut got = acc0;
                axpy_tile_with(isa, &mut got, &wk, &xs);
                for c in 0..CO_BLOCK {
                    assert_eq!(bits(&got[c]), bits(&reference[c]), "{isa:?} channel {c}");
                }
            }
        }
    }
}

/// `n × din` activations whose rows cycle through random, zero, all-equal and wide rows.
fn activations(rng: &mut Lcg, n: usize, din: usize) -> Vec<f32> {
    let kinds = f32_rows(rng, din);
    (0..n).flat_map(|t| kinds[t % 4].clone()).collect()
}

#[test]
fn linear_matches_the_reference_in_every_storage_type() {
    let mut rng = Lcg(14);
    let isas = simd_isas("linear_matches_the_reference_in_every_storage_type");
    for (n, din, dout) in [
        (1usize, 1usize, 1usize),
        (3, 7, 5),
        (5, 17, 3),
        (9, 33, 7),
        (4, 64, 2),
        (13, 65, 9),
        (70, 129, 4),
    ] {
        let x = activations(&mut rng, n, din);
        let wf = rng.vec(din * dout, 0.7);
        let w16: Vec<f16> = wf.iter().map(|v| f16::from_f32(*v)).collect();
        // int8 rows include the extremes a file may hold, −128 included.
        let q: Vec<i8> = (0..din * dout)
            .map(|i| match i % 5 {
                0 => -128,
                1 => 127,
                _ => (rng.next() * 128.0) as i8,
            })
            .collect();
        let scales: Vec<f32> = (0..dout).map(|_| 0.01 * (rng.next() + 1.5)).collect();
        let b = rng.vec(dout, 0.5);
        let p = packed(&q, dout, din);
        let int8 = int8_linear(&p, &scales, dout, din);
        let a16 = int8_linear_a16(&p, &scales, dout, din);
        for w in storage_types(&wf, &w16, int8).into_iter().chain([a16]) {
            let l = linear_layer(w, Some(&b), din, dout);
            let run = |isa: Isa| linear_on(isa, &Sequential, &x, n, &l);
            let reference = run(Isa::Scalar);
            for &isa in &isas {
                assert_eq!(
                    bits(&run(isa)),
                    bits(&reference),
                    "{isa:?} {n}×{din}→{dout} {w:?}",
                );
            }
        }
    }
}

#[test]
fn conv_matches_the_reference_in_every_storage_type() {
    let mut rng = Lcg(15);
    let isas = simd_isas("conv_matches_the_reference_in_every_storage_type");
    let one_by_one = (1usize, Pad::same(0));
    let mut compared = 0;
    for (cin, cout) in [(1usize, 4usize), (3, 5), (2, 9), (6, 8), (17, 3)] {
        for k in [1usize, 3] {
            let wt = int8_conv(&mut rng, cout, cin, k);
            let d16: Vec<f16> = wt.deq.iter().map(|v| f16::from_f32(*v)).collect();
            for w_store in storage_types(&wt.deq, &d16, wt.int8()) {
                let c = wt.layer(w_store);
                let geometries: &[(usize, Pad)] = if k == 1 {
                    &[one_by_one]
                } else {
                    &VAE_CONV_GEOMETRIES
                };
                for &(stride, pad) in geometries {
                    for h in [1usize, 2, 5] {
                        for w in [1usize, 3, 7, 8, 9, 16, 17, 33] {
                            for kind in 0..3 {
                                let x: Vec<f32> = match kind {
                                    0 => rng.vec(cin * h * w, 3.0),
                                    1 => vec![0.0; cin * h * w],
                                    _ => vec![0.75; cin * h * w],
                                };
                                let input = ConvInput {
                                    x: &x,
                                    h,
                                    w,
                                    stride,
                                    pad,
                                };
                                let run = |isa: Isa| conv_on(isa, &Sequential, &input, &c).0;
                                let reference = run(Isa::Scalar);
                                assert!(reference.iter().all(|v| v.is_finite()));
                                for &isa in &isas {
                                    assert_eq!(
                                        bits(&run(isa)),
                                        bits(&reference),
                                        "{isa:?} cin {cin} cout {cout} k {k} s {stride} \
                                         {h}×{w} input {kind} {:?}",
                                        core::mem::discriminant(&w_store)
                                    );
                                    compared += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(isas.is_empty() || compared > 0);
}

#[test]
fn the_active_isa_is_supported_and_the_best() {
    let active = Isa::active();
    assert!(active.supported());
    assert_eq!(active, Isa::best());
    assert!(Isa::Scalar.compiled() && Isa::Scalar.supported());
    println!("kernels: active ISA {active:?}");
}

#[test]
fn attention_row_matches_the_reference() {
    use super::attention::{attend_row, KeyValues};
    let isas = simd_isas("attention_row_matches_the_reference");
    let mut rng = Lcg(16);
    for hd in [8usize, 12, 16, 64, 72] {
        for n in [1usize, 3, 4, 5, 17, 64] {
            let heads = 2;
            let c = heads * hd;
            let stride = 2 * c + 3;
            let q = rng.vec(c, 2.0);
            // Keys and values with wide magnitudes, so any change of summation order shows.
            let keys: Vec<f32> = (0..n * stride + c)
                .map(|i| rng.next() * libm::ldexpf(1.0, (i as i32 * 13) % 30 - 15))
                .collect();
            let vals = rng.vec(n * stride + c, 3.0);
            let kv = KeyValues {
                keys: &keys,
                vals: &vals[1..],
                stride,
                n,
            };
            let run = |isa: Isa| {
                let mut scores = vec![0f32; n];
                let mut out = vec![0f32; c];
                attend_row(isa, &q, &kv, heads, hd, 0.37, &mut scores, &mut out);
                bits(&out)
            };
            let reference = run(Isa::Scalar);
            for &isa in &isas {
                assert_eq!(run(isa), reference, "{isa:?} hd {hd} n {n}");
            }
        }
    }
}

/// Scalar models of the x86 int8 GEMM kernels (`arch/x86_gemm.rs`), instruction by instruction
/// as Intel's pseudo-code defines them, run in the kernels' order on the packed layout. They
/// prove each scheme exact on a CPU that lacks the instructions (AVX-512, AVX-VNNI), and where
/// the CPU has a kernel its model is checked against the hardware too.
mod kernel_models {
    use super::*;

    /// Bytes of one panel group: 16 channels × 4 inputs.
    const GROUP: usize = 64;

    /// `vpdpbusd`: every i32 lane adds the four products of unsigned `a` × signed `b` bytes
    /// (each exact in i16), wrapping in i32 (not the saturating `vpdpbusds`).
    fn dpbusd(acc: &mut [i32], a: &[u8], b: &[i8]) {
        for (j, v) in acc.iter_mut().enumerate() {
            for i in 4 * j..4 * j + 4 {
                *v = v.wrapping_add(a[i] as i32 * b[i] as i32);
            }
        }
    }

    /// `vpmaddubsw` (unsigned `a` × signed `b`, pairs added into i16 **with saturation**), then
    /// `vpmaddwd` against ones (pairs of i16 into i32), then `vpaddd` into the lanes.
    fn maddubs_madd_ones(acc: &mut [i32], a: &[u8], b: &[i8]) {
        let pair = |l: usize| {
            let s = a[2 * l] as i32 * b[2 * l] as i32 + a[2 * l + 1] as i32 * b[2 * l + 1] as i32;
            s.clamp(i16::MIN.into(), i16::MAX.into())
        };
        for (j, v) in acc.iter_mut().enumerate() {
            *v = v.wrapping_add(pair(2 * j) + pair(2 * j + 1));
        }
    }

    /// `vpabsb`: |−128| is the byte 0x80, i.e. 128 read unsigned.
    fn abs_u8(w: &[i8]) -> Vec<u8> {
        w.iter().map(|v| v.unsigned_abs()).collect()
    }

    /// `set1_epi32` of the group's 4 activation bytes (little-endian: byte `i` of every lane is
    /// input `4g + i`), over `n` bytes.
    fn broadcast(x4: [i8; 4], n: usize) -> Vec<i8> {
        (0..n).map(|b| x4[b % 4]).collect()
    }

    /// One kernel: the encoding it reads, its rows per tile, the start of every sum of a panel,
    /// and one group step (`acc`, 4 activation bytes, the 64-byte group).
    struct Model {
        name: &'static str,
        isa: Isa,
        mr: usize,
        start: fn(&[i8]) -> [i32; 16],
        step: fn(&mut [i32; 16], [i8; 4], &[i8]),
    }

    fn zero_start(_: &[i8]) -> [i32; 16] {
        [0; 16]
    }

    /// −128 · Σ w per channel, as the VNNI kernels make it: `vpdpbusd` of ones against each
    /// `half`-byte register of every group, `vpslld 7`, `vpsubd` from zero.
    fn vnni_start(panel: &[i8], half: usize) -> [i32; 16] {
        let mut sum = [0i32; 16];
        for group in panel.chunks_exact(GROUP) {
            for (s, w) in sum.chunks_mut(half / 4).zip(group.chunks_exact(half)) {
                dpbusd(s, &vec![1u8; half], w);
            }
        }
        sum.map(|s| 0i32.wrapping_sub(s.wrapping_shl(7)))
    }

    /// AVX2: per ymm half, `vpabsb` of w, `vpsignb(x, w)` (0 where w = 0), maddubs, madd.
    fn avx2_step(acc: &mut [i32; 16], x4: [i8; 4], group: &[i8]) {
        for (a, w) in acc.chunks_mut(8).zip(group.chunks_exact(32)) {
            let s: Vec<i8> = broadcast(x4, 32)
                .iter()
                .zip(w)
                .map(|(x, w)| match w.signum() {
                    -1 => x.wrapping_neg(),
                    0 => 0,
                    _ => *x,
                })
                .collect();
            maddubs_madd_ones(a, &abs_u8(w), &s);
        }
    }

    /// AVX-512BW: `vpabsb` of w, x negated under `vpmovb2m` of w (`vpsubb` from zero, masked).
    fn avx512bw_step(acc: &mut [i32; 16], x4: [i8; 4], group: &[i8]) {
        let negative = |b: usize| group[b] as u8 & 0x80 != 0;
        let s: Vec<i8> = broadcast(x4, GROUP)
            .iter()
            .enumerate()
            .map(|(b, x)| {
                if negative(b) {
                    0i8.wrapping_sub(*x)
                } else {
                    *x
                }
            })
            .collect();
        maddubs_madd_ones(acc, &abs_u8(group), &s);
    }

    /// VNNI: `vpdpbusd(acc, x + 128, w)` per register of `half` bytes.
    fn vnni_step(acc: &mut [i32; 16], x4: [i8; 4], group: &[i8], half: usize) {
        let xb: Vec<u8> = broadcast(x4, GROUP).iter().map(|x| *x as u8).collect();
        for ((a, x), w) in acc
            .chunks_mut(half / 4)
            .zip(xb.chunks_exact(half))
            .zip(group.chunks_exact(half))
        {
            dpbusd(a, x, w);
        }
    }

    /// The kernels, and (last) a control that must fail: `vpmaddubsw` on the VNNI encoding
    /// (unsigned x + 128 against signed w), whose pair sums saturate (2 · 255 · 127 > 32,767).
    const MODELS: [Model; 5] = [
        Model {
            name: "AVX2",
            isa: Isa::Avx2,
            mr: 4,
            start: zero_start,
            step: avx2_step,
        },
        Model {
            name: "AVX-VNNI",
            isa: Isa::AvxVnni,
            mr: 4,
            start: |panel| vnni_start(panel, 32),
            step: |acc, x4, group| vnni_step(acc, x4, group, 32),
        },
        Model {
            name: "AVX-512BW",
            isa: Isa::Avx512Bw,
            mr: 8,
            start: zero_start,
            step: avx512bw_step,
        },
        Model {
            name: "AVX-512 VNNI",
            isa: Isa::Avx512Vnni,
            mr: 8,
            start: |panel| vnni_start(panel, GROUP),
            step: |acc, x4, group| vnni_step(acc, x4, group, GROUP),
        },
        Model {
            name: "saturating control",
            isa: Isa::Avx512Vnni,
            mr: 8,
            start: |panel| vnni_start(panel, GROUP),
            step: |acc, x4, group| {
                let xb: Vec<u8> = broadcast(x4, GROUP).iter().map(|x| *x as u8).collect();
                maddubs_madd_ones(acc, &xb, group);
            },
        },
    ];

    /// `model` over `m` rows of `a` (encoded for it) and a packed `rows × k` weight, tile by
    /// tile as the kernel goes (rows past `m` repeat the last one; only `m - t0` are stored).
    fn run(
        model: &Model,
        a: &[i8],
        lda: usize,
        m: usize,
        q: &[i8],
        rows: usize,
        k: usize,
    ) -> Vec<i32> {
        let groups = act_row_len(k) / 4;
        let mut out = vec![None; m * rows];
        for (p, panel) in q.chunks_exact(groups * GROUP).enumerate() {
            let start = (model.start)(panel);
            for t0 in (0..m).step_by(model.mr) {
                let tile: Vec<usize> = (0..model.mr).map(|r| (t0 + r).min(m - 1)).collect();
                let mut acc = vec![start; model.mr];
                for (g, group) in panel.chunks_exact(GROUP).enumerate() {
                    for (ar, t) in acc.iter_mut().zip(&tile) {
                        let x4 = a[t * lda + 4 * g..][..4].try_into().unwrap();
                        (model.step)(ar, x4, group);
                    }
                }
                for (r, ar) in acc.iter().enumerate().take(m - t0) {
                    for (j, v) in ar.iter().enumerate().filter(|(j, _)| 16 * p + j < rows) {
                        let slot = &mut out[(t0 + r) * rows + 16 * p + j];
                        assert!(slot.replace(*v).is_none(), "{} written twice", model.name);
                    }
                }
            }
        }
        out.into_iter()
            .map(|v| v.expect("every sum written"))
            .collect()
    }

    /// `(k, rows, row-major rows × k weight, activation rows)`.
    type Case = (usize, usize, Vec<i8>, Vec<Vec<i8>>);

    #[test]
    fn int8_gemm_kernel_models_give_the_exact_sums() {
        let mut rng = Lcg(17);
        let mut cases: Vec<Case> = Vec::new();
        for k in [1usize, 3, 4, 7, 16, 17, 65, 129, 1027] {
            for rows in [1usize, 16, 17, 40] {
                let w = gemm_weights(&mut rng, rows, k);
                // 13 rows: ragged for the 4- and the 8-row tiles.
                let act = (0..3).flat_map(|_| gemm_activation_rows(&mut rng, k));
                cases.push((k, rows, w, act.take(13).collect()));
            }
        }
        // So long that Σ (x + 128)·w leaves i32 (255 · 128 · k > 2³¹): the VNNI sums wrap on
        // the way and must still land on the exact value.
        let k = 66_000;
        let wrap_w = (0..16 * k)
            .map(|i| if i < 8 * k { -128 } else { 127 })
            .collect();
        cases.push((k, 16, wrap_w, vec![vec![127; k], vec![-127; k]]));
        assert!(255 * -128 * (k as i64) < i32::MIN.into());

        let mut control_failed = false;
        for (k, rows, w, act) in &cases {
            let (k, rows, m) = (*k, *rows, act.len());
            let q = packed(w, rows, k);
            let lda = act_row_len(k) + 3;
            let mut a = vec![0i8; m * lda];
            for (t, x) in act.iter().enumerate() {
                a[t * lda..t * lda + k].copy_from_slice(x);
            }
            let exact: Vec<i32> = (0..m * rows)
                .map(|i| {
                    let (t, o) = (i / rows, i % rows);
                    let s: i64 = (0..k).map(|j| act[t][j] as i64 * w[o * k + j] as i64).sum();
                    i32::try_from(s).unwrap()
                })
                .collect();
            for model in &MODELS {
                let mut enc = a.clone();
                encode_activations(model.isa, &mut enc);
                let got = run(model, &enc, lda, m, &q, rows, k);
                if model.name == "saturating control" {
                    control_failed |= got != exact;
                    continue;
                }
                assert_eq!(got, exact, "{} model k {k} rows {rows}", model.name);
                // Where this CPU has the kernel, the model must match it too.
                if on_this_cpu(model.isa) {
                    let scales = vec![1.0; rows];
                    let full = PanelsI8::new(&q, &scales, rows, k, 1).unwrap();
                    let mut hw = vec![0i32; m * rows];
                    gemm_i8_with(model.isa, &enc, lda, m, &full, (0, rows), |t, o, sums| {
                        hw[t * rows + o..][..sums.len()].copy_from_slice(sums)
                    });
                    assert_eq!(hw, got, "{} hardware k {k} rows {rows}", model.name);
                }
            }
        }
        assert!(
            control_failed,
            "the saturating control never saturated: the inputs are too mild"
        );
    }
}

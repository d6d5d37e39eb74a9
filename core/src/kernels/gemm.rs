//! The int8 GEMM every int8 Linear and conv runs on: `acc[t][o] = Σ_i a[t][i] · w[o][i]` in
//! i32, over activation rows `a` (int8, quantized per row by [`super::quantize_row`]) and a
//! weight in the panel layout of [`super::pack`], with an epilogue per output.
//!
//! The sums are exact integers, so every ISA gives the same bits by construction; the scalar
//! loop here is the reference the SIMD kernels (`arch/x86_gemm.rs`, `arch/aarch64_gemm.rs`,
//! `arch/arm_dsp.rs`, `arch/arm_mve.rs`) are tested
//! against (the Arm one on the Cortex-M4 under QEMU: `firmware/src/bin/kernels.rs`). Sums
//! wrap in i32 like the SIMD lanes (they are exact whenever the true value fits).
//!
//! Activations are in [−127, 127] (the quantizer never gives −128): that is what makes the AVX2
//! `vpmaddubsw` kernel unable to saturate (see `arch/x86_gemm.rs`). Rows are `lda` bytes apart and
//! hold [`panel_k`] values, the padding zero ([`act_row_len`]); they may overlap.

#[cfg(target_arch = "aarch64")]
use super::arch::aarch64_gemm as aarch64;
#[cfg(all(target_arch = "arm", any(target_feature = "dsp", feature = "arm-dsp")))]
use super::arch::arm_dsp;
#[cfg(all(target_arch = "arm", feature = "arm-mve"))]
use super::arch::arm_mve;
#[cfg(target_arch = "x86_64")]
use super::arch::x86_gemm as x86;
use super::layers::PanelsI8;
use super::pack::{panel_k, PANEL_KR, PANEL_NR};
use super::Isa;

/// Bytes of one activation row of the GEMM for `k` inputs: padded to the panel groups.
pub const fn act_row_len(k: usize) -> usize {
    panel_k(k)
}

/// How the activation bytes are encoded for `isa`'s kernel: VNNI's `vpdpbusd` multiplies
/// unsigned by signed bytes, so its kernels read `a + 128` (the sign bit flipped) and subtract
/// `128 · Σ_i w[o][i]`, which keeps the sums exact.
pub(crate) fn wants_offset_activations(isa: Isa) -> bool {
    matches!(isa, Isa::AvxVnni | Isa::Avx512Vnni)
}

/// Re-encodes activation bytes quantized by [`super::quantize_row`] for `isa`'s kernel (see
/// [`wants_offset_activations`]); a no-op on every other ISA.
pub(crate) fn encode_activations(isa: Isa, a: &mut [i8]) {
    if wants_offset_activations(isa) {
        a.iter_mut().for_each(|v| *v = (*v as u8 ^ 0x80) as i8);
    }
}

/// `store(t, o, sums)` with the sums of row `t` and channels `o .. o + sums.len()` (channel
/// numbers of the view `w`; `w.o0` is added to reach the tensor's), at most one panel at a time,
/// covering every row `t < m` and every channel in `c0..c1` once. `a` must be encoded for `isa`
/// ([`encode_activations`]) and `isa` supported. The order of the calls is unspecified.
#[inline(always)]
pub(crate) fn gemm_i8_with<F: FnMut(usize, usize, &[i32])>(
    isa: Isa,
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (c0, c1): (usize, usize),
    store: F,
) {
    if m == 0 || c0 >= c1 {
        return;
    }
    let kp = panel_k(w.k);
    // Rows may overlap (`lda < kp`: the stride-1 int8 conv reads windows of one pixel-major row).
    assert!(lda > 0 && a.len() >= (m - 1) * lda + kp && w.o0 + c1 <= w.rows);
    assert!(w.q.len() >= w.rows.div_ceil(PANEL_NR) * w.panel_bytes());
    let panels = ((w.o0 + c0) / PANEL_NR, (w.o0 + c1).div_ceil(PANEL_NR));
    let mut emit = Emit {
        store,
        lo: w.o0 + c0,
        hi: w.o0 + c1,
        o0: w.o0,
    };
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` is supported (the caller's contract, checked by `Isa::supported`), and
        // the asserts above bound every row and panel the kernels read.
        match isa {
            Isa::Avx2 => return unsafe { x86::gemm_i8_avx2(a, lda, m, w, panels, &mut emit) },
            Isa::AvxVnni => {
                return unsafe { x86::gemm_i8_avxvnni(a, lda, m, w, panels, &mut emit) }
            }
            Isa::Avx512Bw => {
                return unsafe { x86::gemm_i8_avx512bw(a, lda, m, w, panels, &mut emit) }
            }
            Isa::Avx512Vnni => {
                return unsafe { x86::gemm_i8_avx512vnni(a, lda, m, w, panels, &mut emit) }
            }
            Isa::Scalar
            | Isa::ArmDsp
            | Isa::ArmMve
            | Isa::Neon
            | Isa::NeonDot
            | Isa::NeonI8mm
            | Isa::Avx => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: `isa` is supported (the caller's contract), and the asserts above bound every
        // row and panel the kernels read.
        match isa {
            Isa::Neon => return unsafe { aarch64::gemm_i8_neon(a, lda, m, w, panels, &mut emit) },
            Isa::NeonDot => {
                return unsafe { aarch64::gemm_i8_dot(a, lda, m, w, panels, &mut emit) }
            }
            Isa::NeonI8mm => {
                return unsafe { aarch64::gemm_i8_i8mm(a, lda, m, w, panels, &mut emit) }
            }
            _ => {}
        }
    }
    #[cfg(all(target_arch = "arm", feature = "arm-mve"))]
    if isa == Isa::ArmMve {
        // SAFETY: this build targets an MVE core (`Isa::ArmMve` is compiled in), and the asserts
        // above bound every row and panel the kernel reads.
        return unsafe { arm_mve::gemm_i8_mve(a, lda, m, w, panels, &mut emit) };
    }
    #[cfg(all(target_arch = "arm", any(target_feature = "dsp", feature = "arm-dsp")))]
    if isa == Isa::ArmDsp {
        // SAFETY: this build targets a DSP core (`Isa::ArmDsp` is compiled in), and the asserts
        // above bound every row and panel the kernel reads.
        return unsafe { arm_dsp::gemm_i8_dsp(a, lda, m, w, panels, &mut emit) };
    }
    let _ = isa;
    gemm_i8_scalar(a, lda, m, w, panels, &mut emit);
}

/// The raw sums of the int8 GEMM on `isa`: `out[t · (c1 − c0) + (o − c0)] = Σ_i a[t·lda + i] ·
/// w[o][i]` for rows `t < m` and channels `c0 ≤ o < c1` of the view `w`, the exact i32 sums every
/// int8 Linear and conv starts its epilogue from. For kernel self-tests on targets the host test
/// suite cannot run (the Cortex-M firmware's `kernels` binary); the layers call the GEMM
/// directly. `a` holds plain codes in [−127, 127] (rows `lda ≥ 1` bytes apart, each with
/// [`act_row_len`]`(w.k)` bytes, overlapping when `lda` is shorter); it is re-encoded for `isa`
/// and restored. Returns `false` (and computes nothing) when `isa` is not supported, a code is
/// −128 or a length does not fit.
pub fn gemm_i8_sums(
    isa: Isa,
    a: &mut [i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (c0, c1): (usize, usize),
    out: &mut [i32],
) -> bool {
    let fits = lda > 0
        && c0 <= c1
        && w.o0 + c1 <= w.rows
        && w.q.len() >= w.rows.div_ceil(PANEL_NR) * w.panel_bytes()
        && (m == 0 || a.len() >= (m - 1) * lda + panel_k(w.k))
        && out.len() >= m * (c1 - c0);
    if !isa.supported() || !fits || a.contains(&i8::MIN) {
        return false;
    }
    encode_activations(isa, a);
    let width = c1 - c0;
    gemm_i8_with(isa, a, lda, m, w, (c0, c1), |t, o, sums| {
        let at = t * width + o - c0;
        out[at..at + sums.len()].copy_from_slice(sums);
    });
    // The offset encoding is its own inverse.
    encode_activations(isa, a);
    true
}

/// Hands the sums of a finished tile to the caller's `store`: the channels of panel `p` that lie
/// in the view's range `lo..hi` (tensor channels), renumbered from the view's first channel `o0`.
/// Forced inline so that the store (the caller's epilogue) compiles into each kernel, with its
/// instruction set.
pub(crate) struct Emit<F> {
    store: F,
    lo: usize,
    hi: usize,
    o0: usize,
}

impl<F: FnMut(usize, usize, &[i32])> Emit<F> {
    #[inline(always)]
    pub(crate) fn tile(&mut self, t: usize, p: usize, acc: &[i32; PANEL_NR]) {
        let first = (p * PANEL_NR).max(self.lo);
        let end = (p * PANEL_NR + PANEL_NR).min(self.hi);
        (self.store)(
            t,
            first - self.o0,
            &acc[first - p * PANEL_NR..end - p * PANEL_NR],
        );
    }
}

/// The reference: per output, the inputs in index order (group by group of the panel).
fn gemm_i8_scalar(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let kp = panel_k(w.k);
    let bytes = w.panel_bytes();
    for p in p0..p1 {
        let panel = &w.q[p * bytes..(p + 1) * bytes];
        for t in 0..m {
            let row = &a[t * lda..t * lda + kp];
            let mut acc = [0i32; PANEL_NR];
            for (x4, w4) in row
                .chunks_exact(PANEL_KR)
                .zip(panel.chunks_exact(PANEL_KR * PANEL_NR))
            {
                for (v, wj) in acc.iter_mut().zip(w4.chunks_exact(PANEL_KR)) {
                    for (x, wv) in x4.iter().zip(wj) {
                        *v = v.wrapping_add(*x as i32 * *wv as i32);
                    }
                }
            }
            emit.tile(t, p, &acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pack::{pack_panels, panels_len};

    #[test]
    fn raw_sums_equal_the_plain_sums_on_every_supported_isa_and_bad_input_is_refused() {
        const ROWS: usize = 21;
        const K: usize = 13;
        let (m, lda, win) = (3, panel_k(K) + 1, (2, 19));
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8 as i8
        };
        let w: [i8; ROWS * K] = core::array::from_fn(|_| next());
        let mut q = [0i8; panels_len(ROWS, K)];
        assert!(pack_panels(&w, ROWS, K, &mut q));
        let scales = [1.0f32; ROWS];
        let panels = PanelsI8::new(&q, &scales, ROWS, K, 1).unwrap();
        let mut a = [0i8; 2 * (panel_k(K) + 1) + panel_k(K)];
        for t in 0..m {
            for i in 0..K {
                a[t * lda + i] = next().max(-127);
            }
        }
        let original = a;
        let mut expected = [0i32; 3 * 17];
        for t in 0..m {
            for o in win.0..win.1 {
                expected[t * 17 + o - win.0] = (0..K)
                    .map(|i| a[t * lda + i] as i32 * w[o * K + i] as i32)
                    .sum();
            }
        }
        for isa in Isa::ALL {
            let mut out = [0i32; 3 * 17];
            let ran = gemm_i8_sums(isa, &mut a, lda, m, &panels, win, &mut out);
            assert_eq!(ran, isa.supported(), "{isa:?}");
            if ran {
                assert_eq!(out, expected, "{isa:?}");
            }
            assert_eq!(a, original, "{isa:?}: the codes are restored");
        }
        let mut out = [0i32; 3 * 17];
        let sums = |a: &mut [i8], lda: usize, win: (usize, usize), out: &mut [i32]| {
            gemm_i8_sums(Isa::Scalar, a, lda, m, &panels, win, out)
        };
        assert!(!sums(&mut a.clone(), 0, win, &mut out), "lda 0");
        assert!(
            !sums(&mut a.clone(), lda, (0, ROWS + 1), &mut out),
            "past the rows"
        );
        assert!(
            !sums(&mut a.clone(), lda, win, &mut out[..50]),
            "short output"
        );
        let mut short = a;
        assert!(
            !sums(&mut short[..a.len() - 1], lda, win, &mut out),
            "short rows"
        );
        let mut bad = a;
        bad[5] = i8::MIN;
        assert!(!sums(&mut bad, lda, win, &mut out), "a −128 code");
    }
}

//! x86-64 int8 GEMM kernels over the panel layout ([`crate::kernels::pack`]): a tile of `MR`
//! activation rows × one 16-channel panel stays in registers for the whole sum; each step
//! broadcasts 4 activation bytes of a row against the panel's 64-byte group (16 channels × 4
//! inputs), so no horizontal sums are needed. All sums are exact i32, so every kernel equals the
//! scalar reference bit for bit (`isa_tests.rs`).
//!
//! - AVX2 / AVX-512BW: `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into i16
//!   **with saturation**. The unsigned operand is `|w|` (≤ 128, `−128` included) and the signed one
//!   `x · sign(w)` (|x| ≤ 127: activations come from the symmetric quantizer), so a pair sum is at
//!   most 2 · 128 · 127 = 32,512 < 32,767: it cannot saturate, whatever the weight bytes. `vpmaddwd`
//!   against ones widens the pairs to i32.
//! - AVX-VNNI / AVX-512 VNNI: `vpdpbusd` fuses the four products into i32 without an i16 step. It
//!   wants unsigned activations, so it reads `x + 128` (encoded once per row by
//!   `gemm::encode_activations`) and starts each sum at `−128 · Σ w`, which a `vpdpbusd` of the
//!   panel against ones gives once per panel.

use crate::kernels::gemm::Emit;
use crate::kernels::layers::PanelsI8;
use crate::kernels::pack::{panel_k, PANEL_KR, PANEL_NR};
use core::arch::x86_64::*;

/// Bytes of one 16-channel × 4-input group of a panel.
const GROUP: usize = PANEL_NR * PANEL_KR;

/// The MR row pointers of the tile at `t0` (rows past `m` repeat the last row; their sums are
/// computed and dropped).
#[inline(always)]
unsafe fn tile_rows<const MR: usize>(a: &[i8], lda: usize, m: usize, t0: usize) -> [*const i8; MR] {
    core::array::from_fn(|r| unsafe { a.as_ptr().add((t0 + r).min(m - 1) * lda) })
}

/// The 4 bytes of group `g` of a row, as one i32 to broadcast.
#[inline(always)]
unsafe fn group_bytes(row: *const i8, g: usize) -> i32 {
    unsafe { (row.add(g * PANEL_KR) as *const i32).read_unaligned() }
}

/// AVX2, 4 rows × 16 channels (two ymm accumulators per row).
///
/// # Safety
/// The CPU has AVX2; `a` holds `m` rows of `lda ≥ panel_k(w.k)` bytes in [−127, 127]; panels
/// `p0..p1` lie inside `w.q`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn gemm_i8_avx2(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    const MR: usize = 4;
    let groups = panel_k(w.k) / PANEL_KR;
    let ones = _mm256_set1_epi16(1);
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows::<MR>(a, lda, m, t0) };
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            for g in 0..groups {
                let w0 = unsafe { _mm256_loadu_si256(panel.add(g * GROUP) as *const __m256i) };
                let w1 = unsafe { _mm256_loadu_si256(panel.add(g * GROUP + 32) as *const __m256i) };
                let (u0, u1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
                for (r, row) in rows.iter().enumerate() {
                    let xb = _mm256_set1_epi32(unsafe { group_bytes(*row, g) });
                    let s0 = _mm256_sign_epi8(xb, w0);
                    let s1 = _mm256_sign_epi8(xb, w1);
                    let d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(u0, s0), ones);
                    let d1 = _mm256_madd_epi16(_mm256_maddubs_epi16(u1, s1), ones);
                    acc[r][0] = _mm256_add_epi32(acc[r][0], d0);
                    acc[r][1] = _mm256_add_epi32(acc[r][1], d1);
                }
            }
            for (r, ar) in acc.iter().enumerate().take(m - t0) {
                let mut out = [0i32; PANEL_NR];
                unsafe {
                    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ar[0]);
                    _mm256_storeu_si256(out.as_mut_ptr().add(8) as *mut __m256i, ar[1]);
                }
                emit.tile(t0 + r, p, &out);
            }
        }
    }
}

/// AVX-VNNI (ymm `vpdpbusd`), 4 rows × 16 channels; activations encoded `x + 128`.
///
/// # Safety
/// The CPU has AVX2 and AVX-VNNI; `a` holds `m` offset-encoded rows of `lda ≥ panel_k(w.k)`
/// bytes; panels `p0..p1` lie inside `w.q`.
#[target_feature(enable = "avx2,avxvnni")]
pub(crate) unsafe fn gemm_i8_avxvnni(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    const MR: usize = 4;
    let groups = panel_k(w.k) / PANEL_KR;
    let ones = _mm256_set1_epi8(1);
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        let load = |g: usize, h: usize| unsafe {
            _mm256_loadu_si256(panel.add(g * GROUP + 32 * h) as *const __m256i)
        };
        // −128 · Σ w per channel: the start of every sum of this panel.
        let mut sum = [_mm256_setzero_si256(); 2];
        for g in 0..groups {
            for (h, s) in sum.iter_mut().enumerate() {
                *s = _mm256_dpbusd_avx_epi32(*s, ones, load(g, h));
            }
        }
        let start = sum.map(|s| _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 7)));
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows::<MR>(a, lda, m, t0) };
            let mut acc = [start; MR];
            for g in 0..groups {
                let (w0, w1) = (load(g, 0), load(g, 1));
                for (r, row) in rows.iter().enumerate() {
                    let xb = _mm256_set1_epi32(unsafe { group_bytes(*row, g) });
                    acc[r][0] = _mm256_dpbusd_avx_epi32(acc[r][0], xb, w0);
                    acc[r][1] = _mm256_dpbusd_avx_epi32(acc[r][1], xb, w1);
                }
            }
            for (r, ar) in acc.iter().enumerate().take(m - t0) {
                let mut out = [0i32; PANEL_NR];
                unsafe {
                    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ar[0]);
                    _mm256_storeu_si256(out.as_mut_ptr().add(8) as *mut __m256i, ar[1]);
                }
                emit.tile(t0 + r, p, &out);
            }
        }
    }
}

/// AVX-512BW, 8 rows × 16 channels (one zmm accumulator per row). AVX-512 has no `vpsignb`, so
/// `x · sign(w)` is a masked negation under the weights' sign bits (where `w = 0`, `|w| = 0`
/// makes the product 0 either way).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW; otherwise as [`gemm_i8_avx2`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn gemm_i8_avx512bw(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    const MR: usize = 8;
    let groups = panel_k(w.k) / PANEL_KR;
    let ones = _mm512_set1_epi16(1);
    let zero = _mm512_setzero_si512();
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows::<MR>(a, lda, m, t0) };
            let mut acc = [zero; MR];
            for g in 0..groups {
                let w0 = unsafe { _mm512_loadu_si512(panel.add(g * GROUP) as *const __m512i) };
                let u0 = _mm512_abs_epi8(w0);
                let negative = _mm512_movepi8_mask(w0);
                for (r, row) in rows.iter().enumerate() {
                    let xb = _mm512_set1_epi32(unsafe { group_bytes(*row, g) });
                    let s0 = _mm512_mask_sub_epi8(xb, negative, zero, xb);
                    let d0 = _mm512_madd_epi16(_mm512_maddubs_epi16(u0, s0), ones);
                    acc[r] = _mm512_add_epi32(acc[r], d0);
                }
            }
            for (r, ar) in acc.iter().enumerate().take(m - t0) {
                let mut out = [0i32; PANEL_NR];
                unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, *ar) };
                emit.tile(t0 + r, p, &out);
            }
        }
    }
}

/// AVX-512 VNNI (zmm `vpdpbusd`), 8 rows × 16 channels; activations encoded `x + 128`.
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW and AVX-512 VNNI; otherwise as [`gemm_i8_avxvnni`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn gemm_i8_avx512vnni(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    const MR: usize = 8;
    let groups = panel_k(w.k) / PANEL_KR;
    let ones = _mm512_set1_epi8(1);
    let zero = _mm512_setzero_si512();
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        let load = |g: usize| unsafe { _mm512_loadu_si512(panel.add(g * GROUP) as *const __m512i) };
        // −128 · Σ w per channel: the start of every sum of this panel.
        let mut sum = zero;
        for g in 0..groups {
            sum = _mm512_dpbusd_epi32(sum, ones, load(g));
        }
        let start = _mm512_sub_epi32(zero, _mm512_slli_epi32(sum, 7));
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows::<MR>(a, lda, m, t0) };
            let mut acc = [start; MR];
            for g in 0..groups {
                let w0 = load(g);
                for (r, row) in rows.iter().enumerate() {
                    let xb = _mm512_set1_epi32(unsafe { group_bytes(*row, g) });
                    acc[r] = _mm512_dpbusd_epi32(acc[r], xb, w0);
                }
            }
            for (r, ar) in acc.iter().enumerate().take(m - t0) {
                let mut out = [0i32; PANEL_NR];
                unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, *ar) };
                emit.tile(t0 + r, p, &out);
            }
        }
    }
}

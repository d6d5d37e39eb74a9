//! AArch64 int8 GEMM kernels over the panel layout ([`crate::kernels::pack`]): a tile of 4
//! activation rows × one 16-channel panel stays in registers for the whole sum. A panel group
//! (16 channels × 4 inputs, 64 bytes) is four 16-byte vectors of 4 channels × 4 inputs each. All
//! sums are exact i32 (wrapping like the reference), so every kernel equals the scalar reference
//! bit for bit (`isa_tests.rs`, run under `qemu-aarch64` with and without each extension by
//! `scripts/test-aarch64`).
//!
//! - NEON (every AArch64 CPU): `smull`/`smull2` of a weight vector by the row's 4 bytes repeated
//!   give the 16 products in i16, `addp` adds neighbours (one channel's inputs 0+1 and 2+3) and
//!   `sadalp` adds the pairs into the channel's i32. Each product is at most 128 · 127 in size
//!   (activations are in [−127, 127]) and a pair at most 32,512 < 32,767: no i16 step can wrap.
//! - Dot product (`FEAT_DotProd`): `sdot` by element: each i32 lane of 4 channels adds the four
//!   products of its 4 weight bytes with the row's 4 bytes of one group (a lane of a 16-byte load
//!   that holds 4 groups): the panel layout is exactly its operand.
//! - Int8 matrix multiply (`FEAT_I8MM`): `smmla` adds a 2 × 8 by 8 × 2 product. Two consecutive
//!   groups' vectors, interleaved by 32-bit lanes (`zip1`/`zip2`), hold 2 channels × 8 inputs; two
//!   rows' 8 bytes form the other operand, so one instruction does 2 rows × 2 channels × 8 inputs
//!   (twice the MACs of an `sdot`) and the file layout stays as it is.
//!
//! `sdot` and `smmla` are not stable as intrinsics (`stdarch_neon_dotprod`, `stdarch_neon_i8mm`),
//! so they are one-instruction `asm!` blocks inside functions compiled with the extension.

use crate::kernels::gemm::Emit;
use crate::kernels::layers::PanelsI8;
use crate::kernels::pack::{panel_k, PANEL_KR, PANEL_NR};
use core::arch::aarch64::*;
use core::arch::asm;

/// Bytes of one 16-channel × 4-input group of a panel.
const GROUP: usize = PANEL_NR * PANEL_KR;
/// Rows of a tile.
const MR: usize = 4;

/// The MR row pointers of the tile at `t0` (rows past `m` repeat the last row; their sums are
/// computed and dropped).
#[inline(always)]
unsafe fn tile_rows(a: &[i8], lda: usize, m: usize, t0: usize) -> [*const i8; MR] {
    core::array::from_fn(|r| unsafe { a.as_ptr().add((t0 + r).min(m - 1) * lda) })
}

/// The 4 bytes of group `g` of a row, as one i32.
#[inline(always)]
unsafe fn group_bytes(row: *const i8, g: usize) -> i32 {
    unsafe { (row.add(g * PANEL_KR) as *const i32).read_unaligned() }
}

/// Group `g` of a panel: four vectors of 4 channels × 4 inputs.
#[inline(always)]
unsafe fn load_group(panel: *const i8, g: usize) -> [int8x16_t; 4] {
    core::array::from_fn(|c| unsafe { vld1q_s8(panel.add(g * GROUP + 16 * c)) })
}

/// Hands the finished rows of a tile (`acc[r]`: 16 channels as 4 vectors) to `emit`.
#[inline(always)]
fn emit_rows(
    acc: &[[int32x4_t; 4]; MR],
    t0: usize,
    m: usize,
    p: usize,
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    for (r, ar) in acc.iter().enumerate().take(m - t0) {
        let mut out = [0i32; PANEL_NR];
        for (c, v) in ar.iter().enumerate() {
            // SAFETY: `out` has room for 4 vectors of 4 lanes.
            unsafe { vst1q_s32(out.as_mut_ptr().add(4 * c), *v) };
        }
        emit.tile(t0 + r, p, &out);
    }
}

/// Plain NEON, 4 rows × 16 channels (4 vectors per row).
///
/// # Safety
/// `a` holds `m ≥ 1` rows of `lda ≥ 1` bytes apart, each with `panel_k(w.k)` readable bytes in
/// [−127, 127]; panels `p0..p1` lie inside `w.q`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemm_i8_neon(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let groups = panel_k(w.k) / PANEL_KR;
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows(a, lda, m, t0) };
            let mut acc = [[vdupq_n_s32(0); 4]; MR];
            for g in 0..groups {
                let wv = unsafe { load_group(panel, g) };
                for (ar, row) in acc.iter_mut().zip(&rows) {
                    let x = vreinterpretq_s8_s32(vdupq_n_s32(unsafe { group_bytes(*row, g) }));
                    for (v, wc) in ar.iter_mut().zip(&wv) {
                        let lo = vmull_s8(vget_low_s8(x), vget_low_s8(*wc));
                        let hi = vmull_high_s8(x, *wc);
                        *v = vpadalq_s16(*v, vpaddq_s16(lo, hi));
                    }
                }
            }
            emit_rows(&acc, t0, m, p, emit);
        }
    }
}

/// `acc += sdot(w, x.4b[L])`: each lane adds the products of its 4 bytes of `w` with bytes
/// `4L .. 4L + 4` of `x`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot_lane<const L: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: a register-only instruction of an extension this function is compiled for.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// One group (lane `L` of each row's `x`) of the dot-product tile.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot_step<const L: i32>(
    acc: &mut [[int32x4_t; 4]; MR],
    wv: &[int8x16_t; 4],
    x: &[int8x16_t; MR],
) {
    for (ar, xr) in acc.iter_mut().zip(x) {
        for (v, wc) in ar.iter_mut().zip(wv) {
            *v = sdot_lane::<L>(*v, *wc, *xr);
        }
    }
}

/// Dot product (`sdot`), 4 rows × 16 channels; 4 groups per 16-byte activation load.
///
/// # Safety
/// The CPU has the dot product extension; otherwise as [`gemm_i8_neon`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn gemm_i8_dot(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let groups = panel_k(w.k) / PANEL_KR;
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel; a 16-byte row load at group
        // `g` is taken only when groups `g .. g + 4` are in the row.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows(a, lda, m, t0) };
            let mut acc = [[vdupq_n_s32(0); 4]; MR];
            let mut g = 0;
            while g + 4 <= groups {
                let x = rows.map(|r| unsafe { vld1q_s8(r.add(g * PANEL_KR)) });
                dot_step::<0>(&mut acc, &unsafe { load_group(panel, g) }, &x);
                dot_step::<1>(&mut acc, &unsafe { load_group(panel, g + 1) }, &x);
                dot_step::<2>(&mut acc, &unsafe { load_group(panel, g + 2) }, &x);
                dot_step::<3>(&mut acc, &unsafe { load_group(panel, g + 3) }, &x);
                g += 4;
            }
            for g in g..groups {
                let x =
                    rows.map(|r| vreinterpretq_s8_s32(vdupq_n_s32(unsafe { group_bytes(r, g) })));
                dot_step::<0>(&mut acc, &unsafe { load_group(panel, g) }, &x);
            }
            emit_rows(&acc, t0, m, p, emit);
        }
    }
}

/// `acc += smmla(x, w)`: the 2 × 2 sums of `x`'s two 8-byte rows with `w`'s two 8-byte rows,
/// lanes `[x0·w0, x0·w1, x1·w0, x1·w1]`.
#[target_feature(enable = "neon,i8mm")]
#[inline]
fn smmla(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: a register-only instruction of an extension this function is compiled for.
    unsafe {
        asm!(
            "smmla {acc:v}.4s, {x:v}.16b, {w:v}.16b",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Two groups of the i8mm tile: `wa`, `wb` are groups `g`, `g + 1` (4 channels × 4 inputs per
/// vector); `x[h]` holds rows `2h` and `2h + 1`, 8 inputs each. `acc[h][q]` holds channels
/// `2q, 2q + 1` of those rows.
#[target_feature(enable = "neon,i8mm")]
#[inline]
fn mmla_step(
    acc: &mut [[int32x4_t; 8]; MR / 2],
    wa: &[int8x16_t; 4],
    wb: &[int8x16_t; 4],
    x: &[int8x16_t; MR / 2],
) {
    // Interleaving the 4-byte lanes of the two groups gives 2 channels × 8 inputs per vector.
    let wm: [int8x16_t; 8] = core::array::from_fn(|q| {
        let (a, b) = (
            vreinterpretq_s32_s8(wa[q / 2]),
            vreinterpretq_s32_s8(wb[q / 2]),
        );
        vreinterpretq_s8_s32(if q % 2 == 0 {
            vzip1q_s32(a, b)
        } else {
            vzip2q_s32(a, b)
        })
    });
    for (ah, xh) in acc.iter_mut().zip(x) {
        for (v, wq) in ah.iter_mut().zip(&wm) {
            *v = smmla(*v, *xh, *wq);
        }
    }
}

/// Int8 matrix multiply (`smmla`), 4 rows (2 pairs) × 16 channels; 2 groups per step.
///
/// # Safety
/// The CPU has the int8 matrix multiply extension; otherwise as [`gemm_i8_neon`].
#[target_feature(enable = "neon,i8mm")]
pub(crate) unsafe fn gemm_i8_i8mm(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let groups = panel_k(w.k) / PANEL_KR;
    for p in p0..p1 {
        // SAFETY (whole body): the caller bounds every row and panel; an 8-byte row load at group
        // `g` is taken only when groups `g` and `g + 1` are in the row.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        for t0 in (0..m).step_by(MR) {
            let rows = unsafe { tile_rows(a, lda, m, t0) };
            let mut acc = [[vdupq_n_s32(0); 8]; MR / 2];
            let mut g = 0;
            while g + 2 <= groups {
                let x: [int8x16_t; MR / 2] = core::array::from_fn(|h| unsafe {
                    let at = g * PANEL_KR;
                    vcombine_s8(
                        vld1_s8(rows[2 * h].add(at)),
                        vld1_s8(rows[2 * h + 1].add(at)),
                    )
                });
                let (wa, wb) = unsafe { (load_group(panel, g), load_group(panel, g + 1)) };
                mmla_step(&mut acc, &wa, &wb, &x);
                g += 2;
            }
            if g < groups {
                // The odd last group against a zero group: the upper 4 inputs add nothing.
                let half = |r: *const i8| {
                    vreinterpret_s8_u64(vcreate_u64(unsafe { group_bytes(r, g) } as u32 as u64))
                };
                let x: [int8x16_t; MR / 2] =
                    core::array::from_fn(|h| vcombine_s8(half(rows[2 * h]), half(rows[2 * h + 1])));
                let wa = unsafe { load_group(panel, g) };
                mmla_step(&mut acc, &wa, &[vdupq_n_s8(0); 4], &x);
            }
            // Back to rows: lanes 0, 1 of `acc[h][q]` are row 2h's channels 2q, 2q + 1, lanes 2, 3
            // row 2h + 1's.
            let rows_acc: [[int32x4_t; 4]; MR] = core::array::from_fn(|r| {
                let ah = &acc[r / 2];
                core::array::from_fn(|c| {
                    let (lo, hi) = (
                        vreinterpretq_s64_s32(ah[2 * c]),
                        vreinterpretq_s64_s32(ah[2 * c + 1]),
                    );
                    vreinterpretq_s32_s64(if r % 2 == 0 {
                        vzip1q_s64(lo, hi)
                    } else {
                        vzip2q_s64(lo, hi)
                    })
                })
            });
            emit_rows(&rows_acc, t0, m, p, emit);
        }
    }
}

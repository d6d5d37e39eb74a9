//! Cortex-M55 Helium (Armv8.1-M MVE, integer) int8 GEMM kernel over the panel layout
//! ([`crate::kernels::pack`]): word gathers and `VMLADAVA.S8`.
//!
//! A panel's 16-byte vector holds 4 channels × 4 inputs, and MVE has no per-32-bit-lane dot
//! product, so the kernel does not read the panel as it lies. `VMLADAVA.S8 Rda, Qn, Qm` adds
//! the 16 byte products of two vectors to one i32 register, which wants the 16 consecutive
//! inputs of *one* channel: in the panel those are 4 words 64 bytes apart (groups `g .. g + 4`),
//! and one vector-base gather, `VLDRW.U32 Q, [Qbase, #256]!`, loads exactly them and moves its 4
//! addresses on to the next 4 groups. The activation side is a plain contiguous 16-byte load,
//! shared by 4 channels. Per 16 inputs of one row and 4 channels: 1 activation load, 4 gathers,
//! 4 `VMLADAVA` and 1 loop end (`LE`): 10 instructions for 64 MACs.
//!
//! `VMLADAVA` sums the 16 exact i16 products and adds them to the accumulator modulo 2^32, like
//! the reference's `wrapping_add` (wrapping addition is associative), so the sums equal the
//! scalar reference bit for bit whatever the bytes. The last `groups mod 4` groups (and panels
//! that are not word-aligned, which `VLDRW` would fault on) go through the reference loop.
//!
//! The MVE intrinsics are unstable, so the loop is one inline `asm!` block; `VMLADAVA` needs an
//! even accumulator register, hence the explicit `r0`, `r2`, `r4`, `r8`.

use crate::kernels::gemm::Emit;
use crate::kernels::layers::PanelsI8;
use crate::kernels::pack::{panel_k, PANEL_KR, PANEL_NR};
use core::arch::asm;

/// Bytes of one 16-channel × 4-input group of a panel.
const GROUP: usize = PANEL_NR * PANEL_KR;
/// Groups one gather covers (16 inputs of one channel).
const GATHER: usize = 4;

/// The gather offsets of one channel: its words of 4 consecutive groups (16-byte aligned, as
/// the contiguous `VLDRW` that loads them wants).
#[repr(C, align(16))]
struct Offsets([u32; 4]);
static OFFSETS: Offsets = Offsets([0, GROUP as u32, 2 * GROUP as u32, 3 * GROUP as u32]);

/// The int8 GEMM of `gemm::gemm_i8_with` on MVE: row by row, each panel's 16 channels as 4
/// blocks of 4.
///
/// # Safety
/// The core has integer MVE; `a` holds `m ≥ 1` rows `lda` bytes apart, each with
/// `panel_k(w.k)` readable bytes; panels `p0..p1` lie inside `w.q`.
pub(crate) unsafe fn gemm_i8_mve(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let groups = panel_k(w.k) / PANEL_KR;
    let bytes = w.panel_bytes();
    // `panel_bytes` is a multiple of 64, so every panel is word-aligned when the first is.
    let vector = (w.q.as_ptr() as usize).is_multiple_of(4);
    let chunks = if vector { groups / GATHER } else { 0 };
    for t in 0..m {
        let row = &a[t * lda..t * lda + groups * PANEL_KR];
        for p in p0..p1 {
            let panel = &w.q[p * bytes..(p + 1) * bytes];
            let mut acc = [0i32; PANEL_NR];
            if chunks > 0 {
                for (j, s) in acc.chunks_exact_mut(4).enumerate() {
                    // SAFETY: the row has `16 · chunks` bytes and each of the 4 channels `4j ..`
                    // `chunks` gathers of 4 words inside the (word-aligned) panel.
                    unsafe {
                        dot_row1_cols4(
                            panel.as_ptr().add(4 * j * PANEL_KR),
                            row.as_ptr(),
                            chunks,
                            s.try_into().unwrap(),
                        )
                    };
                }
            }
            // The groups the gathers left (all of them for a misaligned panel): the reference.
            let g0 = chunks * GATHER;
            let rest = row[g0 * PANEL_KR..groups * PANEL_KR]
                .chunks_exact(PANEL_KR)
                .zip(panel[g0 * GROUP..].chunks_exact(GROUP));
            for (x4, w4) in rest {
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

/// One row against 4 channels: `s[c] += Σ_i x[i] · w[j + c][i]` over the first `16 · n` inputs,
/// `wp` at channel `j`'s word of group 0 (the 4 channels' words are adjacent, each channel's
/// next group 64 bytes on), `xp` at the row's first byte.
///
/// # Safety
/// The core has integer MVE; `n ≥ 1`; `wp` is word-aligned with `n` chunks of 4 groups (256
/// bytes each) readable for the 4 channels, and `xp` has `16n` readable bytes.
#[inline(always)]
unsafe fn dot_row1_cols4(wp: *const i8, xp: *const i8, n: usize, s: &mut [i32; 4]) {
    debug_assert!(n >= 1);
    // The gathers pre-increment their addresses by 256 (one chunk), so the bases start one
    // chunk early (never dereferenced there).
    let base = (wp as usize).wrapping_sub(GATHER * GROUP);
    // SAFETY: the caller's contract; `OFFSETS` is 16-byte aligned.
    unsafe {
        asm!(
            "vldrw.u32 q7, [{off}]",
            "vadd.i32 q0, q7, {b}",
            "add {b}, {b}, #4",
            "vadd.i32 q1, q7, {b}",
            "add {b}, {b}, #4",
            "vadd.i32 q2, q7, {b}",
            "add {b}, {b}, #4",
            "vadd.i32 q3, q7, {b}",
            "dls lr, lr",
            "2:",
            "vldrb.u8 q4, [{xp}], #16",
            "vldrw.u32 q5, [q0, #256]!",
            "vldrw.u32 q6, [q1, #256]!",
            "vmladava.s8 r0, q5, q4",
            "vldrw.u32 q5, [q2, #256]!",
            "vmladava.s8 r2, q6, q4",
            "vldrw.u32 q6, [q3, #256]!",
            "vmladava.s8 r4, q5, q4",
            "vmladava.s8 r8, q6, q4",
            "le lr, 2b",
            off = in(reg) OFFSETS.0.as_ptr(),
            b = inout(reg) base => _,
            xp = inout(reg) xp => _,
            inout("lr") n => _,
            inout("r0") s[0],
            inout("r2") s[1],
            inout("r4") s[2],
            inout("r8") s[3],
            out("d0") _, out("d1") _, out("d2") _, out("d3") _,
            out("d4") _, out("d5") _, out("d6") _, out("d7") _,
            out("d8") _, out("d9") _, out("d10") _, out("d11") _,
            out("d12") _, out("d13") _, out("d14") _, out("d15") _,
            options(nostack, readonly),
        );
    }
}

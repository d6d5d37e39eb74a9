//! Cortex-M4/M7 (Armv7E-M DSP extension) int8 GEMM kernel over the panel layout
//! ([`crate::kernels::pack`]): `SMLAD` on sign-extended byte pairs.
//!
//! A panel word is 4 consecutive inputs `w[o][4g .. 4g + 4]` of one channel, and an activation
//! word the same 4 inputs of one row, so the file's `PANELS` layout is read as it is:
//! `SXTB16 x` holds bytes 0 and 2 as two i16 halves, `SXTB16 x, ROR #8` bytes 1 and 3, and
//! `SMLAD` of the matching halves of weight and activation adds `x0·w0 + x2·w2` (then
//! `x1·w1 + x3·w3`) to an i32 accumulator. The four products of a group are exact in i32 and the
//! accumulator wraps like the reference's `wrapping_add` (`SMLAD` only sets the sticky Q flag on
//! overflow), so the sums equal the scalar reference bit for bit whatever the input bytes.
//!
//! Loop order, for a tile of `R` rows (4, 2 or 1) × one 16-channel panel:
//! - the tile's activation words are unpacked once per k-chunk into a stack buffer (two words per
//!   row and group) and reused by all 16 channels (and by every panel when `k` fits one chunk);
//! - with 4 or 2 rows, each weight word is loaded and unpacked once per channel and group and
//!   reused by the rows, whose accumulators stay in registers along the chunk ([`dot_rows4`],
//!   [`dot_rows2`]);
//! - with 1 row (the low-memory transformer's one-token chunks), 4 channels run together so each
//!   unpacked activation pair is loaded once for 4 channels ([`dot_row1_cols4`]).
//!
//! The DSP intrinsics of `core::arch::arm` are unstable, so the instructions are inline `asm!`.
//! Each inner loop is one `asm!` block: left to LLVM, the 4-row loop built from one-instruction
//! blocks hoisted all eight activation loads and spilled them (26 instructions per group instead
//! of 16).

use crate::kernels::gemm::Emit;
use crate::kernels::layers::PanelsI8;
use crate::kernels::pack::{panel_k, PANEL_KR, PANEL_NR};
use core::arch::asm;
use core::mem::MaybeUninit;

/// Bytes of one 16-channel × 4-input group of a panel.
const GROUP: usize = PANEL_NR * PANEL_KR;
/// Rows of a full tile: 4 accumulators, 2 unpacked weight halves, one unpacked activation pair,
/// the pointers and the counter fit the 13 general registers.
const MR: usize = 4;
/// Groups of 4 inputs unpacked at a time (512 inputs; the buffer is `MR · KC · 8` = 4 KiB of
/// stack).
const KC: usize = 128;

/// One group of [`dot_rows4`]'s loop.
macro_rules! rows4_group {
    () => {
        concat!(
            "ldr {w}, [{wp}], #64\n",
            "sxtb16 {we}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s0}, {x0}, {we}, {s0}\n",
            "smlad {s0}, {x1}, {w}, {s0}\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s1}, {x0}, {we}, {s1}\n",
            "smlad {s1}, {x1}, {w}, {s1}\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s2}, {x0}, {we}, {s2}\n",
            "smlad {s2}, {x1}, {w}, {s2}\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s3}, {x0}, {we}, {s3}\n",
            "smlad {s3}, {x1}, {w}, {s3}\n",
        )
    };
}

/// One group of [`dot_rows2`]'s loop.
macro_rules! rows2_group {
    () => {
        concat!(
            "ldr {w}, [{wp}], #64\n",
            "sxtb16 {we}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s0}, {x0}, {we}, {s0}\n",
            "smlad {s0}, {x1}, {w}, {s0}\n",
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "smlad {s1}, {x0}, {we}, {s1}\n",
            "smlad {s1}, {x1}, {w}, {s1}\n",
        )
    };
}

/// One group of [`dot_row1_cols4`]'s loop.
macro_rules! row1_cols4_group {
    () => {
        concat!(
            "ldrd {x0}, {x1}, [{xp}], #8\n",
            "ldr {w}, [{wp}], #64\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {s0}, {x0}, {t}, {s0}\n",
            "smlad {s0}, {x1}, {w}, {s0}\n",
            "ldr {w}, [{wp}, #-60]\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {s1}, {x0}, {t}, {s1}\n",
            "smlad {s1}, {x1}, {w}, {s1}\n",
            "ldr {w}, [{wp}, #-56]\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {s2}, {x0}, {t}, {s2}\n",
            "smlad {s2}, {x1}, {w}, {s2}\n",
            "ldr {w}, [{wp}, #-52]\n",
            "sxtb16 {t}, {w}\n",
            "sxtb16 {w}, {w}, ror #8\n",
            "smlad {s3}, {x0}, {t}, {s3}\n",
            "smlad {s3}, {x1}, {w}, {s3}\n",
        )
    };
}

/// Bytes 0 and 2 of `x`, each sign-extended into a 16-bit half.
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let y: u32;
    // SAFETY: a register-only DSP instruction (the build targets a DSP core: see `dispatch.rs`).
    unsafe {
        asm!("sxtb16 {0}, {1}", out(reg) y, in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    y
}

/// Bytes 1 and 3 of `x`, each sign-extended into a 16-bit half.
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let y: u32;
    // SAFETY: as `sxtb16`.
    unsafe {
        asm!("sxtb16 {0}, {1}, ror #8", out(reg) y, in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    y
}

/// The int8 GEMM of `gemm::gemm_i8_with` on the DSP extension: tiles of 4 rows, then the 1–3
/// remaining rows as a tile of 2 and/or 1 (no row is computed twice).
///
/// # Safety
/// The core has the DSP extension; `a` holds `m ≥ 1` rows `lda` bytes apart, each with
/// `panel_k(w.k)` readable bytes; panels `p0..p1` lie inside `w.q`.
pub(crate) unsafe fn gemm_i8_dsp(
    a: &[i8],
    lda: usize,
    m: usize,
    w: &PanelsI8<'_>,
    panels: (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let full = m - m % MR;
    for t0 in (0..full).step_by(MR) {
        // SAFETY (all calls): the caller bounds every row and panel.
        unsafe { tile::<MR>(a, lda, t0, w, panels, emit) };
    }
    let mut t0 = full;
    if m - t0 >= 2 {
        unsafe { tile::<2>(a, lda, t0, w, panels, emit) };
        t0 += 2;
    }
    if m > t0 {
        unsafe { tile::<1>(a, lda, t0, w, panels, emit) };
    }
}

/// Rows `t0 .. t0 + R` (`R` = 4, 2 or 1) against panels `p0..p1`.
///
/// # Safety
/// As [`gemm_i8_dsp`], with rows `t0 .. t0 + R` inside `a`.
#[inline(always)]
unsafe fn tile<const R: usize>(
    a: &[i8],
    lda: usize,
    t0: usize,
    w: &PanelsI8<'_>,
    (p0, p1): (usize, usize),
    emit: &mut Emit<impl FnMut(usize, usize, &[i32])>,
) {
    let groups = panel_k(w.k) / PANEL_KR;
    // Unpacked activations of chunk `c`: words `(g · R + r) · 2` and `+ 1` = the even and odd
    // bytes of group `c + g` of row `t0 + r`. Left uninitialized (zeroing 4 KiB per tile costs
    // as much as the unpacking): the kernels read only the `n` groups `unpack` has written.
    let mut buf = MaybeUninit::<[u32; MR * KC * 2]>::uninit();
    let bp = buf.as_mut_ptr() as *mut u32;
    let unpack = |c: usize, n: usize| {
        for r in 0..R {
            // SAFETY: row `t0 + r` has `4 · groups` readable bytes (caller's contract), and
            // `(g · R + r) · 2 + 1 < MR · KC · 2` as `g < n ≤ KC` and `r < R ≤ MR`.
            let row = unsafe { a.as_ptr().add((t0 + r) * lda + c * PANEL_KR) };
            for g in 0..n {
                let x = unsafe { (row.add(g * PANEL_KR) as *const u32).read_unaligned() };
                unsafe {
                    bp.add((g * R + r) * 2).write(sxtb16(x));
                    bp.add((g * R + r) * 2 + 1).write(sxtb16_ror8(x));
                }
            }
        }
    };
    let one_chunk = groups <= KC;
    if one_chunk {
        unpack(0, groups);
    }
    for p in p0..p1 {
        // SAFETY (whole loop): the caller bounds every panel.
        let panel = unsafe { w.q.as_ptr().add(p * w.panel_bytes()) };
        let mut acc = [[0i32; PANEL_NR]; R];
        for c in (0..groups).step_by(KC) {
            let n = KC.min(groups - c);
            if !one_chunk {
                unpack(c, n);
            }
            let xp = bp as *const u32;
            // SAFETY (all calls): `n ≥ 1` groups of each channel lie in the panel, and the
            // buffer holds `n` unpacked groups of `R` rows.
            if R == 1 {
                for j in (0..PANEL_NR).step_by(4) {
                    let wp = unsafe { panel.add(c * GROUP + j * PANEL_KR) } as *const u32;
                    let s: &mut [i32; 4] = (&mut acc[0][j..j + 4]).try_into().unwrap();
                    unsafe { dot_row1_cols4(wp, xp, n, s) };
                }
            } else {
                for j in 0..PANEL_NR {
                    let wp = unsafe { panel.add(c * GROUP + j * PANEL_KR) } as *const u32;
                    let mut s: [i32; R] = core::array::from_fn(|r| acc[r][j]);
                    match (&mut s[..]).try_into() {
                        Ok(s4) => unsafe { dot_rows4(wp, xp, n, s4) },
                        Err(_) => unsafe { dot_rows2(wp, xp, n, (&mut s[..]).try_into().unwrap()) },
                    }
                    for (r, sr) in s.iter().enumerate() {
                        acc[r][j] = *sr;
                    }
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            emit.tile(t0 + r, p, ar);
        }
    }
}

/// `s[r] += Σ_g Σ_i x[r][4g + i] · w[4g + i]` for `n ≥ 1` groups: `wp` walks one channel's
/// words of a panel (64 bytes apart), `xp` the unpacked 4-row buffer (even word, odd word per
/// row and group). Per group: 1 weight load, 2 unpacks, 4 `LDRD`, 8 `SMLAD`, and 1 of the loop's
/// 2 (the loop runs over pairs of groups): 16 instructions for 16 MACs.
///
/// # Safety
/// The core has the DSP extension; `wp` has `n` words 64 bytes apart and `xp` `8n` words.
#[inline(always)]
unsafe fn dot_rows4(wp: *const u32, xp: *const u32, n: usize, s: &mut [i32; MR]) {
    debug_assert!(n >= 1);
    // SAFETY: the caller's contract; `LDR` tolerates an unaligned `wp` on v7-M (CCR.UNALIGN_TRP
    // is left clear), and `xp` (a u32 buffer) is word-aligned as `LDRD` needs.
    unsafe {
        asm!(
            // Groups in pairs, one first when `n` is odd (`lsrs` leaves bit 0 in the carry).
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            rows4_group!(),
            "3:",
            "cmp {n}, #0",
            "beq 4f",
            "2:",
            rows4_group!(),
            rows4_group!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            wp = inout(reg) wp => _,
            xp = inout(reg) xp => _,
            n = inout(reg) n => _,
            w = out(reg) _,
            we = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            s0 = inout(reg) s[0],
            s1 = inout(reg) s[1],
            s2 = inout(reg) s[2],
            s3 = inout(reg) s[3],
            options(nostack, readonly),
        );
    }
}

/// As [`dot_rows4`] for 2 rows (the buffer holds 2 rows per group): per group 1 weight load, 2
/// unpacks, 2 `LDRD`, 4 `SMLAD`, 1 of the loop's 2: 10 instructions for 8 MACs.
///
/// # Safety
/// As [`dot_rows4`], with `4n` buffer words.
#[inline(always)]
unsafe fn dot_rows2(wp: *const u32, xp: *const u32, n: usize, s: &mut [i32; 2]) {
    // SAFETY: as `dot_rows4`.
    unsafe {
        asm!(
            // Groups in pairs, one first when `n` is odd (`lsrs` leaves bit 0 in the carry).
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            rows2_group!(),
            "3:",
            "cmp {n}, #0",
            "beq 4f",
            "2:",
            rows2_group!(),
            rows2_group!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            wp = inout(reg) wp => _,
            xp = inout(reg) xp => _,
            n = inout(reg) n => _,
            w = out(reg) _,
            we = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            s0 = inout(reg) s[0],
            s1 = inout(reg) s[1],
            options(nostack, readonly),
        );
    }
}

/// One row against 4 channels: `s[c] += Σ_g Σ_i x[4g + i] · w[j + c][4g + i]`, `wp` at channel
/// `j`'s word of the first group (the 4 channels' words are adjacent), `xp` the unpacked 1-row
/// buffer. Each activation pair is loaded once for the 4 channels: per group 1 `LDRD`, 4 × (1
/// weight load, 2 unpacks, 2 `SMLAD`), 1 of the loop's 2: 22 instructions for 16 MACs.
///
/// # Safety
/// As [`dot_rows4`], with `2n` buffer words and 4 channels' words per group.
#[inline(always)]
unsafe fn dot_row1_cols4(wp: *const u32, xp: *const u32, n: usize, s: &mut [i32; 4]) {
    debug_assert!(n >= 1);
    // SAFETY: as `dot_rows4`; the post-indexed first load moves `wp` to the next group, so the
    // other channels' words are at −60, −56 and −52 from it.
    unsafe {
        asm!(
            // Groups in pairs, one first when `n` is odd (`lsrs` leaves bit 0 in the carry).
            "lsrs {n}, {n}, #1",
            "bcc 3f",
            row1_cols4_group!(),
            "3:",
            "cmp {n}, #0",
            "beq 4f",
            "2:",
            row1_cols4_group!(),
            row1_cols4_group!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            "4:",
            wp = inout(reg) wp => _,
            xp = inout(reg) xp => _,
            n = inout(reg) n => _,
            w = out(reg) _,
            t = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            s0 = inout(reg) s[0],
            s1 = inout(reg) s[1],
            s2 = inout(reg) s[2],
            s3 = inout(reg) s[3],
            options(nostack, readonly),
        );
    }
}

//! Dot products: the scalar references (f32, f16 × f32, int8) and the f32 4 × 2 register block
//! the f32 Linear is built from, with its per-ISA variants (the int8 Linear and conv run on the
//! panel GEMM of [`super::gemm`]).

#[cfg(target_arch = "x86_64")]
use super::arch::x86;
use super::Isa;

/// The fixed reduction of eight f32 lanes and the remainder sum (see the lane-order contract in
/// [`super`]).
#[inline(always)]
pub(crate) fn reduce_lanes(a: &[f32; 8], tail: f32) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + tail
}

/// `Σ a[i]·b[i]` with eight accumulator lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, |v| v)
}

/// `Σ a[i]·b[i]` with f16 `b`, in the same lane order as [`dot`].
#[inline]
pub fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    dot_lanes(a, b, f16_to_f32)
}

/// f16 → f32, exact. On a hard-float 32-bit Arm (Cortex-M4F/M7/M55) the FPU's `VCVTB` converts in
/// one instruction where `half`'s portable bit manipulation takes about twenty: the f16 weights of
/// a precision plan would otherwise cost more than their int8 GEMM on a microcontroller. Every
/// finite half converts exactly either way, so the results are the same bits.
#[inline(always)]
pub fn f16_to_f32(h: half::f16) -> f32 {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    {
        let mut bits = h.to_bits() as u32;
        // SAFETY: register-only FPU instructions of every Armv7E-M/Armv8-M FPU (the hard-float
        // ABI guarantees one); no memory access. Stable Rust offers no FPU register class on
        // this target, so `s0` is saved in `keep` and restored.
        unsafe {
            core::arch::asm!(
                "vmov {keep}, s0",
                "vmov s0, {bits}",
                "vcvtb.f32.f16 s0, s0",
                "vmov {bits}, s0",
                "vmov s0, {keep}",
                bits = inout(reg) bits,
                keep = out(reg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        f32::from_bits(bits)
    }
    #[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
    {
        h.to_f32()
    }
}

/// The eight-lane dot product of [`dot`] and [`dot_f16`], `b` widened to f32 by `to_f32`.
#[inline(always)]
fn dot_lanes<B: Copy>(a: &[f32], b: &[B], to_f32: impl Fn(B) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += x[l] * to_f32(y[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * to_f32(*y);
    }
    reduce_lanes(&acc, tail)
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

/// 4 tokens × 2 weight rows of dot products at once, each bit-identical to [`dot`] (the same eight
/// lanes, the same reduction tree, separate multiply and add). Loads are shared across the block.
/// The lane sums over the whole 8-wide chunks come from `isa`'s kernel (AVX intrinsics on x86-64,
/// because LLVM's autovectorization of the portable loop turned out fragile: 2–20 GMAC/s
/// depending on the surrounding code); the reduction and the tail are shared.
#[inline]
pub(crate) fn dot_block_with(isa: Isa, x: [&[f32]; 4], w: [&[f32]; 2], n: usize) -> [[f32; 2]; 4] {
    for s in x.iter().chain(w.iter()) {
        assert!(s.len() >= n);
    }
    let full = n / 8 * 8;
    let mut acc = [[[0f32; 8]; 2]; 4];
    dot_block_lanes(isa, x, w, full, &mut acc);
    let mut out = [[0f32; 2]; 4];
    for t in 0..4 {
        for o in 0..2 {
            let mut tail = 0f32;
            for j in full..n {
                tail += x[t][j] * w[o][j];
            }
            out[t][o] = reduce_lanes(&acc[t][o], tail);
        }
    }
    out
}

/// Adds the lane sums of [`dot_block_with`] over `0..full` (a multiple of 8 within every slice)
/// to `acc`: lane `l` of `acc[t][o]` gains `x[t][i]·w[o][i]` for `i ≡ l (mod 8)` in increasing
/// `i`, so sums over consecutive 8-aligned ranges chain to the same bits as one call over all.
#[inline(always)]
pub(crate) fn dot_block_lanes(
    isa: Isa,
    x: [&[f32]; 4],
    w: [&[f32]; 2],
    full: usize,
    acc: &mut [[[f32; 8]; 2]; 4],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx() {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX.
        return unsafe { x86::dot_block_lanes_avx(x, w, full, acc) };
    }
    let _ = isa;
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

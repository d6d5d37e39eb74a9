//! The transcendental functions of the hot paths (exp in softmax/SiLU/sampling, tanh in GELU,
//! sqrt in the q/k L2 norms).
//!
//! - `exp` and `tanh` by default: branch-free polynomial forms (Cody–Waite range reduction and
//!   the Cephes minimax polynomials; see [`exp`]) written in plain f32 operations, within 2 ulp
//!   of `libm` (a test checks it over the whole range). Branch-free means the loops over rows
//!   (softmax, SiLU, GELU) vectorize; plain f32 operations (Rust never contracts to FMA) mean
//!   they give the same bits on every target and instruction set, so the int8 engine stays
//!   bit-identical between the host's ISAs and the Cortex-M firmware.
//! - `sqrt`: `libm` (correctly rounded; the hardware instruction where there is one).
//! - With the `fast-math` feature: `micromath`'s cruder approximations of all three (for
//!   microcontrollers without an FPU to spare; its cost in tokens and PSNR is measured in
//!   docs/QUANTIZATION.md).
//!
//! Everything else keeps using `libm`.

/// `e^x`.
#[inline]
pub fn exp(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        // micromath's exp is only valid in a bounded range; softmax/SiLU inputs below −87 are 0.
        if x < -87.0 {
            return 0.0;
        }
        micromath::F32Ext::exp(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        exp_poly(x)
    }
}

/// `e^x` from plain f32 operations: `x = n·ln 2 + r` with `n` rounded to nearest (by adding
/// and removing 1.5·2²³) and `ln 2` split in two (Cody–Waite, `n·C1` exact), then the Cephes
/// `expf` polynomial of `r` (|r| ≤ ½ ln 2) and `2ⁿ` built in the exponent bits. Above
/// ln(f32::MAX) it gives +∞, below the smallest normal's log 0, NaN stays NaN; every branch is
/// a select (on the Cortex-M4 one range test first, the same bits).
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    // A Cortex-M4 has no float SIMD to vectorize the selects for: one range test skips the
    // clamp and the end cases, which are identities inside [LO, HI] (the same operations on the
    // same values, so the same bits; about a quarter of SiLU's instructions).
    #[cfg(all(target_arch = "arm", not(feature = "arm-mve")))]
    if (EXP_LO..=88.0).contains(&x) {
        // n ≤ 127 here, so 2ⁿ is an f32 and one product rounds as the two below do.
        let (y, ni) = exp_poly_in_range(x);
        return y * pow2(ni);
    }
    // Clamped to [LO, HI] (n in [−126, 128]); outside, the ends are replaced below.
    let (y, ni) = exp_poly_in_range(x.clamp(EXP_LO, EXP_HI));
    // 2ⁿ as two exact power-of-two factors (2¹²⁸ itself is not an f32): y ∈ [0.7, 1.42] times
    // 2^⌊n/2⌋ ≥ 2⁻⁶³ is exact, so only the second product rounds.
    let v = y * pow2(ni >> 1) * pow2(ni - (ni >> 1));
    let v = if x > EXP_HI { f32::INFINITY } else { v };
    let v = if x < EXP_LO { 0.0 } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// ln(f32::MAX): [`exp_poly`] is +∞ above.
const EXP_HI: f32 = 88.722_83;
/// ln(f32::MIN_POSITIVE): [`exp_poly`] is 0 below.
const EXP_LO: f32 = -87.336_55;

/// `2ᵏ` for `k` in [−126, 127].
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// The body of [`exp_poly`] for `xc` in `[EXP_LO, EXP_HI]`: `e^r` (in [0.7, 1.42]) and `n`,
/// `e^xc = e^r · 2ⁿ`.
#[inline(always)]
fn exp_poly_in_range(xc: f32) -> (f32, i32) {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * C1) - n * C2;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let y = (p * z + r) + 1.0;
    (y, t.to_bits() as i32 - ROUND.to_bits() as i32)
}

/// `tanh(x)` from plain f32 operations: the Cephes `tanhf` odd polynomial below |x| = 0.625,
/// `1 − 2/(e^{2|x|} + 1)` with the sign of `x` above (through [`exp_poly`]); branch-free (on the
/// Cortex-M4 one branch, the same bits).
#[inline(always)]
pub fn tanh_poly(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    let small = |x: f32| {
        let z = x * x;
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x
    };
    let large = |x: f32, a: f32| {
        let large = 1.0 - 2.0 / (exp_poly(a + a) + 1.0);
        if x < 0.0 {
            -large
        } else {
            large
        }
    };
    // ±0 keeps its sign (the polynomial form would give +0 for −0). On the Cortex-M4 (nothing
    // to vectorize) only the chosen form is computed: the same operations, so the same bits.
    #[cfg(all(target_arch = "arm", not(feature = "arm-mve")))]
    {
        if a == 0.0 {
            x
        } else if a < 0.625 {
            small(x)
        } else {
            large(x, a)
        }
    }
    #[cfg(not(all(target_arch = "arm", not(feature = "arm-mve"))))]
    {
        let (small, large) = (small(x), large(x, a));
        if a == 0.0 {
            x
        } else if a < 0.625 {
            small
        } else {
            large
        }
    }
}

/// `tanh(x)`.
#[inline]
pub fn tanh(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        // tanh x = 1 − 2/(e^{2x} + 1), saturated where it is ±1 in f32.
        if x > 9.0 {
            return 1.0;
        }
        if x < -9.0 {
            return -1.0;
        }
        1.0 - 2.0 / (exp(2.0 * x) + 1.0)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        tanh_poly(x)
    }
}

/// `√x`.
#[inline]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "fast-math")]
    {
        micromath::F32Ext::sqrt(x)
    }
    #[cfg(not(feature = "fast-math"))]
    {
        libm::sqrtf(x)
    }
}

#[cfg(test)]
mod tests {
    use super::{exp_poly, tanh_poly};

    /// Distance in units in the last place between two finite floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Every 97th f32 bit pattern over the range, plus the ends.
    fn sweep(lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        let grid = (0..u32::MAX / 97).map(|i| f32::from_bits(i * 97));
        grid.chain(grid_neg()).filter(move |x| *x >= lo && *x <= hi)
    }
    fn grid_neg() -> impl Iterator<Item = f32> {
        (0..u32::MAX / 97).map(|i| -f32::from_bits(i * 97))
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0;
        for x in sweep(-87.3, 88.7) {
            let (got, want) = (exp_poly(x), libm::expf(x));
            let d = ulps(got, want);
            assert!(d <= 2, "exp({x:e}) = {got:e}, libm {want:e}");
            worst = worst.max(d);
        }
        assert!(worst >= 1, "the sweep must reach the polynomial's error");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(89.0), f32::INFINITY);
        assert_eq!(exp_poly(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_poly(-88.0), 0.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert!(exp_poly(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_two_ulp_of_libm_and_odd() {
        for x in sweep(-20.0, 20.0) {
            let (got, want) = (tanh_poly(x), libm::tanhf(x));
            // Near 0 both are x to within the last bit; compare in ulps of the result.
            assert!(ulps(got, want) <= 2, "tanh({x:e}) = {got:e}, libm {want:e}");
            assert_eq!(tanh_poly(-x).to_bits(), (-got).to_bits(), "odd at {x:e}");
        }
        assert_eq!(tanh_poly(50.0), 1.0);
        assert_eq!(tanh_poly(-50.0), -1.0);
        assert_eq!(tanh_poly(f32::INFINITY), 1.0);
        assert!(tanh_poly(f32::NAN).is_nan());
        assert_eq!(tanh_poly(-0.0).to_bits(), (-0.0f32).to_bits());
    }
}

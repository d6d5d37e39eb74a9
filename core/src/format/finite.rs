//! Finiteness checks of float values (f32 tensors, int8 scales, f16 tensors).

use crate::error::{Error, Result};
use half::f16;

/// True when no value of `v` is a NaN or an infinity (exponent bits all ones).
///
/// One branch-free pass that vectorizes: adding `0x0080_0000` to a value's magnitude bits carries
/// into bit 31 exactly when its exponent is all ones, so the OR of those sums has bit 31 set iff
/// some value is non-finite. No early exit: a valid file (the common case) is read to the end
/// anyway, and the check runs once per load, after the checksum has read the same bytes.
pub fn all_finite_f32(v: &[f32]) -> bool {
    let mut acc = 0u32;
    for x in v {
        acc |= (x.to_bits() & 0x7fff_ffff) + 0x0080_0000;
    }
    acc & 0x8000_0000 == 0
}

/// [`all_finite_f32`] for f16 values (exponent mask `0x7c00`, carry into bit 15).
pub fn all_finite_f16(v: &[f16]) -> bool {
    let mut acc = 0u16;
    for x in v {
        acc |= (x.to_bits() & 0x7fff) + 0x0400;
    }
    acc & 0x8000 == 0
}

/// `Ok(v)` when every value of `v` is finite, else [`Error::NonFinite`] for table entry `index`.
pub(super) fn finite_f32(index: u32, v: &[f32]) -> Result<&[f32]> {
    if all_finite_f32(v) {
        Ok(v)
    } else {
        Err(Error::NonFinite { index })
    }
}

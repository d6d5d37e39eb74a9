//! The int8 weight panel layout, written at conversion and read by every int8 GEMM.
//!
//! A weight of `rows` output channels × `k` inputs is stored as panels of [`PANEL_NR`] output
//! channels; inside a panel, groups of [`PANEL_KR`] consecutive inputs of the 16 channels lie
//! next to each other:
//!
//! ```text
//! q[((p · k4 + g) · 16 + j) · 4 + i] = w[16p + j][4g + i]     k4 = ceil(k / 4)
//! ```
//!
//! so one 64-byte load is 16 channels × 4 inputs: a `vpdpbusd` zmm operand, or two AVX2
//! `vpmaddubsw` operands, against 4 broadcast activation bytes (the outer-product form needs no
//! horizontal sums). Channels past `rows` and inputs past `k` are zero. A conv weight is `kh` such
//! weights, one per kernel row (`k = kw · cin`, inputs tap by tap: `i = kx · cin + ci`), one
//! after another. The `.srdd` file records the
//! layout per tensor ([`crate::format::WeightLayout`]).

/// Output channels per panel.
pub const PANEL_NR: usize = 16;
/// Consecutive inputs per group inside a panel.
pub const PANEL_KR: usize = 4;

/// Inputs of a panel row once padded: `k` rounded up to [`PANEL_KR`].
pub const fn panel_k(k: usize) -> usize {
    k.div_ceil(PANEL_KR) * PANEL_KR
}

/// Bytes of one packed weight of `rows × k` (both padded).
pub const fn panels_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(PANEL_NR) * PANEL_NR * panel_k(k)
}

/// Byte offset of value `(o, i)` of a packed `· × k` weight.
#[inline(always)]
pub const fn panel_index(k: usize, o: usize, i: usize) -> usize {
    let (p, j) = (o / PANEL_NR, o % PANEL_NR);
    let (g, l) = (i / PANEL_KR, i % PANEL_KR);
    ((p * (panel_k(k) / PANEL_KR) + g) * PANEL_NR + j) * PANEL_KR + l
}

/// Packs a row-major `rows × k` int8 weight into `dst` ([`panels_len`] bytes, padding zeroed).
/// Returns `false` (and writes nothing) when a length does not match.
pub fn pack_panels(src: &[i8], rows: usize, k: usize, dst: &mut [i8]) -> bool {
    if src.len() != rows * k || dst.len() != panels_len(rows, k) {
        return false;
    }
    dst.iter_mut().for_each(|v| *v = 0);
    for o in 0..rows {
        for i in 0..k {
            dst[panel_index(k, o, i)] = src[o * k + i];
        }
    }
    true
}

/// Packs a row-major int8 weight of the official shape — `[rows, k]` (Linear) or
/// `[cout, cin, kh, kw]` (conv: one packed `cout × (kw·cin)` weight per kernel row, inputs tap by
/// tap, `i = kx·cin + ci`, the order of pixel-major input rows) — into `dst`
/// (`groups · panels_len` bytes, padding zeroed). Returns `false` (and writes nothing) when the
/// shape is neither or a length does not match.
pub fn pack_official(src: &[i8], shape: &[usize], dst: &mut [i8]) -> bool {
    let (rows, cin, kh, kw) = match *shape {
        [rows, k] => (rows, k, 1, 1),
        [cout, cin, kh, kw] => (cout, cin, kh, kw),
        _ => return false,
    };
    let k = cin * kw;
    let len = panels_len(rows, k);
    if src.len() != rows * cin * kh * kw || dst.len() != kh * len {
        return false;
    }
    dst.iter_mut().for_each(|v| *v = 0);
    for o in 0..rows {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let i = kx * cin + ci;
                    dst[ky * len + panel_index(k, o, i)] =
                        src[((o * cin + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    true
}

/// The value `w[o][i]` of a packed `· × k` weight (for tools and tests).
#[inline]
pub fn panel_value(q: &[i8], k: usize, o: usize, i: usize) -> i8 {
    q[panel_index(k, o, i)]
}

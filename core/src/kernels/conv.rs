//! 2-D convolution (f32, f16 and int8 weights), its padding type, output-size and scratch-size
//! functions.

#[cfg(target_arch = "x86_64")]
use super::arch::x86;
use super::conv_i8::conv2d_i8;
pub use super::conv_i8::{conv_scratch_len, conv_scratch_len_same, ConvScratch};
use super::layers::{Conv, Weight};
use super::Isa;
use crate::parallel::{split, split_count, Parallel, SharedMut};

/// Zero padding of a convolution: top, left, bottom, right.
#[derive(Clone, Copy, Debug)]
pub struct Pad {
    /// Rows added above.
    pub top: usize,
    /// Columns added left.
    pub left: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added right.
    pub right: usize,
}

impl Pad {
    /// The same padding on every side.
    pub const fn same(p: usize) -> Pad {
        Pad {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }
}

/// Output side of a convolution (0 when the padded input is smaller than the kernel).
pub const fn conv_out_side(
    n: usize,
    k: usize,
    stride: usize,
    pad_lo: usize,
    pad_hi: usize,
) -> usize {
    if n + pad_lo + pad_hi < k {
        0
    } else {
        (n + pad_lo + pad_hi - k) / stride + 1
    }
}

/// The input of one convolution: a `cin × h × w` map (channel-major; `cin` is the [`Conv`]'s)
/// and how the kernel steps over it.
#[derive(Clone, Copy, Debug)]
pub struct ConvInput<'a> {
    /// The map, at least `cin · h · w` floats.
    pub x: &'a [f32],
    /// Rows of the map.
    pub h: usize,
    /// Columns of the map.
    pub w: usize,
    /// Step of the kernel, the same along rows and columns.
    pub stride: usize,
    /// Zero padding around the map.
    pub pad: Pad,
}

impl ConvInput<'_> {
    /// Output rows and columns of a kernel of side `k` over this input.
    pub const fn out_sides(&self, k: usize) -> (usize, usize) {
        let (p, s) = (self.pad, self.stride);
        (
            conv_out_side(self.h, k, s, p.top, p.bottom),
            conv_out_side(self.w, k, s, p.left, p.right),
        )
    }
}

const ROW_TILE: usize = 2;

/// Valid output columns `[lo, hi)` for kernel column `kx`.
#[inline]
pub(crate) fn ox_range(
    w: usize,
    wo: usize,
    kx: usize,
    stride: usize,
    pad_left: usize,
) -> (usize, usize) {
    // ix = ox·stride + kx − pad_left must lie in [0, w).
    let lo = if kx >= pad_left {
        0
    } else {
        (pad_left - kx).div_ceil(stride)
    };
    let hi_excl = if w + pad_left > kx {
        ((w + pad_left - kx - 1) / stride + 1).min(wo)
    } else {
        0
    };
    (lo, hi_excl.max(lo))
}

/// Output channels and columns of one register block of the stride-1 float conv.
pub(crate) const CO_BLOCK: usize = 4;
pub(crate) const COL_BLOCK: usize = 16;

/// `acc[c][j] += wk[c] · xs[j]` for the whole register tile, separate multiply and add (the
/// AVX variant computes the same bits).
#[inline(always)]
pub(crate) fn axpy_tile_with(
    isa: Isa,
    acc: &mut [[f32; COL_BLOCK]; CO_BLOCK],
    wk: &[f32; CO_BLOCK],
    xs: &[f32; COL_BLOCK],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx() {
        // SAFETY: `isa` is supported (the caller's contract), so the CPU has AVX.
        unsafe { x86::axpy_tile_avx(acc, wk, xs) };
        return;
    }
    let _ = isa;
    for c in 0..CO_BLOCK {
        for j in 0..COL_BLOCK {
            acc[c][j] += wk[c] * xs[j];
        }
    }
}

/// Stride-1 float conv of output channels `co .. co + nc` (nc ≤ CO_BLOCK): each output is the
/// bias plus the products summed over (ci, ky, kx) in that order, as in the plain loop, but
/// `CO_BLOCK × COL_BLOCK` outputs stay in registers while the input row is read once.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn conv_s1_block(
    isa: Isa,
    input: &ConvInput<'_>,
    c: &Conv<'_>,
    (co, nc): (usize, usize),
    (oy0, oy1): (usize, usize),
    (ho, wo): (usize, usize),
    wv: &dyn Fn(usize) -> f32,
    y: &SharedMut<'_, f32>,
) {
    let ConvInput { x, h, w, pad, .. } = *input;
    let (cin, k, b) = (c.cin, c.k, c.b);
    let plane_len = ho * wo;
    // Columns [x0, x0 + ncols) of output row oy, any position (taps outside the row skipped).
    let generic = |oy: usize, x0: usize, ncols: usize| {
        let mut acc = [[0f32; COL_BLOCK]; CO_BLOCK];
        for (c, a) in acc.iter_mut().enumerate().take(nc) {
            a.iter_mut().for_each(|v| *v = b[co + c]);
        }
        for ci in 0..cin {
            let xp = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                let iy = (oy + ky) as isize - pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let xrow = &xp[iy as usize * w..(iy as usize + 1) * w];
                for kx in 0..k {
                    let mut wk = [0f32; CO_BLOCK];
                    for (c, v) in wk.iter_mut().enumerate().take(nc) {
                        *v = wv((((co + c) * cin + ci) * k + ky) * k + kx);
                    }
                    let start = (x0 + kx) as isize - pad.left as isize;
                    if ncols == COL_BLOCK && start >= 0 && start as usize + COL_BLOCK <= w {
                        let xs: &[f32; COL_BLOCK] = xrow
                            [start as usize..start as usize + COL_BLOCK]
                            .try_into()
                            .unwrap();
                        axpy_tile_with(isa, &mut acc, &wk, xs);
                    } else {
                        for j in 0..ncols {
                            let ix = start + j as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let xv = xrow[ix as usize];
                            for c in 0..nc {
                                acc[c][j] += wk[c] * xv;
                            }
                        }
                    }
                }
            }
        }
        for (c, a) in acc.iter().enumerate().take(nc) {
            // SAFETY: output planes co..co+nc belong to the calling task only.
            let dst = unsafe { y.slice((co + c) * plane_len + oy * wo + x0, ncols) };
            dst.copy_from_slice(&a[..ncols]);
        }
    };
    for oy in oy0..oy1 {
        #[cfg(target_arch = "x86_64")]
        if let (true, Weight::F32(wts)) = (isa.has_avx(), c.w) {
            if nc == CO_BLOCK && wo >= 8 {
                // Tiles of 16 (or 8) columns over the whole row, the last one shifted left to end
                // at `wo` (overlapping columns are recomputed to the same values).
                let tile = if wo >= COL_BLOCK { COL_BLOCK } else { 8 };
                let mut x0 = 0;
                loop {
                    let xs = x0.min(wo - tile);
                    let put = |c: usize, v: usize, vals: &[f32; 8]| {
                        // SAFETY: output planes co..co+nc belong to the calling task only.
                        let dst =
                            unsafe { y.slice((co + c) * plane_len + oy * wo + xs + 8 * v, 8) };
                        dst.copy_from_slice(vals);
                    };
                    if tile == COL_BLOCK {
                        // SAFETY: the CPU has AVX (above).
                        let acc = unsafe { x86::conv_tile_avx::<2>(input, c, wts, co, oy, xs) };
                        for (c, a) in acc.iter().enumerate() {
                            put(c, 0, &a[0]);
                            put(c, 1, &a[1]);
                        }
                    } else {
                        // SAFETY: the CPU has AVX (above).
                        let acc = unsafe { x86::conv_tile_avx::<1>(input, c, wts, co, oy, xs) };
                        for (c, a) in acc.iter().enumerate() {
                            put(c, 0, &a[0]);
                        }
                    }
                    if xs + tile >= wo {
                        break;
                    }
                    x0 += tile;
                }
                continue;
            }
        }
        for x0 in (0..wo).step_by(COL_BLOCK) {
            generic(oy, x0, (wo - x0).min(COL_BLOCK));
        }
    }
}

/// 2-D convolution of a `cin × h × w` map (channel-major) into `cout × ho × wo`.
/// f32/f16 weights accumulate in f32 over (ci, ky, kx); int8 weights quantize the input per
/// image row (over all channels), accumulate each kernel row in i32 and rescale once per row,
/// so the result does not depend on how the image is split into row bands. Output channels are
/// split across `par`'s tasks. int8 weights need `s`; without it the output is NaN. Runs on
/// [`Isa::active`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    h: usize,
    w: usize,
    c: &Conv<'_>,
    stride: usize,
    pad: Pad,
    y: &mut [f32],
    s: Option<&mut ConvScratch<'_>>,
    par: &dyn Parallel,
) {
    let input = ConvInput {
        x,
        h,
        w,
        stride,
        pad,
    };
    conv2d_with(Isa::active(), par, &input, c, y, s)
}

/// [`conv2d`] on the kernels of `isa` (which must be [supported](Isa::supported); the results are
/// the same bits on every ISA) and `par`'s tasks.
pub fn conv2d_with(
    isa: Isa,
    par: &dyn Parallel,
    input: &ConvInput<'_>,
    c: &Conv<'_>,
    y: &mut [f32],
    s: Option<&mut ConvScratch<'_>>,
) {
    let ConvInput {
        x,
        h,
        w,
        stride,
        pad,
    } = *input;
    let (cin, cout, k) = (c.cin, c.cout, c.k);
    let (ho, wo) = input.out_sides(k);
    let plane_len = ho * wo;
    if let Weight::I8(wp) = c.w {
        let y = &mut y[..cout * plane_len];
        match s {
            Some(s) => conv2d_i8(isa, par, input, c, &wp, y, s),
            // Without scratch the int8 conv cannot run: NaN, never stale values.
            None => y.iter_mut().for_each(|v| *v = f32::NAN),
        }
        return;
    }
    let y = SharedMut::new(&mut y[..cout * plane_len]);
    let iy_of = |oy: usize, ky: usize| -> Option<usize> {
        let iy = (oy * stride + ky) as isize - pad.top as isize;
        if iy < 0 || iy >= h as isize {
            None
        } else {
            Some(iy as usize)
        }
    };
    let tasks = split_count(cout, par.width() * 2, 1);
    match c.w {
        Weight::F32(_) | Weight::F16(_) => {
            let wv = |idx: usize| -> f32 {
                match c.w {
                    Weight::F32(w) => w[idx],
                    Weight::F16(w) => super::dot::f16_to_f32(w[idx]),
                    Weight::I8 { .. } => f32::NAN,
                }
            };
            if stride == 1 {
                par.run(tasks, &|task| {
                    let (c0, c1) = split(cout, par.width() * 2, 1, task);
                    // Row tiles outside, channel blocks inside: the few input rows a tile reads
                    // stay in cache while every output channel of the task passes over them.
                    for oy0 in (0..ho).step_by(ROW_TILE) {
                        let oy1 = (oy0 + ROW_TILE).min(ho);
                        let mut co = c0;
                        while co < c1 {
                            let nc = (c1 - co).min(CO_BLOCK);
                            let (rows, sides) = ((oy0, oy1), (ho, wo));
                            conv_s1_block(isa, input, c, (co, nc), rows, sides, &wv, &y);
                            co += nc;
                        }
                    }
                });
                return;
            }
            par.run(tasks, &|task| {
                let (c0, c1) = split(cout, par.width() * 2, 1, task);
                for co in c0..c1 {
                    // SAFETY: output plane co belongs to this task only.
                    let plane = unsafe { y.slice(co * plane_len, plane_len) };
                    plane.iter_mut().for_each(|v| *v = c.b[co]);
                    for oy0 in (0..ho).step_by(ROW_TILE) {
                        let oy1 = (oy0 + ROW_TILE).min(ho);
                        for ci in 0..cin {
                            let xp = &x[ci * h * w..(ci + 1) * h * w];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let wgt = wv(((co * cin + ci) * k + ky) * k + kx);
                                    let (lo, hi) = ox_range(w, wo, kx, stride, pad.left);
                                    if lo >= hi {
                                        continue;
                                    }
                                    for oy in oy0..oy1 {
                                        let Some(iy) = iy_of(oy, ky) else { continue };
                                        let yrow = &mut plane[oy * wo + lo..oy * wo + hi];
                                        let xrow = &xp[iy * w..(iy + 1) * w];
                                        if stride == 1 {
                                            let xs = &xrow[lo + kx - pad.left..hi + kx - pad.left];
                                            for (o, v) in yrow.iter_mut().zip(xs) {
                                                *o += wgt * *v;
                                            }
                                        } else {
                                            for (j, o) in yrow.iter_mut().enumerate() {
                                                *o += wgt * xrow[(lo + j) * stride + kx - pad.left];
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
        // Handled above.
        Weight::I8(_) => {}
    }
}

//! 2-D convolution (f32, f16 and int8 weights), its padding type, output-size and scratch-size
//! functions.

#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
use super::arch::x86;
use super::dot::{dot_i8, dot_i8_block_with};
use super::layers::{Conv, Weight};
use super::quant::quantize_pieces;
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

/// Scratch for [`conv2d`] with int8 weights.
pub struct ConvScratch<'s> {
    /// Unfolded int8 input, `h · wo · cin · k` bytes: for each input row and output column, the
    /// `cin × k` patch row the kernel sees (zero outside the image).
    pub unfold: &'s mut [i8],
    /// One quantized input row, `cin · w` bytes.
    pub qrow: &'s mut [i8],
    /// Per-input-row activation scales, `h` floats.
    pub row_scale: &'s mut [f32],
}

/// Scratch sizes (unfold i8, row i8, f32) of [`conv2d`] with int8 weights on a `cin × h × w`
/// input with kernel `k` and `wo` output columns.
pub fn conv_scratch_len(
    cin: usize,
    h: usize,
    w: usize,
    wo: usize,
    k: usize,
) -> (usize, usize, usize) {
    (h * wo * cin * k, cin * w, h)
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    if isa >= Isa::Avx {
        x86::axpy_tile_avx(acc, wk, xs);
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
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        if let (true, Weight::F32(wts)) = (isa >= Isa::Avx, c.w) {
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
                        let acc = x86::conv_tile_avx::<2>(input, c, wts, co, oy, xs);
                        for (c, a) in acc.iter().enumerate() {
                            put(c, 0, &a[0]);
                            put(c, 1, &a[1]);
                        }
                    } else {
                        let acc = x86::conv_tile_avx::<1>(input, c, wts, co, oy, xs);
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
                    Weight::F16(w) => w[idx].to_f32(),
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
        Weight::I8 { q: wq, scales } => {
            let Some(s) = s else {
                // SAFETY: no tasks run; exclusive access.
                unsafe { y.slice(0, cout * plane_len) }
                    .iter_mut()
                    .for_each(|v| *v = f32::NAN);
                return;
            };
            // int8 conv weights are stored [cout, kh, cin, kw] so that one kernel row is one
            // contiguous `cin·k` vector matching an unfolded patch row.
            let kk = cin * k;
            let unfold = &mut s.unfold[..h * wo * kk];
            let qrow = &mut s.qrow[..cin * w];
            let rs = &mut s.row_scale[..h];
            for iy in 0..h {
                // One scale per image row over all channels (the row-band decoder's exactness
                // rests on it), from the one row quantizer.
                let row = (0..cin).map(|ci| &x[(ci * h + iy) * w..(ci * h + iy + 1) * w]);
                rs[iy] = quantize_pieces(row, qrow);
                for ox in 0..wo {
                    let dst = &mut unfold[(iy * wo + ox) * kk..(iy * wo + ox + 1) * kk];
                    for ci in 0..cin {
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad.left as isize;
                            dst[ci * k + kx] = if ix >= 0 && (ix as usize) < w {
                                qrow[ci * w + ix as usize]
                            } else {
                                0
                            };
                        }
                    }
                }
            }
            let (unfold, rs) = (&*unfold, &*rs);
            par.run(tasks, &|task| {
                let (c0, c1) = split(cout, par.width() * 2, 1, task);
                let wrow = |co: usize, ky: usize| &wq[(co * k + ky) * kk..(co * k + ky + 1) * kk];
                let mut co = c0;
                while co < c1 {
                    // Two output channels at a time share every unfolded patch row they read.
                    let pair = co + 1 < c1;
                    for oy in 0..ho {
                        for cc in co..co + if pair { 2 } else { 1 } {
                            // SAFETY: output plane cc belongs to this task only.
                            let yrow = unsafe { y.slice(cc * plane_len + oy * wo, wo) };
                            yrow.iter_mut().for_each(|v| *v = c.b[cc]);
                        }
                        for ky in 0..k {
                            let Some(iy) = iy_of(oy, ky) else { continue };
                            let urow = &unfold[iy * wo * kk..(iy + 1) * wo * kk];
                            let u = |ox: usize| &urow[ox * kk..(ox + 1) * kk];
                            let sc0 = rs[iy] * scales[co];
                            // SAFETY: output planes co (and co + 1) belong to this task only.
                            let y0 = unsafe { y.slice(co * plane_len + oy * wo, wo) };
                            if pair {
                                let sc1 = rs[iy] * scales[co + 1];
                                // SAFETY: as above.
                                let y1 = unsafe { y.slice((co + 1) * plane_len + oy * wo, wo) };
                                let (w0, w1) = (wrow(co, ky), wrow(co + 1, ky));
                                let ox4 = wo / 4 * 4;
                                for ox in (0..ox4).step_by(4) {
                                    let r = dot_i8_block_with(
                                        isa,
                                        [u(ox), u(ox + 1), u(ox + 2), u(ox + 3)],
                                        [w0, w1],
                                        kk,
                                    );
                                    for j in 0..4 {
                                        y0[ox + j] += r[j][0] as f32 * sc0;
                                        y1[ox + j] += r[j][1] as f32 * sc1;
                                    }
                                }
                                for ox in ox4..wo {
                                    y0[ox] += dot_i8(u(ox), w0) as f32 * sc0;
                                    y1[ox] += dot_i8(u(ox), w1) as f32 * sc1;
                                }
                            } else {
                                let w0 = wrow(co, ky);
                                for ox in 0..wo {
                                    y0[ox] += dot_i8(u(ox), w0) as f32 * sc0;
                                }
                            }
                        }
                    }
                    co += if pair { 2 } else { 1 };
                }
            });
        }
    }
}

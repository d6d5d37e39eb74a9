//! One launch wrapper per kernel family (the host side of `kernels/*.cu`): shapes in, device
//! addresses in, no allocation except where a scratch type says so. `gpu/tests/ops.rs` checks
//! each against the CPU kernel of the same op.

use crate::driver::{Args, DevBuf, Gpu};
use crate::error::{GpuError, Result};
use crate::model::{DevConv, DevLinear, DevNorm, DevWeight};
use srdd_core::kernels::pack::panel_k;

const THREADS: u32 = 256;

/// Blocks for a grid-stride kernel over `total` values.
fn blocks(total: usize) -> u32 {
    total.div_ceil(THREADS as usize).clamp(1, 16384) as u32
}

fn tiles(n: usize) -> u32 {
    n.div_ceil(64) as u32
}

/// Scratch of the int8 Linear: codes and per-row scales of up to `rows` rows of `k` inputs.
pub struct QuantScratch {
    codes: DevBuf,
    scales: DevBuf,
    rows: usize,
    row_bytes: usize,
}

impl QuantScratch {
    /// Room for `rows` activation rows of up to `k` inputs.
    pub fn new(gpu: &Gpu, rows: usize, k: usize) -> Result<Self> {
        let row_bytes = panel_k(k);
        Ok(QuantScratch {
            codes: gpu.alloc::<i8>(rows * row_bytes + 16)?,
            scales: gpu.alloc::<f32>(rows)?,
            rows,
            row_bytes,
        })
    }
}

/// `y[m·ldy + o] = x[m·ldx ..] · Wᵀ + b` for `m` rows (f32/f16 weights in f32; int8 weights
/// with each row quantized as the CPU does and the exact i32 sums; two-pass activations add the
/// residual pass, as the CPU).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    gpu: &Gpu,
    x: u64,
    ldx: usize,
    m: usize,
    l: &DevLinear,
    y: u64,
    ldy: usize,
    s: &QuantScratch,
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let bias = l.b.as_ref().map_or(0, |b| b.ptr());
    let grid = (tiles(l.out_dim), tiles(m), 1);
    match &l.w {
        DevWeight::F32(w) | DevWeight::F16(w) => {
            let f16 = matches!(l.w, DevWeight::F16(_)) as usize;
            let a = Args::new()
                .p(x)
                .i(ldx)
                .i(m)
                .p(w.ptr())
                .i(f16)
                .i(l.in_dim)
                .i(l.out_dim)
                .p(bias)
                .p(y)
                .i(ldy);
            gpu.launch("linear_f", grid, 256, 0, &a)
        }
        DevWeight::I8 {
            q,
            scales,
            k4,
            act16,
            ..
        } => {
            if m > s.rows || 4 * k4 > s.row_bytes {
                return Err(GpuError::Unsupported(
                    "a Linear larger than its planned scratch",
                ));
            }
            let quantize = |kernel: &'static str| {
                let a = Args::new()
                    .p(x)
                    .i(ldx)
                    .i(l.in_dim)
                    .i(4 * k4)
                    .p(s.codes.ptr())
                    .p(s.scales.ptr());
                gpu.launch(kernel, (m as u32, 1, 1), gpu.reduce_threads(), 0, &a)
            };
            let outputs = |accumulate: bool| {
                let a = Args::new()
                    .p(s.codes.ptr())
                    .i(*k4)
                    .i(m)
                    .p(q.ptr())
                    .i(*k4)
                    .i(l.out_dim)
                    .i(0)
                    .i(l.out_dim)
                    .p(s.scales.ptr())
                    .p(scales.ptr())
                    .p(bias)
                    .p(y)
                    .i(ldy)
                    .i(accumulate as usize);
                let k = if gpu.int8_tensor_cores() {
                    "linear_i8_mma"
                } else {
                    "linear_i8_dp4a"
                };
                gpu.launch(k, grid, 128, 0, &a)
            };
            quantize("quantize_rows")?;
            outputs(false)?;
            if *act16 {
                // The residual pass: the codes and scales are replaced in place.
                quantize("quantize_residual_rows")?;
                outputs(true)?;
            }
            Ok(())
        }
    }
}

/// Raw i32 sums `s[m·n + o]` of int8 codes `a` (`m` rows of `k4` words) against a packed
/// weight of `n` channels (tensor cores; for the exactness test).
pub fn int8_sums(
    gpu: &Gpu,
    a: &DevBuf,
    m: usize,
    w: &DevBuf,
    k4: usize,
    n: usize,
    s: &DevBuf,
) -> Result<()> {
    let args = Args::new()
        .p(a.ptr())
        .i(k4)
        .i(m)
        .p(w.ptr())
        .i(k4)
        .i(n)
        .i(n)
        .p(s.ptr());
    gpu.launch("sums_i8_mma", (tiles(n), tiles(m), 1), 128, 0, &args)
}

/// Scratch of the int8 conv: pixel-major codes and per-input-row scales.
pub struct ConvScratch {
    codes: DevBuf,
    scales: DevBuf,
    bytes: usize,
    rows: usize,
}

impl ConvScratch {
    /// Room for a map of up to `bytes` padded pixel-major codes over `rows` input rows.
    pub fn new(gpu: &Gpu, bytes: usize, rows: usize) -> Result<Self> {
        Ok(ConvScratch {
            codes: gpu.alloc::<i8>(bytes + 16)?,
            scales: gpu.alloc::<f32>(rows)?,
            bytes,
            rows,
        })
    }
}

/// Stride-1 conv with zero padding `pad` of the channel-major `cin × h × w` map at `x` into
/// `y` (`cout × ho × wo`, ho = h + 2·pad − k + 1).
pub(crate) fn conv(
    gpu: &Gpu,
    x: u64,
    (h, w): (usize, usize),
    c: &DevConv,
    pad: usize,
    y: u64,
    s: &ConvScratch,
) -> Result<()> {
    let (ho, wo) = (h + 2 * pad + 1 - c.k, w + 2 * pad + 1 - c.k);
    let grid = (tiles(c.cout), tiles(ho * wo), 1);
    match &c.w {
        DevWeight::F32(wt) | DevWeight::F16(wt) => {
            let f16 = matches!(c.w, DevWeight::F16(_)) as usize;
            let a = Args::new()
                .p(x)
                .i(c.cin)
                .i(h)
                .i(w)
                .i(c.k)
                .i(pad)
                .i(ho)
                .i(wo)
                .p(wt.ptr())
                .i(f16)
                .i(c.cout)
                .p(c.b.ptr())
                .p(y);
            gpu.launch("conv_f", grid, 256, 0, &a)
        }
        DevWeight::I8 {
            q,
            scales,
            group_words,
            ..
        } => {
            let rowb = (w + 2 * pad) * c.cin;
            if h * rowb > s.bytes || h > s.rows {
                return Err(GpuError::Unsupported(
                    "a conv larger than its planned scratch",
                ));
            }
            let a = Args::new()
                .p(x)
                .i(c.cin)
                .i(h)
                .i(w)
                .i(pad)
                .i(rowb)
                .p(s.codes.ptr())
                .p(s.scales.ptr());
            gpu.launch(
                "quantize_conv_rows",
                (h as u32, 1, 1),
                gpu.reduce_threads(),
                0,
                &a,
            )?;
            let a = Args::new()
                .p(s.codes.ptr())
                .i(rowb)
                .i(h)
                .p(s.scales.ptr())
                .i(ho)
                .i(wo)
                .i(c.cin)
                .i(c.k)
                .i(pad)
                .p(q.ptr())
                .i(*group_words)
                .i(c.cout)
                .p(scales.ptr())
                .p(c.b.ptr())
                .p(y);
            let k = if gpu.int8_tensor_cores() {
                "conv_i8_mma"
            } else {
                "conv_i8_dp4a"
            };
            gpu.launch(k, grid, 128, 0, &a)
        }
    }
}

/// `y[i] = LN(x_i)·(1 + scale) + shift` for tokens `t0 .. t0 + m` of each of `rows` rows
/// (`n` tokens of `c` apart per row in `x`), row r's modulation parts `ks`, `kb` of its
/// `width` vectors at `ada`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ln_modulate(
    gpu: &Gpu,
    x: u64,
    (rows, n, t0, m, c): (usize, usize, usize, usize, usize),
    eps: f32,
    ada: u64,
    (width, ks, kb): (usize, usize, usize),
    y: u64,
) -> Result<()> {
    let a = Args::new()
        .p(x)
        .i(n)
        .i(t0)
        .i(m)
        .i(c)
        .f(eps)
        .p(ada)
        .i(width)
        .i(ks)
        .i(kb)
        .p(y);
    gpu.launch(
        "ln_modulate",
        ((rows * m) as u32, 1, 1),
        gpu.reduce_threads(),
        0,
        &a,
    )
}

/// Keys and values one attention call reads: row r's token j at `k + (base_r + j·stride)`
/// floats, base_r = `slot_r · row_stride` (slot_r = r without `slots`).
pub(crate) struct KeySet {
    pub(crate) k: u64,
    pub(crate) v: u64,
    pub(crate) stride: usize,
    pub(crate) row_stride: usize,
    pub(crate) slots: u64,
    pub(crate) count: usize,
}

/// Attention of every query (`n` per row, `qs` floats apart) of `rows` rows and `heads` heads
/// of `hd` against `keys`, output `rows × n × C`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    gpu: &Gpu,
    q: u64,
    qs: usize,
    (rows, n, heads, hd): (usize, usize, usize, usize),
    keys: &KeySet,
    scale: f32,
    out: u64,
) -> Result<()> {
    let name = match hd {
        0..=32 => "attention_hd32",
        33..=64 => "attention_hd64",
        65..=128 => "attention_hd128",
        _ => return Err(GpuError::Unsupported("attention heads wider than 128")),
    };
    let a = Args::new()
        .p(q)
        .i(qs)
        .i(n)
        .p(keys.k)
        .p(keys.v)
        .i(keys.stride)
        .p(keys.row_stride as u64)
        .p(keys.slots)
        .i(keys.count)
        .i(hd)
        .f(scale)
        .p(out)
        .i(heads * hd);
    gpu.launch(
        name,
        (n.div_ceil(64) as u32, heads as u32, rows as u32),
        64,
        0,
        &a,
    )
}

/// GroupNorm (then SiLU when `silu`) of the `c × hw` map at `x` into `y`; `stats` holds
/// `2 · groups` f64.
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_norm(
    gpu: &Gpu,
    x: u64,
    y: u64,
    (c, hw): (usize, usize),
    (groups, eps): (usize, f32),
    n: &DevNorm,
    silu: bool,
    stats: &DevBuf,
) -> Result<()> {
    let a = Args::new().p(x).i(c).i(hw).i(groups).f(eps).p(stats.ptr());
    gpu.launch(
        "gn_stats",
        (groups as u32, 1, 1),
        gpu.reduce_threads(),
        0,
        &a,
    )?;
    let a = Args::new()
        .p(x)
        .p(y)
        .i(c)
        .i(hw)
        .i(groups)
        .p(stats.ptr())
        .p(n.w.ptr())
        .p(n.b.ptr())
        .i(silu as usize);
    gpu.launch("gn_apply", (blocks(c * hw), 1, 1), THREADS, 0, &a)
}

/// A grid-stride element-wise kernel over `total` values.
pub(crate) fn each(gpu: &Gpu, name: &'static str, total: usize, a: Args) -> Result<()> {
    gpu.launch(name, (blocks(total), 1, 1), THREADS, 0, &a)
}

/// `y` (`m` rows of `f`'s width) = the AdaLN Linear `f` of `cond` (`m` rows, stride `ldc`), or
/// the rows of its table picked by the `m` labels at `labels` (i32, on the device).
#[allow(clippy::too_many_arguments)]
pub(crate) fn by_label(
    gpu: &Gpu,
    cond: u64,
    ldc: usize,
    labels: u64,
    m: usize,
    f: &crate::model::DevByLabel,
    y: u64,
    s: &QuantScratch,
) -> Result<()> {
    match f {
        crate::model::DevByLabel::Linear(l) => linear(gpu, cond, ldc, m, l, y, l.out_dim, s),
        crate::model::DevByLabel::Table { rows, out_dim } => each(
            gpu,
            "rows_by_label",
            m * out_dim,
            Args::new().p(rows.ptr()).p(labels).i(m).i(*out_dim).p(y),
        ),
    }
}

/// `y += x` over `len` floats.
pub(crate) fn add(gpu: &Gpu, y: u64, x: u64, len: usize) -> Result<()> {
    each(gpu, "add_inplace", len, Args::new().p(y).p(x).p(len as u64))
}

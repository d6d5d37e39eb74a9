//! VQVAE decoder and encoder (`docs/SPEC.md` §2): conv, GroupNorm, SiLU, ResBlocks, single-head
//! attention blocks, nearest ×2 upsampling and stride-2 downsampling.
//!
//! Activations rotate through three equally sized buffers (`a` holds the current map); the
//! scratch each network needs is computed by [`decoder_scratch_bytes`] /
//! [`encoder_scratch_bytes`] from the config alone.
//!
//! The decoder can also run in row bands ([`decode`] with `band_rows > 0`): everything at the
//! latent resolution runs whole as above, the upsampled levels are streamed `band_rows` output
//! rows at a time through small ring buffers, with one statistics pass per GroupNorm layer of
//! the streamed part. The output is bit-identical to the whole-image decoder.

use crate::arena::{bytes_of, Arena};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::{
    conv2d, gn_accumulate, gn_apply, gn_channel_affine, gn_group_stats, group_norm, softmax,
    ConvScratch, Pad,
};
use crate::parallel::Parallel;
use crate::weights::{AttnBlock, Conv, Decoder, Encoder, Mid, Norm, ResBlock};

struct Bufs<'s, 'p> {
    a: &'s mut [f32],
    b: &'s mut [f32],
    c: &'s mut [f32],
    qkv: &'s mut [f32],
    scores: &'s mut [f32],
    cs: Option<ConvScratch<'s>>,
    groups: usize,
    eps: f32,
    par: &'p dyn Parallel,
}

/// Largest activation (values) and attention sizes of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeSizes {
    /// Values of the largest activation map.
    pub max_act: usize,
    /// Values of the attention q,k,v map (`3C · hw` at the attention level), 0 without attention.
    pub qkv: usize,
    /// Tokens of the attention level (`hw`).
    pub attn_tokens: usize,
    /// Image side.
    pub image_side: usize,
    /// Values of the widest conv input row (`channels × side`), for the int8 row buffer.
    pub max_row: usize,
}

/// Maps a decoder value in [−1, 1] to an 8-bit channel: `round(((v + 1) / 2) · 255)`, the same
/// on every target (used by the host PNG writer and the firmware checksum).
pub fn to_rgb8(v: f32) -> u8 {
    libm::roundf(((v.clamp(-1.0, 1.0) + 1.0) * 0.5) * 255.0) as u8
}

fn sizes(cfg: &ModelConfig) -> VaeSizes {
    let nl = cfg.num_levels();
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    let mut max_act = cv * p * p;
    let mut block_in = cfg.level_channels(nl - 1);
    for lvl in (0..nl).rev() {
        let side = p << (nl - 1 - lvl);
        let out = cfg.level_channels(lvl);
        max_act = max_act.max(block_in.max(out) * side * side);
        block_in = out;
    }
    // Encoder input side: the image, 3 channels then ch.
    let image_side = cfg.image_side();
    max_act = max_act.max(3 * image_side * image_side);
    let deep = cfg.level_channels(nl - 1);
    let attn = cfg.vae.using_sa || cfg.vae.using_mid_sa;
    let mut max_row = cv.max(3) * image_side;
    for lvl in 0..nl {
        max_row = max_row.max(cfg.level_channels(lvl) * image_side);
    }
    VaeSizes {
        max_row,
        max_act,
        qkv: if attn { 3 * deep * p * p } else { 0 },
        attn_tokens: if attn { p * p } else { 0 },
        image_side,
    }
}

fn any_int8(cfg: &ModelConfig) -> bool {
    cfg.weights == crate::config::WeightFormat::Int8
}

/// Scratch bytes of the whole-image layout (the decoder with `band_rows = 0`, and the encoder).
fn whole_scratch_bytes(cfg: &ModelConfig) -> usize {
    let s = sizes(cfg);
    let mut b =
        3 * bytes_of::<f32>(s.max_act) + bytes_of::<f32>(s.qkv) + bytes_of::<f32>(s.attn_tokens);
    if any_int8(cfg) {
        b += bytes_of::<i8>(3 * s.max_act)
            + bytes_of::<i8>(s.max_row)
            + bytes_of::<f32>(s.image_side);
    }
    b + bytes_of::<f32>(3 * s.image_side)
}

/// Exact scratch bytes of [`decode`] with `band_rows` (0: whole image). A `band_rows` that
/// [`decode`] refuses (larger than the image side, or a VQVAE with more than
/// [`MAX_BAND_NODES`] streamed nodes), and any `band_rows` for a VQVAE without upsampling (where
/// banded and whole decoding are the same), give the whole-image figure.
pub fn decoder_scratch_bytes(cfg: &ModelConfig, band_rows: usize) -> usize {
    match band_shapes(cfg) {
        Ok(shapes) if band_rows > 0 && band_rows <= cfg.image_side() && cfg.num_levels() > 1 => {
            band_scratch_bytes(cfg, &shapes, band_rows)
        }
        _ => whole_scratch_bytes(cfg),
    }
}

/// Exact scratch bytes of [`encode`].
pub fn encoder_scratch_bytes(cfg: &ModelConfig) -> usize {
    whole_scratch_bytes(cfg)
}

fn take_bufs<'s, 'p>(
    cfg: &ModelConfig,
    arena: &mut Arena<'s>,
    par: &'p dyn Parallel,
) -> Result<(Bufs<'s, 'p>, &'s mut [f32])> {
    let s = sizes(cfg);
    let a = arena.take::<f32>(s.max_act)?;
    let b = arena.take::<f32>(s.max_act)?;
    let c = arena.take::<f32>(s.max_act)?;
    let qkv = arena.take::<f32>(s.qkv)?;
    let scores = arena.take::<f32>(s.attn_tokens)?;
    let cs = if any_int8(cfg) {
        Some(ConvScratch {
            unfold: arena.take::<i8>(3 * s.max_act)?,
            qrow: arena.take::<i8>(s.max_row)?,
            row_scale: arena.take::<f32>(s.image_side)?,
        })
    } else {
        None
    };
    let row = arena.take::<f32>(3 * s.image_side)?;
    Ok((
        Bufs {
            a,
            b,
            c,
            qkv,
            scores,
            cs,
            groups: cfg.vae.gn_groups as usize,
            eps: cfg.vae.gn_eps,
            par,
        },
        row,
    ))
}

impl Bufs<'_, '_> {
    /// Same-size conv of `a` (or of `b` when `from_b`) into `c`.
    fn conv_to_c(&mut self, from_b: bool, conv: &Conv<'_>, side: usize) {
        let x: &[f32] = if from_b { self.b } else { self.a };
        let pad = Pad::same(conv.k / 2);
        conv2d(
            x,
            side,
            side,
            conv,
            1,
            pad,
            self.c,
            self.cs.as_mut(),
            self.par,
        );
    }

    fn rotate(&mut self) {
        core::mem::swap(&mut self.a, &mut self.c);
    }

    fn res_block(&mut self, rb: &ResBlock<'_>, side: usize) {
        let hw = side * side;
        let (cin, cout) = (rb.conv1.cin, rb.conv1.cout);
        group_norm(
            &self.a[..cin * hw],
            self.b,
            cin,
            hw,
            self.groups,
            self.eps,
            &rb.norm1,
            true,
        );
        self.conv_to_c(true, &rb.conv1, side);
        group_norm(
            &self.c[..cout * hw],
            self.b,
            cout,
            hw,
            self.groups,
            self.eps,
            &rb.norm2,
            true,
        );
        self.conv_to_c(true, &rb.conv2, side);
        if let Some(nin) = &rb.nin_shortcut {
            let (a, b) = (&*self.a, &mut *self.b);
            conv2d(
                a,
                side,
                side,
                nin,
                1,
                Pad::same(0),
                b,
                self.cs.as_mut(),
                self.par,
            );
            for (o, s) in self.c[..cout * hw].iter_mut().zip(self.b.iter()) {
                *o += *s;
            }
        } else {
            for (o, s) in self.c[..cout * hw].iter_mut().zip(self.a.iter()) {
                *o += *s;
            }
        }
        self.rotate();
    }

    fn attn_block(&mut self, ab: &AttnBlock<'_>, side: usize) {
        let hw = side * side;
        let c = ab.qkv.cin;
        group_norm(
            &self.a[..c * hw],
            self.b,
            c,
            hw,
            self.groups,
            self.eps,
            &ab.norm,
            false,
        );
        conv2d(
            self.b,
            side,
            side,
            &ab.qkv,
            1,
            Pad::same(0),
            self.qkv,
            self.cs.as_mut(),
            self.par,
        );
        let (q, kv) = self.qkv.split_at(c * hw);
        let (k, v) = kv.split_at(c * hw);
        let ratio = 1.0 / libm::sqrtf(c as f32);
        let scores = &mut self.scores[..hw];
        for i in 0..hw {
            scores.iter_mut().for_each(|s| *s = 0.0);
            for ch in 0..c {
                let qv = q[ch * hw + i];
                for (s, kv) in scores.iter_mut().zip(&k[ch * hw..(ch + 1) * hw]) {
                    *s += qv * *kv;
                }
            }
            scores.iter_mut().for_each(|s| *s *= ratio);
            softmax(scores);
            for ch in 0..c {
                self.b[ch * hw + i] = crate::kernels::dot(&v[ch * hw..(ch + 1) * hw], scores);
            }
        }
        conv2d(
            self.b,
            side,
            side,
            &ab.proj_out,
            1,
            Pad::same(0),
            self.c,
            self.cs.as_mut(),
            self.par,
        );
        for (o, s) in self.c[..c * hw].iter_mut().zip(self.a.iter()) {
            *o += *s;
        }
        self.rotate();
    }

    fn mid(&mut self, m: &Mid<'_>, side: usize) {
        self.res_block(&m.block_1, side);
        if let Some(a) = &m.attn_1 {
            self.attn_block(a, side);
        }
        self.res_block(&m.block_2, side);
    }
}

impl Bufs<'_, '_> {
    /// Everything at the latent resolution: `post_quant_conv`, `conv_in`, the middle section and
    /// the ResBlocks (and attention) of the deepest level; the result is left in `a`.
    fn decode_latent(&mut self, d: &Decoder<'_>, f_hat: &[f32], p: usize) {
        conv2d(
            f_hat,
            p,
            p,
            &d.post_quant_conv,
            1,
            Pad::same(1),
            self.c,
            self.cs.as_mut(),
            self.par,
        );
        self.rotate();
        self.conv_to_c(false, &d.conv_in, p);
        self.rotate();
        self.mid(&d.mid, p);
        if let Some(level) = d.levels.first() {
            self.level_blocks(level, p);
        }
    }

    fn level_blocks(&mut self, level: &crate::weights::DecoderLevel<'_>, side: usize) {
        for (j, rb) in level.blocks.iter().enumerate() {
            self.res_block(rb, side);
            if let Some(a) = level.attns.get(j) {
                self.attn_block(a, side);
            }
        }
    }
}

/// Decodes `f_hat` (`Cvae × P × P`) to an image, handing each finished row to `sink` as
/// interleaved RGB floats, in order, once each: `clamp(decoder(post_quant_conv(f_hat)), −1, 1)`,
/// or unclamped when `clamp` is false.
///
/// `band_rows = 0` decodes the whole image at once; `1..=image side` streams the upsampled levels
/// in bands of that many rows (bounded working set, see [`decoder_scratch_bytes`]), with a
/// bit-identical result. Anything larger is `Error::BadOption`.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    d: &Decoder<'_>,
    cfg: &ModelConfig,
    f_hat: &[f32],
    arena: &mut Arena<'_>,
    clamp: bool,
    band_rows: usize,
    par: &dyn Parallel,
    sink: &mut dyn FnMut(usize, &[f32]),
) -> Result<()> {
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    if f_hat.len() != cv * p * p {
        return Err(Error::BadLength {
            what: "f_hat",
            expected: cv * p * p,
            found: f_hat.len(),
        });
    }
    if band_rows > cfg.image_side() {
        return Err(Error::BadOption(
            "band_rows must be 0 (whole image) or at most the image side",
        ));
    }
    if band_rows > 0 && cfg.num_levels() > 1 {
        return decode_banded(d, cfg, f_hat, arena, clamp, band_rows, par, sink);
    }
    let (mut bf, row) = take_bufs(cfg, arena, par)?;
    bf.decode_latent(d, f_hat, p);
    let mut side = p;
    for (li, level) in d.levels.iter().enumerate() {
        if li > 0 {
            bf.level_blocks(level, side);
        }
        if let Some(up) = &level.upsample {
            let ch = up.cin;
            let s2 = side * 2;
            for cc in 0..ch {
                for y in 0..s2 {
                    for x in 0..s2 {
                        bf.b[(cc * s2 + y) * s2 + x] = bf.a[(cc * side + y / 2) * side + x / 2];
                    }
                }
            }
            side = s2;
            bf.conv_to_c(true, up, side);
            bf.rotate();
        }
    }
    let c0 = d.norm_out.w.len();
    let hw = side * side;
    group_norm(
        &bf.a[..c0 * hw],
        bf.b,
        c0,
        hw,
        bf.groups,
        bf.eps,
        &d.norm_out,
        true,
    );
    bf.conv_to_c(true, &d.conv_out, side);
    for y in 0..side {
        for x in 0..side {
            for ch in 0..3 {
                let v = bf.c[(ch * side + y) * side + x];
                row[x * 3 + ch] = if clamp { v.clamp(-1.0, 1.0) } else { v };
            }
        }
        sink(y, &row[..3 * side]);
    }
    Ok(())
}

// ---- Row-band decoder ----

/// Most nodes of the streamed part of the row-band decoder (one per upsampling conv, two per
/// ResBlock of the upsampled levels, one for `norm_out` + `conv_out`, plus the source map).
pub const MAX_BAND_NODES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The latent-resolution map the whole-map part produced (always complete).
    Source,
    /// Nearest ×2 upsampling of the input, then a 3×3 conv.
    Up,
    /// GroupNorm + SiLU of the input, then a 3×3 conv, plus an optional skip map.
    NormConv,
}

/// A node of the streamed part, from the config alone.
#[derive(Clone, Copy, Debug)]
struct Shape {
    kind: Kind,
    /// Input node (smaller index).
    input: usize,
    /// Residual added to the output (the ResBlock's input node), through `nin_shortcut` when
    /// `nin`.
    skip: Option<usize>,
    nin: bool,
    cin: usize,
    cout: usize,
    /// Output side.
    side: usize,
}

type Shapes = heapless::Vec<Shape, MAX_BAND_NODES>;

/// The streamed part in execution order; node 0 is the source map (`C_deep × P × P`).
fn band_shapes(cfg: &ModelConfig) -> Result<Shapes> {
    let nl = cfg.num_levels();
    let deep = cfg.level_channels(nl - 1);
    let mut v = Shapes::new();
    let mut push = |s: Shape| -> Result<usize> {
        v.push(s)
            .map_err(|_| Error::BadConfig("VQVAE too deep for the row-band decoder"))?;
        Ok(v.len() - 1)
    };
    let node = |kind, input, cin, cout, side| Shape {
        kind,
        input,
        skip: None,
        nin: false,
        cin,
        cout,
        side,
    };
    let (mut x, mut ch, mut side) = (0, deep, cfg.latent_side());
    push(node(Kind::Source, 0, deep, deep, side))?;
    for li in 0..nl {
        let lvl = nl - 1 - li;
        let out = cfg.level_channels(lvl);
        if li > 0 {
            for _ in 0..cfg.vae.num_res_blocks as usize + 1 {
                let c1 = push(node(Kind::NormConv, x, ch, out, side))?;
                x = push(Shape {
                    skip: Some(x),
                    nin: ch != out,
                    ..node(Kind::NormConv, c1, out, out, side)
                })?;
                ch = out;
            }
        }
        if lvl != 0 {
            side *= 2;
            x = push(node(Kind::Up, x, ch, ch, side))?;
        }
    }
    push(node(Kind::NormConv, x, ch, 3, side))?;
    Ok(v)
}

/// Rows of a node's ring buffer.
fn ring_rows(band_rows: usize, side: usize) -> usize {
    (band_rows + 2).min(side)
}

/// Sizes (values) of the latent-resolution part of the banded decoder: rotating buffer, q/k/v,
/// attention scores, widest channel count.
fn latent_sizes(cfg: &ModelConfig) -> (usize, usize, usize, usize) {
    let p = cfg.latent_side();
    let deep = cfg.level_channels(cfg.num_levels() - 1);
    let maxc = (cfg.vae.cvae as usize).max(deep);
    let attn = cfg.vae.using_sa || cfg.vae.using_mid_sa;
    (
        maxc * p * p,
        if attn { 3 * deep * p * p } else { 0 },
        if attn { p * p } else { 0 },
        maxc,
    )
}

/// Values of the shared buffers of the streamed part.
#[derive(Default)]
struct StreamSizes {
    win: usize,
    out: usize,
    out2: usize,
    acc: usize,
    unfold: usize,
    qrow: usize,
    row_scale: usize,
}

fn stream_sizes(shapes: &[Shape], band_rows: usize) -> StreamSizes {
    let mut z = StreamSizes::default();
    for s in &shapes[1..] {
        let r = ring_rows(band_rows, s.side);
        let n = band_rows.min(s.side);
        z.win = z.win.max(s.cin * r * s.side);
        z.out = z.out.max(s.cout * n * s.side);
        z.unfold = z.unfold.max(r * s.side * s.cin * 3);
        z.qrow = z.qrow.max(s.cin * s.side);
        z.row_scale = z.row_scale.max(r);
        if s.kind == Kind::NormConv {
            z.acc = z.acc.max(s.cin);
        }
        if let (true, Some(k)) = (s.nin, s.skip) {
            let cs = shapes[k].cout;
            z.win = z.win.max(cs * n * s.side);
            z.out2 = z.out2.max(s.cout * n * s.side);
            z.unfold = z.unfold.max(n * s.side * cs);
            z.qrow = z.qrow.max(cs * s.side);
            z.row_scale = z.row_scale.max(n);
        }
    }
    z
}

fn band_scratch_bytes(cfg: &ModelConfig, shapes: &[Shape], band_rows: usize) -> usize {
    let int8 = any_int8(cfg);
    let p = cfg.latent_side();
    let (max_lat, qkv, scores, maxc) = latent_sizes(cfg);
    let mut latent = 2 * bytes_of::<f32>(max_lat) + bytes_of::<f32>(qkv) + bytes_of::<f32>(scores);
    if int8 {
        latent += bytes_of::<i8>(3 * max_lat) + bytes_of::<i8>(maxc * p) + bytes_of::<f32>(p);
    }
    let z = stream_sizes(shapes, band_rows);
    let mut stream = 0;
    for s in &shapes[1..] {
        stream += bytes_of::<f32>(s.cout * s.side * ring_rows(band_rows, s.side));
        if s.kind == Kind::NormConv {
            stream += bytes_of::<f32>(2 * s.cin);
        }
    }
    stream += 2 * bytes_of::<f64>(z.acc)
        + bytes_of::<f32>(z.win)
        + bytes_of::<f32>(z.out)
        + bytes_of::<f32>(z.out2);
    if int8 {
        stream += bytes_of::<i8>(z.unfold) + bytes_of::<i8>(z.qrow) + bytes_of::<f32>(z.row_scale);
    }
    stream += bytes_of::<f32>(3 * cfg.image_side());
    bytes_of::<f32>(max_lat) + latent.max(stream)
}

/// A node of the streamed part with its weights and ring buffer (row `y` in slot `y % rows`,
/// each slot `cout × side` values).
struct Node<'d, 's> {
    sh: Shape,
    rows: usize,
    produced: usize,
    conv: Option<&'d Conv<'d>>,
    nin: Option<&'d Conv<'d>>,
    norm: Option<&'d Norm<'d>>,
    ring: &'s mut [f32],
    /// GroupNorm scale and shift per input channel (NormConv).
    scale: &'s mut [f32],
    shift: &'s mut [f32],
}

/// Shared scratch of the streamed part.
struct Stream<'s, 'p> {
    band_rows: usize,
    src: &'s [f32],
    win: &'s mut [f32],
    out: &'s mut [f32],
    out2: &'s mut [f32],
    cs: Option<ConvScratch<'s>>,
    sums: &'s mut [f64],
    sqs: &'s mut [f64],
    /// Node whose produced rows feed `sums` / `sqs` (`usize::MAX`: none).
    acc_node: usize,
    par: &'p dyn Parallel,
}

/// Row `y`, channel `c` of node `i` (which must still hold it).
fn node_row<'x>(
    nodes: &'x [Node<'_, '_>],
    src: &'x [f32],
    i: usize,
    y: usize,
    c: usize,
) -> &'x [f32] {
    let n = &nodes[i];
    let w = n.sh.side;
    if i == 0 {
        &src[(c * w + y) * w..(c * w + y + 1) * w]
    } else {
        debug_assert!(y < n.produced && y + n.rows >= n.produced);
        let at = ((y % n.rows) * n.sh.cout + c) * w;
        &n.ring[at..at + w]
    }
}

/// Produces rows of node `i` up to `upto` (exclusive), at most `band_rows` at a time, pulling
/// each chunk's input rows first.
fn pull(nodes: &mut [Node<'_, '_>], i: usize, upto: usize, st: &mut Stream<'_, '_>) {
    if i == 0 {
        return;
    }
    while nodes[i].produced < upto {
        let sh = nodes[i].sh;
        let (a, w) = (nodes[i].produced, sh.side);
        let e = (a + st.band_rows).min(upto);
        // Input rows [ws, we) of the 3×3 conv (of the upsampled map for `Up`), zero padding
        // only where the kernel reaches past the image (first output row 0 / last row side − 1):
        // the same taps, in the same order, as the whole-image conv.
        let ws = a.saturating_sub(1);
        let we = (e + 1).min(w);
        let hwin = we - ws;
        match sh.kind {
            Kind::Up => pull(nodes, sh.input, (we - 1) / 2 + 1, st),
            _ => pull(nodes, sh.input, we, st),
        }
        let (lo, hi) = nodes.split_at_mut(i);
        let me = &mut hi[0];
        let win = &mut st.win[..sh.cin * hwin * w];
        for c in 0..sh.cin {
            for (wy, y) in (ws..we).enumerate() {
                let dst = &mut win[(c * hwin + wy) * w..(c * hwin + wy + 1) * w];
                if sh.kind == Kind::Up {
                    let srow = node_row(lo, st.src, sh.input, y / 2, c);
                    for (x, o) in dst.iter_mut().enumerate() {
                        *o = srow[x / 2];
                    }
                } else {
                    let srow = node_row(lo, st.src, sh.input, y, c);
                    gn_apply(srow, dst, me.scale[c], me.shift[c], true);
                }
            }
        }
        let n = e - a;
        let pad = Pad {
            top: usize::from(a == 0),
            left: 1,
            bottom: usize::from(e == w),
            right: 1,
        };
        let out = &mut st.out[..sh.cout * n * w];
        if let Some(conv) = me.conv {
            conv2d(win, hwin, w, conv, 1, pad, out, st.cs.as_mut(), st.par);
        }
        if let Some(k) = sh.skip {
            let ck = lo[k].sh.cout;
            if let Some(nin) = me.nin {
                let sw = &mut st.win[..ck * n * w];
                for c in 0..ck {
                    for (j, y) in (a..e).enumerate() {
                        sw[(c * n + j) * w..(c * n + j + 1) * w]
                            .copy_from_slice(node_row(lo, st.src, k, y, c));
                    }
                }
                let o2 = &mut st.out2[..sh.cout * n * w];
                conv2d(sw, n, w, nin, 1, Pad::same(0), o2, st.cs.as_mut(), st.par);
                for (o, v) in out.iter_mut().zip(o2.iter()) {
                    *o += *v;
                }
            } else {
                for c in 0..ck {
                    for (j, y) in (a..e).enumerate() {
                        let srow = node_row(lo, st.src, k, y, c);
                        let o = &mut out[(c * n + j) * w..(c * n + j + 1) * w];
                        for (o, v) in o.iter_mut().zip(srow) {
                            *o += *v;
                        }
                    }
                }
            }
        }
        let cout = sh.cout;
        for c in 0..cout {
            for (j, y) in (a..e).enumerate() {
                let o = &out[(c * n + j) * w..(c * n + j + 1) * w];
                let at = ((y % me.rows) * cout + c) * w;
                me.ring[at..at + w].copy_from_slice(o);
                if st.acc_node == i {
                    gn_accumulate(o, &mut st.sums[c], &mut st.sqs[c]);
                }
            }
        }
        me.produced = e;
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_banded(
    d: &Decoder<'_>,
    cfg: &ModelConfig,
    f_hat: &[f32],
    arena: &mut Arena<'_>,
    clamp: bool,
    band_rows: usize,
    par: &dyn Parallel,
    sink: &mut dyn FnMut(usize, &[f32]),
) -> Result<()> {
    let shapes = band_shapes(cfg)?;
    let p = cfg.latent_side();
    let int8 = any_int8(cfg);
    let (groups, eps) = (cfg.vae.gn_groups as usize, cfg.vae.gn_eps);
    let (max_lat, qkv, scores, maxc) = latent_sizes(cfg);
    let deep = shapes[0].cout;

    // The streamed part's weights, in the order of `shapes`.
    type W<'d> = (
        Option<&'d Conv<'d>>,
        Option<&'d Norm<'d>>,
        Option<&'d Conv<'d>>,
    );
    let mut ws: heapless::Vec<W<'_>, MAX_BAND_NODES> = heapless::Vec::new();
    let mismatch = Error::BadConfig("decoder weights do not match the row-band plan");
    let _ = ws.push((None, None, None));
    for (li, level) in d.levels.iter().enumerate() {
        if li > 0 {
            if !level.attns.is_empty() {
                return Err(Error::BadConfig(
                    "row-band decoder: attention above the latent resolution",
                ));
            }
            for rb in &level.blocks {
                ws.push((Some(&rb.conv1), Some(&rb.norm1), None))
                    .map_err(|_| mismatch)?;
                ws.push((Some(&rb.conv2), Some(&rb.norm2), rb.nin_shortcut.as_ref()))
                    .map_err(|_| mismatch)?;
            }
        }
        if let Some(up) = &level.upsample {
            ws.push((Some(up), None, None)).map_err(|_| mismatch)?;
        }
    }
    ws.push((Some(&d.conv_out), Some(&d.norm_out), None))
        .map_err(|_| mismatch)?;
    if ws.len() != shapes.len()
        || shapes.iter().zip(&ws).skip(1).any(|(s, (c, nm, nin))| {
            c.is_none_or(|c| c.cin != s.cin || c.cout != s.cout || c.k != 3)
                || (s.kind == Kind::NormConv) != nm.is_some()
                || nm.is_some_and(|nm| nm.w.len() != s.cin)
                || s.nin != nin.is_some()
        })
    {
        return Err(mismatch);
    }

    // Whole-map part: the source map stays in the first buffer, the rest is released after it.
    let src = arena.take::<f32>(max_lat)?;
    {
        let src_ptr = src.as_ptr();
        let mut sc = arena.scoped();
        let b = sc.take::<f32>(max_lat)?;
        let c = sc.take::<f32>(max_lat)?;
        let qkv = sc.take::<f32>(qkv)?;
        let scores = sc.take::<f32>(scores)?;
        let cs = if int8 {
            Some(ConvScratch {
                unfold: sc.take::<i8>(3 * max_lat)?,
                qrow: sc.take::<i8>(maxc * p)?,
                row_scale: sc.take::<f32>(p)?,
            })
        } else {
            None
        };
        let mut bf = Bufs {
            a: &mut *src,
            b,
            c,
            qkv,
            scores,
            cs,
            groups,
            eps,
            par,
        };
        bf.decode_latent(d, f_hat, p);
        let n = deep * p * p;
        if bf.b.as_ptr() == src_ptr {
            bf.b[..n].copy_from_slice(&bf.a[..n]);
        } else if bf.c.as_ptr() == src_ptr {
            bf.c[..n].copy_from_slice(&bf.a[..n]);
        }
    }
    let src: &[f32] = &src[..deep * p * p];

    // Streamed part.
    let z = stream_sizes(&shapes, band_rows);
    let mut nodes: heapless::Vec<Node<'_, '_>, MAX_BAND_NODES> = heapless::Vec::new();
    for (s, (conv, norm, nin)) in shapes.iter().zip(&ws) {
        let (ring, scale, shift): (&mut [f32], &mut [f32], &mut [f32]) = match s.kind {
            Kind::Source => (&mut [], &mut [], &mut []),
            _ => {
                let ring = arena.take::<f32>(s.cout * s.side * ring_rows(band_rows, s.side))?;
                if s.kind == Kind::NormConv {
                    let (a, b) = arena.take::<f32>(2 * s.cin)?.split_at_mut(s.cin);
                    (ring, a, b)
                } else {
                    (ring, &mut [], &mut [])
                }
            }
        };
        let _ = nodes.push(Node {
            sh: *s,
            rows: ring_rows(band_rows, s.side),
            produced: 0,
            conv: *conv,
            nin: *nin,
            norm: *norm,
            ring,
            scale,
            shift,
        });
    }
    let mut st = Stream {
        band_rows,
        src,
        sums: arena.take::<f64>(z.acc)?,
        sqs: arena.take::<f64>(z.acc)?,
        win: arena.take::<f32>(z.win)?,
        out: arena.take::<f32>(z.out)?,
        out2: arena.take::<f32>(z.out2)?,
        cs: if int8 {
            Some(ConvScratch {
                unfold: arena.take::<i8>(z.unfold)?,
                qrow: arena.take::<i8>(z.qrow)?,
                row_scale: arena.take::<f32>(z.row_scale)?,
            })
        } else {
            None
        },
        acc_node: usize::MAX,
        par,
    };
    let side = cfg.image_side();
    let row = arena.take::<f32>(3 * side)?;

    // One statistics pass per GroupNorm: stream its input to the end with the statistics of the
    // earlier layers known, accumulating per-channel sums in row order.
    for k in 1..nodes.len() {
        let sh = nodes[k].sh;
        if sh.kind != Kind::NormConv {
            continue;
        }
        let inp = sh.input;
        let in_side = nodes[inp].sh.side;
        nodes.iter_mut().for_each(|nd| nd.produced = 0);
        st.sums[..sh.cin].fill(0.0);
        st.sqs[..sh.cin].fill(0.0);
        if inp == 0 {
            let hw = in_side * in_side;
            for c in 0..sh.cin {
                gn_accumulate(&src[c * hw..(c + 1) * hw], &mut st.sums[c], &mut st.sqs[c]);
            }
        } else {
            st.acc_node = inp;
            pull(&mut nodes, inp, in_side, &mut st);
            st.acc_node = usize::MAX;
        }
        let me = &mut nodes[k];
        let Some(norm) = me.norm else { continue };
        let cg = sh.cin / groups;
        for g in 0..groups {
            let (mut s, mut q) = (0f64, 0f64);
            for c in g * cg..(g + 1) * cg {
                s += st.sums[c];
                q += st.sqs[c];
            }
            let (mean, rstd) = gn_group_stats(s, q, cg * in_side * in_side, eps);
            for c in g * cg..(g + 1) * cg {
                (me.scale[c], me.shift[c]) = gn_channel_affine(mean, rstd, norm.w[c], norm.b[c]);
            }
        }
    }

    // Final pass: the image, band by band.
    nodes.iter_mut().for_each(|nd| nd.produced = 0);
    let last = nodes.len() - 1;
    let mut y0 = 0;
    while y0 < side {
        let e = (y0 + band_rows).min(side);
        pull(&mut nodes, last, e, &mut st);
        for y in y0..e {
            for ch in 0..3 {
                let r = node_row(&nodes, src, last, y, ch);
                for (x, v) in r.iter().enumerate() {
                    row[x * 3 + ch] = if clamp { v.clamp(-1.0, 1.0) } else { *v };
                }
            }
            sink(y, &row[..3 * side]);
        }
        y0 = e;
    }
    Ok(())
}

/// Encodes an image (`3 × H × W`, values in [−1, 1]) to `f = quant_conv(encoder(x))`
/// (`Cvae × P × P`).
pub fn encode(
    e: &Encoder<'_>,
    cfg: &ModelConfig,
    image: &[f32],
    arena: &mut Arena<'_>,
    f: &mut [f32],
    par: &dyn Parallel,
) -> Result<()> {
    let side0 = cfg.image_side();
    let p = cfg.latent_side();
    let cv = cfg.vae.cvae as usize;
    if image.len() != 3 * side0 * side0 {
        return Err(Error::BadLength {
            what: "image",
            expected: 3 * side0 * side0,
            found: image.len(),
        });
    }
    if f.len() != cv * p * p {
        return Err(Error::BadLength {
            what: "f",
            expected: cv * p * p,
            found: f.len(),
        });
    }
    let (mut bf, _) = take_bufs(cfg, arena, par)?;
    let mut side = side0;
    conv2d(
        image,
        side,
        side,
        &e.conv_in,
        1,
        Pad::same(1),
        bf.c,
        bf.cs.as_mut(),
        par,
    );
    bf.rotate();
    for level in &e.levels {
        for (j, rb) in level.blocks.iter().enumerate() {
            bf.res_block(rb, side);
            if let Some(a) = level.attns.get(j) {
                bf.attn_block(a, side);
            }
        }
        if let Some(down) = &level.downsample {
            let pad = Pad {
                top: 0,
                left: 0,
                bottom: 1,
                right: 1,
            };
            conv2d(bf.a, side, side, down, 2, pad, bf.c, bf.cs.as_mut(), par);
            bf.rotate();
            side /= 2;
        }
    }
    bf.mid(&e.mid, side);
    let c = e.norm_out.w.len();
    let hw = side * side;
    group_norm(
        &bf.a[..c * hw],
        bf.b,
        c,
        hw,
        bf.groups,
        bf.eps,
        &e.norm_out,
        true,
    );
    bf.conv_to_c(true, &e.conv_out, side);
    conv2d(
        bf.c,
        side,
        side,
        &e.quant_conv,
        1,
        Pad::same(1),
        f,
        bf.cs.as_mut(),
        par,
    );
    Ok(())
}

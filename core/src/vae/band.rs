//! The row-band decoder: everything at the latent resolution runs whole on the rotating
//! buffers of [`Bufs`], the upsampled levels are streamed `band_rows` output rows at a time
//! through one small ring buffer per node, with one statistics pass per GroupNorm layer of the
//! streamed part. The result is bit-identical to the whole-image decoder.

use super::net::Bufs;
use super::{conv_scratch, int8_len, is_int8, Job};
use crate::arena::Arena;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::norm::gn_apply_in_place;
use crate::kernels::{
    conv2d, conv_scratch_len, conv_scratch_len_same, gn_accumulate, gn_apply, gn_channel_affine,
    gn_group_stats, ConvScratch, Pad,
};
use crate::layout::arena_layout;
use crate::parallel::Parallel;
use crate::weights::{Conv, Decoder, Norm};

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

/// Rows of a 3×3 conv's input window for a band of `band_rows` output rows.
fn win_rows(band_rows: usize, side: usize) -> usize {
    (band_rows + 2).min(side)
}

/// Rows of node `i`'s ring buffer. A node's newest rows stay in the shared output band
/// ("pending") until its consumer has built its conv window from them, so a ring holds only
/// the older rows a consumer still reads. A consumer at rows `[a, e)` has pulled its input to
/// `a + 1` before (its previous band), so its window `[a − 1, e + 1)` takes two ring rows and
/// the rest pending; its first band takes `band_rows` ring rows (the input's first band was
/// committed before its next). An upsampling consumer reads input rows `(a − 1)/2 ..= e/2` with
/// rows up to `a/2` committed: two ring rows. A residual source is read again by the block's
/// second conv at `[a, e)` after the first conv has pulled it to `e + 2`: `band_rows + 2`.
fn ring_rows(shapes: &[Shape], i: usize, band_rows: usize) -> usize {
    let s = &shapes[i];
    let rows = if shapes.iter().any(|t| t.skip == Some(i)) {
        band_rows + 2
    } else if shapes.iter().any(|t| t.kind == Kind::Up && t.input == i) {
        2
    } else {
        band_rows.max(2)
    };
    rows.min(s.side)
}

/// Values of one node's buffers; the one place their lengths are written, for both the sizing
/// and the taking.
struct NodeLens {
    /// Ring rows.
    rows: usize,
    /// Ring values (`cout × side` per row).
    ring: usize,
    /// GroupNorm scale and shift (`2 × cin` for a NormConv node, else 0).
    affine: usize,
}

fn node_lens(shapes: &[Shape], i: usize, band_rows: usize) -> NodeLens {
    let s = &shapes[i];
    let rows = ring_rows(shapes, i, band_rows);
    NodeLens {
        rows,
        ring: match s.kind {
            Kind::Source => 0,
            _ => s.cout * s.side * rows,
        },
        affine: match s.kind {
            Kind::NormConv => 2 * s.cin,
            _ => 0,
        },
    }
}

arena_layout! {
    /// One node's buffers (the source node has none: it reads the source map).
    struct NodeBufs<'s>(n: &NodeLens) {
        /// Produced rows, row `y` in slot `y % rows`.
        ring: [f32; n.ring] = "node ring (C_out x ring rows x side)",
        /// GroupNorm scale, then shift, per input channel.
        affine: [f32; n.affine] = "node GroupNorm scale, shift (2 x C_in)",
    }
}

/// Sizes (values) of the latent-resolution part.
struct Latent {
    /// One rotating map (`max(Cvae, C_deep) × P × P`).
    map: usize,
    /// Attention q, k, v (`3 C_deep × P × P`), 0 without attention.
    qkv: usize,
    /// Attention scores (`P × P`), 0 without attention.
    scores: usize,
    /// Widest channel count (`max(Cvae, C_deep)`).
    maxc: usize,
    /// Latent side.
    p: usize,
    int8: bool,
}

impl Latent {
    fn new(cfg: &ModelConfig) -> Latent {
        let p = cfg.latent_side();
        let deep = cfg.level_channels(cfg.num_levels() - 1);
        let maxc = (cfg.vae.cvae as usize).max(deep);
        let attn = cfg.vae.using_sa || cfg.vae.using_mid_sa;
        Latent {
            map: maxc * p * p,
            qkv: if attn { 3 * deep * p * p } else { 0 },
            scores: if attn { p * p } else { 0 },
            maxc,
            p,
            int8: is_int8(cfg),
        }
    }
}

arena_layout! {
    /// The map the latent part leaves its result in; the streamed part reads it to the end.
    struct SourceBuf<'s>(l: &Latent) {
        /// Rotating map `a` of the latent part, then the source map (`C_deep × P × P`).
        src: [f32; l.map] = "source map / latent activation a (max(Cvae, C_deep) x P x P)",
    }
}

arena_layout! {
    /// The rest of the latent part's buffers, given back before the streamed part.
    struct LatentBufs<'s>(l: &Latent) {
        /// Rotating map `b`.
        b: [f32; l.map] = "latent activation b (max(Cvae, C_deep) x P x P)",
        /// Rotating map `c`.
        c: [f32; l.map] = "latent activation c (max(Cvae, C_deep) x P x P)",
        /// Attention q, k, v.
        qkv: [f32; l.qkv] = "latent attention q, k, v (3 C_deep x P x P)",
        /// Attention scores of one query.
        scores: [f32; l.scores] = "latent attention scores (P x P)",
        /// Int8 conv: unfolded input.
        unfold: [i8; int8_len(l.int8, conv_scratch_len(l.maxc, l.p, l.p, l.p, 3).0)] =
            "latent int8 conv unfold (3 x max(Cvae, C_deep) x P x P)",
        /// Int8 conv: one quantized input row.
        qrow: [i8; int8_len(l.int8, l.maxc * l.p)] = "latent int8 conv row (max(Cvae, C_deep) x P)",
        /// Int8 conv: per-row activation scales.
        row_scale: [f32; int8_len(l.int8, l.p)] = "latent int8 conv row scales (P)",
    }
}

/// Values of the shared buffers of the streamed part (the widest node decides each).
#[derive(Default)]
struct StreamSizes {
    win: usize,
    out: usize,
    acc: usize,
    unfold: usize,
    row_scale: usize,
    image_side: usize,
    int8: bool,
}

fn stream_sizes(cfg: &ModelConfig, shapes: &[Shape], band_rows: usize) -> StreamSizes {
    let mut z = StreamSizes {
        image_side: cfg.image_side(),
        int8: is_int8(cfg),
        ..StreamSizes::default()
    };
    // Every conv here has stride 1 and keeps the width: pixel-major int8 scratch only.
    for s in &shapes[1..] {
        let r = win_rows(band_rows, s.side);
        let n = band_rows.min(s.side);
        z.win = z.win.max(s.cin * r * s.side);
        z.out = z.out.max(s.cout * n * s.side);
        z.unfold = z.unfold.max(conv_scratch_len_same(s.cin, r, s.side, 3).0);
        z.row_scale = z.row_scale.max(r);
        if s.kind == Kind::NormConv {
            z.acc = z.acc.max(s.cin);
        }
        if let (true, Some(k)) = (s.nin, s.skip) {
            // The skip rows and the `nin_shortcut` output share the window buffer.
            let cs = shapes[k].cout;
            z.win = z.win.max((cs + s.cout) * n * s.side);
            z.unfold = z.unfold.max(conv_scratch_len_same(cs, n, s.side, 1).0);
            z.row_scale = z.row_scale.max(n);
        }
    }
    z
}

arena_layout! {
    /// Scratch every node of the streamed part shares.
    struct StreamBufs<'s>(z: &StreamSizes) {
        /// Per-channel sums of the GroupNorm input being measured.
        sums: [f64; z.acc] = "GroupNorm channel sums (widest GroupNorm C_in)",
        /// Per-channel sums of squares.
        sqs: [f64; z.acc] = "GroupNorm channel sums of squares (widest GroupNorm C_in)",
        /// Conv input rows (normalised or upsampled), or the skip rows of a `nin_shortcut`
        /// followed by its output.
        win: [f32; z.win] = "conv window (C_in x (band + 2) x side; nin_shortcut in + out)",
        /// Conv output of one band: the newest (pending) rows of the node that made them.
        out: [f32; z.out] = "conv output band (C_out x band x side, widest node)",
        /// Int8 conv: pixel-major quantized input.
        unfold: [i8; int8_len(z.int8, z.unfold)] =
            "band int8 conv input ((band + 2) x (side + 2) x C_in)",
        /// Int8 conv: per-row activation scales.
        row_scale: [f32; int8_len(z.int8, z.row_scale)] = "band int8 conv row scales (band + 2)",
        /// One output row, interleaved RGB.
        row: [f32; 3 * z.image_side] = "output row (side x RGB)",
    }
}

/// Exact scratch bytes of [`super::decode`] with `band_rows`: the source map, then the
/// larger of the latent part and the streamed part (which reuses the latent part's bytes).
/// `None` when the config has no plan (see [`MAX_BAND_NODES`]).
pub(super) fn scratch_bytes(cfg: &ModelConfig, band_rows: usize) -> Option<usize> {
    let shapes = band_shapes(cfg).ok()?;
    let shapes = &shapes[..];
    let latent = Latent::new(cfg);
    let rings: usize = (0..shapes.len())
        .map(|i| NodeBufs::bytes(&node_lens(shapes, i, band_rows)))
        .sum();
    let stream = rings + StreamBufs::bytes(&stream_sizes(cfg, shapes, band_rows));
    Some(SourceBuf::bytes(&latent) + LatentBufs::bytes(&latent).max(stream))
}

/// The band decoder's buffers for `srdd-tools inspect`: the source map, the latent part's
/// buffers, then the streamed part's (which reuse the latent part's bytes), with every node's
/// ring and affine vectors summed into one row. `None` when the config has no band plan.
pub(super) fn buffers(cfg: &ModelConfig, band_rows: usize) -> Option<super::BufferList> {
    let shapes = band_shapes(cfg).ok()?;
    let latent = Latent::new(cfg);
    let mut out = super::BufferList::new();
    let rings: usize = (0..shapes.len())
        .map(|i| NodeBufs::bytes(&node_lens(&shapes, i, band_rows)))
        .sum();
    let stream = StreamBufs::buffers(&stream_sizes(cfg, &shapes, band_rows));
    let all = SourceBuf::buffers(&latent)
        .into_iter()
        .chain(LatentBufs::buffers(&latent))
        .chain([("streamed part: node rings and GroupNorm affines", rings)])
        .chain(stream);
    for b in all {
        out.push(b).ok()?;
    }
    Some(out)
}

/// A node of the streamed part with its weights and ring buffer (row `y` in slot `y % rows`,
/// each slot `cout × side` values). Rows `[committed, produced)` are pending: they sit in the
/// shared output band until the consumer that pulled them has read them.
struct Node<'d, 's> {
    sh: Shape,
    rows: usize,
    produced: usize,
    committed: usize,
    /// The ring keeps its consumer's GroupNorm + SiLU of the rows rather than the rows (the
    /// consumer, a NormConv, is the only reader): each row is normalised once instead of once
    /// per conv window it falls in (three times with one-row bands).
    normed: bool,
    /// Ring rows below this one hold normalised values (`normed` nodes).
    normed_upto: usize,
    conv: Option<&'d Conv<'d>>,
    nin: Option<&'d Conv<'d>>,
    norm: Option<&'d Norm<'d>>,
    ring: &'s mut [f32],
    /// GroupNorm scale and shift per input channel (NormConv).
    scale: &'s mut [f32],
    shift: &'s mut [f32],
}

impl Node<'_, '_> {
    /// Moves the pending rows from the output band `out` into the ring.
    fn commit(&mut self, out: &[f32]) {
        let (a, e, w, cout) = (self.committed, self.produced, self.sh.side, self.sh.cout);
        let n = e - a;
        for c in 0..cout {
            for (j, y) in (a..e).enumerate() {
                let at = ((y % self.rows) * cout + c) * w;
                self.ring[at..at + w].copy_from_slice(&out[(c * n + j) * w..(c * n + j + 1) * w]);
            }
        }
        self.committed = e;
    }

    /// [`Node::commit`] of a `normed` node from its consumer's conv window `win`
    /// (`cout × hwin × side`, rows from `ws`), which holds the pending rows normalised.
    fn commit_normed(&mut self, win: &[f32], ws: usize, hwin: usize) {
        let (a, e, w, cout) = (self.committed, self.produced, self.sh.side, self.sh.cout);
        debug_assert!(a >= ws && e <= ws + hwin);
        for c in 0..cout {
            for y in a..e {
                let at = ((y % self.rows) * cout + c) * w;
                let from = (c * hwin + y - ws) * w;
                self.ring[at..at + w].copy_from_slice(&win[from..from + w]);
            }
        }
        self.committed = e;
        self.normed_upto = e;
    }
}

/// Whether node `i`'s ring can hold its consumer's GroupNorm + SiLU of its rows: its one reader
/// is a NormConv (no skip or upsampling reads it, and it is not the image).
fn normed_ring(shapes: &[Shape], i: usize) -> bool {
    let mut readers = shapes[1..].iter().filter(|t| t.input == i);
    i > 0
        && i + 1 < shapes.len()
        && !shapes.iter().any(|t| t.skip == Some(i))
        && readers.clone().count() == 1
        && readers.all(|t| t.kind == Kind::NormConv)
}

/// Shared scratch of the streamed part.
struct Stream<'s, 'p> {
    band_rows: usize,
    src: &'s [f32],
    win: &'s mut [f32],
    /// The conv output band; after a pull, the pulled node's pending rows.
    out: &'s mut [f32],
    cs: Option<ConvScratch<'s>>,
    sums: &'s mut [f64],
    sqs: &'s mut [f64],
    /// Node whose produced rows feed `sums` / `sqs` (`usize::MAX`: none).
    acc_node: usize,
    par: &'p dyn Parallel,
}

/// Row `y`, channel `c` of node `i` (which must still hold it, in its ring or pending in
/// `out`).
fn node_row<'x>(
    nodes: &'x [Node<'_, '_>],
    src: &'x [f32],
    out: &'x [f32],
    i: usize,
    y: usize,
    c: usize,
) -> &'x [f32] {
    let n = &nodes[i];
    let w = n.sh.side;
    if i == 0 {
        &src[(c * w + y) * w..(c * w + y + 1) * w]
    } else if y >= n.committed {
        debug_assert!(y < n.produced);
        let (j, k) = (y - n.committed, n.produced - n.committed);
        &out[(c * k + j) * w..(c * k + j + 1) * w]
    } else {
        debug_assert!(y + n.rows >= n.committed);
        let at = ((y % n.rows) * n.sh.cout + c) * w;
        &n.ring[at..at + w]
    }
}

/// Produces rows of node `i` up to `upto` (exclusive), at most `band_rows` at a time, pulling
/// each chunk's input rows first. The last chunk stays pending in `st.out`; the caller commits
/// it once it has read it, before anything else uses `st.out`.
fn pull(nodes: &mut [Node<'_, '_>], i: usize, upto: usize, st: &mut Stream<'_, '_>) {
    if i == 0 {
        return;
    }
    debug_assert!(nodes[i].committed == nodes[i].produced);
    while nodes[i].produced < upto {
        if nodes[i].committed < nodes[i].produced {
            // The previous chunk of this loop: `st.out` still holds it.
            nodes[i].commit(st.out);
        }
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
        let normed = lo[sh.input].normed;
        if normed {
            // Raw rows a multi-chunk pull committed: normalised in place, once.
            let src = &mut lo[sh.input];
            for y in ws.max(src.normed_upto)..src.committed {
                for c in 0..sh.cin {
                    let at = ((y % src.rows) * sh.cin + c) * w;
                    gn_apply_in_place(&mut src.ring[at..at + w], me.scale[c], me.shift[c], true);
                }
            }
            src.normed_upto = src.normed_upto.max(src.committed);
        }
        let ready = if normed { lo[sh.input].committed } else { 0 };
        let win = &mut st.win[..sh.cin * hwin * w];
        for c in 0..sh.cin {
            for (wy, y) in (ws..we).enumerate() {
                let dst = &mut win[(c * hwin + wy) * w..(c * hwin + wy + 1) * w];
                if sh.kind == Kind::Up {
                    let srow = node_row(lo, st.src, st.out, sh.input, y / 2, c);
                    for (o, v) in dst.chunks_exact_mut(2).zip(srow) {
                        o[0] = *v;
                        o[1] = *v;
                    }
                } else if y < ready {
                    dst.copy_from_slice(node_row(lo, st.src, st.out, sh.input, y, c));
                } else {
                    let srow = node_row(lo, st.src, st.out, sh.input, y, c);
                    gn_apply(srow, dst, me.scale[c], me.shift[c], true);
                }
            }
        }
        if normed {
            lo[sh.input].commit_normed(win, ws, hwin);
        } else if sh.input > 0 {
            lo[sh.input].commit(st.out);
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
            // The skip rows were committed when the first conv of the block read them.
            let ck = lo[k].sh.cout;
            if let Some(nin) = me.nin {
                let (sw, o2) = st.win.split_at_mut(ck * n * w);
                for c in 0..ck {
                    for (j, y) in (a..e).enumerate() {
                        sw[(c * n + j) * w..(c * n + j + 1) * w].copy_from_slice(node_row(
                            lo,
                            st.src,
                            &[],
                            k,
                            y,
                            c,
                        ));
                    }
                }
                let o2 = &mut o2[..sh.cout * n * w];
                conv2d(sw, n, w, nin, 1, Pad::same(0), o2, st.cs.as_mut(), st.par);
                for (o, v) in out.iter_mut().zip(o2.iter()) {
                    *o += *v;
                }
            } else {
                for c in 0..ck {
                    for (j, y) in (a..e).enumerate() {
                        let srow = node_row(lo, st.src, &[], k, y, c);
                        let o = &mut out[(c * n + j) * w..(c * n + j + 1) * w];
                        for (o, v) in o.iter_mut().zip(srow) {
                            *o += *v;
                        }
                    }
                }
            }
        }
        if st.acc_node == i {
            for c in 0..sh.cout {
                gn_accumulate(
                    &out[c * n * w..(c + 1) * n * w],
                    &mut st.sums[c],
                    &mut st.sqs[c],
                );
            }
        }
        me.produced = e;
    }
}

/// The streamed part's weights per node: conv, GroupNorm, `nin_shortcut`.
type NodeWeights<'d> = (
    Option<&'d Conv<'d>>,
    Option<&'d Norm<'d>>,
    Option<&'d Conv<'d>>,
);

/// The decoder's weights in the order of `shapes`, checked against them.
fn node_weights<'d>(
    d: &'d Decoder<'d>,
    shapes: &[Shape],
) -> Result<heapless::Vec<NodeWeights<'d>, MAX_BAND_NODES>> {
    let mut ws: heapless::Vec<NodeWeights<'_>, MAX_BAND_NODES> = heapless::Vec::new();
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
    Ok(ws)
}

/// Decodes `job` in bands of `band_rows` rows (arguments checked by [`super::decode`]).
pub(super) fn decode(job: &mut Job<'_, '_>, arena: &mut Arena<'_>, band_rows: usize) -> Result<()> {
    let (d, cfg, par) = (job.d, job.cfg, job.par);
    let shapes = band_shapes(cfg)?;
    let ws = node_weights(d, &shapes)?;
    let p = cfg.latent_side();
    let (groups, eps) = (cfg.vae.gn_groups as usize, cfg.vae.gn_eps);
    let latent = Latent::new(cfg);
    let deep = shapes[0].cout;

    // Whole-map part: the source map stays in the first buffer, the rest is released after it.
    let src = SourceBuf::take(&latent, arena)?.src;
    {
        let src_ptr = src.as_ptr();
        let mut sc = arena.scoped();
        let l = LatentBufs::take(&latent, &mut sc)?;
        let cs = conv_scratch(latent.int8, l.unfold, l.qrow, l.row_scale);
        let mut bf = Bufs::new(cfg, [&mut *src, l.b, l.c], l.qkv, l.scores, cs, par);
        bf.decode_latent(d, job.f_hat, p);
        let n = deep * p * p;
        if bf.b.as_ptr() == src_ptr {
            bf.b[..n].copy_from_slice(&bf.a[..n]);
        } else if bf.c.as_ptr() == src_ptr {
            bf.c[..n].copy_from_slice(&bf.a[..n]);
        }
    }
    let src: &[f32] = &src[..deep * p * p];

    // Streamed part.
    let mut nodes: heapless::Vec<Node<'_, '_>, MAX_BAND_NODES> = heapless::Vec::new();
    for (i, (s, (conv, norm, nin))) in shapes.iter().zip(&ws).enumerate() {
        let lens = node_lens(&shapes, i, band_rows);
        let nb = NodeBufs::take(&lens, arena)?;
        let (scale, shift) = nb.affine.split_at_mut(lens.affine / 2);
        let _ = nodes.push(Node {
            sh: *s,
            rows: lens.rows,
            produced: 0,
            committed: 0,
            normed: normed_ring(&shapes, i),
            normed_upto: 0,
            conv: *conv,
            nin: *nin,
            norm: *norm,
            ring: nb.ring,
            scale,
            shift,
        });
    }
    let z = stream_sizes(cfg, &shapes, band_rows);
    let sb = StreamBufs::take(&z, arena)?;
    let mut st = Stream {
        band_rows,
        src,
        sums: sb.sums,
        sqs: sb.sqs,
        win: sb.win,
        out: sb.out,
        cs: conv_scratch(z.int8, sb.unfold, &mut [], sb.row_scale),
        acc_node: usize::MAX,
        par,
    };
    let row = sb.row;
    let side = cfg.image_side();

    // One statistics pass per GroupNorm: stream its input to the end with the statistics of the
    // earlier layers known, accumulating per-channel sums in row order.
    for k in 1..nodes.len() {
        let sh = nodes[k].sh;
        if sh.kind != Kind::NormConv {
            continue;
        }
        let inp = sh.input;
        let in_side = nodes[inp].sh.side;
        nodes
            .iter_mut()
            .for_each(|nd| (nd.produced, nd.committed, nd.normed_upto) = (0, 0, 0));
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
    nodes
        .iter_mut()
        .for_each(|nd| (nd.produced, nd.committed, nd.normed_upto) = (0, 0, 0));
    let last = nodes.len() - 1;
    let mut y0 = 0;
    while y0 < side {
        let e = (y0 + band_rows).min(side);
        pull(&mut nodes, last, e, &mut st);
        nodes[last].commit(st.out);
        for y in y0..e {
            job.emit(row, y, side, |ch| node_row(&nodes, src, &[], last, y, ch));
        }
        y0 = e;
    }
    Ok(())
}

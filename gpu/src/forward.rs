//! [`CudaForward`]: the forward seam on the device.
//!
//! ```text
//! prepare   cond = SiLU(class_emb[label]) of every row → AdaLN vectors of every block and the
//!           head (one Linear per block over all rows)
//!           x = SOS (step 0) | word_embed(area(f_hat, pn)) + lvl_pos (per image, gathered to
//!           its rows)
//!           → blocks over every row's tokens at once: LN·(1+scale)+shift → q|k|v → biases and
//!           L2 norms → attention (Markov: the row's own tokens; causal: its cache slot) → proj →
//!           x += γ1·(…) → LN → fc1 → GELU → fc2 → x += γ2·(…)
//! logits    LN·(1+scale)+shift of the chunk's tokens → head → copied to the host
//! decode    the VQVAE decoder on the device (`decoder`), RGB rows copied to the host
//! ```
//! Buffers are sized once for the run's largest step (shape comments below); the host scratch
//! of the seam is not used.

use crate::decoder::DecodeBufs;
use crate::driver::{Args, DevBuf, Gpu};
use crate::error::{GpuError, Result};
use crate::model::{DevAda, DeviceModel};
use crate::ops::{self, KeySet, QuantScratch};
use srdd_core::forward::{Chunk, Io, Step, TensorId};
use srdd_core::{Attention, Forward, SampleOptions, Schedule};

// Index of each AdaLN vector in a row's 6C block vector (as the CPU's `var.rs`).
const GAMMA1: usize = 0;
const GAMMA2: usize = 1;
const SCALE1: usize = 2;
const SCALE2: usize = 3;
const SHIFT1: usize = 4;
const SHIFT2: usize = 5;

/// Sizes of a run.
#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    images: usize,
    n: usize,
    c: usize,
    f: usize,
    v: usize,
    cv: usize,
    heads: usize,
    depth: usize,
    cache: usize,
}

/// What a run keeps on the device.
struct RunBufs {
    x: DevBuf,        // hidden states, rows × n × C
    xn: DevBuf,       // modulated LayerNorm, rows × n × C
    qkv: DevBuf,      // q|k|v, rows × n × 3C
    att: DevBuf,      // attention output, rows × n × C
    tmp: DevBuf,      // branch output, rows × n × C
    ffn: DevBuf,      // FFN hidden, rows × n × F
    cond: DevBuf,     // SiLU(class embedding), rows × C
    ada: DevBuf,      // AdaLN vectors, depth × rows × 6C
    shared: DevBuf,   // shared AdaLN output, rows × 6C (shared AdaLN only)
    head_ada: DevBuf, // head scale/shift, rows × 2C
    input: DevBuf,    // input maps, images × Cvae × n
    win: DevBuf,      // input tokens, images × n × Cvae
    we: DevBuf,       // word embeddings, images × n × C
    logits: DevBuf,   // logits, rows × n × V
    kv_k: DevBuf,     // key cache, depth × rows × cache × C (causal)
    kv_v: DevBuf,     // value cache, depth × rows × cache × C (causal)
    labels: DevBuf,   // class label per row, rows
    images: DevBuf,   // image per row, rows
    slots: DevBuf,    // cache slot per row, rows
    quant: QuantScratch,
}

/// The CUDA backend of one sampling run (its activations and KV cache on the device).
pub struct CudaForward<'d> {
    dm: &'d DeviceModel<'d>,
    d: Dims,
    b: RunBufs,
    dec: Option<DecodeBufs>,
    last: Option<GpuError>,
    host: Vec<f32>,
}

impl<'d> CudaForward<'d> {
    /// A run of `images` images with `opts` on `sched` over the uploaded model; every device
    /// buffer of the run is allocated here.
    pub fn new(
        dm: &'d DeviceModel<'d>,
        opts: &SampleOptions,
        sched: &Schedule,
        images: usize,
    ) -> Result<Self> {
        let cfg = &dm.model.config;
        // The core validates the options, the schedule and the batch for a device backend.
        let plan = srdd_core::Plan::batch(
            cfg,
            opts,
            sched,
            images,
            srdd_core::generate::Compute::Device,
        )?;
        let heads = cfg.var.num_heads as usize;
        let c = cfg.var.embed_dim as usize;
        if heads > 32 || !c.is_multiple_of(heads) || c / heads > 128 {
            return Err(GpuError::Unsupported(
                "more than 32 heads or heads wider than 128",
            ));
        }
        let d = Dims {
            rows: images * plan.rows,
            images,
            n: sched.max_tokens(),
            c,
            f: cfg.var.ffn_hidden as usize,
            v: cfg.vae.vocab_size as usize,
            cv: cfg.vae.cvae as usize,
            heads,
            depth: cfg.var.depth as usize,
            cache: match opts.attention {
                Attention::Markov => 0,
                Attention::Causal => sched.total_tokens(),
            },
        };
        let gpu = dm.gpu;
        gpu.bind()?;
        let (r, n, c) = (d.rows, d.n, d.c);
        let shared = dm.var.shared_ada_lin.is_some();
        let widest = c.max(d.f).max(d.cv);
        let b = RunBufs {
            x: gpu.alloc::<f32>(r * n * c)?,
            xn: gpu.alloc::<f32>(r * n * c)?,
            qkv: gpu.alloc::<f32>(r * n * 3 * c)?,
            att: gpu.alloc::<f32>(r * n * c)?,
            tmp: gpu.alloc::<f32>(r * n * c)?,
            ffn: gpu.alloc::<f32>(r * n * d.f)?,
            cond: gpu.alloc::<f32>(r * c)?,
            ada: gpu.alloc::<f32>(d.depth * r * 6 * c)?,
            shared: gpu.alloc::<f32>(if shared { r * 6 * c } else { 1 })?,
            head_ada: gpu.alloc::<f32>(r * 2 * c)?,
            input: gpu.alloc::<f32>(images * d.cv * n)?,
            win: gpu.alloc::<f32>(images * n * d.cv)?,
            we: gpu.alloc::<f32>(images * n * c)?,
            logits: gpu.alloc::<f32>(r * n * d.v)?,
            kv_k: gpu.alloc::<f32>((d.depth * r * d.cache * c).max(1))?,
            kv_v: gpu.alloc::<f32>((d.depth * r * d.cache * c).max(1))?,
            labels: gpu.alloc::<i32>(r)?,
            images: gpu.alloc::<i32>(r)?,
            slots: gpu.alloc::<i32>(r)?,
            quant: QuantScratch::new(gpu, r * n, widest)?,
        };
        Ok(CudaForward {
            dm,
            d,
            b,
            dec: None,
            last: None,
            host: Vec::new(),
        })
    }

    /// The error behind the last [`srdd_core::Error::Backend`] this backend returned.
    pub fn last_error(&self) -> Option<&GpuError> {
        self.last.as_ref()
    }

    /// Keeps a device error for [`Self::last_error`] and turns it into the core's error.
    fn fail(&mut self, e: GpuError) -> srdd_core::Error {
        let core = match &e {
            GpuError::Core(c) => *c,
            GpuError::Unsupported(w) => srdd_core::Error::Backend(w),
            _ => srdd_core::Error::Backend("CUDA error (see the backend's last error)"),
        };
        self.last = Some(e);
        core
    }

    fn check(&self, step: &Step<'_>) -> Result<()> {
        let d = &self.d;
        let bad = step.rows.len() > d.rows
            || step.tokens() > d.n
            || step
                .rows
                .iter()
                .any(|r| r.slot as usize >= d.rows || r.image as usize >= d.images)
            || (step.k > 0
                && (step.input_stride < d.cv * step.tokens()
                    || step
                        .rows
                        .iter()
                        .any(|r| (r.image as usize + 1) * step.input_stride > step.input.len())));
        if bad {
            return Err(GpuError::Core(srdd_core::Error::WrongState(
                "a step beyond the backend's plan",
            )));
        }
        Ok(())
    }

    fn prepare_inner(&mut self, step: &Step<'_>, io: Io<'_>) -> Result<()> {
        self.check(step)?;
        let dm = self.dm;
        let gpu: &Gpu = dm.gpu;
        gpu.bind()?;
        let cfg = &dm.model.config;
        let t = &dm.var;
        let Dims {
            c, heads, cache, ..
        } = self.d;
        let rmax = self.d.rows;
        let nr = step.rows.len();
        let n = step.tokens();
        let eps = cfg.var.norm_eps;
        let pos0 = cfg.scale_begin(step.level);
        let b = &self.b;
        let f32s = std::mem::size_of::<f32>() as u64;

        let labels: Vec<i32> = step.rows.iter().map(|r| r.label as i32).collect();
        let images: Vec<i32> = step.rows.iter().map(|r| r.image as i32).collect();
        let slots: Vec<i32> = step.rows.iter().map(|r| r.slot as i32).collect();
        gpu.write(&b.labels, 0, &labels)?;
        gpu.write(&b.images, 0, &images)?;
        gpu.write(&b.slots, 0, &slots)?;

        // AdaLN vectors of every row: one Linear per block over all rows.
        ops::each(
            gpu,
            "silu_labels",
            nr * c,
            Args::new()
                .p(t.class_emb.ptr())
                .p(b.labels.ptr())
                .i(nr)
                .i(c)
                .p(b.cond.ptr()),
        )?;
        if let Some(sh) = &t.shared_ada_lin {
            ops::by_label(
                gpu,
                b.cond.ptr(),
                c,
                b.labels.ptr(),
                nr,
                sh,
                b.shared.ptr(),
                &b.quant,
            )?;
        }
        for (bi, blk) in t.blocks.iter().enumerate() {
            let ada = b.ada.at::<f32>(bi * rmax * 6 * c);
            match &blk.ada {
                DevAda::Linear(f) => {
                    ops::by_label(gpu, b.cond.ptr(), c, b.labels.ptr(), nr, f, ada, &b.quant)?
                }
                DevAda::Shared(gss) => ops::each(
                    gpu,
                    "add_gss",
                    nr * 6 * c,
                    Args::new()
                        .p(ada)
                        .p(gss.ptr())
                        .p(b.shared.ptr())
                        .i(nr)
                        .i(6 * c),
                )?,
            }
        }
        ops::by_label(
            gpu,
            b.cond.ptr(),
            c,
            b.labels.ptr(),
            nr,
            &t.head_nm,
            b.head_ada.ptr(),
            &b.quant,
        )?;

        // Input tokens.
        if step.k == 0 {
            let a = Args::new()
                .p(b.x.ptr())
                .p(b.labels.ptr())
                .i(nr)
                .i(n)
                .i(c)
                .p(t.class_emb.ptr())
                .p(t.pos_start.ptr())
                .p(t.lvl_embed.ptr())
                .i(step.level)
                .p(t.pos_1lc.ptr())
                .i(pos0);
            ops::each(gpu, "embed_sos", nr * n * c, a)?;
        } else {
            let cv = self.d.cv;
            let imgs = step
                .rows
                .iter()
                .map(|r| r.image as usize + 1)
                .max()
                .unwrap_or(0);
            for i in 0..imgs {
                let src = &step.input[i * step.input_stride..i * step.input_stride + cv * n];
                gpu.write(&b.input, i * cv * n, src)?;
            }
            let a = Args::new()
                .p(b.input.ptr())
                .i(imgs)
                .i(cv * n)
                .i(cv)
                .i(n)
                .p(b.win.ptr());
            ops::each(gpu, "input_tokens", imgs * n * cv, a)?;
            ops::linear(
                gpu,
                b.win.ptr(),
                cv,
                imgs * n,
                &t.word_embed,
                b.we.ptr(),
                c,
                &b.quant,
            )?;
            let a = Args::new()
                .p(b.x.ptr())
                .p(b.we.ptr())
                .p(b.images.ptr())
                .i(nr)
                .i(n)
                .i(c)
                .p(t.lvl_embed.ptr())
                .i(step.level)
                .p(t.pos_1lc.ptr())
                .i(pos0);
            ops::each(gpu, "embed_words", nr * n * c, a)?;
        }
        let Io { probe, .. } = io;
        probe_rows(
            gpu,
            &b.x,
            &mut self.host,
            probe,
            (nr, n * c),
            tensor("input", 0),
        )?;

        // Blocks.
        let b = &self.b;
        let hd = c / heads;
        let tokens = nr * n;
        for (bi, blk) in t.blocks.iter().enumerate() {
            let ada = b.ada.at::<f32>(bi * rmax * 6 * c);
            ops::ln_modulate(
                gpu,
                b.x.ptr(),
                (nr, n, 0, n, c),
                eps,
                ada,
                (6, SCALE1, SHIFT1),
                b.xn.ptr(),
            )?;
            ops::linear(
                gpu,
                b.xn.ptr(),
                c,
                tokens,
                &blk.mat_qkv,
                b.qkv.ptr(),
                3 * c,
                &b.quant,
            )?;
            let a = Args::new()
                .p(b.qkv.ptr())
                .i(c)
                .i(heads)
                .p(blk.q_bias.ptr())
                .p(blk.v_bias.ptr())
                .p(blk.scale_mul.as_ref().map_or(0, |s| s.ptr()));
            gpu.launch("qkv_post", (tokens as u32, 1, 1), 32 * heads as u32, 0, &a)?;
            let keys = if cache > 0 {
                let len = rmax * cache * c;
                let (kc, vc) = (b.kv_k.at::<f32>(bi * len), b.kv_v.at::<f32>(bi * len));
                let a = Args::new()
                    .p(b.qkv.ptr())
                    .i(nr)
                    .i(n)
                    .i(c)
                    .p(b.slots.ptr())
                    .i(cache)
                    .i(step.cache_begin)
                    .p(kc)
                    .p(vc);
                ops::each(gpu, "kv_to_cache", tokens * c, a)?;
                KeySet {
                    k: kc,
                    v: vc,
                    stride: c,
                    row_stride: cache * c,
                    slots: b.slots.ptr(),
                    count: step.cache_begin + n,
                }
            } else {
                KeySet {
                    k: b.qkv.ptr() + c as u64 * f32s,
                    v: b.qkv.ptr() + 2 * c as u64 * f32s,
                    stride: 3 * c,
                    row_stride: n * 3 * c,
                    slots: 0,
                    count: n,
                }
            };
            // Without L2 normalisation the official code scales logits by 0.25/sqrt(head_dim).
            let scale = if blk.scale_mul.is_some() {
                1.0
            } else {
                0.25 / (hd as f32).sqrt()
            };
            ops::attention(
                gpu,
                b.qkv.ptr(),
                3 * c,
                (nr, n, heads, hd),
                &keys,
                scale,
                b.att.ptr(),
            )?;
            ops::linear(
                gpu,
                b.att.ptr(),
                c,
                tokens,
                &blk.proj,
                b.tmp.ptr(),
                c,
                &b.quant,
            )?;
            let res = |kg: usize| {
                Args::new()
                    .p(b.x.ptr())
                    .p(b.tmp.ptr())
                    .i(nr)
                    .i(n)
                    .i(c)
                    .p(ada)
                    .i(6)
                    .i(kg)
            };
            ops::each(gpu, "residual_gamma", tokens * c, res(GAMMA1))?;
            ops::ln_modulate(
                gpu,
                b.x.ptr(),
                (nr, n, 0, n, c),
                eps,
                ada,
                (6, SCALE2, SHIFT2),
                b.xn.ptr(),
            )?;
            let f = blk.fc1.out_dim;
            ops::linear(
                gpu,
                b.xn.ptr(),
                c,
                tokens,
                &blk.fc1,
                b.ffn.ptr(),
                f,
                &b.quant,
            )?;
            ops::each(
                gpu,
                "gelu_inplace",
                tokens * f,
                Args::new().p(b.ffn.ptr()).p((tokens * f) as u64),
            )?;
            ops::linear(
                gpu,
                b.ffn.ptr(),
                f,
                tokens,
                &blk.fc2,
                b.tmp.ptr(),
                c,
                &b.quant,
            )?;
            ops::each(gpu, "residual_gamma", tokens * c, res(GAMMA2))?;
            probe_rows(
                gpu,
                &b.x,
                &mut self.host,
                probe,
                (nr, n * c),
                tensor("block", bi),
            )?;
        }
        if !probe.active() {
            // Report a kernel fault at the step that caused it.
            gpu.sync()?;
        }
        Ok(())
    }

    fn logits_inner(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> Result<()> {
        self.check(step)?;
        let Chunk { t0, m, out } = chunk;
        let (nr, n) = (step.rows.len(), step.tokens());
        let Dims { c, v, .. } = self.d;
        if t0 + m > n || out.len() < nr * m * v {
            return Err(GpuError::Core(srdd_core::Error::WrongState(
                "a logits chunk beyond the backend's plan",
            )));
        }
        let dm = self.dm;
        let gpu = dm.gpu;
        gpu.bind()?;
        let b = &self.b;
        let eps = dm.model.config.var.norm_eps;
        ops::ln_modulate(
            gpu,
            b.x.ptr(),
            (nr, n, t0, m, c),
            eps,
            b.head_ada.ptr(),
            (2, 0, 1),
            b.xn.ptr(),
        )?;
        ops::linear(
            gpu,
            b.xn.ptr(),
            c,
            nr * m,
            &dm.var.head,
            b.logits.ptr(),
            v,
            &b.quant,
        )?;
        gpu.read(&b.logits, 0, &mut out[..nr * m * v])?;
        let probe = io.probe;
        if probe.active() {
            for r in 0..nr {
                let id = TensorId {
                    token: t0,
                    ..tensor("logits", 0)
                };
                probe.tensor(TensorId { row: r, ..id }, &out[r * m * v..(r + 1) * m * v]);
            }
        }
        Ok(())
    }

    fn decode_inner(&mut self, f_hat: &[f32], sink: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        let dm = self.dm;
        dm.gpu.bind()?;
        if self.dec.is_none() {
            self.dec = Some(DecodeBufs::new(dm)?);
        }
        let dec = self.dec.as_mut().expect("allocated above");
        dec.decode(dm, f_hat, sink)
    }
}

/// Hands each of `rows` rows of `len` floats of `src` to an active probe.
fn probe_rows(
    gpu: &Gpu,
    src: &DevBuf,
    host: &mut Vec<f32>,
    probe: &mut dyn srdd_core::forward::Probe,
    (rows, len): (usize, usize),
    id: TensorId,
) -> Result<()> {
    if !probe.active() {
        return Ok(());
    }
    host.resize(rows * len, 0.0);
    gpu.read(src, 0, &mut host[..rows * len])?;
    for r in 0..rows {
        probe.tensor(TensorId { row: r, ..id }, &host[r * len..(r + 1) * len]);
    }
    Ok(())
}

fn tensor(op: &'static str, layer: usize) -> TensorId {
    TensorId {
        op,
        layer,
        row: 0,
        token: 0,
    }
}

impl Forward for CudaForward<'_> {
    fn max_rows(&self) -> usize {
        self.d.rows
    }

    fn prepare(&mut self, step: &Step<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        self.prepare_inner(step, io).map_err(|e| self.fail(e))
    }

    fn logits(&mut self, step: &Step<'_>, chunk: Chunk<'_>, io: Io<'_>) -> srdd_core::Result<()> {
        self.logits_inner(step, chunk, io).map_err(|e| self.fail(e))
    }

    fn decode(
        &mut self,
        f_hat: &[f32],
        _scratch: &mut [u8],
        sink: &mut dyn FnMut(usize, &[f32]),
    ) -> srdd_core::Result<()> {
        self.decode_inner(f_hat, sink).map_err(|e| self.fail(e))
    }
}

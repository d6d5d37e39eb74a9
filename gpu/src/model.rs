//! The model's weights on the device, uploaded once and shared by every run: each Linear and
//! conv in its file's storage type (int8 panels with their scales, f16, f32), every norm, bias
//! and embedding in f32.

use crate::driver::{DevBuf, Gpu};
use crate::error::Result;
use srdd_core::kernels::pack::panels_len;
use srdd_core::weights::{
    AdaLn, AttnBlock, ByLabel, Conv, Linear, Norm, ResBlock, TableRows, Weight,
};
use srdd_core::Model;

/// A weight on the device.
pub(crate) enum DevWeight {
    /// f32 values, official layout.
    F32(DevBuf),
    /// f16 values, official layout.
    F16(DevBuf),
    /// int8 panels (`groups` packed `rows × k` weights, `group_words` words apart) and one
    /// scale per output channel.
    I8 {
        q: DevBuf,
        scales: DevBuf,
        /// Words of one input group row: `panel_k(k) / 4`.
        k4: usize,
        /// Words between two kernel rows' packed weights (convs).
        group_words: usize,
        /// Two-pass activations (`PanelsI8::act16`, Linears only).
        act16: bool,
    },
}

fn weight(gpu: &Gpu, w: &Weight<'_>, rows: usize, k: usize) -> Result<DevWeight> {
    Ok(match w {
        Weight::F32(v) => DevWeight::F32(gpu.upload(v)?),
        Weight::F16(v) => {
            DevWeight::F16(gpu.upload(&v.iter().map(|h| h.to_bits()).collect::<Vec<u16>>())?)
        }
        Weight::I8(p) => DevWeight::I8 {
            q: gpu.upload(p.q)?,
            scales: gpu.upload(p.scales)?,
            k4: k.div_ceil(4),
            group_words: panels_len(rows, k) / 4,
            act16: p.act16,
        },
    })
}

/// A Linear on the device.
pub(crate) struct DevLinear {
    pub(crate) w: DevWeight,
    pub(crate) b: Option<DevBuf>,
    pub(crate) out_dim: usize,
    pub(crate) in_dim: usize,
}

impl DevLinear {
    pub(crate) fn new(gpu: &Gpu, l: &Linear<'_>) -> Result<Self> {
        if let Weight::I8(p) = &l.w {
            debug_assert!(p.o0 == 0 && p.rows == l.out_dim && p.k == l.in_dim);
        }
        Ok(DevLinear {
            w: weight(gpu, &l.w, l.out_dim, l.in_dim)?,
            b: l.b.map(|b| gpu.upload(b)).transpose()?,
            out_dim: l.out_dim,
            in_dim: l.in_dim,
        })
    }
}

/// A conv on the device (int8 weights: one packed `cout × k·cin` weight per kernel row).
pub(crate) struct DevConv {
    pub(crate) w: DevWeight,
    pub(crate) b: DevBuf,
    pub(crate) cout: usize,
    pub(crate) cin: usize,
    pub(crate) k: usize,
}

impl DevConv {
    pub(crate) fn new(gpu: &Gpu, c: &Conv<'_>) -> Result<Self> {
        let kk = match c.w {
            Weight::I8(_) => c.k * c.cin,
            _ => c.k * c.k * c.cin,
        };
        Ok(DevConv {
            w: weight(gpu, &c.w, c.cout, kk)?,
            b: gpu.upload(c.b)?,
            cout: c.cout,
            cin: c.cin,
            k: c.k,
        })
    }
}

/// GroupNorm parameters on the device.
pub(crate) struct DevNorm {
    pub(crate) w: DevBuf,
    pub(crate) b: DevBuf,
    pub(crate) c: usize,
}

impl DevNorm {
    pub(crate) fn new(gpu: &Gpu, n: &Norm<'_>) -> Result<Self> {
        Ok(DevNorm {
            w: gpu.upload(n.w)?,
            b: gpu.upload(n.b)?,
            c: n.w.len(),
        })
    }
}

pub(crate) struct DevResBlock {
    pub(crate) norm1: DevNorm,
    pub(crate) conv1: DevConv,
    pub(crate) norm2: DevNorm,
    pub(crate) conv2: DevConv,
    pub(crate) nin_shortcut: Option<DevConv>,
}

impl DevResBlock {
    fn new(gpu: &Gpu, r: &ResBlock<'_>) -> Result<Self> {
        Ok(DevResBlock {
            norm1: DevNorm::new(gpu, &r.norm1)?,
            conv1: DevConv::new(gpu, &r.conv1)?,
            norm2: DevNorm::new(gpu, &r.norm2)?,
            conv2: DevConv::new(gpu, &r.conv2)?,
            nin_shortcut: r
                .nin_shortcut
                .as_ref()
                .map(|c| DevConv::new(gpu, c))
                .transpose()?,
        })
    }
}

pub(crate) struct DevAttnBlock {
    pub(crate) norm: DevNorm,
    pub(crate) qkv: DevConv,
    pub(crate) proj_out: DevConv,
}

impl DevAttnBlock {
    fn new(gpu: &Gpu, a: &AttnBlock<'_>) -> Result<Self> {
        Ok(DevAttnBlock {
            norm: DevNorm::new(gpu, &a.norm)?,
            qkv: DevConv::new(gpu, &a.qkv)?,
            proj_out: DevConv::new(gpu, &a.proj_out)?,
        })
    }
}

/// One decoder level: ResBlocks, their attention (if any), the upsampling conv (if any).
pub(crate) struct DevLevel {
    pub(crate) blocks: Vec<DevResBlock>,
    pub(crate) attns: Vec<DevAttnBlock>,
    pub(crate) upsample: Option<DevConv>,
}

/// The VQVAE decoder on the device.
pub(crate) struct DevDecoder {
    pub(crate) post_quant_conv: DevConv,
    pub(crate) conv_in: DevConv,
    pub(crate) mid: (DevResBlock, Option<DevAttnBlock>, DevResBlock),
    pub(crate) levels: Vec<DevLevel>,
    pub(crate) norm_out: DevNorm,
    pub(crate) conv_out: DevConv,
}

/// An AdaLN Linear on the device, or its per-label table (`ByLabel`).
pub(crate) enum DevByLabel {
    Linear(DevLinear),
    /// `[num_classes + 1, out_dim]`.
    Table {
        rows: DevBuf,
        out_dim: usize,
    },
}

impl DevByLabel {
    fn new(gpu: &Gpu, f: &ByLabel<'_>) -> Result<Self> {
        Ok(match f {
            ByLabel::Linear(l) => DevByLabel::Linear(DevLinear::new(gpu, l)?),
            ByLabel::Table { rows, out_dim } => DevByLabel::Table {
                // f16 rows are widened here (exactly): the gather kernel reads f32.
                rows: match rows {
                    TableRows::F32(r) => gpu.upload(r)?,
                    TableRows::F16(r) => {
                        let v: Vec<f32> = r.iter().map(|h| h.to_f32()).collect();
                        gpu.upload(&v)?
                    }
                },
                out_dim: *out_dim,
            },
        })
    }
}

/// Where a block's AdaLN vectors come from.
pub(crate) enum DevAda {
    Linear(DevByLabel),
    Shared(DevBuf),
}

/// One transformer block on the device.
pub(crate) struct DevBlock {
    pub(crate) scale_mul: Option<DevBuf>,
    pub(crate) q_bias: DevBuf,
    pub(crate) v_bias: DevBuf,
    pub(crate) mat_qkv: DevLinear,
    pub(crate) proj: DevLinear,
    pub(crate) fc1: DevLinear,
    pub(crate) fc2: DevLinear,
    pub(crate) ada: DevAda,
}

/// The transformer on the device.
pub(crate) struct DevTransformer {
    pub(crate) pos_start: DevBuf,
    pub(crate) pos_1lc: DevBuf,
    pub(crate) word_embed: DevLinear,
    pub(crate) class_emb: DevBuf,
    pub(crate) lvl_embed: DevBuf,
    pub(crate) shared_ada_lin: Option<DevByLabel>,
    pub(crate) blocks: Vec<DevBlock>,
    pub(crate) head_nm: DevByLabel,
    pub(crate) head: DevLinear,
}

/// A model whose weights live on a device.
pub struct DeviceModel<'m> {
    pub(crate) gpu: &'m Gpu,
    pub(crate) model: &'m Model<'m>,
    pub(crate) var: DevTransformer,
    pub(crate) decoder: DevDecoder,
    bytes: usize,
}

impl<'m> DeviceModel<'m> {
    /// Uploads every weight of `model` that sampling reads (transformer and decoder).
    pub fn upload(gpu: &'m Gpu, model: &'m Model<'m>) -> Result<Self> {
        gpu.bind()?;
        let before = gpu.allocated();
        let t = &model.weights.var;
        let mut blocks = Vec::with_capacity(t.blocks.len());
        for b in t.blocks.iter() {
            blocks.push(DevBlock {
                scale_mul: b.scale_mul.map(|s| gpu.upload(s)).transpose()?,
                q_bias: gpu.upload(b.q_bias)?,
                v_bias: gpu.upload(b.v_bias)?,
                mat_qkv: DevLinear::new(gpu, &b.mat_qkv)?,
                proj: DevLinear::new(gpu, &b.proj)?,
                fc1: DevLinear::new(gpu, &b.fc1)?,
                fc2: DevLinear::new(gpu, &b.fc2)?,
                ada: match &b.ada {
                    AdaLn::Linear(f) => DevAda::Linear(DevByLabel::new(gpu, f)?),
                    AdaLn::Shared(g) => DevAda::Shared(gpu.upload(g)?),
                },
            });
        }
        let var = DevTransformer {
            pos_start: gpu.upload(t.pos_start)?,
            pos_1lc: gpu.upload(t.pos_1lc)?,
            word_embed: DevLinear::new(gpu, &t.word_embed)?,
            class_emb: gpu.upload(t.class_emb)?,
            lvl_embed: gpu.upload(t.lvl_embed)?,
            shared_ada_lin: t
                .shared_ada_lin
                .as_ref()
                .map(|f| DevByLabel::new(gpu, f))
                .transpose()?,
            blocks,
            head_nm: DevByLabel::new(gpu, &t.head_nm)?,
            head: DevLinear::new(gpu, &t.head)?,
        };
        let d = &model.weights.decoder;
        let mut levels = Vec::new();
        for l in d.levels.iter() {
            levels.push(DevLevel {
                blocks: l
                    .blocks
                    .iter()
                    .map(|b| DevResBlock::new(gpu, b))
                    .collect::<Result<_>>()?,
                attns: l
                    .attns
                    .iter()
                    .map(|a| DevAttnBlock::new(gpu, a))
                    .collect::<Result<_>>()?,
                upsample: l
                    .upsample
                    .as_ref()
                    .map(|c| DevConv::new(gpu, c))
                    .transpose()?,
            });
        }
        let decoder = DevDecoder {
            post_quant_conv: DevConv::new(gpu, &d.post_quant_conv)?,
            conv_in: DevConv::new(gpu, &d.conv_in)?,
            mid: (
                DevResBlock::new(gpu, &d.mid.block_1)?,
                d.mid
                    .attn_1
                    .as_ref()
                    .map(|a| DevAttnBlock::new(gpu, a))
                    .transpose()?,
                DevResBlock::new(gpu, &d.mid.block_2)?,
            ),
            levels,
            norm_out: DevNorm::new(gpu, &d.norm_out)?,
            conv_out: DevConv::new(gpu, &d.conv_out)?,
        };
        Ok(DeviceModel {
            gpu,
            model,
            var,
            decoder,
            bytes: gpu.allocated() - before,
        })
    }

    /// Bytes of device memory the upload allocated.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    /// The host model.
    pub fn model(&self) -> &Model<'m> {
        self.model
    }
}

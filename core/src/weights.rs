//! Zero-copy weight views and the one canonical walk over a model's tensors.
//!
//! [`Weights::build`] is the single definition of which tensors a model has, in which order and
//! with which shapes: the loader drives it with a [`crate::format::FileSource`] (checking every
//! entry), and the converter drives it with a recorder to learn what to write. Shapes follow the
//! official state_dict (`docs/SPEC.md` §2.5, §5.9).

use crate::config::{ModelConfig, MAX_DEPTH, MAX_LEVELS, MAX_PHI, MAX_RES_BLOCKS};
use crate::error::{Error, Result};
use core::fmt::{self, Write};
use heapless::{String, Vec};

// The layer views live below the kernels (they read them); re-exported so the model layer keeps
// naming them `weights::Linear` etc.
pub use crate::kernels::layers::{Conv, Linear, Norm, Weight};

/// Supplies tensors in canonical order (see the module docs).
pub trait TensorSource<'a> {
    /// A tensor that always stays f32 (embeddings, codebook, norms, biases).
    fn float(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<&'a [f32]>;
    /// A Linear (`[out, in]`) or Conv (`[out, in, k, k]`) weight, in any storage type.
    fn weight(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<Weight<'a>>;
    /// Whether the next tensor is `name`, without taking it: how the walk tells an AdaLN
    /// Linear from the per-label table that may replace it ([`ByLabel`]). The default: never.
    fn next_is(&mut self, name: fmt::Arguments<'_>) -> bool {
        let _ = name;
        false
    }
    /// A per-label AdaLN table ([`ByLabel::Table`]), f32 or f16. The default: an f32 tensor.
    fn table(&mut self, name: fmt::Arguments<'_>, shape: &[usize]) -> Result<TableRows<'a>> {
        self.float(name, shape).map(TableRows::F32)
    }
}

/// The rows of an AdaLN table, as stored.
#[derive(Clone, Copy, Debug)]
pub enum TableRows<'a> {
    /// f32 values (exact up to one rounding of the f64 sums).
    F32(&'a [f32]),
    /// IEEE half values (widened exactly when read).
    F16(&'a [half::f16]),
}

impl TableRows<'_> {
    /// Row `i` of `width` values into `out`, as f32.
    pub fn row_into(&self, i: usize, width: usize, out: &mut [f32]) {
        match self {
            TableRows::F32(r) => out.copy_from_slice(&r[i * width..(i + 1) * width]),
            TableRows::F16(r) => {
                for (o, h) in out.iter_mut().zip(&r[i * width..(i + 1) * width]) {
                    *o = crate::kernels::dot::f16_to_f32(*h);
                }
            }
        }
    }
}

/// VQVAE ResBlock: `shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`.
#[derive(Clone, Copy, Debug)]
pub struct ResBlock<'a> {
    /// First GroupNorm (input width).
    pub norm1: Norm<'a>,
    /// First 3×3 conv.
    pub conv1: Conv<'a>,
    /// Second GroupNorm (output width).
    pub norm2: Norm<'a>,
    /// Second 3×3 conv.
    pub conv2: Conv<'a>,
    /// 1×1 shortcut when the width changes.
    pub nin_shortcut: Option<Conv<'a>>,
}

/// VQVAE single-head spatial self-attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnBlock<'a> {
    /// GroupNorm.
    pub norm: Norm<'a>,
    /// Fused 1×1 q,k,v conv (C → 3C).
    pub qkv: Conv<'a>,
    /// 1×1 output projection.
    pub proj_out: Conv<'a>,
}

/// One resolution level of the decoder.
#[derive(Clone, Debug)]
pub struct DecoderLevel<'a> {
    /// ResBlocks.
    pub blocks: Vec<ResBlock<'a>, MAX_RES_BLOCKS>,
    /// Attention after each ResBlock (lowest resolution only), or empty.
    pub attns: Vec<AttnBlock<'a>, MAX_RES_BLOCKS>,
    /// Nearest ×2 then this 3×3 conv, except at level 0.
    pub upsample: Option<Conv<'a>>,
}

/// One resolution level of the encoder.
#[derive(Clone, Debug)]
pub struct EncoderLevel<'a> {
    /// ResBlocks.
    pub blocks: Vec<ResBlock<'a>, MAX_RES_BLOCKS>,
    /// Attention after each ResBlock (lowest resolution only), or empty.
    pub attns: Vec<AttnBlock<'a>, MAX_RES_BLOCKS>,
    /// Pad right/bottom by one, then this stride-2 3×3 conv, except at the last level.
    pub downsample: Option<Conv<'a>>,
}

/// The shared middle section of encoder and decoder.
#[derive(Clone, Copy, Debug)]
pub struct Mid<'a> {
    /// First ResBlock.
    pub block_1: ResBlock<'a>,
    /// Optional attention.
    pub attn_1: Option<AttnBlock<'a>>,
    /// Second ResBlock.
    pub block_2: ResBlock<'a>,
}

/// VQVAE decoder, levels in execution order (deepest first).
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    /// `post_quant_conv` (Cvae → Cvae, 3×3), applied to `f_hat` first.
    pub post_quant_conv: Conv<'a>,
    /// `conv_in` (Cvae → widest).
    pub conv_in: Conv<'a>,
    /// Middle section.
    pub mid: Mid<'a>,
    /// Levels, deepest first.
    pub levels: Vec<DecoderLevel<'a>, MAX_LEVELS>,
    /// Output GroupNorm.
    pub norm_out: Norm<'a>,
    /// Output conv (→ 3 channels).
    pub conv_out: Conv<'a>,
}

/// VQVAE encoder.
#[derive(Clone, Debug)]
pub struct Encoder<'a> {
    /// `conv_in` (3 → ch).
    pub conv_in: Conv<'a>,
    /// Levels, finest first.
    pub levels: Vec<EncoderLevel<'a>, MAX_LEVELS>,
    /// Middle section.
    pub mid: Mid<'a>,
    /// Output GroupNorm.
    pub norm_out: Norm<'a>,
    /// Output conv (→ Cvae).
    pub conv_out: Conv<'a>,
    /// `quant_conv` (Cvae → Cvae, 3×3).
    pub quant_conv: Conv<'a>,
}

/// Multi-scale quantizer: codebook and Phi convolutions.
#[derive(Clone, Debug)]
pub struct Quantizer<'a> {
    /// Codebook `[V, Cvae]`.
    pub embedding: &'a [f32],
    /// Phi convolutions (`quant_resi.qresi_ls.k`).
    pub phi: Vec<Conv<'a>, MAX_PHI>,
}

/// A Linear whose only input is the condition `SiLU(class_emb[label])` (the AdaLN Linears): the
/// Linear itself, or its output for every label, precomputed when the file was packed
/// (`srdd-tools pack --ada-table [f32|f16]`). With few classes the table is smaller than the
/// weight; an f32 table gives the Linear's vectors up to f32 rounding, an f16 one up to f16
/// rounding (the engine widens its rows exactly).
#[derive(Clone, Copy, Debug)]
pub enum ByLabel<'a> {
    /// The Linear (`C → out_dim`).
    Linear(Linear<'a>),
    /// `{name}.table` `[num_classes + 1, out_dim]`: row `label` is the output for that label.
    Table {
        /// The rows, label-major.
        rows: TableRows<'a>,
        /// Floats per row.
        out_dim: usize,
    },
}

impl<'a> ByLabel<'a> {
    /// Multiply-adds of one row (0 for a table).
    pub fn macs(&self) -> u64 {
        match self {
            ByLabel::Linear(l) => (l.in_dim * l.out_dim) as u64,
            ByLabel::Table { .. } => 0,
        }
    }
}

/// Where a block's six AdaLN vectors come from.
#[derive(Clone, Copy, Debug)]
pub enum AdaLn<'a> {
    /// Per-block `ada_lin` (SiLU then Linear C → 6C), or its per-label table.
    Linear(ByLabel<'a>),
    /// Shared AdaLN: per-block offset `ada_gss` `[6, C]` added to `shared_ada_lin`'s output.
    Shared(&'a [f32]),
}

/// One AdaLN self-attention block.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    /// `scale_mul_1H11` (per-head log temperature), with L2-normalised attention.
    pub scale_mul: Option<&'a [f32]>,
    /// q bias `[C]` (the k bias is zero).
    pub q_bias: &'a [f32],
    /// v bias `[C]`.
    pub v_bias: &'a [f32],
    /// `mat_qkv` `[3C, C]`, no bias tensor.
    pub mat_qkv: Linear<'a>,
    /// Output projection.
    pub proj: Linear<'a>,
    /// FFN first layer (C → F).
    pub fc1: Linear<'a>,
    /// FFN second layer (F → C).
    pub fc2: Linear<'a>,
    /// AdaLN source.
    pub ada: AdaLn<'a>,
}

/// The VAR transformer.
#[derive(Clone, Debug)]
pub struct Transformer<'a> {
    /// `pos_start` `[C]`.
    pub pos_start: &'a [f32],
    /// `pos_1LC` `[L, C]`.
    pub pos_1lc: &'a [f32],
    /// `word_embed` (Cvae → C).
    pub word_embed: Linear<'a>,
    /// `class_emb` `[num_classes + 1, C]`.
    pub class_emb: &'a [f32],
    /// `lvl_embed` `[SN, C]`.
    pub lvl_embed: &'a [f32],
    /// `shared_ada_lin` (C → 6C), shared AdaLN only.
    pub shared_ada_lin: Option<ByLabel<'a>>,
    /// Blocks.
    pub blocks: Vec<Block<'a>, MAX_DEPTH>,
    /// `head_nm.ada_lin` (C → 2C).
    pub head_nm: ByLabel<'a>,
    /// `head` (C → V).
    pub head: Linear<'a>,
}

/// All weights of a packed model.
#[derive(Clone, Debug)]
pub struct Weights<'a> {
    /// Transformer.
    pub var: Transformer<'a>,
    /// Codebook and Phi.
    pub quant: Quantizer<'a>,
    /// Decoder.
    pub decoder: Decoder<'a>,
    /// Encoder, when packed.
    pub encoder: Option<Encoder<'a>>,
}

type Prefix = String<96>;

fn prefix(args: fmt::Arguments<'_>) -> Result<Prefix> {
    let mut s = Prefix::new();
    s.write_fmt(args)
        .map_err(|_| Error::BadConfig("tensor name too long"))?;
    Ok(s)
}

fn push<T, const N: usize>(v: &mut Vec<T, N>, x: T) -> Result<()> {
    v.push(x)
        .map_err(|_| Error::BadConfig("more layers than this build supports"))
}

/// A VQVAE level's ResBlocks and their attention blocks (empty where the level has none).
type LevelBlocks<'a> = (
    Vec<ResBlock<'a>, MAX_RES_BLOCKS>,
    Vec<AttnBlock<'a>, MAX_RES_BLOCKS>,
);

struct Walker<'s, S> {
    src: &'s mut S,
}

impl<'a, S: TensorSource<'a>> Walker<'_, S> {
    fn linear(&mut self, p: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear<'a>> {
        let w = self
            .src
            .weight(format_args!("{p}.weight"), &[out_dim, in_dim])?;
        let b = if bias {
            Some(self.src.float(format_args!("{p}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear {
            w,
            b,
            out_dim,
            in_dim,
        })
    }

    /// The AdaLN Linear `{p}.1` (`C → out_dim`, with bias), or the table `{p}.table` that
    /// replaces it.
    fn by_label(
        &mut self,
        p: &str,
        out_dim: usize,
        c: usize,
        labels: usize,
    ) -> Result<ByLabel<'a>> {
        if self.src.next_is(format_args!("{p}.table")) {
            let rows = self
                .src
                .table(format_args!("{p}.table"), &[labels, out_dim])?;
            return Ok(ByLabel::Table { rows, out_dim });
        }
        Ok(ByLabel::Linear(self.linear(
            &prefix(format_args!("{p}.1"))?,
            out_dim,
            c,
            true,
        )?))
    }

    fn conv(&mut self, p: &str, cout: usize, cin: usize, k: usize) -> Result<Conv<'a>> {
        let w = self
            .src
            .weight(format_args!("{p}.weight"), &[cout, cin, k, k])?;
        let b = self.src.float(format_args!("{p}.bias"), &[cout])?;
        Ok(Conv { w, b, cout, cin, k })
    }

    fn norm(&mut self, p: &str, c: usize) -> Result<Norm<'a>> {
        Ok(Norm {
            w: self.src.float(format_args!("{p}.weight"), &[c])?,
            b: self.src.float(format_args!("{p}.bias"), &[c])?,
        })
    }

    fn res_block(&mut self, p: &str, cin: usize, cout: usize) -> Result<ResBlock<'a>> {
        Ok(ResBlock {
            norm1: self.norm(&prefix(format_args!("{p}.norm1"))?, cin)?,
            conv1: self.conv(&prefix(format_args!("{p}.conv1"))?, cout, cin, 3)?,
            norm2: self.norm(&prefix(format_args!("{p}.norm2"))?, cout)?,
            conv2: self.conv(&prefix(format_args!("{p}.conv2"))?, cout, cout, 3)?,
            nin_shortcut: if cin != cout {
                Some(self.conv(&prefix(format_args!("{p}.nin_shortcut"))?, cout, cin, 1)?)
            } else {
                None
            },
        })
    }

    fn attn_block(&mut self, p: &str, c: usize) -> Result<AttnBlock<'a>> {
        Ok(AttnBlock {
            norm: self.norm(&prefix(format_args!("{p}.norm"))?, c)?,
            qkv: self.conv(&prefix(format_args!("{p}.qkv"))?, 3 * c, c, 1)?,
            proj_out: self.conv(&prefix(format_args!("{p}.proj_out"))?, c, c, 1)?,
        })
    }

    /// One VQVAE level's ResBlocks `{p}.block.{j}`, each followed by attention `{p}.attn.{j}`
    /// when `attn`. The first block maps `*block_in` channels to `block_out`, and `*block_in`
    /// becomes `block_out` (the width the next level starts from).
    fn level_blocks(
        &mut self,
        p: &str,
        n: usize,
        block_in: &mut usize,
        block_out: usize,
        attn: bool,
    ) -> Result<LevelBlocks<'a>> {
        let mut blocks = Vec::new();
        let mut attns = Vec::new();
        for j in 0..n {
            let b = self.res_block(
                &prefix(format_args!("{p}.block.{j}"))?,
                *block_in,
                block_out,
            )?;
            push(&mut blocks, b)?;
            *block_in = block_out;
            if attn {
                let a = self.attn_block(&prefix(format_args!("{p}.attn.{j}"))?, block_out)?;
                push(&mut attns, a)?;
            }
        }
        Ok((blocks, attns))
    }

    /// A level's width-keeping 3×3 resampling conv, `{p}.{which}.conv` (`upsample`/`downsample`).
    fn resample_conv(&mut self, p: &str, which: &str, c: usize) -> Result<Conv<'a>> {
        self.conv(&prefix(format_args!("{p}.{which}.conv"))?, c, c, 3)
    }

    fn mid(&mut self, p: &str, c: usize, attn: bool) -> Result<Mid<'a>> {
        Ok(Mid {
            block_1: self.res_block(&prefix(format_args!("{p}.mid.block_1"))?, c, c)?,
            attn_1: if attn {
                Some(self.attn_block(&prefix(format_args!("{p}.mid.attn_1"))?, c)?)
            } else {
                None
            },
            block_2: self.res_block(&prefix(format_args!("{p}.mid.block_2"))?, c, c)?,
        })
    }
}

impl<'a> Weights<'a> {
    /// Walks every tensor of `cfg` in canonical order, taking each from `src`.
    pub fn build<S: TensorSource<'a>>(cfg: &ModelConfig, src: &mut S) -> Result<Self> {
        let mut w = Walker { src };
        let v = &cfg.var;
        let c = v.embed_dim as usize;
        let cv = cfg.vae.cvae as usize;
        let f = v.ffn_hidden as usize;
        let h = v.num_heads as usize;
        let sn = cfg.num_scales();

        // Transformer.
        let pos_start = w.src.float(format_args!("pos_start"), &[1, 1, c])?;
        let pos_1lc = w
            .src
            .float(format_args!("pos_1LC"), &[1, v.seq_len as usize, c])?;
        let word_embed = w.linear("word_embed", c, cv, true)?;
        let class_emb = w.src.float(
            format_args!("class_emb.weight"),
            &[v.num_classes as usize + 1, c],
        )?;
        let lvl_embed = w.src.float(format_args!("lvl_embed.weight"), &[sn, c])?;
        let labels = v.num_classes as usize + 1;
        let shared_ada_lin = if v.shared_aln {
            Some(w.by_label("shared_ada_lin", 6 * c, c, labels)?)
        } else {
            None
        };
        let mut blocks = Vec::new();
        for i in 0..v.depth as usize {
            let ada_gss = if v.shared_aln {
                Some(
                    w.src
                        .float(format_args!("blocks.{i}.ada_gss"), &[1, 1, 6, c])?,
                )
            } else {
                None
            };
            let scale_mul = if v.attn_l2_norm {
                Some(w.src.float(
                    format_args!("blocks.{i}.attn.scale_mul_1H11"),
                    &[1, h, 1, 1],
                )?)
            } else {
                None
            };
            let q_bias = w.src.float(format_args!("blocks.{i}.attn.q_bias"), &[c])?;
            let v_bias = w.src.float(format_args!("blocks.{i}.attn.v_bias"), &[c])?;
            let mat_qkv = w.linear(
                &prefix(format_args!("blocks.{i}.attn.mat_qkv"))?,
                3 * c,
                c,
                false,
            )?;
            let proj = w.linear(&prefix(format_args!("blocks.{i}.attn.proj"))?, c, c, true)?;
            let fc1 = w.linear(&prefix(format_args!("blocks.{i}.ffn.fc1"))?, f, c, true)?;
            let fc2 = w.linear(&prefix(format_args!("blocks.{i}.ffn.fc2"))?, c, f, true)?;
            let ada = match ada_gss {
                Some(g) => AdaLn::Shared(g),
                None => AdaLn::Linear(w.by_label(
                    &prefix(format_args!("blocks.{i}.ada_lin"))?,
                    6 * c,
                    c,
                    labels,
                )?),
            };
            push(
                &mut blocks,
                Block {
                    scale_mul,
                    q_bias,
                    v_bias,
                    mat_qkv,
                    proj,
                    fc1,
                    fc2,
                    ada,
                },
            )?;
        }
        let head_nm = w.by_label("head_nm.ada_lin", 2 * c, c, labels)?;
        let head = w.linear("head", cfg.vae.vocab_size as usize, c, true)?;
        let var = Transformer {
            pos_start,
            pos_1lc,
            word_embed,
            class_emb,
            lvl_embed,
            shared_ada_lin,
            blocks,
            head_nm,
            head,
        };

        // Quantizer.
        let embedding = w.src.float(
            format_args!("quantize.embedding.weight"),
            &[cfg.vae.vocab_size as usize, cv],
        )?;
        let mut phi = Vec::new();
        for k in 0..cfg.vae.num_phi as usize {
            let conv = w.conv(
                &prefix(format_args!("quantize.quant_resi.qresi_ls.{k}"))?,
                cv,
                cv,
                3,
            )?;
            // f_hat and everything feeding it stays float (docs/SPEC.md §14).
            if !matches!(conv.w, Weight::F32(_)) {
                return Err(Error::BadConfig("Phi convolutions must be stored as f32"));
            }
            push(&mut phi, conv)?;
        }
        let quant = Quantizer { embedding, phi };

        // Decoder, deepest level first (the order it runs in).
        let nl = cfg.num_levels();
        let deepest = cfg.level_channels(nl - 1);
        let post_quant_conv = w.conv("post_quant_conv", cv, cv, 3)?;
        let conv_in = w.conv("decoder.conv_in", deepest, cv, 3)?;
        let mid = w.mid("decoder", deepest, cfg.vae.using_mid_sa)?;
        let mut levels = Vec::new();
        let mut block_in = deepest;
        for lvl in (0..nl).rev() {
            let block_out = cfg.level_channels(lvl);
            let p = prefix(format_args!("decoder.up.{lvl}"))?;
            let (blocks, attns) = w.level_blocks(
                &p,
                cfg.vae.num_res_blocks as usize + 1,
                &mut block_in,
                block_out,
                lvl == nl - 1 && cfg.vae.using_sa,
            )?;
            let upsample = if lvl != 0 {
                Some(w.resample_conv(&p, "upsample", block_in)?)
            } else {
                None
            };
            let level = DecoderLevel {
                blocks,
                attns,
                upsample,
            };
            push(&mut levels, level)?;
        }
        let ch0 = cfg.level_channels(0);
        let norm_out = w.norm("decoder.norm_out", ch0)?;
        let conv_out = w.conv("decoder.conv_out", 3, ch0, 3)?;
        let decoder = Decoder {
            post_quant_conv,
            conv_in,
            mid,
            levels,
            norm_out,
            conv_out,
        };

        // Encoder (optional), finest level first.
        let encoder = if cfg.vae.has_encoder {
            let quant_conv = w.conv("quant_conv", cv, cv, 3)?;
            let ch = cfg.vae.ch as usize;
            let conv_in = w.conv("encoder.conv_in", ch, 3, 3)?;
            let mut levels = Vec::new();
            let mut block_in = ch;
            for lvl in 0..nl {
                let block_out = cfg.level_channels(lvl);
                let p = prefix(format_args!("encoder.down.{lvl}"))?;
                let (blocks, attns) = w.level_blocks(
                    &p,
                    cfg.vae.num_res_blocks as usize,
                    &mut block_in,
                    block_out,
                    lvl == nl - 1 && cfg.vae.using_sa,
                )?;
                let downsample = if lvl != nl - 1 {
                    Some(w.resample_conv(&p, "downsample", block_in)?)
                } else {
                    None
                };
                let level = EncoderLevel {
                    blocks,
                    attns,
                    downsample,
                };
                push(&mut levels, level)?;
            }
            let mid = w.mid("encoder", deepest, cfg.vae.using_mid_sa)?;
            let norm_out = w.norm("encoder.norm_out", deepest)?;
            let conv_out = w.conv("encoder.conv_out", cv, deepest, 3)?;
            Some(Encoder {
                conv_in,
                levels,
                mid,
                norm_out,
                conv_out,
                quant_conv,
            })
        } else {
            None
        };

        Ok(Weights {
            var,
            quant,
            decoder,
            encoder,
        })
    }
}

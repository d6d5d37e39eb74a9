//! Hyper-parameters of a packed model, stored explicitly in the `.srdd` header.
//!
//! Nothing here is inferred at load time: the converter infers it once from the checkpoint's key
//! names and shapes, writes it down, and the loader checks every tensor against it.
//! Vocabulary follows the official VAR code (`patch_nums`, `Cvae`, `ch_mult`, `phi_index`).

use crate::error::{Error, Result};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Most scales a schedule may have.
pub const MAX_SCALES: usize = 32;
/// Most transformer blocks.
pub const MAX_DEPTH: usize = 64;
/// Most VQVAE resolution levels (`ch_mult` entries).
pub const MAX_LEVELS: usize = 8;
/// Most ResBlocks per decoder level (`num_res_blocks + 1`).
pub const MAX_RES_BLOCKS: usize = 6;
/// Most Phi convolutions.
pub const MAX_PHI: usize = MAX_SCALES;

/// Which earlier tokens a scale's queries may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Attention {
    /// SRDD / Markovian VAR: block-diagonal mask, each scale attends only to itself; no KV cache.
    Markov,
    /// Official VAR: block-causal mask, keys and values of all earlier scales kept in the arena.
    Causal,
}

/// Storage type of the Linear and Conv weights of a packed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WeightFormat {
    /// IEEE f32.
    F32,
    /// IEEE f16 (`half`).
    F16,
    /// int8, symmetric, one f32 scale per output channel.
    Int8,
}

/// VAR transformer hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VarConfig {
    /// Number of AdaLN self-attention blocks.
    pub depth: u32,
    /// Width `C` (= condition dimension).
    pub embed_dim: u32,
    /// Attention heads.
    pub num_heads: u32,
    /// FFN hidden width (`round(4C)` in the releases).
    pub ffn_hidden: u32,
    /// Real classes; `class_emb` has `num_classes + 1` rows, the last is the null class.
    pub num_classes: u32,
    /// Shared AdaLN (d36): `shared_ada_lin` plus per-block `ada_gss`.
    pub shared_aln: bool,
    /// L2-normalised attention with the learned per-head scale (`scale_mul_1H11`).
    pub attn_l2_norm: bool,
    /// LayerNorm epsilon.
    pub norm_eps: f32,
    /// Total tokens `L` of the training schedule (rows of `pos_1LC`).
    pub seq_len: u32,
}

/// VQVAE and multi-scale quantizer hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Codebook size `V`.
    pub vocab_size: u32,
    /// Codebook dimension `Cvae` (`z_channels`).
    pub cvae: u32,
    /// Base width `ch`.
    pub ch: u32,
    /// Width multiplier per resolution level.
    pub ch_mult: Vec<u32, MAX_LEVELS>,
    /// ResBlocks per encoder level (decoder levels have one more).
    pub num_res_blocks: u32,
    /// Self-attention blocks at the lowest resolution level.
    pub using_sa: bool,
    /// Self-attention block in the middle section.
    pub using_mid_sa: bool,
    /// Number of Phi convolutions (0: Phi is the identity).
    pub num_phi: u32,
    /// Phi residual ratio (0.5 in the releases): `Phi(h) = (1-r) h + r conv(h)`.
    pub quant_resi: f32,
    /// GroupNorm groups.
    pub gn_groups: u32,
    /// GroupNorm epsilon.
    pub gn_eps: f32,
    /// The encoder (and `quant_conv`) is packed, for reconstruction and editing.
    pub has_encoder: bool,
}

/// Everything the engine needs to know about a packed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Transformer.
    pub var: VarConfig,
    /// Tokenizer.
    pub vae: VaeConfig,
    /// Side length of each scale of the training schedule, coarse to fine.
    pub patch_nums: Vec<u16, MAX_SCALES>,
    /// Level of each scale of `patch_nums`: its `lvl_embed` row (and, through `patch_nums`, its
    /// `pos_1LC` slice). The identity for official models; stored so that nothing is implied.
    pub level_index: Vec<u8, MAX_SCALES>,
    /// Phi convolution used by each scale of `patch_nums` (official tick rule, stored as data).
    pub phi_index: Vec<u8, MAX_SCALES>,
    /// Default attention policy of the file.
    pub attention: Attention,
    /// Storage type of Linear/Conv weights.
    pub weights: WeightFormat,
}

impl ModelConfig {
    /// Number of scales of the training schedule.
    pub fn num_scales(&self) -> usize {
        self.patch_nums.len()
    }
    /// Latent side `P` (last patch size).
    pub fn latent_side(&self) -> usize {
        self.patch_nums.last().copied().unwrap_or(0) as usize
    }
    /// Number of VQVAE resolution levels.
    pub fn num_levels(&self) -> usize {
        self.vae.ch_mult.len()
    }
    /// Image side in pixels: `P · 2^(levels−1)`.
    pub fn image_side(&self) -> usize {
        self.latent_side() << (self.num_levels().saturating_sub(1))
    }
    /// First token index of scale `si` in the training schedule.
    pub fn scale_begin(&self, si: usize) -> usize {
        self.patch_nums[..si]
            .iter()
            .map(|&p| p as usize * p as usize)
            .sum()
    }
    /// Width of decoder/encoder level `i`.
    pub fn level_channels(&self, i: usize) -> usize {
        (self.vae.ch * self.vae.ch_mult[i]) as usize
    }

    /// Checks every hyper-parameter for range and mutual consistency.
    pub fn validate(&self) -> Result<()> {
        let v = &self.var;
        let q = &self.vae;
        let max_phi = q.num_phi.max(1) as u8;
        // Each row: a condition that makes the config invalid, and the error it gives. Rows are
        // checked in order and stop at the first hit, so a row may rely on the ones above it
        // (`level_channels` needs a non-empty `ch_mult`, `gn_groups` must not be zero).
        macro_rules! reject {
            ($($invalid:expr => $what:literal,)*) => {
                $(if $invalid {
                    return Err(Error::BadConfig($what));
                })*
            };
        }
        reject! {
            v.depth == 0 || v.depth as usize > MAX_DEPTH => "depth out of range",
            v.embed_dim == 0 || v.embed_dim > 1 << 16 => "embed_dim out of range",
            v.num_heads == 0 || !v.embed_dim.is_multiple_of(v.num_heads)
                => "num_heads must divide embed_dim",
            v.ffn_hidden == 0 || v.ffn_hidden > 1 << 18 => "ffn_hidden out of range",
            v.num_classes == 0 || v.num_classes > 1 << 20 => "num_classes out of range",
            !(v.norm_eps > 0.0 && v.norm_eps < 1.0) => "norm_eps out of range",
            q.vocab_size < 2 || q.vocab_size > 1 << 20 => "vocab_size out of range",
            q.cvae == 0 || q.cvae > 4096 => "cvae out of range",
            q.ch == 0 || q.ch > 1 << 14 => "ch out of range",
            q.ch_mult.is_empty() => "ch_mult is empty",
            q.ch_mult.iter().any(|&m| m == 0 || m > 64) => "ch_mult entry out of range",
            q.num_res_blocks == 0 || q.num_res_blocks as usize + 1 > MAX_RES_BLOCKS
                => "num_res_blocks out of range",
            q.gn_groups == 0 => "gn_groups is zero",
            (0..q.ch_mult.len())
                .any(|i| !self.level_channels(i).is_multiple_of(q.gn_groups as usize))
                => "GroupNorm groups must divide every level width",
            !(q.gn_eps > 0.0 && q.gn_eps < 1.0) => "gn_eps out of range",
            q.num_phi as usize > MAX_PHI => "too many Phi convolutions",
            !q.quant_resi.is_finite() => "quant_resi is not finite",
            self.patch_nums.is_empty() => "patch_nums is empty",
            self.patch_nums.iter().any(|&p| p == 0 || p > 256) => "patch size out of range",
            self.patch_nums.windows(2).any(|w| w[0] >= w[1]) => "patch_nums must increase",
            self.scale_begin(self.num_scales()) != v.seq_len as usize
                => "sum of patch_nums squared differs from the position table length",
            self.phi_index.len() != self.patch_nums.len()
                => "phi_index length differs from patch_nums",
            // `lvl_embed` has one row per scale of the training schedule, in order.
            self.level_index.len() != self.patch_nums.len()
                || self.level_index.iter().enumerate().any(|(k, &l)| l as usize != k)
                => "level_index must list the scales of patch_nums in order",
            self.phi_index.iter().any(|&k| k >= max_phi) => "phi_index entry out of range",
        }
        Ok(())
    }
}

/// The official Phi selection: `argmin_k |tick_k − si/(SN−1)|` with evenly spaced ticks
/// (`1/(3K) … 1−1/(3K)` for K = 4, `1/(2K) … 1−1/(2K)` otherwise), computed in f64 exactly as
/// `numpy.linspace` does, first index on ties. Two entries of the 10-scale table are exact ties
/// that only this f64 arithmetic resolves, which is why the table is stored in the file.
pub fn official_phi_index(num_phi: usize, num_steps: usize, step: usize) -> usize {
    if num_phi <= 1 {
        return 0;
    }
    let k = num_phi as f64;
    let (start, stop) = if num_phi == 4 {
        (1.0 / 3.0 / k, 1.0 - 1.0 / 3.0 / k)
    } else {
        (1.0 / 2.0 / k, 1.0 - 1.0 / 2.0 / k)
    };
    let x = if num_steps <= 1 {
        0.0
    } else {
        step as f64 / (num_steps - 1) as f64
    };
    let step_len = (stop - start) / (k - 1.0);
    let mut best = 0usize;
    let mut best_d = f64::INFINITY;
    for i in 0..num_phi {
        let tick = if i == num_phi - 1 {
            stop
        } else {
            i as f64 * step_len + start
        };
        let d = libm::fabs(tick - x);
        if d < best_d {
            best_d = d;
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_tables_match_the_official_ones() {
        let t10: [usize; 10] = core::array::from_fn(|si| official_phi_index(4, 10, si));
        assert_eq!(t10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
        let t6: [usize; 6] = core::array::from_fn(|si| official_phi_index(4, 6, si));
        assert_eq!(t6, [0, 0, 1, 2, 3, 3]);
        let t9: [usize; 9] = core::array::from_fn(|si| official_phi_index(4, 9, si));
        assert_eq!(t9, [0, 0, 1, 1, 2, 2, 2, 3, 3]);
        let t3: [usize; 3] = core::array::from_fn(|si| official_phi_index(4, 3, si));
        assert_eq!(t3, [0, 2, 3]);
        let t5: [usize; 5] = core::array::from_fn(|si| official_phi_index(4, 5, si));
        assert_eq!(t5, [0, 1, 2, 2, 3]);
    }
}

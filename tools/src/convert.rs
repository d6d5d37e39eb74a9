//! Official checkpoints → `.srdd`: infer the architecture from key names and shapes, map the
//! official names to the canonical tensor order of [`srdd_core::Weights::build`], quantize, and
//! write the file (layout in [`srdd_core::format`]).

use crate::checkpoint::StateDict;
use srdd_core::config::{
    official_phi_index, Attention, ModelConfig, VaeConfig, VarConfig, WeightFormat, MAX_SCALES,
};
use srdd_core::format::{
    align_up, file_checksum, Header, TensorDType, TensorEntry, WeightLayout, FORMAT_VERSION, MAGIC,
    PREFIX_LEN, TENSOR_ALIGN,
};
use srdd_core::kernels::{pack_official, panels_len};
use srdd_core::weights::{TensorSource, Weight};
use srdd_core::{Model, Weights};
use std::collections::BTreeSet;
use std::fmt;

/// The official 256 px schedule.
pub const OFFICIAL_PATCH_NUMS: [u16; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];

/// Converter errors: each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Keys the architecture needs are absent.
    #[error("missing checkpoint keys ({}): {}", .0.len(), .0.join(", "))]
    MissingKeys(Vec<String>),
    /// Keys nobody knows.
    #[error("unexpected checkpoint keys ({}): {}", .0.len(), .0.join(", "))]
    UnexpectedKeys(Vec<String>),
    /// A key has a shape other than the inferred architecture needs.
    #[error("key {key}: shape {found:?}, expected {expected:?}")]
    Shape {
        /// Key.
        key: String,
        /// Shape found.
        found: Vec<usize>,
        /// Shape needed.
        expected: Vec<usize>,
    },
    /// The architecture cannot be inferred.
    #[error("cannot infer the architecture: {0}")]
    Infer(String),
    /// A value that must be a particular constant is not.
    #[error("key {0}: {1}")]
    Value(String, String),
    /// `--var` holds a VQVAE state dict and `--vae` a VAR one.
    #[error("--var looks like a VQVAE checkpoint and --vae like a VAR one; swap them")]
    Swapped,
    /// A metadata value the engine reads does not parse or contradicts the model.
    #[error("metadata {key}={value}: {what}")]
    Metadata {
        /// Key.
        key: String,
        /// Value given.
        value: String,
        /// What is wrong, with the accepted range.
        what: String,
    },
    /// The core rejected the inferred configuration.
    #[error("{0}")]
    Core(#[from] srdd_core::Error),
    /// A checkpoint could not be read.
    #[error("{0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// Options of `srdd-tools pack`.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Storage type of Linear/Conv weights.
    pub weights: WeightFormat,
    /// Scale schedule; `None` = the official one (must match `pos_1LC` and `lvl_embed`).
    pub patch_nums: Option<Vec<u16>>,
    /// Default attention policy written to the file.
    pub attention: Attention,
    /// Pack the encoder too (reconstruction, editing).
    pub encoder: bool,
    /// Phi residual ratio (not in the state dict; 0.5 in every release).
    pub quant_resi: f32,
    /// GroupNorm groups (not in the state dict; 32 in every release).
    pub gn_groups: u32,
    /// Free-form metadata lines (`key=value`), e.g. `class_names=a,b,c`.
    pub metadata: Vec<(String, String)>,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            weights: WeightFormat::F32,
            patch_nums: None,
            attention: Attention::Markov,
            encoder: true,
            quant_resi: 0.5,
            gn_groups: 32,
            metadata: Vec::new(),
        }
    }
}

fn shape_of(sd: &StateDict, key: &str) -> Option<Vec<usize>> {
    sd.get(key).map(|t| t.shape.clone())
}

fn need(sd: &StateDict, key: &str) -> Result<Vec<usize>, ConvertError> {
    shape_of(sd, key).ok_or_else(|| ConvertError::MissingKeys(vec![key.to_string()]))
}

fn count_indexed(sd: &StateDict, prefix: &str) -> usize {
    let mut max = 0;
    for k in sd.keys() {
        if let Some(rest) = k.strip_prefix(prefix) {
            if let Some(num) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                max = max.max(num + 1);
            }
        }
    }
    max
}

/// How the checkpoint names its Phi convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PhiNaming {
    /// `quantize.quant_resi.qresi_ls.{k}` (partially shared, the release).
    PartiallyShared,
    /// `quantize.quant_resi.qresi` (one shared conv).
    Shared,
    /// `quantize.quant_resi.{k}` (one per scale).
    NonShared,
    /// No Phi convolutions (quant_resi = 0).
    None,
}

fn phi_naming(vae: &StateDict) -> (PhiNaming, usize) {
    let n = count_indexed(vae, "quantize.quant_resi.qresi_ls.");
    if n > 0 {
        return (PhiNaming::PartiallyShared, n);
    }
    if vae.get("quantize.quant_resi.qresi.weight").is_some() {
        return (PhiNaming::Shared, 1);
    }
    let n = count_indexed(vae, "quantize.quant_resi.");
    if n > 0 {
        return (PhiNaming::NonShared, n);
    }
    (PhiNaming::None, 0)
}

fn looks_like_var(sd: &StateDict) -> bool {
    sd.keys()
        .any(|k| k == "word_embed.weight" || k == "class_emb.weight" || k.starts_with("blocks."))
}

fn looks_like_vae(sd: &StateDict) -> bool {
    sd.keys().any(is_vae_key)
}

/// The metadata text of the file: one `key=value` line each, after the converter's own line.
/// Keys the engine parses must agree with `cfg` ([`Model::check_metadata`]), so a bad value is
/// refused here rather than when the file is loaded.
fn metadata_text(cfg: &ModelConfig, metadata: &[(String, String)]) -> Result<String, ConvertError> {
    let mut meta = format!("converter=srdd-tools {}\n", env!("CARGO_PKG_VERSION"));
    for (i, (k, v)) in metadata.iter().enumerate() {
        if k.contains('=') || k.contains('\n') || v.contains('\n') {
            return Err(ConvertError::Value(
                k.clone(),
                "metadata keys/values must be single-line, keys without '='".into(),
            ));
        }
        if k == "converter" {
            return Err(ConvertError::Value(
                k.clone(),
                "the converter writes this metadata key itself".into(),
            ));
        }
        if metadata[..i].iter().any(|(other, _)| other == k) {
            return Err(ConvertError::Value(
                k.clone(),
                "the metadata key is given twice".into(),
            ));
        }
        meta.push_str(&format!("{k}={v}\n"));
    }
    if let Err(e) = Model::check_metadata(&meta, cfg) {
        let srdd_core::Error::BadMetadata { key, what } = e else {
            return Err(e.into());
        };
        let value = metadata
            .iter()
            .find(|(k, _)| k == key)
            .map_or(String::new(), |(_, v)| v.clone());
        let what = match key {
            "class_names" if value.split(',').count() != cfg.var.num_classes as usize => {
                format!(
                    "{what} ({} given; the model has {} classes)",
                    value.split(',').count(),
                    cfg.var.num_classes
                )
            }
            "default_top_k" => format!("{what} (vocab_size = {})", cfg.vae.vocab_size),
            _ => what.to_string(),
        };
        return Err(ConvertError::Metadata {
            key: key.to_string(),
            value,
            what,
        });
    }
    Ok(meta)
}

/// Infers every hyper-parameter from key names and shapes.
pub fn infer_config(
    var: &StateDict,
    vae: &StateDict,
    opts: &PackOptions,
) -> Result<ModelConfig, ConvertError> {
    let infer = |s: &str| ConvertError::Infer(s.to_string());
    // Checked first: otherwise the first complaint is a missing `word_embed.weight`, which does
    // not say what went wrong.
    if !looks_like_var(var) && looks_like_var(vae) && looks_like_vae(var) {
        return Err(ConvertError::Swapped);
    }
    let we = need(var, "word_embed.weight")?;
    let (c, cvae) = (we[0], we[1]);
    let depth = count_indexed(var, "blocks.");
    if depth == 0 {
        return Err(infer("no `blocks.N.` keys in the VAR checkpoint"));
    }
    // L2-normalised attention if any block has the learned scale; the others must have it too
    // (a missing one is then reported by name).
    let scale_key = (0..depth)
        .map(|i| format!("blocks.{i}.attn.scale_mul_1H11"))
        .find(|k| var.get(k).is_some());
    let attn_l2_norm = scale_key.is_some();
    let heads = match &scale_key {
        Some(k) => *need(var, k)?
            .get(1)
            .ok_or_else(|| infer("scale_mul_1H11 must be (1, H, 1, 1)"))?,
        None => (c / 64).max(1),
    };
    let ffn = need(var, "blocks.0.ffn.fc1.weight")?[0];
    let classes = need(var, "class_emb.weight")?[0];
    if classes < 2 {
        return Err(infer(
            "class_emb needs at least one class plus the null class",
        ));
    }
    let pos = need(var, "pos_1LC")?;
    let seq_len = *pos
        .get(1)
        .ok_or_else(|| infer("pos_1LC must be (1, L, C)"))?;
    let sn = need(var, "lvl_embed.weight")?[0];
    let vocab = need(var, "head.weight")?[0];
    let cb = need(vae, "quantize.embedding.weight")?;
    if cb[0] != vocab || cb[1] != cvae {
        return Err(infer(&format!(
            "codebook {:?} does not match the VAR head ({vocab}) and word_embed ({cvae})",
            cb
        )));
    }
    let levels = count_indexed(vae, "decoder.up.");
    if levels == 0 {
        return Err(infer("no `decoder.up.N.` keys in the VQVAE checkpoint"));
    }
    let mut widths = Vec::new();
    for l in 0..levels {
        widths.push(need(vae, &format!("decoder.up.{l}.block.0.conv1.weight"))?[0]);
    }
    let ch = widths[0];
    let mut ch_mult = heapless::Vec::new();
    for w in &widths {
        if w % ch != 0 {
            return Err(infer(
                "decoder level widths are not multiples of the level-0 width",
            ));
        }
        ch_mult
            .push((w / ch) as u32)
            .map_err(|_| infer("too many VQVAE levels"))?;
    }
    let dec_blocks = count_indexed(vae, "decoder.up.0.block.");
    if dec_blocks < 2 {
        return Err(infer("decoder levels need at least two ResBlocks"));
    }
    let using_sa = vae
        .get(&format!("decoder.up.{}.attn.0.norm.weight", levels - 1))
        .is_some();
    let using_mid_sa = vae.get("decoder.mid.attn_1.norm.weight").is_some();
    let (_, num_phi) = phi_naming(vae);
    // Any encoder key means the encoder is meant to be there (missing pieces are then reported).
    let has_encoder = opts.encoder
        && vae
            .keys()
            .any(|k| k.starts_with("encoder.") || k.starts_with("quant_conv."));

    let patch_nums: Vec<u16> = match &opts.patch_nums {
        Some(p) => p.clone(),
        // The checkpoint's `lvl_1L` buffer (the scale of every token) gives the patch sizes;
        // without it, the official schedule.
        None => patch_nums_from_levels(var)?.unwrap_or_else(|| OFFICIAL_PATCH_NUMS.to_vec()),
    };
    let total: usize = patch_nums.iter().map(|&p| p as usize * p as usize).sum();
    if total != seq_len || patch_nums.len() != sn {
        let given = if opts.patch_nums.is_some() {
            "--schedule"
        } else {
            "the official schedule"
        };
        return Err(infer(&format!(
            "{given} {patch_nums:?} gives {} scales and {total} tokens, but the checkpoint has {sn} level embeddings and {seq_len} positions (and no lvl_1L buffer to read them from); pass --schedule with {sn} patch sizes whose squares sum to {seq_len}, e.g. --schedule 1,2,3,4",
            patch_nums.len()
        )));
    }
    if patch_nums.len() > MAX_SCALES {
        return Err(infer("too many scales"));
    }
    let phi_index: heapless::Vec<u8, MAX_SCALES> = (0..sn)
        .map(|si| official_phi_index(num_phi, sn, si) as u8)
        .collect();
    let cfg = ModelConfig {
        var: VarConfig {
            depth: depth as u32,
            embed_dim: c as u32,
            num_heads: heads as u32,
            ffn_hidden: ffn as u32,
            num_classes: (classes - 1) as u32,
            shared_aln: var.get("shared_ada_lin.1.weight").is_some(),
            attn_l2_norm,
            norm_eps: 1e-6,
            seq_len: seq_len as u32,
        },
        vae: VaeConfig {
            vocab_size: vocab as u32,
            cvae: cvae as u32,
            ch: ch as u32,
            ch_mult,
            num_res_blocks: (dec_blocks - 1) as u32,
            using_sa,
            using_mid_sa,
            num_phi: num_phi as u32,
            quant_resi: if num_phi == 0 { 0.0 } else { opts.quant_resi },
            gn_groups: opts.gn_groups,
            gn_eps: 1e-6,
            has_encoder,
        },
        patch_nums: heapless::Vec::from_slice(&patch_nums).map_err(|_| infer("too many scales"))?,
        level_index: (0..sn).map(|si| si as u8).collect(),
        phi_index,
        attention: opts.attention,
        weights: opts.weights,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// One tensor of the canonical walk.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// Canonical name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// A Linear/Conv weight (quantizable) rather than a float tensor.
    pub is_weight: bool,
}

struct Recorder(Vec<CatalogEntry>);

impl TensorSource<'static> for Recorder {
    fn float(
        &mut self,
        name: fmt::Arguments<'_>,
        shape: &[usize],
    ) -> srdd_core::Result<&'static [f32]> {
        self.0.push(CatalogEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            is_weight: false,
        });
        Ok(&[])
    }
    fn weight(
        &mut self,
        name: fmt::Arguments<'_>,
        shape: &[usize],
    ) -> srdd_core::Result<Weight<'static>> {
        self.0.push(CatalogEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            is_weight: true,
        });
        Ok(Weight::F32(&[]))
    }
}

/// Every tensor a model with `cfg` has, in file order.
pub fn catalog(cfg: &ModelConfig) -> Result<Vec<CatalogEntry>, ConvertError> {
    let mut r = Recorder(Vec::new());
    Weights::build(cfg, &mut r)?;
    Ok(r.0)
}

fn is_vae_key(name: &str) -> bool {
    [
        "encoder.",
        "decoder.",
        "quantize.",
        "quant_conv.",
        "post_quant_conv.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Official key holding canonical tensor `name`.
fn official_key(name: &str, naming: PhiNaming) -> String {
    if let Some(rest) = name.strip_prefix("quantize.quant_resi.qresi_ls.") {
        return match naming {
            PhiNaming::Shared => format!(
                "quantize.quant_resi.qresi.{}",
                rest.split_once('.').map_or("", |x| x.1)
            ),
            PhiNaming::NonShared => format!("quantize.quant_resi.{rest}"),
            _ => name.to_string(),
        };
    }
    name.to_string()
}

/// Buffers the engine recomputes; dropped after a sanity check.
fn droppable(key: &str) -> bool {
    key == "lvl_1L"
        || key == "attn_bias_for_masking"
        || key == "quantize.ema_vocab_hit_SV"
        || (key.starts_with("blocks.") && key.ends_with(".attn.zero_k_bias"))
}

/// A converted tensor, ready to write.
struct Packed {
    name: String,
    shape: Vec<usize>,
    dtype: TensorDType,
    data: Vec<u8>,
    scales: Option<Vec<u8>>,
}

/// Symmetric per-output-channel int8 quantization: `scale = max|row| / 127`.
pub fn quantize_rows(values: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = values.len() / rows.max(1);
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = amax / 127.0;
        scales.push(s);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        q.extend(
            row.iter()
                .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// The patch sizes the `lvl_1L` buffer of a VAR checkpoint implies (token `i` belongs to scale
/// `lvl_1L[0][i]`; scale `k` has `pn_k²` tokens, scales in order), or `None` without the buffer.
fn patch_nums_from_levels(var: &StateDict) -> Result<Option<Vec<u16>>, ConvertError> {
    let Some(t) = var.get("lvl_1L") else {
        return Ok(None);
    };
    let bad = |what: &str| ConvertError::Value("lvl_1L".into(), what.into());
    let levels = t.to_i64()?;
    let mut counts: Vec<usize> = Vec::new();
    for v in levels {
        let l = v.max(0) as usize;
        if v < 0 || l > counts.len() || (l + 1 < counts.len()) {
            return Err(bad("scale indices must run 0, 0, …, 1, 1, … in order"));
        }
        if l == counts.len() {
            counts.push(0);
        }
        counts[l] += 1;
    }
    counts
        .iter()
        .map(|&n| {
            let p = (n as f64).sqrt().round() as usize;
            (p * p == n && p <= u16::MAX as usize)
                .then_some(p as u16)
                .ok_or_else(|| bad("every scale must have a square number of tokens"))
        })
        .collect::<Result<Vec<u16>, _>>()
        .map(Some)
}

/// Converts two official state dicts into `.srdd` bytes.
pub fn pack(var: &StateDict, vae: &StateDict, opts: &PackOptions) -> Result<Vec<u8>, ConvertError> {
    let cfg = infer_config(var, vae, opts)?;
    let meta = metadata_text(&cfg, &opts.metadata)?;
    let (naming, _) = phi_naming(vae);
    let cat = catalog(&cfg)?;

    // Key accounting: everything must be used, dropped on purpose, or reported.
    let mut used: BTreeSet<(bool, String)> = BTreeSet::new();
    let mut missing = Vec::new();
    let mut packed = Vec::new();
    for e in &cat {
        let key = official_key(&e.name, naming);
        let is_vae = is_vae_key(&e.name);
        let sd = if is_vae { vae } else { var };
        let Some(t) = sd.get(&key) else {
            missing.push(format!("{}{key}", if is_vae { "vae:" } else { "var:" }));
            continue;
        };
        used.insert((is_vae, key.clone()));
        if t.shape != e.shape {
            return Err(ConvertError::Shape {
                key,
                found: t.shape.clone(),
                expected: e.shape.clone(),
            });
        }
        let values = t.to_f32()?;
        let phi = e.name.starts_with("quantize.quant_resi.");
        let fmt = if e.is_weight && !phi {
            cfg.weights
        } else {
            WeightFormat::F32
        };
        packed.push(match fmt {
            WeightFormat::F32 => Packed {
                name: e.name.clone(),
                shape: e.shape.clone(),
                dtype: TensorDType::F32,
                data: bytemuck::cast_slice(&values).to_vec(),
                scales: None,
            },
            WeightFormat::F16 => {
                let h: Vec<half::f16> = values.iter().map(|v| half::f16::from_f32(*v)).collect();
                Packed {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    dtype: TensorDType::F16,
                    data: bytemuck::cast_slice(&h).to_vec(),
                    scales: None,
                }
            }
            WeightFormat::Int8 => {
                // One scale per output channel, then the kernels' panel layout.
                let (q, s) = quantize_rows(&values, e.shape[0]);
                let groups = if e.shape.len() == 4 { e.shape[2] } else { 1 };
                let k = e.shape[1] * e.shape.get(3).copied().unwrap_or(1);
                let mut packed_q = vec![0i8; groups * panels_len(e.shape[0], k)];
                assert!(
                    pack_official(&q, &e.shape, &mut packed_q),
                    "weights are 2-D or 4-D"
                );
                let q = packed_q;
                Packed {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    dtype: TensorDType::I8,
                    data: bytemuck::cast_slice(&q).to_vec(),
                    scales: Some(bytemuck::cast_slice(&s).to_vec()),
                }
            }
        });
    }
    if !missing.is_empty() {
        return Err(ConvertError::MissingKeys(missing));
    }
    let mut unexpected = Vec::new();
    for (is_vae, sd) in [(false, var), (true, vae)] {
        for (k, t) in sd.iter() {
            if used.contains(&(is_vae, k.to_string())) || droppable(k) {
                if k.ends_with(".attn.zero_k_bias") && t.to_f32()?.iter().any(|v| *v != 0.0) {
                    return Err(ConvertError::Value(
                        k.to_string(),
                        "the k bias must be zero".into(),
                    ));
                }
                continue;
            }
            // The encoder is known; it is left out on purpose without --encoder.
            if is_vae
                && !cfg.vae.has_encoder
                && (k.starts_with("encoder.") || k.starts_with("quant_conv."))
            {
                continue;
            }
            unexpected.push(format!("{}{k}", if is_vae { "vae:" } else { "var:" }));
        }
    }
    if !unexpected.is_empty() {
        return Err(ConvertError::UnexpectedKeys(unexpected));
    }
    Ok(write_file(&cfg, &packed, &meta))
}

fn write_file(cfg: &ModelConfig, packed: &[Packed], metadata: &str) -> Vec<u8> {
    // Data layout first: offsets are relative to the data section.
    let mut offsets = Vec::new();
    let mut at = 0usize;
    for p in packed {
        let off = at;
        at = align_up(at + p.data.len(), TENSOR_ALIGN);
        let soff = if let Some(s) = &p.scales {
            let o = at;
            at = align_up(at + s.len(), TENSOR_ALIGN);
            o
        } else {
            0
        };
        offsets.push((off, soff));
    }
    let meta_offset = at;
    at = align_up(at + metadata.len(), TENSOR_ALIGN);
    let data_len = at;
    let header = Header {
        config: cfg.clone(),
        tensor_count: packed.len() as u32,
        data_len: data_len as u64,
        meta_offset: meta_offset as u64,
        meta_len: metadata.len() as u64,
    };
    let mut meta = postcard::to_allocvec(&header).expect("header serializes");
    for (p, (off, soff)) in packed.iter().zip(&offsets) {
        let e = TensorEntry {
            name: &p.name,
            dtype: p.dtype,
            layout: match p.dtype {
                TensorDType::I8 => WeightLayout::PANELS,
                TensorDType::F32 | TensorDType::F16 => WeightLayout::Plain,
            },
            shape: p.shape.iter().map(|&d| d as u32).collect(),
            offset: *off as u64,
            len: p.data.len() as u64,
            scales_offset: *soff as u64,
        };
        meta.extend(postcard::to_allocvec(&e).expect("entry serializes"));
    }
    let data_start = align_up(PREFIX_LEN + meta.len(), TENSOR_ALIGN);
    let file_len = data_start + data_len;
    let mut out = vec![0u8; file_len];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(meta.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(file_len as u64).to_le_bytes());
    out[PREFIX_LEN..PREFIX_LEN + meta.len()].copy_from_slice(&meta);
    for (p, (off, soff)) in packed.iter().zip(&offsets) {
        let o = data_start + off;
        out[o..o + p.data.len()].copy_from_slice(&p.data);
        if let Some(s) = &p.scales {
            let o = data_start + soff;
            out[o..o + s.len()].copy_from_slice(s);
        }
    }
    out[data_start + meta_offset..data_start + meta_offset + metadata.len()]
        .copy_from_slice(metadata.as_bytes());
    let sum = file_checksum(&out);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    out
}

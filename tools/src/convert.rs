//! Official checkpoints → `.srdd`: infer the architecture from key names and shapes, map the
//! official names to the canonical tensor order of [`srdd_core::Weights::build`], quantize, and
//! write the file (layout in [`srdd_core::format`]).

use crate::checkpoint::{CheckpointError, DType, TensorStore};
use srdd_core::config::{
    official_phi_index, Attention, ModelConfig, VaeConfig, VarConfig, WeightFormat, MAX_SCALES,
};
use srdd_core::format::{
    align_up, Checksum64, Header, TensorDType, TensorEntry, WeightLayout, FORMAT_VERSION, MAGIC,
    PREFIX_LEN, TENSOR_ALIGN,
};
use srdd_core::kernels::{pack_official, panels_len};
use srdd_core::weights::{TensorSource, Weight};
use srdd_core::{Model, Weights};
use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
    /// The output file could not be written.
    #[error("{0}: {1}")]
    Write(String, std::io::Error),
    /// A `--keep` rule is malformed, matches no quantizable weight, or is not more precise
    /// than the file's weight format.
    #[error("--keep {0}")]
    Keep(String),
    /// Smoothing factors that do not fit the model.
    #[error("--smooth {0}")]
    Smooth(String),
    /// AdaLN tables in a format other than f32 or f16.
    #[error("--ada-table {0}: the tables are stored as f32 or f16")]
    AdaTable(&'static str),
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
    /// The precision plan's exceptions: quantizable weights kept in a more precise format than
    /// `weights` (`srdd-tools pack --keep`). Each rule must match at least one weight; the
    /// last matching rule wins.
    pub keep: Vec<KeepRule>,
    /// Outlier smoothing folded into the weights as they are written (`pack --smooth`).
    pub smooth: Option<crate::smooth::Smoothing>,
    /// Fake quantization: every weight this plan stores as int8 is written as f32 holding its
    /// int8 rounding (`q · scale`, the values the int8 GEMM multiplies by). The file then has
    /// the int8 file's weight error and none of its activation error, since f32 weights run
    /// with f32 activations (`quant-report --compare`'s "int8 weights only" row).
    pub fake_quant: bool,
    /// Replace every AdaLN Linear (`blocks.*.ada_lin`, `head_nm.ada_lin`, `shared_ada_lin`) by
    /// its per-label table `{name}.table` `[num_classes + 1, out]`, computed here in f64 from
    /// the float weights (after smoothing) and stored in this format, f32 (one rounding) or f16:
    /// smaller than the weights when the classes are few (`pack --ada-table [f32|f16]`;
    /// `srdd_core::weights::ByLabel`).
    pub ada_tables: Option<WeightFormat>,
}

/// `--keep PATTERN[=f16|f32|a16]`: Linear/Conv weights whose canonical name matches `PATTERN`
/// (`*` matches any run of characters, e.g. `blocks.*.ffn.fc1.weight`) are stored as `format`;
/// `a16` keeps the matching Linear weights int8 and runs their Linears with two-pass
/// activations (`TensorDType::I8A16`; conv weights never match an `a16` rule).
#[derive(Clone, Debug, PartialEq)]
pub struct KeepRule {
    /// Canonical tensor name, with `*` wildcards.
    pub pattern: String,
    /// Storage format: f16 or f32, more precise than the file's weight format; int8 with
    /// `act16`.
    pub format: WeightFormat,
    /// Two-pass activations for int8 Linear weights (`=a16`; `format` is then int8).
    pub act16: bool,
}

impl KeepRule {
    /// Parses `PATTERN[=f16|f32|a16]` (f16 when no format is given: half the bytes of f32, and
    /// within f16's rounding of the float model).
    pub fn parse(text: &str) -> Result<KeepRule, ConvertError> {
        let (pattern, format, act16) = match text.rsplit_once('=') {
            Some((p, "f16")) => (p, WeightFormat::F16, false),
            Some((p, "f32")) => (p, WeightFormat::F32, false),
            Some((p, "a16")) => (p, WeightFormat::Int8, true),
            Some((_, f)) => {
                return Err(ConvertError::Keep(format!(
                    "{text}: format {f:?} is not f16, f32 or a16"
                )))
            }
            None => (text, WeightFormat::F16, false),
        };
        if pattern.is_empty() {
            return Err(ConvertError::Keep(format!("{text}: empty tensor name")));
        }
        Ok(KeepRule {
            pattern: pattern.to_string(),
            format,
            act16,
        })
    }

    /// Whether `name` matches the pattern (`*` = any run of characters).
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for KeepRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = if self.act16 {
            "a16"
        } else {
            format_name(self.format)
        };
        write!(f, "{}={format}", self.pattern)
    }
}

/// `*`-only glob matching (iterative, linear backtracking to the last star).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// `int8`, `f16` or `f32`.
pub fn format_name(w: WeightFormat) -> &'static str {
    match w {
        WeightFormat::F32 => "f32",
        WeightFormat::F16 => "f16",
        WeightFormat::Int8 => "int8",
    }
}

/// Bits of precision of a storage format, for "more precise than" checks.
fn precision_rank(w: WeightFormat) -> u8 {
    match w {
        WeightFormat::Int8 => 0,
        WeightFormat::F16 => 1,
        WeightFormat::F32 => 2,
    }
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
            keep: Vec::new(),
            smooth: None,
            fake_quant: false,
            ada_tables: None,
        }
    }
}

fn shape_of<S: TensorStore + ?Sized>(sd: &S, key: &str) -> Option<Vec<usize>> {
    sd.tensor_meta(key).map(|(_, shape)| shape.to_vec())
}

fn has<S: TensorStore + ?Sized>(sd: &S, key: &str) -> bool {
    sd.tensor_meta(key).is_some()
}

fn need<S: TensorStore + ?Sized>(sd: &S, key: &str) -> Result<Vec<usize>, ConvertError> {
    shape_of(sd, key).ok_or_else(|| ConvertError::MissingKeys(vec![key.to_string()]))
}

fn count_indexed<S: TensorStore + ?Sized>(sd: &S, prefix: &str) -> usize {
    let mut max = 0;
    for k in sd.tensor_names() {
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

fn phi_naming<S: TensorStore + ?Sized>(vae: &S) -> (PhiNaming, usize) {
    let n = count_indexed(vae, "quantize.quant_resi.qresi_ls.");
    if n > 0 {
        return (PhiNaming::PartiallyShared, n);
    }
    if has(vae, "quantize.quant_resi.qresi.weight") {
        return (PhiNaming::Shared, 1);
    }
    let n = count_indexed(vae, "quantize.quant_resi.");
    if n > 0 {
        return (PhiNaming::NonShared, n);
    }
    (PhiNaming::None, 0)
}

fn looks_like_var<S: TensorStore + ?Sized>(sd: &S) -> bool {
    sd.tensor_names()
        .into_iter()
        .any(|k| k == "word_embed.weight" || k == "class_emb.weight" || k.starts_with("blocks."))
}

fn looks_like_vae<S: TensorStore + ?Sized>(sd: &S) -> bool {
    sd.tensor_names().into_iter().any(is_vae_key)
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
pub fn infer_config<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
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
        .find(|k| has(var, k));
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
    let using_sa = has(
        vae,
        &format!("decoder.up.{}.attn.0.norm.weight", levels - 1),
    );
    let using_mid_sa = has(vae, "decoder.mid.attn_1.norm.weight");
    let (_, num_phi) = phi_naming(vae);
    // Any encoder key means the encoder is meant to be there (missing pieces are then reported).
    let has_encoder = opts.encoder
        && vae
            .tensor_names()
            .into_iter()
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
            shared_aln: has(var, "shared_ada_lin.1.weight"),
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

struct Recorder(Vec<CatalogEntry>, bool);

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
    fn next_is(&mut self, name: fmt::Arguments<'_>) -> bool {
        self.1 && name.to_string().ends_with(".table")
    }
}

/// Every tensor a model with `cfg` has, in file order; with `ada_tables`, the AdaLN Linears'
/// per-label tables in place of their weights and biases ([`PackOptions::ada_tables`]).
pub fn catalog(cfg: &ModelConfig, ada_tables: bool) -> Result<Vec<CatalogEntry>, ConvertError> {
    let mut r = Recorder(Vec::new(), ada_tables);
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
fn patch_nums_from_levels<S: TensorStore + ?Sized>(
    var: &S,
) -> Result<Option<Vec<u16>>, ConvertError> {
    let Some(t) = var.load_tensor("lvl_1L")? else {
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

/// One tensor of the output file: where it comes from, how it is stored and where it goes.
struct Planned {
    /// Canonical name.
    name: String,
    /// Key in the checkpoint.
    key: String,
    is_vae: bool,
    shape: Vec<usize>,
    dtype: TensorDType,
    /// Bytes of the values (int8 panels include their padding).
    len: usize,
    /// Bytes of the per-output-channel scales (int8 only, else 0).
    scales_len: usize,
    /// Offsets relative to the data section.
    offset: usize,
    scales_offset: usize,
    /// Stored as f32 holding the int8 rounding ([`PackOptions::fake_quant`]).
    fake_quant: bool,
    /// An AdaLN table, computed from `class_emb` (`key`) and this Linear's checkpoint keys
    /// (weight, bias) and canonical names ([`PackOptions::ada_tables`]).
    table: Option<AdaTableSource>,
}

/// Where an AdaLN table comes from.
struct AdaTableSource {
    weight_key: String,
    bias_key: String,
    weight_name: String,
    bias_name: String,
}

/// A `.srdd` file laid out from the checkpoints' keys, dtypes and shapes alone, before any
/// tensor is converted: every check [`pack`] makes on the input is done when this is built, so
/// writing fails only on I/O (or a checkpoint whose data is shorter than its index declares).
struct PackPlan {
    meta: String,
    smooth: Option<crate::smooth::Smoothing>,
    tensors: Vec<Planned>,
    /// Postcard header followed by the tensor table.
    table: Vec<u8>,
    data_start: usize,
    meta_offset: usize,
    file_len: usize,
}

/// Elements converted per piece when a tensor is streamed to the output (256 KiB of f32).
const CHUNK_ELEMS: usize = 1 << 16;
/// Output buffer of [`pack_to_file`].
const WRITE_BUFFER: usize = 256 << 10;

fn plan_pack<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
) -> Result<PackPlan, ConvertError> {
    let cfg = infer_config(var, vae, opts)?;
    let meta = metadata_text(&cfg, &opts.metadata)?;
    let (naming, _) = phi_naming(vae);
    let table_dtype = match opts.ada_tables {
        Some(WeightFormat::Int8) => return Err(ConvertError::AdaTable("int8")),
        Some(WeightFormat::F16) => TensorDType::F16,
        _ => TensorDType::F32,
    };
    let cat = catalog(&cfg, opts.ada_tables.is_some())?;
    for r in &opts.keep {
        if r.act16 {
            if cfg.weights != WeightFormat::Int8 {
                return Err(ConvertError::Keep(format!(
                    "{r}: two-pass activations need int8 weights (--weights int8)"
                )));
            }
        } else if precision_rank(r.format) <= precision_rank(cfg.weights) {
            return Err(ConvertError::Keep(format!(
                "{r}: not more precise than the file's weights ({})",
                format_name(cfg.weights)
            )));
        }
    }
    let mut matched = vec![false; opts.keep.len()];
    if let Some(s) = &opts.smooth {
        s.check(&cfg).map_err(ConvertError::Smooth)?;
    }

    // Key accounting: everything must be used, dropped on purpose, or reported. The checks run
    // in the order the in-memory converter ran them, so the first error is the same.
    let mut used: BTreeSet<(bool, String)> = BTreeSet::new();
    let mut missing = Vec::new();
    let mut tensors = Vec::new();
    for e in &cat {
        if let Some(p) = e.name.strip_suffix(".table") {
            // The Linear `{p}.1` this table replaces, read from the VAR checkpoint.
            let (weight_name, bias_name) = (format!("{p}.1.weight"), format!("{p}.1.bias"));
            let (out, c) = (e.shape[1], cfg.var.embed_dim as usize);
            for (name, shape) in [(&weight_name, vec![out, c]), (&bias_name, vec![out])] {
                let key = official_key(name, naming);
                account_key(var, false, key, &shape, &mut used, &mut missing)?;
            }
            let numel: usize = e.shape.iter().product();
            tensors.push(Planned {
                name: e.name.clone(),
                key: official_key("class_emb.weight", naming),
                is_vae: false,
                shape: e.shape.clone(),
                dtype: table_dtype,
                len: numel
                    * if table_dtype == TensorDType::F16 {
                        2
                    } else {
                        4
                    },
                scales_len: 0,
                offset: 0,
                scales_offset: 0,
                fake_quant: false,
                table: Some(AdaTableSource {
                    weight_key: official_key(&weight_name, naming),
                    bias_key: official_key(&bias_name, naming),
                    weight_name,
                    bias_name,
                }),
            });
            continue;
        }
        let key = official_key(&e.name, naming);
        let is_vae = is_vae_key(&e.name);
        let found = if is_vae {
            account_key(vae, true, key.clone(), &e.shape, &mut used, &mut missing)?
        } else {
            account_key(var, false, key.clone(), &e.shape, &mut used, &mut missing)?
        };
        if !found {
            continue;
        }
        let numel: usize = e.shape.iter().product();
        let phi = e.name.starts_with("quantize.quant_resi.");
        let (fmt, act16) = if e.is_weight && !phi {
            let (mut fmt, mut act16) = (cfg.weights, false);
            for (i, r) in opts.keep.iter().enumerate() {
                // Two-pass activations are a Linear's: an `a16` rule passes over conv weights.
                if r.matches(&e.name) && !(r.act16 && e.shape.len() != 2) {
                    matched[i] = true;
                    (fmt, act16) = (r.format, r.act16);
                }
            }
            (fmt, act16)
        } else {
            (WeightFormat::F32, false)
        };
        let fake_quant = opts.fake_quant && fmt == WeightFormat::Int8;
        let fmt = if fake_quant { WeightFormat::F32 } else { fmt };
        let (dtype, len, scales_len) = match fmt {
            WeightFormat::F32 => (TensorDType::F32, numel * 4, 0),
            WeightFormat::F16 => (TensorDType::F16, numel * 2, 0),
            WeightFormat::Int8 => {
                let (groups, k) = int8_dims(&e.shape);
                (
                    if act16 {
                        TensorDType::I8A16
                    } else {
                        TensorDType::I8
                    },
                    groups * panels_len(e.shape[0], k),
                    e.shape[0] * 4,
                )
            }
        };
        tensors.push(Planned {
            name: e.name.clone(),
            key,
            is_vae,
            shape: e.shape.clone(),
            dtype,
            len,
            scales_len,
            offset: 0,
            scales_offset: 0,
            fake_quant,
            table: None,
        });
    }
    if !missing.is_empty() {
        return Err(ConvertError::MissingKeys(missing));
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(ConvertError::Keep(format!(
            "{}: matches no quantizable Linear/Conv weight (see `srdd-tools inspect`)",
            opts.keep[i]
        )));
    }
    let mut unexpected = Vec::new();
    check_leftovers(var, false, &used, &cfg, &mut unexpected)?;
    check_leftovers(vae, true, &used, &cfg, &mut unexpected)?;
    if !unexpected.is_empty() {
        return Err(ConvertError::UnexpectedKeys(unexpected));
    }

    // Data layout: offsets are relative to the data section.
    let mut at = 0usize;
    for p in &mut tensors {
        p.offset = at;
        at = align_up(at + p.len, TENSOR_ALIGN);
        if p.scales_len > 0 {
            p.scales_offset = at;
            at = align_up(at + p.scales_len, TENSOR_ALIGN);
        }
    }
    let meta_offset = at;
    at = align_up(at + meta.len(), TENSOR_ALIGN);
    let data_len = at;
    let header = Header {
        config: cfg.clone(),
        tensor_count: tensors.len() as u32,
        data_len: data_len as u64,
        meta_offset: meta_offset as u64,
        meta_len: meta.len() as u64,
    };
    let mut table = postcard::to_allocvec(&header).expect("header serializes");
    for p in &tensors {
        let e = TensorEntry {
            name: &p.name,
            dtype: p.dtype,
            layout: match p.dtype {
                TensorDType::I8 | TensorDType::I8A16 => WeightLayout::PANELS,
                TensorDType::F32 | TensorDType::F16 => WeightLayout::Plain,
            },
            shape: p.shape.iter().map(|&d| d as u32).collect(),
            offset: p.offset as u64,
            len: p.len as u64,
            scales_offset: p.scales_offset as u64,
        };
        table.extend(postcard::to_allocvec(&e).expect("entry serializes"));
    }
    let data_start = align_up(PREFIX_LEN + table.len(), TENSOR_ALIGN);
    Ok(PackPlan {
        meta,
        smooth: opts.smooth.clone(),
        tensors,
        table,
        data_start,
        meta_offset,
        file_len: data_start + data_len,
    })
}

/// Groups (kernel rows of a conv, 1 for a linear) and reduction length of an int8 weight.
fn int8_dims(shape: &[usize]) -> (usize, usize) {
    let groups = if shape.len() == 4 { shape[2] } else { 1 };
    (groups, shape[1] * shape.get(3).copied().unwrap_or(1))
}

/// The keys of one checkpoint that no catalog entry used: dropped buffers are checked (the k
/// bias must be zero), the encoder is skipped without `--encoder`, the rest is unexpected.
fn check_leftovers<S: TensorStore + ?Sized>(
    sd: &S,
    is_vae: bool,
    used: &BTreeSet<(bool, String)>,
    cfg: &ModelConfig,
    unexpected: &mut Vec<String>,
) -> Result<(), ConvertError> {
    for k in sd.tensor_names() {
        if used.contains(&(is_vae, k.to_string())) || droppable(k) {
            if k.ends_with(".attn.zero_k_bias") {
                let t = sd.load_tensor(k)?.expect("listed key");
                if t.to_f32()?.iter().any(|v| *v != 0.0) {
                    return Err(ConvertError::Value(
                        k.to_string(),
                        "the k bias must be zero".into(),
                    ));
                }
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
    Ok(())
}

/// The output stream: bytes written so far and the running file checksum (which skips the
/// magic and the checksum field itself).
struct Out<'w, W: Write> {
    w: &'w mut W,
    sum: Checksum64,
    at: usize,
}

impl<W: Write> Out<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.sum.update(bytes);
        self.at += bytes.len();
        Ok(())
    }

    /// Zero padding up to file position `to`.
    fn pad_to(&mut self, to: usize) -> io::Result<()> {
        const ZEROS: [u8; TENSOR_ALIGN] = [0; TENSOR_ALIGN];
        debug_assert!(self.at <= to, "sections are written in file order");
        while self.at < to {
            let n = (to - self.at).min(ZEROS.len());
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Accounts for checkpoint key `key`, expected with `shape`: marks it used and checks its shape
/// and dtype. A missing key goes to `missing` (all are reported together) and gives `false`.
fn account_key<S: TensorStore + ?Sized>(
    sd: &S,
    is_vae: bool,
    key: String,
    shape: &[usize],
    used: &mut BTreeSet<(bool, String)>,
    missing: &mut Vec<String>,
) -> Result<bool, ConvertError> {
    let Some((dtype, found)) = sd.tensor_meta(&key) else {
        missing.push(format!("{}{key}", if is_vae { "vae:" } else { "var:" }));
        return Ok(false);
    };
    if found != shape {
        return Err(ConvertError::Shape {
            found: found.to_vec(),
            expected: shape.to_vec(),
            key,
        });
    }
    if !dtype.is_float() {
        return Err(CheckpointError::WrongDType {
            found: dtype,
            wanted: "a floating-point type",
        }
        .into());
    }
    used.insert((is_vae, key));
    Ok(true)
}

/// The AdaLN table of `src`: row `label` = `SiLU(class_emb[label]) · Wᵀ + b` for every label
/// (`class_emb` `[labels, C]`), summed in f64 and rounded once to f32, from the float weights
/// after smoothing (which rewrites `ada_lin` rows).
fn ada_table<V: TensorStore + ?Sized>(
    class_emb: &crate::checkpoint::RawTensor,
    src: &AdaTableSource,
    var: &V,
    smooth: Option<&crate::smooth::Smoothing>,
) -> Result<crate::checkpoint::RawTensor, CheckpointError> {
    let load = |key: &str, name: &str| -> Result<Vec<f32>, CheckpointError> {
        let mut v = var
            .load_tensor(key)?
            .expect("planned keys exist")
            .to_f32()?;
        if let Some(s) = smooth.filter(|s| s.touches(name)) {
            s.apply(name, &mut v);
        }
        Ok(v)
    };
    let (w, b) = (
        load(&src.weight_key, &src.weight_name)?,
        load(&src.bias_key, &src.bias_name)?,
    );
    let (labels, c) = (class_emb.shape[0], class_emb.shape[1]);
    let cond: Vec<f64> = class_emb
        .to_f32()?
        .iter()
        .map(|&x| {
            let x = f64::from(x);
            x / (1.0 + (-x).exp())
        })
        .collect();
    let out = b.len();
    let mut rows = Vec::with_capacity(labels * out);
    for l in 0..labels {
        let x = &cond[l * c..(l + 1) * c];
        for (o, bias) in b.iter().enumerate() {
            let wo = &w[o * c..(o + 1) * c];
            let dot: f64 = x.iter().zip(wo).map(|(a, b)| a * f64::from(*b)).sum();
            rows.push((dot + f64::from(*bias)) as f32);
        }
    }
    Ok(crate::checkpoint::RawTensor {
        dtype: DType::F32,
        shape: vec![labels, out],
        data: bytemuck::cast_slice(&rows).to_vec(),
    })
}

/// A write error or a conversion error while writing.
enum WriteError {
    Io(io::Error),
    Convert(ConvertError),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<CheckpointError> for WriteError {
    fn from(e: CheckpointError) -> Self {
        WriteError::Convert(e.into())
    }
}

impl PackPlan {
    /// Writes the file in order, holding one input tensor (and its converted form) at a time;
    /// returns the file checksum, which belongs at bytes 24..32 (written as zeros here).
    fn write<W: Write, V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
        &self,
        var: &V,
        vae: &A,
        w: &mut W,
    ) -> Result<u64, WriteError> {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..8].copy_from_slice(&MAGIC);
        prefix[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        prefix[12..16].copy_from_slice(&(self.table.len() as u32).to_le_bytes());
        prefix[16..24].copy_from_slice(&(self.file_len as u64).to_le_bytes());
        w.write_all(&prefix)?;
        let mut out = Out {
            w,
            sum: Checksum64::new(),
            at: PREFIX_LEN,
        };
        out.sum.update(&prefix[8..24]);
        out.put(&self.table)?;
        for p in &self.tensors {
            let mut t = if p.is_vae {
                vae.load_tensor(&p.key)?
            } else {
                var.load_tensor(&p.key)?
            }
            .expect("planned keys exist");
            if let Some(src) = &p.table {
                t = std::borrow::Cow::Owned(ada_table(&t, src, var, self.smooth.as_ref())?);
            }
            // The per-tensor transform: smoothing rewrites a few tensors as f32 (one at a time).
            if let Some(s) = self.smooth.as_ref().filter(|s| s.touches(&p.name)) {
                let mut v = t.to_f32()?;
                s.apply(&p.name, &mut v);
                t = std::borrow::Cow::Owned(crate::checkpoint::RawTensor {
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                    data: bytemuck::cast_slice(&v).to_vec(),
                });
            }
            if p.fake_quant {
                let mut v = t.to_f32()?;
                let rows = p.shape[0];
                let cols = v.len() / rows.max(1);
                // Row by row, as the int8 branch below quantizes.
                for row in v.chunks_exact_mut(cols.max(1)) {
                    let (q, s) = quantize_rows(row, 1);
                    for (x, c) in row.iter_mut().zip(&q) {
                        *x = f32::from(*c) * s[0];
                    }
                }
                t = std::borrow::Cow::Owned(crate::checkpoint::RawTensor {
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                    data: bytemuck::cast_slice(&v).to_vec(),
                });
            }
            out.pad_to(self.data_start + p.offset)?;
            match p.dtype {
                TensorDType::F32 if t.dtype == DType::F32 => out.put(&t.data)?,
                TensorDType::F32 => {
                    for start in (0..t.numel()).step_by(CHUNK_ELEMS) {
                        let v = t.f32_range(start..(start + CHUNK_ELEMS).min(t.numel()))?;
                        out.put(bytemuck::cast_slice(&v))?;
                    }
                }
                TensorDType::F16 => {
                    for start in (0..t.numel()).step_by(CHUNK_ELEMS) {
                        let v = t.f32_range(start..(start + CHUNK_ELEMS).min(t.numel()))?;
                        let h: Vec<half::f16> = v.iter().map(|x| half::f16::from_f32(*x)).collect();
                        out.put(bytemuck::cast_slice(&h))?;
                    }
                }
                TensorDType::I8 | TensorDType::I8A16 => {
                    // One scale per output channel (rows are quantized independently, so row by
                    // row gives what the whole tensor gives), then the kernels' panel layout.
                    let rows = p.shape[0];
                    let cols = t.numel() / rows.max(1);
                    let mut q = Vec::with_capacity(t.numel());
                    let mut scales = Vec::with_capacity(rows);
                    for r in 0..rows {
                        let row = t.f32_range(r * cols..(r + 1) * cols)?;
                        let (qr, s) = quantize_rows(&row, 1);
                        q.extend_from_slice(&qr);
                        scales.extend_from_slice(&s);
                    }
                    drop(t);
                    let (groups, k) = int8_dims(&p.shape);
                    let mut packed_q = vec![0i8; groups * panels_len(p.shape[0], k)];
                    assert!(
                        pack_official(&q, &p.shape, &mut packed_q),
                        "weights are 2-D or 4-D"
                    );
                    drop(q);
                    out.put(bytemuck::cast_slice(&packed_q))?;
                    drop(packed_q);
                    out.pad_to(self.data_start + p.scales_offset)?;
                    out.put(bytemuck::cast_slice(&scales))?;
                }
            }
        }
        out.pad_to(self.data_start + self.meta_offset)?;
        out.put(self.meta.as_bytes())?;
        out.pad_to(self.file_len)?;
        Ok(out.sum.finish())
    }
}

/// The length in bytes of the file [`pack`] would write, from the checkpoints' keys and shapes
/// alone (every check is made; no tensor is converted). The automatic precision plan prices
/// its candidates with it.
pub fn packed_len<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
) -> Result<u64, ConvertError> {
    Ok(plan_pack(var, vae, opts)?.file_len as u64)
}

/// Converts two official state dicts into `.srdd` bytes (the whole file in memory; see
/// [`pack_to_file`] for a file written one tensor at a time).
pub fn pack<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
) -> Result<Vec<u8>, ConvertError> {
    let plan = plan_pack(var, vae, opts)?;
    let mut out = Vec::with_capacity(plan.file_len);
    let sum = match plan.write(var, vae, &mut out) {
        Ok(sum) => sum,
        Err(WriteError::Convert(e)) => return Err(e),
        Err(WriteError::Io(e)) => unreachable!("writing to a Vec cannot fail: {e}"),
    };
    debug_assert_eq!(out.len(), plan.file_len);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Converts two official checkpoints into the `.srdd` file `path`, streaming: every input check
/// is made before the file is created, then each tensor is loaded, converted, written and
/// dropped in turn (with a [`crate::checkpoint::LazyCheckpoint`] as input, memory holds one
/// tensor at a time). Written through `path` + `.partial` and a rename: never a half-written
/// file under `path`, and the temporary file is removed when any step fails. Returns the file's
/// length. The bytes are those [`pack`] returns.
pub fn pack_to_file<V: TensorStore + ?Sized, A: TensorStore + ?Sized>(
    var: &V,
    vae: &A,
    opts: &PackOptions,
    path: &Path,
) -> Result<u64, ConvertError> {
    let plan = plan_pack(var, vae, opts)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, File::create(&tmp)?);
        let sum = plan.write(var, vae, &mut w)?;
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(24))?;
        f.write_all(&sum.to_le_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    match written {
        Ok(()) => Ok(plan.file_len as u64),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(match e {
                WriteError::Convert(e) => e,
                WriteError::Io(e) => ConvertError::Write(path.display().to_string(), e),
            })
        }
    }
}

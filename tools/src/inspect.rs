//! `srdd-tools inspect`: header, tensor table, sizes, and the arena each operation needs.

use serde_json::{json, Map, Value};
use srdd_core::format::{parse, TensorDType, TensorEntry, WeightLayout};
use srdd_core::generate::{Guidance, Lifetime, Plan, SampleOptions};
use srdd_core::{tokenize, vae, Attention, Model, ModelConfig, Schedule, WeightFormat};
use std::fmt::Write;

/// One buffer of an operation's arena, with the buffers it is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaBuffer {
    /// What the buffer holds.
    pub name: String,
    /// Exact bytes.
    pub bytes: usize,
    /// The buffers it is made of (empty when it is one buffer).
    pub children: Vec<ArenaBuffer>,
}

/// The arena one operation needs, split into its buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaOperation {
    /// The operation, e.g. `sample markov cfg`.
    pub operation: String,
    /// Exact arena bytes.
    pub bytes: usize,
    /// Of which the KV cache (0 without one).
    pub kv_cache_bytes: usize,
    /// Its buffers: for sampling, persistent / per-scale step scratch / decoder scratch.
    pub buffers: Vec<ArenaBuffer>,
}

impl ArenaBuffer {
    fn leaf(name: &str, bytes: usize) -> Self {
        ArenaBuffer {
            name: name.to_string(),
            bytes,
            children: Vec::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"name": self.name, "bytes": self.bytes});
        // Only a buffer made of others has children, as in the text listing.
        if !self.children.is_empty() {
            v["children"] = self.children.iter().map(ArenaBuffer::to_json).collect();
        }
        v
    }
}

/// The decoder's own buffers, with `band_rows` rows per band (0: the whole image).
fn decoder_parts(cfg: &ModelConfig, band_rows: usize) -> Vec<ArenaBuffer> {
    vae::decoder_buffers(cfg, band_rows)
        .iter()
        .map(|&(n, b)| ArenaBuffer::leaf(n, b))
        .collect()
}

/// The three regions of a sampling plan, each with the plan's buffers of that lifetime
/// (read from the plan's layout table, so the nesting is the engine's own); a decoder
/// buffer holds the decoder's parts at the plan's band height.
fn plan_buffers(
    cfg: &ModelConfig,
    plan: &Plan,
    band_rows: usize,
    decoder: &str,
) -> Vec<ArenaBuffer> {
    let of = |life: Lifetime| -> Vec<ArenaBuffer> {
        plan.buffers
            .iter()
            .filter(|(_, _, l)| *l == life)
            .map(|&(n, b, l)| ArenaBuffer {
                name: n.to_string(),
                bytes: b,
                children: if l == Lifetime::Decode {
                    decoder_parts(cfg, band_rows)
                } else {
                    Vec::new()
                },
            })
            .collect()
    };
    vec![
        ArenaBuffer {
            name: "persistent".into(),
            bytes: plan.persistent_bytes,
            children: of(Lifetime::Run),
        },
        ArenaBuffer {
            name: "per-scale step scratch".into(),
            bytes: plan.step_bytes,
            children: of(Lifetime::Step),
        },
        ArenaBuffer {
            name: decoder.into(),
            bytes: plan.decode_bytes,
            children: of(Lifetime::Decode),
        },
    ]
}

/// Arena bytes per operation for a model, each split into its buffers.
pub fn arena_table(model: &Model<'_>) -> Vec<ArenaOperation> {
    let cfg = &model.config;
    let full = Schedule::full(cfg);
    let mut rows = Vec::new();
    let mut sample = |name: String, o: &SampleOptions, decoder: &str| {
        if let Ok(p) = Plan::new(cfg, o, &full) {
            rows.push(ArenaOperation {
                operation: name,
                bytes: p.arena_bytes(),
                kv_cache_bytes: p.kv_cache_bytes,
                buffers: plan_buffers(cfg, &p, o.band_rows as usize, decoder),
            });
        }
    };
    for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
        for (g, gn) in [(Guidance::Linear, "cfg"), (Guidance::Off, "no-cfg")] {
            let o = SampleOptions {
                attention: att,
                guidance: g,
                ..SampleOptions::for_model(model, 0)
            };
            sample(format!("sample {an} {gn}"), &o, "decoder scratch");
        }
    }
    // The edge configuration: one-token chunks, one-row decoder bands (identical results).
    for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
        let o = SampleOptions {
            attention: att,
            ..SampleOptions::for_model_low_memory(model, 0)
        };
        sample(
            format!("sample {an} cfg, low-memory (chunk 1, band 1)"),
            &o,
            "banded decoder scratch",
        );
    }
    if cfg.vae.has_encoder {
        rows.push(ArenaOperation {
            operation: "tokenize (encode + quantize)".into(),
            bytes: tokenize::tokenize_bytes(model, &full),
            kv_cache_bytes: 0,
            buffers: Vec::new(),
        });
    }
    rows.push(ArenaOperation {
        operation: "decode only".into(),
        bytes: vae::decoder_scratch_bytes(cfg, 0),
        kv_cache_bytes: 0,
        buffers: decoder_parts(cfg, 0),
    });
    rows
}

/// Parameter counts per module, grouped by tensor name prefix, in report order.
pub fn parameter_counts(entries: &[TensorEntry<'_>]) -> Vec<(&'static str, u64)> {
    let mut groups = [
        ("transformer_blocks", 0u64),
        ("embeddings_and_head", 0),
        ("vqvae_decoder", 0),
        ("vqvae_encoder", 0),
        ("quantizer", 0),
    ];
    for e in entries {
        let n = e.shape.iter().map(|&d| d as u64).product::<u64>();
        let first = e.name.split('.').next().unwrap_or("");
        // quant_conv runs right after the encoder and post_quant_conv right before the
        // decoder, so they count with those (and go with the encoder when it is left out).
        let g = match first {
            "blocks" => 0,
            "decoder" | "post_quant_conv" => 2,
            "encoder" | "quant_conv" => 3,
            "quantize" => 4,
            _ => 1,
        };
        groups[g].1 += n;
    }
    groups.to_vec()
}

/// The precision plan of a file: per stored format among the quantizable Linear/Conv weights
/// (the Phi convolutions, always f32, are not among them) the count and bytes (int8 scales
/// included), and the weights stored other than as the file's weight format (the kept ones).
pub struct PrecisionPlan {
    /// `(format, count, bytes)` for int8, f16, f32 and i8a16 (int8 with two-pass activations,
    /// `pack --keep NAME=a16`).
    pub formats: Vec<(&'static str, usize, u64)>,
    /// `(name, format, bytes)` of every weight not stored in the file's weight format.
    pub kept: Vec<(String, &'static str, u64)>,
    /// `(name, format, bytes)` of every AdaLN table stored in place of its Linear
    /// (`pack --ada-table`).
    pub ada_tables: Vec<(String, &'static str, u64)>,
}

/// The precision plan of the file whose tensors are `entries`.
pub fn precision_plan(
    cfg: &ModelConfig,
    entries: &[TensorEntry<'_>],
) -> Result<PrecisionPlan, srdd_core::Error> {
    let weights: std::collections::BTreeSet<String> = crate::convert::catalog(cfg, false)
        .map_err(|_| srdd_core::Error::BadHeader)?
        .into_iter()
        .filter(|e| e.is_weight && !e.name.starts_with("quantize.quant_resi."))
        .map(|e| e.name)
        .collect();
    let mut p = PrecisionPlan {
        formats: vec![
            ("int8", 0, 0),
            ("f16", 0, 0),
            ("f32", 0, 0),
            ("i8a16", 0, 0),
        ],
        kept: Vec::new(),
        ada_tables: entries
            .iter()
            .filter(|e| e.name.ends_with(".table"))
            .map(|e| (e.name.to_string(), dtype_name(e.dtype), e.len))
            .collect(),
    };
    let file = weights_name(cfg.weights);
    for e in entries.iter().filter(|e| weights.contains(e.name)) {
        let f = dtype_name(e.dtype);
        // An int8 weight carries one f32 scale per output channel.
        let scales = if matches!(e.dtype, TensorDType::I8 | TensorDType::I8A16) {
            e.shape.first().copied().unwrap_or(0) as u64 * 4
        } else {
            0
        };
        let bytes = e.len + scales;
        if let Some(row) = p.formats.iter_mut().find(|r| r.0 == f) {
            row.1 += 1;
            row.2 += bytes;
        }
        if f != file {
            p.kept.push((e.name.to_string(), f, bytes));
        }
    }
    Ok(p)
}

/// A storage type as every output of `inspect` names it: `int8`, `f16` or `f32`.
pub fn weights_name(w: WeightFormat) -> &'static str {
    match w {
        WeightFormat::F32 => "f32",
        WeightFormat::F16 => "f16",
        WeightFormat::Int8 => "int8",
    }
}

/// A tensor's storage type, in the same words as [`weights_name`].
pub fn dtype_name(d: TensorDType) -> &'static str {
    match d {
        TensorDType::F32 => "f32",
        TensorDType::F16 => "f16",
        TensorDType::I8 => "int8",
        TensorDType::I8A16 => "i8a16",
    }
}

/// An attention policy as the CLIs spell it.
fn attention_name(a: Attention) -> &'static str {
    match a {
        Attention::Markov => "markov",
        Attention::Causal => "causal",
    }
}

/// One metadata value typed: the numbers the engine reads as numbers, the class names and
/// the resampling policy as arrays; anything else (or anything that does not parse) as text.
fn metadata_value(key: &str, value: &str) -> Value {
    let number = |s: &str| -> Option<Value> {
        let s = s.trim();
        if let Ok(i) = s.parse::<i64>() {
            return Some(i.into());
        }
        s.parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
    };
    let typed = match key {
        "default_cfg" | "default_top_k" | "default_top_p" => number(value),
        "class_names" => Some(
            value
                .split(',')
                .map(|c| c.trim())
                .collect::<Vec<_>>()
                .into(),
        ),
        "resample_policy" => value
            .split(',')
            .map(number)
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        _ => None,
    };
    typed.unwrap_or_else(|| value.into())
}

/// Renders the report (text or JSON).
pub fn report(bytes: &[u8], as_json: bool) -> Result<String, srdd_core::Error> {
    let model = Model::from_bytes(bytes)?;
    let file = parse(bytes)?;
    let mut entries = Vec::new();
    let mut table = file.table;
    for _ in 0..file.header.tensor_count {
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table)
            .map_err(|_| srdd_core::Error::BadHeader)?;
        table = rest;
        entries.push(e);
    }
    let arena = arena_table(&model);
    let plan = precision_plan(&model.config, &entries)?;
    let params = parameter_counts(&entries);
    let total_params: u64 = params.iter().map(|(_, n)| n).sum();
    let cfg = &model.config;
    if as_json {
        let mut config = serde_json::to_value(cfg).unwrap_or_default();
        // The same words as the text report and the CLIs, not the Rust variant names.
        if let Some(c) = config.as_object_mut() {
            c.insert("weights".into(), weights_name(cfg.weights).into());
            c.insert("attention".into(), attention_name(cfg.attention).into());
        }
        let mut metadata = Map::new();
        for (k, v) in model.metadata.lines().filter_map(|l| l.split_once('=')) {
            metadata.insert(k.to_string(), metadata_value(k, v));
        }
        let mut parameters = Map::new();
        for (k, n) in &params {
            parameters.insert((*k).into(), (*n).into());
        }
        parameters.insert("total".into(), total_params.into());
        let v = json!({
            "file_bytes": bytes.len(),
            "format_version": srdd_core::format::FORMAT_VERSION,
            "config": config,
            "image_side": cfg.image_side(),
            "metadata": metadata,
            "parameters": parameters,
            "precision_plan": {
                "formats": plan.formats.iter().map(|(f, n, b)| json!({"format": f, "weights": n, "bytes": b})).collect::<Vec<_>>(),
                "kept": plan.kept.iter().map(|(n, f, b)| json!({"name": n, "format": f, "bytes": b})).collect::<Vec<_>>(),
                "ada_tables": plan.ada_tables.iter().map(|(n, f, b)| json!({"name": n, "format": f, "bytes": b})).collect::<Vec<_>>(),
            },
            "tensors": entries.iter().map(|e| json!({
                "name": e.name, "dtype": dtype_name(e.dtype), "layout": layout(&e.layout), "shape": e.shape.as_slice(),
                "offset": e.offset, "bytes": e.len, "scales_offset": e.scales_offset,
            })).collect::<Vec<_>>(),
            "arena": arena.iter().map(|op| json!({
                "operation": op.operation,
                "bytes": op.bytes,
                "kv_cache_bytes": op.kv_cache_bytes,
                "buffers": op.buffers.iter().map(ArenaBuffer::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut s = String::new();
    let v = &cfg.var;
    let q = &cfg.vae;
    let _ = writeln!(
        s,
        "file: {} bytes, format v{}",
        bytes.len(),
        srdd_core::format::FORMAT_VERSION
    );
    for line in model.metadata.lines() {
        let _ = writeln!(s, "meta: {line}");
    }
    let _ = writeln!(
        s,
        "weights: {}   default attention: {}",
        weights_name(cfg.weights),
        attention_name(cfg.attention)
    );
    let _ = write!(s, "precision plan (Linear/Conv weights):");
    for (f, n, b) in &plan.formats {
        // Two-pass int8 is listed only where a plan uses it.
        if *f != "i8a16" || *n > 0 {
            let _ = write!(s, "  {f} {n} ({b} B)");
        }
    }
    let _ = writeln!(s);
    for (n, f, b) in &plan.kept {
        let _ = writeln!(s, "  kept {f}: {n} ({b} B)");
    }
    if !plan.ada_tables.is_empty() {
        let formats: std::collections::BTreeSet<&str> =
            plan.ada_tables.iter().map(|t| t.1).collect();
        let _ = writeln!(
            s,
            "AdaLN tables (one row per class label, in place of their Linears): {} {} ({} B)",
            plan.ada_tables.len(),
            formats.into_iter().collect::<Vec<_>>().join("+"),
            plan.ada_tables.iter().map(|t| t.2).sum::<u64>()
        );
    }
    let _ = writeln!(
        s,
        "VAR: depth {} width {} heads {} ffn {} classes {} (+null) shared_aln {} l2_attn {} L {}",
        v.depth,
        v.embed_dim,
        v.num_heads,
        v.ffn_hidden,
        v.num_classes,
        v.shared_aln,
        v.attn_l2_norm,
        v.seq_len
    );
    let _ = writeln!(
        s,
        "VQVAE: V {} Cvae {} ch {} ch_mult {:?} res_blocks {} sa {} mid_sa {} phi {} (ratio {}) encoder {}",
        q.vocab_size, q.cvae, q.ch, q.ch_mult.as_slice(), q.num_res_blocks, q.using_sa, q.using_mid_sa, q.num_phi, q.quant_resi, q.has_encoder
    );
    let _ = writeln!(
        s,
        "image {}x{} px, latent {}x{}",
        cfg.image_side(),
        cfg.image_side(),
        cfg.latent_side(),
        cfg.latent_side()
    );
    let _ = writeln!(s, "patch_nums  {:?}", cfg.patch_nums.as_slice());
    let _ = writeln!(s, "level_index {:?}", cfg.level_index.as_slice());
    let _ = writeln!(s, "phi_index   {:?}", cfg.phi_index.as_slice());
    let _ = writeln!(s, "\nparameters:");
    for (k, n) in &params {
        let _ = writeln!(s, "  {:<24} {:>14}", k, n);
    }
    let _ = writeln!(s, "  {:<24} {:>14}", "total", total_params);
    let _ = writeln!(s, "\ntensors ({}):", entries.len());
    let _ = writeln!(
        s,
        "  {:<48} {:>5} {:>11} {:>22} {:>12} {:>12}",
        "name", "dtype", "layout", "shape", "offset", "bytes"
    );
    for e in &entries {
        let _ = writeln!(
            s,
            "  {:<48} {:>5} {:>11} {:>22} {:>12} {:>12}",
            e.name,
            dtype_name(e.dtype),
            layout(&e.layout),
            format!("{:?}", e.shape.as_slice()),
            e.offset,
            e.len
        );
    }
    let _ = writeln!(s, "\narena bytes per operation (exact):");
    let mib = |b: usize| b as f64 / 1048576.0;
    for op in &arena {
        let _ = writeln!(
            s,
            "  {:<44} {:>14} ({:.2} MiB)",
            op.operation,
            op.bytes,
            mib(op.bytes)
        );
        // One level of detail here; the layout listings below show every buffer.
        for b in &op.buffers {
            let name = if b.name == "persistent" {
                format!("persistent (of which KV cache {})", op.kv_cache_bytes)
            } else {
                b.name.clone()
            };
            let _ = writeln!(
                s,
                "    {:<42} {:>14} ({:.2} MiB)",
                name,
                b.bytes,
                mib(b.bytes)
            );
        }
    }
    for (o, what) in [
        (SampleOptions::for_model(&model, 0), "default configuration"),
        (
            SampleOptions::for_model_low_memory(&model, 0),
            "low-memory configuration: chunk 1, decoder bands of 1 row",
        ),
    ] {
        let Ok(plan) = Plan::new(cfg, &o, &Schedule::full(cfg)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "\narena layout of one sample (markov, CFG, {what}), in arena order:"
        );
        let _ = writeln!(s, "  {:<62} {:>12}  lives", "buffer", "bytes");
        for (name, b, life) in &plan.buffers {
            let lives = match life {
                Lifetime::Run => "whole run",
                Lifetime::Step => "one scale (then reused)",
                Lifetime::Decode => "decoding (overlays the step scratch)",
            };
            let _ = writeln!(s, "  {:<62} {:>12}  {}", name, b, lives);
            if *life == Lifetime::Decode {
                for (part, pb) in srdd_core::vae::decoder_buffers(cfg, o.band_rows as usize) {
                    let _ = writeln!(s, "    {:<60} {:>12}", part, pb);
                }
            }
        }
        let _ = writeln!(
            s,
            "  {:<62} {:>12}  = persistent + max(step, decode)",
            "total",
            plan.arena_bytes()
        );
    }
    Ok(s)
}

/// A tensor's layout as `inspect` shows it: `plain`, or `panels16x4` (int8 GEMM panels).
fn layout(l: &WeightLayout) -> String {
    match l {
        WeightLayout::Plain => "plain".into(),
        WeightLayout::Panels { nr, kr } => format!("panels{nr}x{kr}"),
    }
}

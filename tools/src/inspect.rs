//! `srdd-tools inspect`: header, tensor table, sizes, and the arena each operation needs.

use serde_json::json;
use srdd_core::format::{parse, TensorEntry};
use srdd_core::generate::{Guidance, Plan, SampleOptions};
use srdd_core::{tokenize, vae, Attention, Model, Schedule};
use std::fmt::Write;

/// Arena bytes per operation for a model.
pub fn arena_table(model: &Model<'_>) -> Vec<(String, usize)> {
    let cfg = &model.config;
    let full = Schedule::full(cfg);
    let mut rows = Vec::new();
    for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
        for (g, gn) in [(Guidance::Linear, "cfg"), (Guidance::Off, "no-cfg")] {
            let o = SampleOptions {
                attention: att,
                guidance: g,
                ..SampleOptions::for_model(model, 0)
            };
            if let Ok(p) = Plan::new(cfg, &o, &full) {
                rows.push((format!("sample {an} {gn}"), p.arena_bytes()));
                rows.push((
                    format!("  persistent (of which KV cache {})", p.kv_cache_bytes),
                    p.persistent_bytes,
                ));
                rows.push(("  per-scale step scratch".to_string(), p.step_bytes));
                rows.push(("  decoder scratch".to_string(), p.decode_bytes));
            }
        }
    }
    // The edge configuration: one-token chunks, one-row decoder bands (identical results).
    for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
        let o = SampleOptions {
            attention: att,
            ..SampleOptions::for_model_low_memory(model, 0)
        };
        if let Ok(p) = Plan::new(cfg, &o, &full) {
            rows.push((
                format!("sample {an} cfg, low-memory (chunk 1, band 1)"),
                p.arena_bytes(),
            ));
            rows.push(("  persistent".to_string(), p.persistent_bytes));
            rows.push(("  per-scale step scratch".to_string(), p.step_bytes));
            rows.push(("  banded decoder scratch".to_string(), p.decode_bytes));
        }
    }
    if cfg.vae.has_encoder {
        rows.push((
            "tokenize (encode + quantize)".into(),
            tokenize::tokenize_bytes(model, &full),
        ));
    }
    rows.push(("decode only".into(), vae::decoder_scratch_bytes(cfg, 0)));
    rows
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
    let cfg = &model.config;
    if as_json {
        let v = json!({
            "file_bytes": bytes.len(),
            "config": serde_json::to_value(cfg).unwrap_or_default(),
            "image_side": cfg.image_side(),
            "tensors": entries.iter().map(|e| json!({
                "name": e.name, "dtype": format!("{:?}", e.dtype), "layout": layout(&e.layout), "shape": e.shape.as_slice(),
                "offset": e.offset, "bytes": e.len, "scales_offset": e.scales_offset,
            })).collect::<Vec<_>>(),
            "arena_bytes": arena.iter().map(|(k, v)| json!({"operation": k, "bytes": v})).collect::<Vec<_>>(),
            "metadata": model.metadata.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
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
        "weights: {:?}   default attention: {:?}",
        cfg.weights, cfg.attention
    );
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
            format!("{:?}", e.dtype),
            layout(&e.layout),
            format!("{:?}", e.shape.as_slice()),
            e.offset,
            e.len
        );
    }
    let _ = writeln!(s, "\narena bytes per operation (exact):");
    for (k, b) in &arena {
        let _ = writeln!(
            s,
            "  {:<44} {:>14} ({:.2} MiB)",
            k,
            b,
            *b as f64 / 1048576.0
        );
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
                srdd_core::generate::Lifetime::Run => "whole run",
                srdd_core::generate::Lifetime::Step => "one scale (then reused)",
                srdd_core::generate::Lifetime::Decode => "decoding (overlays the step scratch)",
            };
            let _ = writeln!(s, "  {:<62} {:>12}  {}", name, b, lives);
            if *life == srdd_core::generate::Lifetime::Decode {
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
fn layout(l: &srdd_core::format::WeightLayout) -> String {
    match l {
        srdd_core::format::WeightLayout::Plain => "plain".into(),
        srdd_core::format::WeightLayout::Panels { nr, kr } => format!("panels{nr}x{kr}"),
    }
}

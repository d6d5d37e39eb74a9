//! Compute-versus-quality sweep for docs/SAMPLING.md (issue #5): samples `--per-class` images of
//! every class for each sampling configuration (schedule × refinement × policy) and writes them
//! as `OUT/<config>/<label>_<seed>.png`, plus `OUT/summary.json` with each configuration's MACs
//! (from the plan) and median wall time per image (one thread, sequential). With `--inpaint DIR`
//! it also inpaints a centre box of every `<label>_*.png` in DIR with Markov and causal
//! attention and reports the PSNR of the generated region against the original.
//!
//! Quality (class consistency, feature distance) is scored by `tools/train/evaluate.py` on the
//! written directories; `tools/train/tradeoff_report.py` joins both into the table and plots.
//!
//! ```text
//! cargo run --release -p srdd --example tradeoff -- --out /tmp/sweep --per-class 20 \
//!     [--model models/emoji32-f32.srdd] [--inpaint /work/scratch/emoji/heldout] [--only full,…]
//!     [--cfg 3]
//! ```

use srdd::pool::Pool;
use srdd::zero_shot::{box_mask, keep_mask, psnr, sample_forced, tokens_of};
use srdd::{png_bytes, read_png_rgb, sample_one, Image, ModelBytes, ResampleChoice};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::SampleOptions;
use srdd_core::macs::sample_macs;
use srdd_core::resample::{KeepAll, ResamplePolicy};
use srdd_core::{Attention, Model, Schedule};
use std::path::PathBuf;
use std::time::Instant;

struct Config {
    name: String,
    pns: Vec<u16>,
    refine: u8,
    policy: &'static str,
}

/// The CLI's policy for a configuration's short name.
fn policy(name: &str, m: &Model<'_>) -> Box<dyn ResamplePolicy> {
    let cli = match name {
        "fraction" => "fraction:0.25",
        "learned" => "learned",
        _ => "keep",
    };
    ResampleChoice::parse(cli, m).expect("policy").instance()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let out = PathBuf::from(get("--out").expect("--out DIR"));
    let per_class: u64 = get("--per-class").map_or(10, |v| v.parse().unwrap());
    let bytes = match get("--model") {
        Some(p) => ModelBytes::Owned(AlignedBytes::read(std::path::Path::new(&p)).expect("model")),
        None => ModelBytes::Default,
    };
    let m = Model::from_bytes(bytes.as_bytes()).expect("valid model");
    // Sampling settings: flags, else the model's stored defaults, else the official ones.
    let d = SampleOptions::for_model(&m, 0);
    let cfg_scale: f32 = get("--cfg").map_or(d.cfg, |v| v.parse().unwrap());
    let top_k: u32 = get("--top-k").map_or(d.top_k, |v| v.parse().unwrap());
    let top_p: f32 = get("--top-p").map_or(d.top_p, |v| v.parse().unwrap());
    eprintln!("sampling: cfg {cfg_scale} (linear ramp), top-k {top_k}, top-p {top_p}");
    let cfg = &m.config;
    let full: Vec<u16> = cfg.patch_nums.to_vec();
    let learned = m.meta("resample_policy").is_some();
    // Schedules: the full one, then dropping intermediate scales (the last is always kept).
    let mut schedules: Vec<(String, Vec<u16>)> = vec![("full".into(), full.clone())];
    for drop in [vec![5u16], vec![3, 5], vec![2, 4, 6], vec![2, 3, 5, 6]] {
        let pns: Vec<u16> = full.iter().copied().filter(|p| !drop.contains(p)).collect();
        if pns.len() < full.len() && Schedule::subset(cfg, &pns).is_ok() {
            let name = pns
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("-");
            schedules.push((name, pns));
        }
    }
    let mut configs = Vec::new();
    for (i, (name, pns)) in schedules.iter().enumerate() {
        configs.push(Config {
            name: name.clone(),
            pns: pns.clone(),
            refine: 0,
            policy: "keep",
        });
        if i < 2 {
            configs.push(Config {
                name: format!("{name}+refine1-fraction"),
                pns: pns.clone(),
                refine: 1,
                policy: "fraction",
            });
            if learned {
                configs.push(Config {
                    name: format!("{name}+refine1-learned"),
                    pns: pns.clone(),
                    refine: 1,
                    policy: "learned",
                });
            }
        }
    }
    if let Some(only) = get("--only") {
        let keep: Vec<&str> = only.split(',').collect();
        configs.retain(|c| keep.contains(&c.name.as_str()));
    }
    std::fs::create_dir_all(&out).unwrap();
    let par = Pool::new(1);
    let mut summary = Vec::new();
    let classes = cfg.var.num_classes;
    for c in &configs {
        let sched = Schedule::subset(cfg, &c.pns).unwrap();
        let dir = out.join(&c.name);
        std::fs::create_dir_all(&dir).unwrap();
        let base = SampleOptions {
            cfg: cfg_scale,
            top_k,
            top_p,
            refine: c.refine,
            ..SampleOptions::new(0)
        };
        let macs = sample_macs(&m, &base, &sched);
        let mut times = Vec::new();
        for label in 0..classes {
            for seed in 0..per_class {
                let o = SampleOptions {
                    label,
                    seed: seed + 1000 * label as u64,
                    ..base
                };
                let mut p = policy(c.policy, &m);
                let t0 = Instant::now();
                let img = sample_one(&m, o, &sched, &mut *p, &par, &mut || {}).unwrap();
                times.push(t0.elapsed().as_secs_f64());
                std::fs::write(
                    dir.join(format!("{label}_{seed}.png")),
                    png_bytes(&img).unwrap(),
                )
                .unwrap();
            }
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        eprintln!(
            "{:<28} steps {} tokens {:>4} MACs {:>6.1} M (transformer {:>6.1} M) median {:.1} ms/image",
            c.name,
            sched.len(),
            sched.total_tokens(),
            macs.total() as f64 / 1e6,
            macs.transformer as f64 / 1e6,
            med * 1e3
        );
        summary.push(format!(
            "{{\"name\":\"{}\",\"schedule\":{:?},\"refine\":{},\"policy\":\"{}\",\"tokens\":{},\"macs_transformer\":{},\"macs_decoder\":{},\"median_ms\":{:.3},\"images\":{}}}",
            c.name,
            c.pns,
            c.refine,
            c.policy,
            sched.total_tokens(),
            macs.transformer,
            macs.decoder,
            med * 1e3,
            times.len()
        ));
    }
    let mut inpaint = Vec::new();
    if let Some(dir) = get("--inpaint") {
        let side = cfg.image_side();
        let p = cfg.latent_side();
        let q = side / 4;
        let generate = box_mask(side, [q, q, side - q, side - q], false);
        let keep = keep_mask(&generate, side, p);
        let sched = Schedule::full(cfg);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        files.sort();
        for attention in [Attention::Markov, Attention::Causal] {
            let (mut sum, mut n) = (0f64, 0usize);
            for (i, f) in files.iter().enumerate() {
                let label: u32 = f
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .split('_')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let src: Image = read_png_rgb(f).unwrap();
                let toks = tokens_of(&m, &sched, &src, &par).unwrap();
                let o = SampleOptions {
                    label,
                    cfg: cfg_scale,
                    top_k,
                    top_p,
                    attention,
                    seed: i as u64,
                    ..SampleOptions::new(label)
                };
                let img =
                    sample_forced(&m, o, &sched, &toks, &keep, &mut KeepAll, &par, &mut || {})
                        .unwrap();
                sum += psnr(&src, &img, Some(&generate));
                n += 1;
            }
            eprintln!(
                "inpaint centre box {attention:?}: mean PSNR of the generated region {:.2} dB over {n} images",
                sum / n as f64
            );
            inpaint.push(format!(
                "{{\"attention\":\"{attention:?}\",\"mean_psnr_generated\":{:.4},\"images\":{n}}}",
                sum / n as f64
            ));
        }
    }
    std::fs::write(
        out.join("summary.json"),
        format!(
            "{{\"configs\":[{}],\"inpaint\":[{}]}}\n",
            summary.join(","),
            inpaint.join(",")
        ),
    )
    .unwrap();
}

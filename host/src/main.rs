//! `srdd`: sample SRDD / VAR images from a `.srdd` model (the built-in default when `--model` is
//! not given), and run the zero-shot tasks: reconstruct, edit (inpaint / outpaint), upscale.

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use srdd::args::{
    parse_seed, png_output, AttentionArg, BackendArg, ModelArg, ScheduleArg, ThreadsArg,
};
use srdd::backend::{sample_batch_cuda, Backend};
use srdd::pool::Pool;
use srdd::report::Timing;
use srdd::zero_shot::{
    auto_class, downscale_box, edit_region, keep_mask, paste_back_feathered, psnr, read_mask,
    read_model_image, read_upscale_image, reconstruct, sample_forced, tokens_of, upscale_from,
    upscale_source,
};
use srdd::{grid, png_bytes, sample_batch, write_atomic, Image, ResampleChoice};
use srdd_core::forward::MAX_BATCH;
use srdd_core::generate::{Guidance, Plan, SampleOptions, StepSettings, StepTable};
use srdd_core::{Attention, Model, Schedule};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "srdd",
    version,
    about = "Sample images with an SRDD / VAR model (.srdd), and edit, reconstruct or upscale images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every sampling command shares.
#[derive(Args, Clone)]
struct Sampling {
    #[command(flatten)]
    model: ModelArg,
    /// RNG seed (of the first image; image i uses seed + i).
    #[arg(
        short,
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = parse_seed
    )]
    seed: u64,
    /// Classifier-free guidance strength (0 disables guidance; default: the model's
    /// `default_cfg`, else the official 1.5).
    #[arg(long, allow_negative_numbers = true)]
    cfg: Option<f32>,
    /// Guidance per step: `linear` (official ramp cfg·k/(steps−1)), `constant` (cfg at every
    /// step), or a comma list of per-step weights t.
    #[arg(long, default_value = "linear", allow_negative_numbers = true)]
    cfg_schedule: String,
    /// Keep the K most likely tokens (0: all; default: the model's `default_top_k`, else
    /// min(900, vocabulary)); one value, or a comma list with one value per step.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    top_k: Vec<u32>,
    /// Nucleus mass (0: off; default: the model's `default_top_p`, else 0.96); one value or one
    /// per step.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    top_p: Vec<f32>,
    /// Logit temperature; one value or one per step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1.0",
        allow_negative_numbers = true
    )]
    temperature: Vec<f32>,
    /// Refinement passes per step (the first step is never refined); one value or one per step.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    refine: Vec<u8>,
    /// Which tokens a refinement pass draws again: `fraction:F` (the least confident F of the
    /// tokens), `threshold:P` (confidence below P), `learned` (the scorer stored in the model),
    /// or `keep` (none).
    #[arg(long, default_value = "fraction:0.25")]
    resample: String,
    #[command(flatten)]
    attention: AttentionArg,
    #[command(flatten)]
    schedule: ScheduleArg,
    /// Tokens per FFN / head chunk (smaller: fewer arena bytes, same results).
    #[arg(long, default_value_t = 0)]
    chunk: u16,
    /// Decode in bands of this many image rows (0: whole image; smaller arena, same image).
    #[arg(long, default_value_t = 0)]
    band_rows: u16,
    #[command(flatten)]
    threads: ThreadsArg,
}

/// What `edit` and `upscale` share: the source image, the class that steers what they generate,
/// the sampling options and the output.
#[derive(Args, Clone)]
struct ZeroShot {
    /// Input PNG (edit: the model's size; upscale: square, side dividing the model's).
    image: PathBuf,
    /// Class to steer what is generated: a number, a class name stored in the model, `null`, or
    /// `auto` (the class under which the model finds the input's tokens most likely).
    #[arg(long, default_value = "auto")]
    class: String,
    #[command(flatten)]
    s: Sampling,
    /// Output PNG.
    #[arg(short, long)]
    output: PathBuf,
    /// Print one JSON object (settings, timings, output) instead of the text lines.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sample K images of one class and write a PNG (a grid when K > 1).
    #[command(
        after_help = "Examples:\n  srdd sample --class smileys -n 9 -o smileys.png\n  srdd sample --class all -n 8 -o grid.png            one row per class\n  srdd sample --class animals,food -n 4 --out-dir out/\n  srdd sample -m model.srdd --class 207 --cfg 1.5 --top-k 900 --top-p 0.96 -o x.png\n  srdd sample -m model.srdd --class 207 -n 64 --backend cuda -o x.png     on NVIDIA GPU 0"
    )]
    Sample {
        /// Class: a number, a class name stored in the model, or `null`; several, comma-separated,
        /// or `all`, give one grid row per class (`--count` images each).
        #[arg(long)]
        class: String,
        /// Number of images per class (image i uses seed + i).
        #[arg(short = 'n', long, default_value_t = 1)]
        count: usize,
        /// Images sampled together as one batch through the backend (2 rows each with guidance;
        /// results are identical to one at a time).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[command(flatten)]
        s: Sampling,
        #[command(flatten)]
        backend: BackendArg,
        /// Output PNG (one image, or a grid of them).
        #[arg(short, long, required_unless_present = "out_dir")]
        output: Option<PathBuf>,
        /// Also (or instead) write one PNG per image into this directory, named `CLASS-SEED.png`.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Grid columns (default: `--count` with several classes, else near-square).
        #[arg(long)]
        cols: Option<usize>,
        /// Print one JSON object (settings, timings, output) instead of the text lines.
        #[arg(long)]
        json: bool,
    },
    /// Encode an image to tokens and decode it again; prints the PSNR.
    #[command(
        after_help = "Example:\n  srdd reconstruct in.png -o rec.png                   prints the PSNR"
    )]
    Reconstruct {
        /// Input PNG of the model's size.
        image: PathBuf,
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        schedule: ScheduleArg,
        #[command(flatten)]
        threads: ThreadsArg,
        /// Output PNG.
        #[arg(short, long)]
        output: PathBuf,
        /// Print one JSON object (timings, PSNR, output) instead of the text lines.
        #[arg(long)]
        json: bool,
    },
    /// Inpaint or outpaint: regenerate the masked region, keep the rest (official rule: the
    /// source tokens are forced where the keep mask, resized to each step, is above 0.5).
    #[command(
        after_help = "Examples:\n  srdd edit in.png --box 8,8,24,24 -o inpaint.png        class: auto\n  srdd edit in.png --box 8,8,24,24 --invert -o out.png   outpainting\n  srdd edit in.png --mask mask.png --class animals -o e.png\n  srdd edit in.png --box 8,8,24,24 --feather 4 -o soft.png   soft seam"
    )]
    Edit {
        /// Mask PNG of the same size: white = generate, black = keep.
        #[arg(long)]
        mask: Option<PathBuf>,
        /// Generate inside the pixel box x0,y0,x1,y1 (instead of a mask file).
        #[arg(long = "box", value_delimiter = ',')]
        r#box: Option<Vec<usize>>,
        /// Swap generate and keep (outpainting with a box).
        #[arg(long)]
        invert: bool,
        /// Copy every kept pixel of the input into the output unchanged (the default).
        #[arg(long, overrides_with = "no_paste_back")]
        paste_back: bool,
        /// Leave the kept region as the decoder drew it (re-encoded, not the input's pixels).
        #[arg(long, overrides_with = "paste_back")]
        no_paste_back: bool,
        /// Feather the paste-back seam over N pixels: an edited pixel at chessboard distance
        /// d < N from the kept region blends the input (weight (N − d)/N) with the generated
        /// pixel; kept pixels stay byte-identical (default 0: a hard seam).
        #[arg(long, value_name = "N")]
        feather: Option<usize>,
        #[command(flatten)]
        z: ZeroShot,
    },
    /// Super-resolution: a low-resolution PNG fixes the coarse steps, the rest are sampled.
    #[command(
        after_help = "Example:\n  srdd upscale in16.png -o up.png                       16x16 -> the model's size"
    )]
    Upscale {
        /// Steps fixed by the input (default: those whose patch size the input determines).
        #[arg(long)]
        keep_steps: Option<usize>,
        #[command(flatten)]
        z: ZeroShot,
    },
    /// Measure sampling speed: images/s, seconds per scale and decoder, GMAC/s against a
    /// kernel peak measured on the spot, peak RSS, ISA and CPU.
    #[command(
        after_help = "Examples:\n  srdd bench --images 64\n  srdd bench -m d16-int8.srdd --images 1 --batch 1 --class 980 --json\n  srdd bench -m d16-int8.srdd --images 64 --batch 16 --backend cuda"
    )]
    Bench {
        #[command(flatten)]
        model: ModelArg,
        /// Images measured (after one warm-up batch).
        #[arg(long, default_value_t = 16)]
        images: usize,
        /// Images per batch (batches run one after another on one pool).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Class: a number, a class name stored in the model, or `null`.
        #[arg(long, default_value = "0")]
        class: String,
        #[command(flatten)]
        schedule: ScheduleArg,
        #[command(flatten)]
        attention: AttentionArg,
        #[command(flatten)]
        threads: ThreadsArg,
        #[command(flatten)]
        backend: BackendArg,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's configuration and arena sizes.
    #[command(after_help = "Examples:\n  srdd info\n  srdd info -m model.srdd --classes")]
    Info {
        /// Model file (default: the built-in model); `--model FILE` works too.
        file: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArg,
        /// List the classes, one `label name` line each (the null class last), and nothing else.
        #[arg(long)]
        classes: bool,
    },
}

/// One batch of `sample`: its images, or its one-line error; `None` when it did not run.
type BatchResult = Option<Result<Vec<Image>, String>>;

/// One value for every step, or exactly one per step.
fn per_step<T: Copy>(name: &str, v: &[T], steps: usize) -> Result<Option<Vec<T>>, String> {
    match v.len() {
        0 | 1 => Ok(None),
        n if n == steps => Ok(Some(v.to_vec())),
        n => Err(format!(
            "--{name}: {n} values for {steps} steps (give one value, or one per step)"
        )),
    }
}

/// Options (for `class`), schedule and policy of a sampling command, validated against the model
/// and planned.
fn build(
    s: &Sampling,
    m: &Model<'_>,
    class: &str,
) -> Result<(SampleOptions, Schedule, ResampleChoice), String> {
    let label = label_of(m, class)?;
    let sched = s.schedule.resolve(&m.config)?;
    let steps = sched.len();
    // Defaults: the sampling settings the model's author stored, else the official ones.
    let d = SampleOptions::for_model(m, label);
    let cfg_scale = s.cfg.unwrap_or(d.cfg);
    let mut o = SampleOptions {
        cfg: cfg_scale,
        top_k: s.top_k.first().copied().unwrap_or(d.top_k),
        top_p: s.top_p.first().copied().unwrap_or(d.top_p),
        temperature: s.temperature.first().copied().unwrap_or(1.0),
        refine: s.refine.first().copied().unwrap_or(0),
        seed: s.seed,
        chunk: s.chunk,
        band_rows: s.band_rows,
        attention: s.attention.or(m.config.attention),
        ..d
    };
    let guidance_list: Option<Vec<f32>> = match s.cfg_schedule.as_str() {
        shape @ ("linear" | "constant") => {
            o.guidance = if cfg_scale == 0.0 {
                Guidance::Off
            } else if shape == "linear" {
                Guidance::Linear
            } else {
                Guidance::Constant
            };
            None
        }
        list => {
            let v: Vec<f32> = list
                .split(',')
                .map(|x| x.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    format!("--cfg-schedule {list}: expected linear, constant or numbers")
                })?;
            if v.len() != steps {
                return Err(format!(
                    "--cfg-schedule: {} weights for {steps} steps",
                    v.len()
                ));
            }
            Some(v)
        }
    };
    let top_k = per_step("top-k", &s.top_k, steps)?;
    let top_p = per_step("top-p", &s.top_p, steps)?;
    let temperature = per_step("temperature", &s.temperature, steps)?;
    let refine = per_step("refine", &s.refine, steps)?;
    if guidance_list.is_some()
        || top_k.is_some()
        || top_p.is_some()
        || temperature.is_some()
        || refine.is_some()
    {
        let mut t = StepTable::filled(
            StepSettings {
                guidance: 0.0,
                temperature: o.temperature,
                top_k: o.top_k,
                top_p: o.top_p,
                refine: o.refine,
            },
            steps,
        );
        for k in 0..steps {
            let r = &mut t.rows[k];
            r.guidance = match &guidance_list {
                Some(g) => g[k],
                None => o.guidance_at(k, steps) as f32,
            };
            if let Some(v) = &top_k {
                r.top_k = v[k];
            }
            if let Some(v) = &top_p {
                r.top_p = v[k];
            }
            if let Some(v) = &temperature {
                r.temperature = v[k];
            }
            if let Some(v) = &refine {
                r.refine = v[k];
            }
        }
        o.table = Some(t);
    }
    let policy = ResampleChoice::parse(&s.resample, m)?;
    // Validate everything (and the arena plan) before any work.
    Plan::new(&m.config, &o, &sched).map_err(|e| e.to_string())?;
    Ok((o, sched, policy))
}

fn label_of(m: &Model<'_>, class: &str) -> Result<u32, String> {
    if let Ok(n) = class.parse::<u32>() {
        if n > m.config.var.num_classes {
            return Err(format!(
                "class {n} is out of range: the model has classes 0..{} (and {} = null)",
                m.config.var.num_classes - 1,
                m.config.var.num_classes
            ));
        }
    }
    m.class_index(class).ok_or_else(|| {
        format!(
            "unknown class {class:?}; classes: {}",
            m.meta("class_names").unwrap_or("<no names stored>")
        )
    })
}

/// `--class auto`: whether the class is left to the model.
fn is_auto(class: &str) -> bool {
    class.trim().eq_ignore_ascii_case("auto")
}

/// A class label as shown to people: its stored name, `null`, or the number.
fn class_display(m: &Model<'_>, label: u32) -> String {
    if label == m.config.var.num_classes {
        return "null".into();
    }
    m.meta("class_names")
        .and_then(|n| n.split(',').nth(label as usize))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map_or_else(|| label.to_string(), str::to_string)
}

/// Resolves `--class auto` on the tokens of the input (the first `steps` steps): sets
/// `opts.label` to the class picked and returns it.
fn resolve_auto(
    m: &Model<'_>,
    opts: &mut SampleOptions,
    sched: &Schedule,
    tokens: &[u32],
    steps: usize,
    par: &dyn srdd_core::parallel::Parallel,
) -> Result<u32, String> {
    let (label, _) = auto_class(m, *opts, sched, tokens, steps, par).map_err(|e| e.to_string())?;
    opts.label = label;
    Ok(label)
}

/// The `class_auto` JSON fields and the text fragment for a class the model picked.
fn note_auto(
    m: &Model<'_>,
    auto: Option<u32>,
    j: &mut serde_json::Map<String, serde_json::Value>,
) -> String {
    match auto {
        Some(label) => {
            j.insert("class_auto".into(), label.into());
            j.insert("class_auto_name".into(), class_display(m, label).into());
            format!("; class auto: {} ({label})", class_display(m, label))
        }
        None => String::new(),
    }
}

fn progress(steps: u64) -> ProgressBar {
    progress_in(steps, "scales")
}

/// A progress bar of `len` `unit`s on a terminal's stderr (hidden otherwise).
fn progress_in(len: u64, unit: &str) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(len);
        let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed_precise}} eta {{eta}}");
        b.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    }
}

fn save(img: &Image, output: &Path) -> Result<(), String> {
    let png = png_bytes(img).map_err(|e| e.to_string())?;
    write_atomic(output, &png).map_err(|e| format!("{}: {e}", output.display()))
}

/// A per-step option as given: the list when one value per step was given, else the value used.
fn one_or_list<T: Copy + Into<serde_json::Value>>(given: &[T], used: T) -> serde_json::Value {
    if given.len() > 1 {
        given.iter().map(|v| (*v).into()).collect()
    } else {
        used.into()
    }
}

/// The sampling settings of a command for its `--json` object: what `s` asked for, resolved
/// against the model's defaults (`o`, `sched`).
fn sampling_json(
    s: &Sampling,
    o: &SampleOptions,
    sched: &Schedule,
) -> serde_json::Map<String, serde_json::Value> {
    let mut j = serde_json::Map::new();
    j.insert("model".into(), s.model.name().into());
    j.insert("class".into(), o.label.into());
    j.insert("seed".into(), s.seed.into());
    j.insert("cfg".into(), o.cfg.into());
    j.insert("cfg_schedule".into(), s.cfg_schedule.as_str().into());
    j.insert("top_k".into(), one_or_list(&s.top_k, o.top_k));
    j.insert("top_p".into(), one_or_list(&s.top_p, o.top_p));
    j.insert(
        "temperature".into(),
        one_or_list(&s.temperature, o.temperature),
    );
    j.insert("refine".into(), one_or_list(&s.refine, o.refine));
    j.insert("resample".into(), s.resample.as_str().into());
    j.insert("schedule".into(), sched.pn.as_slice().into());
    j.insert("attention".into(), format!("{:?}", o.attention).into());
    j
}

/// How a command ends: with `--json`, one object (`fields`, the output path and `timing`) on
/// stdout; else the text line (on stderr where it always went: `sample`) and the closing
/// timing line on stderr.
/// A file-name part for class `label`: its stored name (anything but letters, digits, `-` and
/// `_` replaced by `_`), `null` for the null class, else the number.
fn class_file_name(m: &Model<'_>, label: u32) -> String {
    if label == m.config.var.num_classes {
        return "null".into();
    }
    let name = m
        .meta("class_names")
        .and_then(|n| n.split(',').nth(label as usize))
        .map(str::trim)
        .filter(|n| !n.is_empty());
    match name {
        Some(n) => n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        None => label.to_string(),
    }
}

fn finish(
    json: bool,
    text: String,
    text_on_stderr: bool,
    mut fields: serde_json::Map<String, serde_json::Value>,
    output: &Path,
    timing: Timing,
) {
    if json {
        fields.insert("output".into(), output.display().to_string().into());
        timing.add_to(&mut fields);
        println!("{}", serde_json::Value::Object(fields));
        return;
    }
    if text_on_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    eprintln!("{}", timing.line());
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Bench {
            model,
            images,
            batch,
            class,
            schedule,
            attention,
            threads,
            backend,
            json,
        } => {
            srdd::bench::check_counts(images, batch)?;
            let bytes = model.read()?;
            let m = model.open(&bytes)?;
            let label = label_of(&m, &class)?;
            let settings = srdd::bench::BenchSettings {
                images,
                batch,
                threads: threads.count(),
                opts: SampleOptions {
                    attention: attention.or(m.config.attention),
                    ..SampleOptions::for_model(&m, label)
                },
                sched: schedule.resolve(&m.config)?,
            };
            let opened = Backend::open(backend.backend).map_err(|e| e.to_string())?;
            if let Some(why) = &opened.fallback {
                eprintln!("srdd: note: --backend auto: {why}; measuring the CPU");
            }
            let report = srdd::bench::run(&m, &settings, &opened.backend)?;
            if json {
                println!("{}", report.json(&settings, &m));
            } else {
                println!("{}", report.text(&settings, &m));
            }
            Ok(())
        }
        Cmd::Info {
            file,
            model,
            classes,
        } => {
            if file.is_some() && model.model.is_some() {
                return Err("give the model as FILE or as --model FILE, not both".into());
            }
            let file = ModelArg {
                model: file.or(model.model),
            };
            let bytes = file.read()?;
            let m = file.open(&bytes)?;
            let c = &m.config;
            if classes {
                let names: Vec<&str> = m
                    .meta("class_names")
                    .map_or(Vec::new(), |n| n.split(',').collect());
                for label in 0..c.var.num_classes as usize {
                    match names.get(label) {
                        Some(name) => println!("{label} {name}"),
                        None => println!("{label}"),
                    }
                }
                println!("{} null", c.var.num_classes);
                return Ok(());
            }
            println!("{}: {} bytes", file.name(), bytes.as_bytes().len());
            println!(
                "image {0}x{0}, {1} classes, vocabulary {2}, weights {3:?}, attention {4:?}, encoder {5}",
                c.image_side(),
                c.var.num_classes,
                c.vae.vocab_size,
                c.weights,
                c.attention,
                if m.weights.encoder.is_some() { "yes" } else { "no" }
            );
            println!(
                "transformer depth {} width {} heads {}",
                c.var.depth, c.var.embed_dim, c.var.num_heads
            );
            println!(
                "patch_nums {:?} phi {:?}",
                c.patch_nums.as_slice(),
                c.phi_index.as_slice()
            );
            for (name, sched) in ScheduleArg::named(c) {
                match sched {
                    Ok(sc) => println!("schedule {name}: {:?}", sc.pn.as_slice()),
                    Err(e) => println!("schedule {name}: not for this model ({e})"),
                }
            }
            if let Some(n) = m.meta("class_names") {
                println!("classes: {n}");
            }
            if let Some(n) = m.meta("resample_policy") {
                println!("learned resample policy: {n}");
            }
            for k in ["default_cfg", "default_top_k", "default_top_p"] {
                if let Some(v) = m.meta(k) {
                    println!("{k}: {v}");
                }
            }
            for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
                let o = SampleOptions {
                    attention: att,
                    ..SampleOptions::for_model(&m, 0)
                };
                if let Ok(p) = Plan::new(c, &o, &Schedule::full(c)) {
                    println!("arena for one CFG sample ({an}): {} bytes", p.arena_bytes());
                }
            }
            let o = SampleOptions::for_model_low_memory(&m, 0);
            if let Ok(p) = Plan::new(c, &o, &Schedule::full(c)) {
                println!(
                    "arena for one CFG sample (markov, --chunk 1 --band-rows 1): {} bytes",
                    p.arena_bytes()
                );
            }
            Ok(())
        }
        Cmd::Sample {
            class,
            count,
            batch,
            s,
            backend,
            output,
            out_dir,
            cols,
            json,
        } => {
            let start = Instant::now();
            if let Some(o) = &output {
                png_output(o)?;
            }
            let bytes = s.model.read()?;
            let m = s.model.open(&bytes)?;
            if count == 0 || count > 4096 {
                return Err("--count must be in 1..=4096".into());
            }
            if cols == Some(0) {
                return Err("--cols must be at least 1".into());
            }
            let classes: Vec<String> = if class.trim().eq_ignore_ascii_case("all") {
                (0..m.config.var.num_classes)
                    .map(|l| l.to_string())
                    .collect()
            } else {
                class.split(',').map(|c| c.trim().to_string()).collect()
            };
            let mut labels = Vec::new();
            for c in &classes {
                labels.push(label_of(&m, c)?);
            }
            if labels.len() * count > 4096 {
                return Err("--count × classes must be at most 4096".into());
            }
            let (opts, sched, policy) = build(&s, &m, &classes[0])?;
            if batch == 0 || batch > MAX_BATCH {
                return Err(format!("--batch must be in 1..={MAX_BATCH}"));
            }
            // Opened once (the kernels compile here), after every option is checked.
            let opened = Backend::open(backend.backend).map_err(|e| e.to_string())?;
            if let Some(why) = &opened.fallback {
                eprintln!("srdd: note: --backend auto: {why}; sampling on the CPU");
            }
            let backend = opened.backend;
            // Several images: the bar counts finished images (each image ticks once per scale);
            // one image: its scales.
            let steps = sched.len() as u64;
            let total = (count * labels.len()) as u64;
            let bar = if total > 1 {
                progress_in(total, "images")
            } else {
                progress(steps)
            };
            let ticks = std::sync::atomic::AtomicU64::new(0);
            let tick = || {
                let t = ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if total == 1 || t.is_multiple_of(steps) {
                    bar.inc(1);
                }
            };
            let cores = s.threads.count();
            // (class row, first image, images): a batch never mixes classes.
            let batches: Vec<(usize, usize, usize)> = (0..labels.len())
                .flat_map(|r| {
                    (0..count)
                        .step_by(batch)
                        .map(move |i0| (r, i0, batch.min(count - i0)))
                })
                .collect();
            // The options of batch `j`: its class, and the seed of its first image.
            let batch_opts = |j: usize| {
                let (r, i0, _) = batches[j];
                let mut o = opts;
                o.label = labels[r];
                o.seed = s.seed.wrapping_add(i0 as u64);
                o
            };
            let results: Vec<BatchResult> = match &backend {
                Backend::Cpu => {
                    // Batches in parallel when there are enough of them, else threads inside
                    // each batch.
                    let threads = cores.min(batches.len());
                    let inner = (cores / threads).max(1);
                    let results: Mutex<Vec<BatchResult>> =
                        Mutex::new(batches.iter().map(|_| None).collect());
                    let next = Mutex::new(0usize);
                    std::thread::scope(|sc| {
                        for _ in 0..threads {
                            // One persistent pool per outer thread, for all of its batches.
                            sc.spawn(|| {
                                let inner = Pool::new(inner);
                                loop {
                                    let j = {
                                        let mut n = next.lock().unwrap();
                                        if *n >= batches.len() {
                                            return;
                                        }
                                        *n += 1;
                                        *n - 1
                                    };
                                    let len = batches[j].2;
                                    let r = sample_batch(
                                        &m,
                                        batch_opts(j),
                                        &sched,
                                        len,
                                        &policy,
                                        &inner,
                                        &tick,
                                    );
                                    results.lock().unwrap()[j] = Some(r.map_err(|e| e.to_string()));
                                }
                            });
                        }
                    });
                    results.into_inner().unwrap()
                }
                Backend::Cuda(gpu) => {
                    // One device, one upload of the weights; the batches one after another,
                    // their token draws on the CPU threads.
                    let dm = srdd_gpu::DeviceModel::upload(gpu, &m).map_err(|e| e.to_string())?;
                    let pool = Pool::new(cores);
                    let mut results = Vec::with_capacity(batches.len());
                    for (j, &(_, _, len)) in batches.iter().enumerate() {
                        let r = sample_batch_cuda(
                            &dm,
                            &m,
                            batch_opts(j),
                            &sched,
                            len,
                            &policy,
                            &pool,
                            &tick,
                        );
                        let failed = r.is_err();
                        results.push(Some(r.map_err(|e| e.to_string())));
                        if failed {
                            break;
                        }
                    }
                    results
                }
            };
            bar.finish_and_clear();
            let mut images = Vec::new();
            for r in results {
                match r {
                    Some(Ok(ims)) => images.extend(ims),
                    Some(Err(e)) => return Err(e),
                    None => return Err("internal: an image was not produced".into()),
                }
            }
            // One PNG per image, named after its class and seed.
            let mut written = Vec::new();
            if let Some(dir) = &out_dir {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for (k, im) in images.iter().enumerate() {
                    let (r, i) = (k / count, k % count);
                    let seed = s.seed.wrapping_add(i as u64);
                    let path = dir.join(format!("{}-{seed}.png", class_file_name(&m, labels[r])));
                    save(im, &path)?;
                    written.push(path.display().to_string());
                }
            }
            let n_images = images.len();
            let img = if images.len() == 1 {
                images.pop().unwrap()
            } else {
                // One row per class when there are several, else near-square.
                let cols = cols.or((labels.len() > 1).then_some(count));
                grid(&images, cols, 2)
            };
            if let Some(o) = &output {
                save(&img, o)?;
            }
            let mut j = sampling_json(&s, &opts, &sched);
            j.insert("count".into(), count.into());
            j.insert("classes".into(), labels.clone().into());
            j.insert(
                "seeds".into(),
                (0..count)
                    .map(|i| s.seed.wrapping_add(i as u64))
                    .collect::<Vec<u64>>()
                    .into(),
            );
            j.insert("batch".into(), batch.into());
            j.insert("width".into(), img.width.into());
            j.insert("height".into(), img.height.into());
            j.insert("images_written".into(), written.clone().into());
            let shown: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            let mut text = match &output {
                Some(o) => format!(
                    "wrote {} ({}x{}, class {}, seed {})",
                    o.display(),
                    img.width,
                    img.height,
                    shown.join(","),
                    s.seed
                ),
                None => String::new(),
            };
            if let Some(dir) = &out_dir {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!(
                    "wrote {} images to {}",
                    written.len(),
                    dir.display()
                ));
            }
            let timing = Timing::since(start, n_images, cores).on(backend.name(), backend.device());
            let shown_path = output.clone().or(out_dir.clone()).unwrap_or_default();
            finish(json, text, true, j, &shown_path, timing);
            Ok(())
        }
        Cmd::Reconstruct {
            image,
            model,
            schedule,
            threads,
            output,
            json,
        } => {
            let start = Instant::now();
            png_output(&output)?;
            let bytes = model.read()?;
            let m = model.open(&bytes)?;
            let sched = schedule.resolve(&m.config)?;
            let src = read_model_image(&m, &image).map_err(|e| e.to_string())?;
            let par = threads.parallel();
            let out = reconstruct(&m, &sched, &src, &par).map_err(|e| e.to_string())?;
            save(&out, &output)?;
            let db = psnr(&src, &out, None);
            let mut j = serde_json::Map::new();
            j.insert("model".into(), model.name().into());
            j.insert("image".into(), image.display().to_string().into());
            j.insert("schedule".into(), sched.pn.as_slice().into());
            j.insert("psnr_db".into(), db.into());
            let text = format!(
                "wrote {}: PSNR {db:.2} dB against {}",
                output.display(),
                image.display()
            );
            let timing = Timing::since(start, 1, threads.count());
            finish(json, text, false, j, &output, timing);
            Ok(())
        }
        Cmd::Edit {
            mask,
            r#box,
            invert,
            paste_back: _,
            no_paste_back,
            feather,
            z,
        } => {
            let start = Instant::now();
            let (s, image, output) = (&z.s, &z.image, &z.output);
            png_output(output)?;
            if feather.is_some() && no_paste_back {
                return Err(
                    "--feather blends the pasted-back input; drop --no-paste-back to use it".into(),
                );
            }
            let feather = feather.unwrap_or(0);
            if mask.is_some() && r#box.is_some() {
                return Err("give either --mask FILE or --box x0,y0,x1,y1, not both".into());
            }
            let bytes = s.model.read()?;
            let m = s.model.open(&bytes)?;
            let auto = is_auto(&z.class);
            let (mut opts, sched, policy) = build(s, &m, if auto { "null" } else { &z.class })?;
            let side = m.config.image_side();
            let src = read_model_image(&m, image).map_err(|e| e.to_string())?;
            let mask = match &mask {
                Some(p) => Some(read_mask(p, side).map_err(|e| e.to_string())?),
                None => None,
            };
            // Shared with the `edit_upscale` fuzz target.
            let generate =
                edit_region(side, mask, r#box.as_deref(), invert).map_err(|e| e.to_string())?;
            let p = m.config.latent_side();
            let par = s.threads.parallel();
            let toks = tokens_of(&m, &sched, &src, &par).map_err(|e| e.to_string())?;
            let class_auto = if auto {
                Some(resolve_auto(
                    &m,
                    &mut opts,
                    &sched,
                    &toks,
                    sched.len(),
                    &par,
                )?)
            } else {
                None
            };
            let keep = keep_mask(&generate, side, p);
            let bar = progress(sched.len() as u64);
            let mut pol = policy.instance();
            let mut out =
                sample_forced(&m, opts, &sched, &toks, &keep, &mut *pol, &par, &mut || {
                    bar.inc(1)
                })
                .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            let kept: Vec<bool> = generate.iter().map(|g| !g).collect();
            let generated = generate.iter().filter(|g| **g).count();
            // Measured before paste-back: how faithfully the model itself kept the region.
            let db = psnr(&src, &out, Some(&kept));
            let pasted = !no_paste_back;
            if pasted {
                paste_back_feathered(&mut out, &src, &generate, feather);
            }
            save(&out, output)?;
            let mut j = sampling_json(s, &opts, &sched);
            j.insert("image".into(), image.display().to_string().into());
            j.insert("pixels_generated".into(), generated.into());
            j.insert("pixels".into(), generate.len().into());
            j.insert("psnr_kept_db".into(), db.into());
            j.insert("paste_back".into(), pasted.into());
            j.insert("feather".into(), feather.into());
            let auto_text = note_auto(&m, class_auto, &mut j);
            let text = format!(
                "wrote {}: {generated} of {} pixels generated; PSNR of the kept region {db:.2} dB{}{auto_text}",
                output.display(),
                generate.len(),
                match (pasted, feather) {
                    (false, _) => String::new(),
                    (true, 0) => " before paste-back (kept pixels pasted back)".to_string(),
                    (true, n) => format!(
                        " before paste-back (kept pixels pasted back, seam feathered over {n} px)"
                    ),
                },
            );
            let timing = Timing::since(start, 1, s.threads.count());
            finish(z.json, text, false, j, output, timing);
            Ok(())
        }
        Cmd::Upscale { keep_steps, z } => {
            let start = Instant::now();
            png_output(&z.output)?;
            let bytes = z.s.model.read()?;
            let m = z.s.model.open(&bytes)?;
            let auto = is_auto(&z.class);
            let (mut opts, sched, policy) = build(&z.s, &m, if auto { "null" } else { &z.class })?;
            let src = read_upscale_image(&m, &sched, &z.image).map_err(|e| e.to_string())?;
            let par = z.s.threads.parallel();
            let (forced, kept) =
                upscale_source(&m, &sched, &src, keep_steps, &par).map_err(|e| e.to_string())?;
            // Only the steps the input fixes are its own; the finer tokens of its blurred
            // resize say nothing about the class.
            let class_auto = if auto {
                Some(resolve_auto(&m, &mut opts, &sched, &forced, kept, &par)?)
            } else {
                None
            };
            let bar = progress(sched.len() as u64);
            let mut pol = policy.instance();
            let out = upscale_from(&m, opts, &sched, &forced, &mut *pol, &par, &mut || {
                bar.inc(1)
            })
            .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            save(&out, &z.output)?;
            let db = psnr(&src, &downscale_box(&out, src.width), None);
            let mut j = sampling_json(&z.s, &opts, &sched);
            j.insert("image".into(), z.image.display().to_string().into());
            j.insert("input_side".into(), src.width.into());
            j.insert("output_side".into(), out.width.into());
            j.insert("steps_fixed".into(), kept.into());
            j.insert("psnr_downscaled_db".into(), db.into());
            let auto_text = note_auto(&m, class_auto, &mut j);
            let text = format!(
                "wrote {path} ({w}x{w} from {lw}x{lw}; {kept} of {steps} steps fixed by the input); PSNR of the output downscaled to the input {db:.2} dB{auto_text}",
                path = z.output.display(),
                w = out.width,
                lw = src.width,
                steps = sched.len(),
            );
            let timing = Timing::since(start, 1, z.s.threads.count());
            finish(z.json, text, false, j, &z.output, timing);
            Ok(())
        }
    }
}

/// Clap's complaint about a value (`--seed -3`), as srdd's one line: its first line without
/// clap's `error: ` prefix and the usage/help lines after it.
fn value_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid value");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            eprintln!("srdd: {}", value_error_line(&e));
            return ExitCode::from(2);
        }
        // Help, version and unknown arguments: clap's own text and exit status.
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srdd: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique short flags, defaults that parse, …), which a
    /// release build skips at run time.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

//! `srdd-tools`: pack official checkpoints, inspect `.srdd` files, run parity fixtures.

use clap::{Parser, Subcommand, ValueEnum};
use srdd::args::{AttentionArg, ScheduleArg, ThreadsArg};
use srdd_core::aligned::AlignedBytes;
use srdd_core::{Attention, WeightFormat};
use srdd_tools::backend_parity::{self, Backend};
use srdd_tools::checkpoint::{open_checkpoint, read_state_dict, Role};
use srdd_tools::convert::{pack, pack_to_file, KeepRule, PackOptions};
use srdd_tools::smooth::{parse_alpha, Calibration, SmoothError, Smoothing};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "srdd-tools",
    version,
    about = "Convert, inspect and verify srdd models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--weights`: the storage type of Linear/Conv weights (any case: `INT8` = `int8`).
#[derive(Clone, Copy, ValueEnum)]
enum Weights {
    /// int8 with one f32 scale per output channel, in GEMM panels (smallest, fastest).
    Int8,
    /// IEEE f16.
    F16,
    /// IEEE f32 (the checkpoint's own values).
    F32,
}

impl From<Weights> for WeightFormat {
    fn from(w: Weights) -> Self {
        match w {
            Weights::F32 => WeightFormat::F32,
            Weights::F16 => WeightFormat::F16,
            Weights::Int8 => WeightFormat::Int8,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert official checkpoints (.pth / .safetensors) into one .srdd file.
    #[command(
        after_help = "Examples:\n  srdd-tools pack --vae vae_ch160v4096z32.pth --var var_d16.pth --weights int8 -o d16-int8.srdd\n  srdd-tools pack --vae vae_ch160v4096z32.pth --var var_d16.pth --weights int8 --smooth 0.5 --calib 16 -o d16-int8-s.srdd"
    )]
    Pack {
        /// VQVAE checkpoint (e.g. vae_ch160v4096z32.pth).
        #[arg(long)]
        vae: PathBuf,
        /// VAR checkpoint (e.g. var_d16.pth).
        #[arg(long)]
        var: PathBuf,
        /// Storage type of Linear/Conv weights.
        #[arg(long, value_enum, ignore_case = true, default_value = "f32")]
        weights: Weights,
        #[command(flatten)]
        schedule: ScheduleArg,
        #[command(flatten)]
        attention: AttentionArg,
        /// Leave the VQVAE encoder out (smaller file; no reconstruction or editing).
        #[arg(long)]
        no_encoder: bool,
        /// Class names in label order, comma-separated (lets `srdd sample --class NAME` work).
        /// Default: none (classes are numbers only).
        #[arg(long)]
        class_names: Option<String>,
        /// Learned resampling policy `w_confidence,w_entropy,w_step,bias` (as printed by
        /// tools/train/train_policy.py); `srdd … --resample learned` uses it. Default: none.
        /// `--resample-policy` is the old spelling.
        #[arg(
            long = "resample",
            alias = "resample-policy",
            // The weights are often negative: `--resample -3.5,…` is a value, not a flag.
            allow_hyphen_values = true,
            value_name = "W_CONFIDENCE,W_ENTROPY,W_STEP,BIAS"
        )]
        resample: Option<String>,
        /// Extra metadata lines `key=value` (repeatable). Default: none.
        #[arg(long)]
        meta: Vec<String>,
        /// Keep matching Linear/Conv weights more precise than --weights (repeatable or
        /// comma-separated): canonical names as `inspect` lists them, `*` matches any run of
        /// characters, `=f32` or `=f16` (default) picks the format; `=a16` keeps matching
        /// Linear weights int8 and runs them with two-pass activations (no bytes, twice the
        /// int8 GEMM work). The last matching rule wins.
        #[arg(long, value_name = "NAME[=f16|f32|a16]", value_delimiter = ',')]
        keep: Vec<String>,
        /// Automatic precision plan (with --weights int8): keep the weights that measure most
        /// sensitive in --plan-format, best per byte first, while the file grows by at most
        /// GROWTH over the plain int8 file: `N%` of its length (e.g. `10%`) or `N` bytes (e.g.
        /// `62720`). --keep rules apply first and count against it; 0 is the plain int8 file.
        #[arg(long, value_name = "GROWTH")]
        max_growth: Option<String>,
        /// With --max-growth: the format of the weights the plan keeps.
        #[arg(long, value_enum, ignore_case = true, value_name = "f16|f32")]
        plan_format: Option<Weights>,
        /// Smooth the outliers of the AdaLN-modulated Linear inputs (mat_qkv, ffn.fc1, head;
        /// SmoothQuant, folded into the weights) with migration strength ALPHA in [0, 1]
        /// (default 0.5), calibrated on --calib images sampled from the float model.
        #[arg(
            long,
            value_name = "ALPHA",
            num_args = 0..=1,
            default_missing_value = "0.5",
            allow_negative_numbers = true
        )]
        smooth: Option<String>,
        /// Calibration images of --smooth and --max-growth, sampled from the float model
        /// (classes spread, seeds 1..N; default 16).
        #[arg(long, value_name = "N")]
        calib: Option<usize>,
        /// With --weights int8: a diagnostic file that stores every weight int8 would quantize
        /// as f32 holding its int8 rounding (q * scale), so it runs with f32 activations: the
        /// int8 weight error alone (rate it with quant-report --f32 F32_FILE --int8 THIS_FILE).
        #[arg(long)]
        fake_quant: bool,
        /// Store each AdaLN Linear (blocks.*.ada_lin, head_nm.ada_lin) as its output for every
        /// class label, computed here in f64 and stored as f32 (the default) or f16: no int8
        /// rounding, and smaller than the weights when the classes are few (9 + null: 37 % of
        /// the int8 weights' bytes in f32, 19 % in f16).
        #[arg(
            long,
            value_enum,
            ignore_case = true,
            num_args = 0..=1,
            default_missing_value = "f32",
            value_name = "f32|f16"
        )]
        ada_table: Option<Weights>,
        #[command(flatten)]
        threads: ThreadsArg,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print the header, tensor table and per-operation arena sizes.
    #[command(
        after_help = "Examples:\n  srdd-tools inspect models/default-int8.srdd\n  srdd-tools inspect -m models/default-int8.srdd --json\n  srdd-tools inspect models/default-int8.srdd --board all"
    )]
    Inspect {
        /// Model file (or give it with -m/--model).
        #[arg(value_name = "MODEL")]
        file: Option<PathBuf>,
        /// Model file, as `srdd` takes it (the same as the positional MODEL).
        #[arg(short, long = "model", value_name = "MODEL")]
        model: Option<PathBuf>,
        /// JSON output: config, typed metadata, parameters per module, tensors with their
        /// layout, and the arena of each operation with its nested buffers.
        #[arg(long)]
        json: bool,
        /// Instead of the tables: whether the model fits an edge board (flash, RAM) and its
        /// instructions and estimated time per image; NAME is a board or `all`.
        #[arg(long, value_name = "NAME")]
        board: Option<String>,
    },
    /// Run every case of a parity fixture directory (manifest.json schema), or with --backend
    /// compare the CPU engine with another backend op by op.
    #[command(
        after_help = "Examples:\n  srdd-tools parity tests/fixtures/tiny-official-schedule --weights int8\n  srdd-tools parity --backend cuda -m models/default-int8.srdd\n  srdd-tools parity --backend cuda tests/fixtures/emoji32 --json\n  srdd-tools parity --backend cpu -m models/default-int8.srdd   (self-check: every NMSE 0)\n\nWith --backend the exit status is 0 when every op, image and required greedy token is\nwithin its bound, 1 when one is not, 2 on an error (e.g. no CUDA driver)."
    )]
    Parity {
        /// Fixture directory.
        #[arg(value_name = "FIXTURE")]
        fixture: Option<PathBuf>,
        /// Fixture directory (the old spelling of the positional FIXTURE).
        #[arg(long = "fixture", value_name = "FIXTURE")]
        fixture_flag: Option<PathBuf>,
        /// Weight format to pack and run.
        #[arg(long, value_enum, ignore_case = true, default_value = "f32")]
        weights: Weights,
        /// Compare the CPU engine with this backend op by op (forced tokens, then free greedy
        /// runs) on the fixture (packed with --weights) and every --model; `cpu` compares it
        /// with a second CPU instance. Default: run the fixture's golden cases instead.
        #[arg(long, value_enum, ignore_case = true)]
        backend: Option<BackendArg>,
        /// Model file to compare with --backend (repeatable).
        #[arg(short, long = "model", value_name = "MODEL")]
        model: Vec<PathBuf>,
        /// JSON output (with --backend): per input the per-op table, the first op over its
        /// bound, the images' PSNR and the greedy token agreement.
        #[arg(long)]
        json: bool,
        /// Precision plan for the fixture's pack, as `pack --keep` (golden cases only).
        #[arg(long, value_name = "NAME[=f16|f32|a16]", value_delimiter = ',')]
        keep: Vec<String>,
        /// AdaLN tables in the fixture's pack, as `pack --ada-table` (golden cases only).
        #[arg(
            long,
            value_enum,
            ignore_case = true,
            num_args = 0..=1,
            default_missing_value = "f32",
            value_name = "f32|f16"
        )]
        ada_table: Option<Weights>,
        #[command(flatten)]
        threads: ThreadsArg,
    },
    /// What int8 weights cost against the float model: activation SQNR and outliers per layer,
    /// teacher-forced top-1 and KL per scale, decoder PSNR, forced and free token agreement.
    #[command(
        after_help = "Examples:\n  srdd-tools quant-report --var var_d16.pth --vae vae_ch160v4096z32.pth --calib 4\n  srdd-tools quant-report --f32 d16-f32.srdd --int8 d16-int8.srdd --json --plot report.png\n  srdd-tools quant-report --var var_d16.pth --vae vae_ch160v4096z32.pth --calib 16 --compare 0.5,0.8\n\nExit status 0 on a report, 2 on an error."
    )]
    QuantReport {
        /// Float model file (f32 or f16 weights); with --int8.
        #[arg(long = "f32", value_name = "MODEL", requires = "int8")]
        float: Option<PathBuf>,
        /// int8 model file; with --f32.
        #[arg(long, value_name = "MODEL", requires = "float")]
        int8: Option<PathBuf>,
        /// VAR checkpoint, packed in memory as f32 and int8 (with --vae).
        #[arg(long, requires = "vae", conflicts_with = "float")]
        var: Option<PathBuf>,
        /// VQVAE checkpoint (with --var).
        #[arg(long, requires = "var")]
        vae: Option<PathBuf>,
        #[command(flatten)]
        schedule: ScheduleArg,
        #[command(flatten)]
        attention: AttentionArg,
        /// Calibration: N images sampled from the float model (classes spread, seeds 1..N), or
        /// a directory of PNGs at the model's resolution, encoded by the float model's encoder
        /// (DIR/CLASS/*.png take class CLASS of the model's class_names, others the null class).
        #[arg(long, default_value = "2", value_name = "N|DIR")]
        calib: String,
        /// Also sample K images per class with both models and report the classifier's class
        /// consistency and the Fréchet distance of its features (int8 vs float).
        #[arg(long, value_name = "K")]
        per_class: Option<usize>,
        /// EmojiClassifier checkpoint for --per-class (default: tools/train/emoji32-classifier.pt
        /// when the float model's class_names are the emoji32 classes).
        #[arg(long, value_name = "PT", requires = "per_class")]
        classifier: Option<PathBuf>,
        /// JSON output instead of the tables.
        #[arg(long)]
        json: bool,
        /// Write a PNG of activation SQNR per layer (left) and mean KL per scale (right).
        #[arg(long, value_name = "PNG")]
        plot: Option<PathBuf>,
        /// With --var/--vae: the int8 model smoothed as `pack --smooth ALPHA` (default 0.5),
        /// calibrated on the --calib images.
        #[arg(
            long,
            value_name = "ALPHA",
            num_args = 0..=1,
            default_missing_value = "0.5",
            allow_negative_numbers = true
        )]
        smooth: Option<String>,
        /// With --var/--vae: instead of the full report, one row per option: plain int8, its
        /// int8 weights with f32 activations (the bound of any activation-side option), then
        /// int8 smoothed with each ALPHA (default 0.5,0.8).
        #[arg(long, value_name = "ALPHA,...", num_args = 0..=1, default_missing_value = "0.5,0.8")]
        compare: Option<String>,
        /// With --var/--vae: pack every model compared with AdaLN tables (as `pack --ada-table`).
        #[arg(
            long,
            value_enum,
            ignore_case = true,
            num_args = 0..=1,
            default_missing_value = "f32",
            value_name = "f32|f16"
        )]
        ada_table: Option<Weights>,
        #[command(flatten)]
        threads: ThreadsArg,
    },
}

/// `--backend`: the backend compared with the CPU engine.
#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// A second CPU engine instance (self-check: every difference is 0).
    Cpu,
    /// The CUDA backend (needs a CUDA driver and device).
    Cuda,
}

fn run(cli: Cli) -> Result<bool, String> {
    match cli.cmd {
        Cmd::Pack {
            vae,
            var,
            weights,
            schedule,
            attention,
            no_encoder,
            class_names,
            resample,
            meta,
            keep,
            max_growth,
            plan_format,
            smooth,
            calib,
            fake_quant,
            ada_table,
            threads,
            output,
        } => {
            let t0 = Instant::now();
            if fake_quant && (!matches!(weights, Weights::Int8) || max_growth.is_some()) {
                return Err(if max_growth.is_some() {
                    "--fake-quant writes a diagnostic file: it does not combine with --max-growth"
                } else {
                    "--fake-quant rounds the weights int8 would quantize: it needs --weights int8"
                }
                .into());
            }
            let auto =
                auto_plan_options(weights, max_growth, calib, plan_format, smooth.is_some())?;
            let smooth = smooth_option(smooth.as_deref(), calib)?;
            let patch_nums = schedule.patch_nums()?;
            // The options first: a bad one is named before any checkpoint is read.
            let metadata = {
                let mut md: Vec<(String, String)> = Vec::new();
                if let Some(c) = class_names {
                    md.push(("class_names".into(), c));
                }
                if let Some(r) = resample {
                    let ok = r.split(',').count() == 4
                        && r.split(',')
                            .all(|x| x.trim().parse::<f32>().is_ok_and(f32::is_finite));
                    if !ok {
                        return Err(format!(
                            "--resample {r}: expected 4 comma-separated numbers"
                        ));
                    }
                    md.push(("resample_policy".into(), r));
                }
                for kv in meta {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--meta {kv}: expected key=value"))?;
                    md.push((k.to_string(), v.to_string()));
                }
                md
            };
            let keep = keep
                .iter()
                .map(|k| KeepRule::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            // Opened lazily (the pickle or header now, each tensor when it is written), unless the
            // automatic plan packs the model many times in memory: then read whole.
            type Store = Box<dyn srdd_tools::checkpoint::TensorStore>;
            let open = |path: &PathBuf, role| -> Result<Store, String> {
                let at = |e| format!("{}: {e}", path.display());
                Ok(if auto.is_some() {
                    Box::new(read_state_dict(path, role).map_err(at)?)
                } else {
                    Box::new(open_checkpoint(path, role).map_err(at)?)
                })
            };
            let (var_sd, vae_sd) = (open(&var, Role::Var)?, open(&vae, Role::Vae)?);
            let (var_sd, vae_sd) = (var_sd.as_ref(), vae_sd.as_ref());
            let par = threads.parallel();
            let mut opts = PackOptions {
                weights: weights.into(),
                patch_nums,
                attention: attention.or(Attention::Markov),
                encoder: !no_encoder,
                metadata,
                keep,
                fake_quant,
                ada_tables: ada_table.map(WeightFormat::from),
                ..PackOptions::default()
            };
            if let Some((alpha, calib)) = smooth {
                let (s, _) = Smoothing::calibrate(var_sd, vae_sd, &opts, alpha, calib, &par)
                    .map_err(|e| e.to_string())?;
                if let Some(note) = s.note() {
                    eprintln!("note: {note}");
                }
                opts.smooth = Some(s);
            }
            let mut plain_len = None;
            if let Some(auto) = auto {
                let plan = srdd_tools::plan::auto_plan_on(var_sd, vae_sd, &opts, &auto, &par)
                    .map_err(|e| e.to_string())?;
                println!("{}", srdd_tools::plan::to_text(&plan, &auto.targets));
                opts.keep = plan.keep;
                plain_len = Some(plan.plain_len);
            }
            let len = pack_to_file(var_sd, vae_sd, &opts, &output).map_err(|e| e.to_string())?;
            let growth = plain_len.map_or(String::new(), |p| {
                format!(", plain int8 {p} + {}", len as i64 - p as i64)
            });
            eprintln!(
                "wrote {} ({len} bytes{growth}) in {:.2} s",
                output.display(),
                t0.elapsed().as_secs_f64()
            );
            Ok(true)
        }
        Cmd::Inspect {
            file,
            model,
            json,
            board,
        } => {
            let file = one_path(file, model, "model", "MODEL or -m/--model")?;
            let bytes =
                AlignedBytes::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if let Some(name) = board {
                // The board name first, so a typo is reported before the model is parsed.
                if name != "all" {
                    srdd_tools::boards::find(&name)?;
                }
                let m = srdd_core::Model::from_bytes(bytes.as_bytes())
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let s = srdd_tools::boards::report(&m, bytes.as_bytes().len() as u64, &name, json)?;
                println!("{s}");
                return Ok(true);
            }
            let s = srdd_tools::inspect::report(bytes.as_bytes(), json)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            println!("{s}");
            Ok(true)
        }
        Cmd::Parity {
            fixture,
            fixture_flag,
            weights,
            backend: Some(backend),
            model,
            json,
            keep,
            ada_table,
            threads,
        } => {
            if !keep.is_empty() || ada_table.is_some() {
                return Err(format!(
                    "--{} applies to the golden fixture run, not --backend",
                    if ada_table.is_some() {
                        "ada-table"
                    } else {
                        "keep"
                    }
                ));
            }
            let fixture = match (fixture, fixture_flag) {
                (None, None) => None,
                (a, b) => Some(one_path(a, b, "fixture", "FIXTURE or --fixture")?),
            };
            if fixture.is_none() && model.is_empty() {
                return Err("no input given: give a FIXTURE and/or -m/--model MODEL".into());
            }
            let backend = match backend {
                BackendArg::Cpu => Backend::Cpu,
                BackendArg::Cuda => Backend::Cuda,
            };
            // The device first: without a driver the command stops before reading any input.
            let gpu = match backend {
                Backend::Cuda => Some(srdd_gpu::Gpu::open(0).map_err(|e| e.to_string())?),
                Backend::Cpu => None,
            };
            let par = threads.parallel();
            let mut reports = Vec::new();
            if let Some(dir) = &fixture {
                reports.push(
                    backend_parity::compare_fixture(
                        dir,
                        weights.into(),
                        backend,
                        gpu.as_ref(),
                        &par,
                    )
                    .map_err(|e| format!("{}: {e}", dir.display()))?,
                );
            }
            for m in &model {
                reports.push(
                    backend_parity::compare_file(m, backend, gpu.as_ref(), &par)
                        .map_err(|e| format!("{}: {e}", m.display()))?,
                );
            }
            if json {
                println!("{:#}", backend_parity::json(backend, &reports));
            } else {
                println!("{}", backend_parity::text(backend, &reports));
            }
            Ok(reports.iter().all(|r| r.pass()))
        }
        Cmd::Parity {
            fixture,
            fixture_flag,
            weights,
            backend: None,
            model,
            json,
            keep,
            ada_table,
            threads,
        } => {
            if !model.is_empty() || json {
                return Err(format!(
                    "{} needs --backend cpu|cuda (the golden fixture run takes a FIXTURE only)",
                    if json { "--json" } else { "-m/--model" }
                ));
            }
            let fixture = one_path(fixture, fixture_flag, "fixture", "FIXTURE or --fixture")?;
            let par = threads.parallel();
            let keep = keep
                .iter()
                .map(|k| KeepRule::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let plan = srdd_tools::parity::FixturePlan {
                keep,
                ada_tables: ada_table.map(WeightFormat::from),
            };
            let rows = srdd_tools::parity::run_fixture_on(&fixture, weights.into(), &plan, &par)
                .map_err(|e| format!("{}: {e}", fixture.display()))?;
            let (mut p, mut f) = (0, 0);
            println!("{:<24} {:<6} {:<40} metric", "case", "result", "tolerance");
            for r in &rows {
                println!(
                    "{:<24} {:<6} {:<40} {}",
                    r.id,
                    if r.pass { "pass" } else { "FAIL" },
                    r.tolerance,
                    r.metric
                );
                if r.pass {
                    p += 1
                } else {
                    f += 1
                }
            }
            println!("{p} passed, {f} failed");
            Ok(f == 0)
        }
        Cmd::QuantReport {
            float,
            int8,
            var,
            vae,
            schedule,
            attention,
            calib,
            per_class,
            classifier,
            json,
            plot,
            smooth,
            compare,
            ada_table,
            threads,
        } => {
            // A number is a count of sampled images; anything else a directory (`./4` for a
            // directory named 4).
            let calib_n = calib.parse::<usize>().ok();
            if calib_n == Some(0) {
                return Err("--calib 0: at least one calibration image is needed".into());
            }
            // Smoothing calibrates on the report's own sampled calibration images.
            let smooth = smooth_option(smooth.as_deref(), None)?;
            if (smooth.is_some() || compare.is_some()) && calib_n.is_none() {
                return Err(format!(
                    "--{} calibrates on --calib N sampled images, not on a directory",
                    if smooth.is_some() {
                        "smooth"
                    } else {
                        "compare"
                    }
                ));
            }
            let calib_count = calib_n.unwrap_or(2);
            let compare = compare
                .map(|c| {
                    c.split(',')
                        .map(parse_alpha)
                        .collect::<Result<Vec<f32>, _>>()
                        .map_err(|_| {
                            format!("--compare {c}: each alpha must be a number in [0, 1]")
                        })
                })
                .transpose()?;
            if (smooth.is_some() || compare.is_some() || ada_table.is_some()) && var.is_none() {
                return Err(format!(
                    "--{} needs --var CKPT --vae CKPT (it applies when packing)",
                    if smooth.is_some() {
                        "smooth"
                    } else if compare.is_some() {
                        "compare"
                    } else {
                        "ada-table"
                    }
                ));
            }
            if compare.is_some() && (smooth.is_some() || plot.is_some()) {
                return Err(format!(
                    "--compare prints the option table only; drop --{}",
                    if smooth.is_some() { "smooth" } else { "plot" }
                ));
            }
            let par = threads.parallel();
            let read =
                |p: &PathBuf| AlignedBytes::read(p).map_err(|e| format!("{}: {e}", p.display()));
            // `wb`: the float weights the int8 ones are rounded from (the smoothed f32 pack when
            // smoothing, whose tensors differ from the plain file's by the factors).
            let (fb, qb, wb, fname, qname) = match (float, int8, var, vae) {
                (Some(f), Some(q), None, None) => (
                    read(&f)?,
                    read(&q)?,
                    None,
                    f.display().to_string(),
                    q.display().to_string(),
                ),
                (None, None, Some(var), Some(vae)) => {
                    let var_sd = read_state_dict(&var, Role::Var)
                        .map_err(|e| format!("{}: {e}", var.display()))?;
                    let vae_sd = read_state_dict(&vae, Role::Vae)
                        .map_err(|e| format!("{}: {e}", vae.display()))?;
                    let patch_nums = schedule.patch_nums()?;
                    // The pack command's options, once per weight format.
                    let base = PackOptions {
                        patch_nums: patch_nums.clone(),
                        attention: attention.or(Attention::Markov),
                        encoder: true,
                        ada_tables: ada_table.map(WeightFormat::from),
                        ..PackOptions::default()
                    };
                    let packed = |w: WeightFormat, smooth: Option<Smoothing>| {
                        let opts = PackOptions {
                            weights: w,
                            smooth,
                            ..base.clone()
                        };
                        pack(&var_sd, &vae_sd, &opts)
                            .map(|b| AlignedBytes::new(&b))
                            .map_err(|e| e.to_string())
                    };
                    // Measured once, for every α.
                    let measured = || {
                        Calibration::measure(&var_sd, &vae_sd, &base, calib_count, &par)
                            .map_err(|e| e.to_string())
                    };
                    let smoothing = |m: &Calibration, alpha: f32| {
                        let s = m.smoothing(alpha).map_err(|e| e.to_string())?;
                        if let Some(note) = s.note() {
                            eprintln!("note: {note}");
                        }
                        Ok::<_, String>(s)
                    };
                    let fb = packed(WeightFormat::F32, None)?;
                    if let Some(alphas) = compare {
                        let m = measured()?;
                        return compare_options(
                            &fb,
                            &alphas,
                            calib_count,
                            json,
                            &par,
                            |s| packed(WeightFormat::Int8, s),
                            |alpha| Ok((smoothing(&m, alpha)?, m.stats.clone())),
                            |s| packed(WeightFormat::F32, Some(s)),
                            || {
                                let opts = PackOptions {
                                    weights: WeightFormat::Int8,
                                    fake_quant: true,
                                    ..base.clone()
                                };
                                pack(&var_sd, &vae_sd, &opts)
                                    .map(|b| AlignedBytes::new(&b))
                                    .map_err(|e| e.to_string())
                            },
                        );
                    }
                    let (qb, wb, qname) = match smooth {
                        Some((alpha, _)) => {
                            let s = smoothing(&measured()?, alpha)?;
                            (
                                packed(WeightFormat::Int8, Some(s.clone()))?,
                                Some(packed(WeightFormat::F32, Some(s))?),
                                format!("{} (int8, smoothed a={alpha})", var.display()),
                            )
                        }
                        None => (
                            packed(WeightFormat::Int8, None)?,
                            None,
                            format!("{} (int8)", var.display()),
                        ),
                    };
                    (fb, qb, wb, format!("{} (f32)", var.display()), qname)
                }
                _ => {
                    return Err(
                        "give either --f32 MODEL --int8 MODEL or --var CKPT --vae CKPT".into(),
                    )
                }
            };
            let fm =
                srdd_core::Model::from_bytes(fb.as_bytes()).map_err(|e| format!("{fname}: {e}"))?;
            let qm =
                srdd_core::Model::from_bytes(qb.as_bytes()).map_err(|e| format!("{qname}: {e}"))?;
            let calib_dir = match calib_n {
                Some(_) => None,
                None => Some(
                    srdd_tools::quant_report::calib_images(&fm, std::path::Path::new(&calib))
                        .map_err(|e| e.to_string())?,
                ),
            };
            let clf = match per_class {
                Some(k) => Some((k, quant_report_classifier(classifier, &fm)?)),
                None => None,
            };
            let mut r = match (&calib_dir, calib_n) {
                (Some(imgs), _) => srdd_tools::quant_report::report_encoded(&fm, &qm, imgs, &par),
                (None, n) => srdd_tools::quant_report::report(&fm, &qm, n.unwrap_or(2), &par),
            }
            .map_err(|e| e.to_string())?;
            let classes = match clf {
                Some((k, (path, c))) => {
                    let mut cr = srdd_tools::quant_report::class_report(&fm, &qm, &c, k, &par)
                        .map_err(|e| e.to_string())?;
                    cr.classifier = path.display().to_string();
                    Some(cr)
                }
                None => None,
            };
            let names = srdd_tools::quant_report::class_names(&fm);
            let wb = wb.as_ref().unwrap_or(&fb);
            r.tensors = srdd_tools::quant_report::tensor_errors(wb.as_bytes(), qb.as_bytes())
                .map_err(|e| e.to_string())?;
            r.float_name = fname;
            r.int8_name = qname;
            if let Some(p) = plot {
                let png = srdd::png_bytes(&srdd_tools::quant_report::plot(&r))
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                srdd::write_atomic(&p, &png).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            let source = match &calib_dir {
                Some(imgs) => format!("encoded from {calib} ({} images)", imgs.len()),
                None => "sampled from the float model".into(),
            };
            if json {
                let mut v = srdd_tools::quant_report::to_json(&r);
                v["calib_source"] = source.into();
                if let Some(c) = &classes {
                    v["classes"] = srdd_tools::quant_report::class_json(c, &names);
                }
                println!("{v:#}");
            } else {
                print!("{}", srdd_tools::quant_report::to_text(&r));
                println!("\ncalibration images: {source}");
                if let Some(c) = &classes {
                    println!("{}", srdd_tools::quant_report::class_text(c, &names));
                }
            }
            Ok(true)
        }
    }
}

/// The classifier for `quant-report --per-class`: `path`, else the committed emoji32 classifier
/// when `model`'s class names are the emoji32 classes.
fn quant_report_classifier(
    path: Option<PathBuf>,
    model: &srdd_core::Model<'_>,
) -> Result<(PathBuf, srdd_tools::classifier::Classifier), String> {
    use srdd_tools::classifier::{committed_classifier, emoji32_class_names, Classifier};
    let path = match path {
        Some(p) => p,
        None => {
            let p = committed_classifier();
            if model.meta("class_names") != Some(emoji32_class_names().as_str()) || !p.is_file() {
                return Err("--per-class needs --classifier PT (the built-in emoji32 classifier fits only models whose class_names are the emoji32 classes)".into());
            }
            p
        }
    };
    let c = Classifier::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, c))
}

/// `pack`'s automatic-plan flags, checked before any checkpoint is read: `--calib` and
/// `--plan-format` only with `--max-growth`, which needs `--weights int8`.
fn auto_plan_options(
    weights: Weights,
    max_growth: Option<String>,
    calib: Option<usize>,
    plan_format: Option<Weights>,
    smoothing: bool,
) -> Result<Option<srdd_tools::plan::AutoPlanOptions>, String> {
    use srdd_tools::plan::{AutoPlanOptions, Growth, PlanError};
    let Some(g) = max_growth else {
        if (calib.is_some() && !smoothing) || plan_format.is_some() {
            return Err(if plan_format.is_some() {
                "--plan-format needs --max-growth (the automatic precision plan)".into()
            } else {
                "--calib needs --max-growth (the automatic precision plan) or --smooth".into()
            });
        }
        return Ok(None);
    };
    let d = AutoPlanOptions::default();
    let weights = WeightFormat::from(weights);
    if weights != WeightFormat::Int8 {
        return Err(PlanError::NotInt8(srdd_tools::convert::format_name(weights)).to_string());
    }
    let format = plan_format.map_or(d.format, WeightFormat::from);
    if format == WeightFormat::Int8 {
        return Err(PlanError::KeptFormat("int8").to_string());
    }
    let calib = calib.unwrap_or(d.calib);
    if calib == 0 {
        return Err(PlanError::NoCalib.to_string());
    }
    Ok(Some(AutoPlanOptions {
        max_growth: Growth::parse(&g).map_err(|e| e.to_string())?,
        format,
        calib,
        ..d
    }))
}

/// `--smooth [ALPHA]` and its `--calib N`: α and the calibration images, or nothing without
/// `--smooth` (a `--calib` without `--smooth` or `--max-growth` is refused by
/// [`auto_plan_options`]).
fn smooth_option(
    smooth: Option<&str>,
    calib: Option<usize>,
) -> Result<Option<(f32, usize)>, String> {
    let Some(alpha) = smooth else {
        return Ok(None);
    };
    let alpha = parse_alpha(alpha).map_err(|e| e.to_string())?;
    let calib = calib.unwrap_or(srdd_tools::smooth::DEFAULT_CALIB);
    if calib == 0 {
        return Err(SmoothError::Calib(calib).to_string());
    }
    Ok(Some((alpha, calib)))
}

/// `quant-report --compare`: the option table, plain int8, its weights alone (f32 activations:
/// what no activation-side option can beat), then int8 smoothed with each α.
#[allow(clippy::too_many_arguments)]
fn compare_options(
    fb: &AlignedBytes,
    alphas: &[f32],
    calib: usize,
    json: bool,
    par: &dyn srdd_core::parallel::Parallel,
    int8: impl Fn(Option<Smoothing>) -> Result<AlignedBytes, String>,
    calibrate: impl Fn(f32) -> Result<(Smoothing, srdd_tools::smooth::Stats), String>,
    f32_smoothed: impl Fn(Smoothing) -> Result<AlignedBytes, String>,
    weights_only: impl Fn() -> Result<AlignedBytes, String>,
) -> Result<bool, String> {
    use srdd_tools::quant_report::{options_json, options_text, report, OptionRow};
    let fm = srdd_core::Model::from_bytes(fb.as_bytes()).map_err(|e| format!("f32: {e}"))?;
    let mut rows = Vec::new();
    let mut plain_ratio = None;
    let mut options: Vec<(String, Option<Smoothing>, Option<f64>)> = Vec::new();
    for &alpha in alphas {
        let (s, stats) = calibrate(alpha)?;
        plain_ratio = Some(stats.mean_peak_to_rms());
        // The smoothed float model's own inputs, as the int8 kernels will see them.
        let sb = f32_smoothed(s.clone())?;
        let sm = srdd_core::Model::from_bytes(sb.as_bytes()).map_err(|e| e.to_string())?;
        let after = srdd_tools::smooth::collect(&sm, calib, par).map_err(|e| e.to_string())?;
        options.push((
            format!("int8 + smooth a={alpha}"),
            Some(s),
            Some(after.mean_peak_to_rms()),
        ));
    }
    options.insert(0, ("int8".into(), None, plain_ratio));
    for (i, (name, s, ratio)) in options.into_iter().enumerate() {
        let qb = int8(s)?;
        let qm = srdd_core::Model::from_bytes(qb.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        let r = report(&fm, &qm, calib, par).map_err(|e| e.to_string())?;
        rows.push(OptionRow::of(&name, &r, ratio));
        if i == 0 {
            let wb = weights_only()?;
            let wm = srdd_core::Model::from_bytes(wb.as_bytes()).map_err(|e| e.to_string())?;
            let r = report(&fm, &wm, calib, par).map_err(|e| e.to_string())?;
            rows.push(OptionRow::of("int8 weights only", &r, None));
        }
    }
    if json {
        println!("{:#}", options_json(calib, &rows));
    } else {
        println!("{}", options_text(calib, &rows));
    }
    Ok(true)
}

/// The path given once, either positionally or with its flag: both or neither is a one-line
/// error (clap's own would add a usage block).
fn one_path(
    positional: Option<PathBuf>,
    flag: Option<PathBuf>,
    what: &str,
    how: &str,
) -> Result<PathBuf, String> {
    match (positional, flag) {
        (Some(p), None) | (None, Some(p)) => Ok(p),
        (Some(a), Some(b)) => Err(format!(
            "{what} given twice ({} and {}): give it once, as {how}",
            a.display(),
            b.display()
        )),
        (None, None) => Err(format!("no {what} given: give it as {how}")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("srdd-tools: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// clap's own consistency checks: unique short and long flags and aliases, defaults that
    /// parse, positional arguments in order.
    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}

//! `srdd`: sample SRDD / VAR images from a `.srdd` model (the built-in default when `--model` is
//! not given).

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use srdd::{grid, png_bytes, sample_one, write_atomic, ModelBytes};
use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Guidance, Plan, SampleOptions};
use srdd_core::{Attention, Model, Schedule};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "srdd",
    version,
    about = "Sample images with an SRDD / VAR model (.srdd)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Attn {
    Markov,
    Causal,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sample K images of one class and write a PNG (a grid when K > 1).
    Sample {
        /// Model file (default: the built-in model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Class: a number, a class name stored in the model, or `null`.
        #[arg(long)]
        class: String,
        /// RNG seed of the first image; image i uses seed + i.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Number of images.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Classifier-free guidance strength (official linear ramp; 0 disables guidance).
        #[arg(long, default_value_t = 1.5)]
        cfg: f32,
        /// Keep the K most likely tokens (0: all; default min(900, vocabulary)).
        #[arg(long)]
        top_k: Option<u32>,
        /// Nucleus mass (0: off).
        #[arg(long, default_value_t = 0.96)]
        top_p: f32,
        /// Logit temperature.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Attention policy: markov (SRDD, no KV cache) or causal (official VAR).
        #[arg(long, value_enum)]
        attention: Option<Attn>,
        /// Scale schedule as patch sizes, e.g. 1,3,5,8,13,16 (default: the model's).
        #[arg(long, value_delimiter = ',')]
        schedule: Option<Vec<u16>>,
        /// Worker threads (default: available cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Output PNG.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a model's configuration and arena sizes.
    Info {
        /// Model file (default: the built-in model).
        file: Option<PathBuf>,
    },
}

fn load(path: &Option<PathBuf>) -> Result<ModelBytes, String> {
    match path {
        Some(p) => AlignedBytes::read(p)
            .map(ModelBytes::Owned)
            .map_err(|e| format!("{}: {e}", p.display())),
        None => Ok(ModelBytes::Default),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Info { file } => {
            let bytes = load(&file)?;
            let name = file
                .as_ref()
                .map_or("<built-in>".to_string(), |p| p.display().to_string());
            let m = Model::from_bytes(bytes.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            let c = &m.config;
            println!("{name}: {} bytes", bytes.as_bytes().len());
            println!(
                "image {0}x{0}, {1} classes, vocabulary {2}, weights {3:?}, attention {4:?}",
                c.image_side(),
                c.var.num_classes,
                c.vae.vocab_size,
                c.weights,
                c.attention
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
            if let Some(n) = m.meta("class_names") {
                println!("classes: {n}");
            }
            for (att, an) in [(Attention::Markov, "markov"), (Attention::Causal, "causal")] {
                let mut o = SampleOptions::new(0);
                o.attention = att;
                o.top_k = o.top_k.min(c.vae.vocab_size);
                if let Ok(p) = Plan::new(c, &o, &Schedule::full(c)) {
                    println!("arena for one CFG sample ({an}): {} bytes", p.arena_bytes());
                }
            }
            Ok(())
        }
        Cmd::Sample {
            model,
            class,
            seed,
            count,
            cfg,
            top_k,
            top_p,
            temperature,
            attention,
            schedule,
            threads,
            output,
        } => {
            let bytes = load(&model)?;
            let name = model
                .as_ref()
                .map_or("<built-in>".to_string(), |p| p.display().to_string());
            let m = Model::from_bytes(bytes.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            if let Ok(n) = class.parse::<u32>() {
                if n >= m.config.var.num_classes {
                    return Err(format!(
                        "class {n} out of range: the model has classes 0..{} (use `--class null` for the unconditional class)",
                        m.config.var.num_classes - 1
                    ));
                }
            }
            let label = m.class_index(&class).ok_or_else(|| {
                format!(
                    "unknown class {class:?} (use a number 0..{} or one of: {})",
                    m.config.var.num_classes,
                    m.meta("class_names").unwrap_or("<no names stored>")
                )
            })?;
            if count == 0 || count > 4096 {
                return Err("--count must be in 1..=4096".into());
            }
            let sched = match &schedule {
                Some(s) => Schedule::subset(&m.config, s).map_err(|e| e.to_string())?,
                None => Schedule::full(&m.config),
            };
            let opts = SampleOptions {
                label,
                cfg,
                guidance: if cfg == 0.0 {
                    Guidance::Off
                } else {
                    Guidance::Linear
                },
                top_k: top_k.unwrap_or(900.min(m.config.vae.vocab_size)),
                top_p,
                temperature,
                seed,
                attention: match attention {
                    Some(Attn::Causal) => Attention::Causal,
                    Some(Attn::Markov) => Attention::Markov,
                    None => m.config.attention,
                },
                ..SampleOptions::new(label)
            };
            // Validate everything (and the arena plan) before any work.
            Plan::new(&m.config, &opts, &sched).map_err(|e| e.to_string())?;
            let steps = sched.len() as u64 * count as u64;
            let bar = if std::io::stderr().is_terminal() {
                let b = ProgressBar::new(steps);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} scales {elapsed_precise} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            } else {
                ProgressBar::hidden()
            };
            let cores = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1);
            // Images in parallel when there are enough of them, else threads inside each image.
            let threads = cores.min(count);
            let inner = srdd_core::parallel::StdThreads((cores / threads).max(1));
            let results: Mutex<Vec<Option<Result<srdd::Image, srdd_core::Error>>>> =
                Mutex::new((0..count).map(|_| None).collect());
            let next = Mutex::new(0usize);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| loop {
                        let i = {
                            let mut n = next.lock().unwrap();
                            if *n >= count {
                                return;
                            }
                            *n += 1;
                            *n - 1
                        };
                        let mut o = opts;
                        o.seed = seed.wrapping_add(i as u64);
                        let r = sample_one(&m, o, &sched, &inner, &mut || bar.inc(1));
                        results.lock().unwrap()[i] = Some(r);
                    });
                }
            });
            bar.finish_and_clear();
            let mut images = Vec::new();
            for r in results.into_inner().unwrap() {
                match r {
                    Some(Ok(im)) => images.push(im),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("internal: an image was not produced".into()),
                }
            }
            let img = if images.len() == 1 {
                images.pop().unwrap()
            } else {
                grid(&images, 2)
            };
            let png = png_bytes(&img).map_err(|e| e.to_string())?;
            write_atomic(&output, &png).map_err(|e| format!("{}: {e}", output.display()))?;
            eprintln!(
                "wrote {} ({}x{}, class {label}, seed {seed})",
                output.display(),
                img.width,
                img.height
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srdd: {e}");
            ExitCode::from(2)
        }
    }
}

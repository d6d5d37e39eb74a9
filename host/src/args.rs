//! Command-line arguments that `srdd` and `srdd-tools` share, as clap argument groups to
//! `#[command(flatten)]` into their commands, so that the same flag means the same thing (and is
//! spelled the same way) in both.

use std::path::PathBuf;

use crate::pool::Pool;
use clap::{Args, ValueEnum};
use srdd_core::aligned::AlignedBytes;
use srdd_core::config::ModelConfig;
use srdd_core::{Attention, Model, Schedule};

use crate::ModelBytes;

/// `--model FILE`: a `.srdd` model, else the built-in one.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArg {
    /// Model file (default: the built-in model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    /// The file name, or `<built-in>`, for messages.
    pub fn name(&self) -> String {
        self.model
            .as_ref()
            .map_or("<built-in>".to_string(), |p| p.display().to_string())
    }

    /// Reads the model file into aligned memory (or takes the built-in model).
    pub fn read(&self) -> Result<ModelBytes, String> {
        match &self.model {
            Some(p) => AlignedBytes::read(p)
                .map(ModelBytes::Owned)
                .map_err(|e| format!("{}: {e}", p.display())),
            None => Ok(ModelBytes::Default),
        }
    }

    /// Parses the bytes [`ModelArg::read`] gave; errors name the file. A PyTorch checkpoint
    /// (the common mistake) gets a hint how to convert it instead of the parser's complaint.
    pub fn open<'b>(&self, bytes: &'b ModelBytes) -> Result<Model<'b>, String> {
        Model::from_bytes(bytes.as_bytes()).map_err(|e| {
            if is_pytorch_checkpoint(bytes.as_bytes()) {
                format!(
                    "{}: this is a PyTorch checkpoint, not a .srdd model; convert it with \
                     `srdd-tools pack --vae VAE.pth --var VAR.pth -o model.srdd`",
                    self.name()
                )
            } else {
                format!("{}: {e}", self.name())
            }
        })
    }
}

/// Whether `bytes` look like a `torch.save` file: a zip archive (the format since PyTorch 1.6)
/// or a bare pickle (the legacy format starts with the PROTO opcode 0x80).
pub fn is_pytorch_checkpoint(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
}

/// Refuses an output path that does not end in `.png` (any case): every image command writes
/// PNG, and a `.jpg` holding PNG bytes would mislead; checked before any work.
pub fn png_output(path: &std::path::Path) -> Result<(), String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") => Ok(()),
        _ => Err(format!(
            "-o {}: srdd writes PNG: give an output ending in .png",
            path.display()
        )),
    }
}

/// `--seed`: a whole number in 0..=2^64-1 (clap's own message for `-3` would only say
/// "invalid digit").
pub fn parse_seed(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("a seed is a whole number in 0..={}", u64::MAX))
}

/// `--schedule`: the scales to run (`srdd`) or to pack (`srdd-tools pack`). `--patch-nums` is
/// a hidden alias: `pack` used to spell it so.
#[derive(Args, Clone, Debug)]
pub struct ScheduleArg {
    /// Scale schedule: `full` (the model's own; when packing, the official one), `distilled-6`
    /// (1,3,5,8,13,16: only models whose latent is 16×16 and have those patch sizes; `srdd info`
    /// lists what a model can run), or a subset of the model's patch sizes like 1,2,4,8.
    #[arg(long, alias = "patch-nums", default_value = "full")]
    pub schedule: String,
}

impl ScheduleArg {
    /// The named schedules and whether the model of `config` can run each (`srdd info`).
    pub fn named(config: &ModelConfig) -> Vec<(&'static str, Result<Schedule, String>)> {
        ["full", "distilled-6"]
            .into_iter()
            .map(|name| {
                let arg = ScheduleArg {
                    schedule: name.to_string(),
                };
                (name, arg.resolve(config))
            })
            .collect()
    }

    /// The patch sizes given, or `None` for `full`.
    pub fn patch_nums(&self) -> Result<Option<Vec<u16>>, String> {
        let s = &self.schedule;
        match s.as_str() {
            "full" => Ok(None),
            "distilled-6" => Ok(Some(vec![1, 3, 5, 8, 13, 16])),
            list => list
                .split(',')
                .map(|x| x.trim().parse::<u16>())
                .collect::<Result<_, _>>()
                .map(Some)
                .map_err(|_| {
                    format!(
                        "--schedule {s}: expected full, distilled-6 or patch sizes like 1,2,4,8"
                    )
                }),
        }
    }

    /// The schedule on a model whose configuration is `config`: `full`, or a subset of its
    /// patch sizes.
    pub fn resolve(&self, config: &ModelConfig) -> Result<Schedule, String> {
        let Some(pns) = self.patch_nums()? else {
            return Ok(Schedule::full(config));
        };
        Schedule::subset(config, &pns).map_err(|e| {
            format!(
                "--schedule {}: {e} (the model's patch sizes: {:?})",
                self.schedule,
                config.patch_nums.as_slice()
            )
        })
    }
}

/// An attention policy as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttentionChoice {
    /// SRDD's Markovian attention: each scale sees only the previous one (no KV cache).
    Markov,
    /// The official VAR's block-causal attention (KV cache).
    Causal,
}

impl From<AttentionChoice> for Attention {
    fn from(a: AttentionChoice) -> Self {
        match a {
            AttentionChoice::Markov => Attention::Markov,
            AttentionChoice::Causal => Attention::Causal,
        }
    }
}

/// `--attention markov|causal`.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct AttentionArg {
    /// Attention policy: markov (SRDD, no KV cache) or causal (official VAR). Default: the
    /// model's own; when packing, markov.
    #[arg(long, value_enum, ignore_case = true)]
    pub attention: Option<AttentionChoice>,
}

impl AttentionArg {
    /// The policy given, else `default`.
    pub fn or(self, default: Attention) -> Attention {
        self.attention.map_or(default, Attention::from)
    }
}

/// `--threads N`: worker threads of a command that computes (results never depend on it).
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct ThreadsArg {
    /// Worker threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// The number of threads: the one given, else the available cores; at least 1.
    pub fn count(self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// A thread pool of [`ThreadsArg::count`] threads for the kernels, started once for the
    /// command.
    pub fn parallel(self) -> Pool {
        Pool::new(self.count())
    }
}

/// A compute backend as the command line names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The CPU engine (`srdd-core`'s `CpuForward`).
    #[default]
    Cpu,
    /// The CUDA backend (`srdd-gpu`): device 0; an error when it cannot start.
    Cuda,
    /// CUDA when a driver is present and device 0 opens, else the CPU.
    Auto,
}

/// `--backend cpu|cuda|auto`: where the transformer and the decoder run (the token draws stay
/// on the CPU threads).
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct BackendArg {
    /// Compute backend: cpu, cuda (NVIDIA GPU 0; needs the CUDA driver and NVRTC), or auto
    /// (cuda when it starts, else cpu).
    #[arg(long, value_enum, ignore_case = true, default_value = "cpu")]
    pub backend: BackendChoice,
}

//! Shared helpers of the integration tests: fixture discovery, manifest access, packing (cached
//! per test binary) and a small sampling driver.
#![allow(dead_code)]

use srdd_core::aligned::AlignedBytes;
use srdd_core::config::{Attention, VaeConfig, VarConfig};
use srdd_core::generate::{Generator, Plan, SampleOptions, StepHook};
use srdd_core::parallel::Parallel;
use srdd_core::tokenize::tokenize;
use srdd_core::{Model, ModelConfig, Schedule, WeightFormat};
use srdd_tools::checkpoint::{read_state_dict, Role, StateDict};
use srdd_tools::convert::{pack, PackOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// `tests/fixtures`.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture directory (one with a `manifest.json`), sorted by name.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
    for d in &dirs {
        assert!(
            d.join("manifest.json").is_file(),
            "fixture directory {} has no manifest.json",
            d.display()
        );
    }
    dirs
}

/// The fixture directory called `name`.
pub fn fixture(name: &str) -> PathBuf {
    let d = fixtures_root().join(name);
    assert!(d.join("manifest.json").is_file(), "missing fixture {name}");
    d
}

/// The parsed `manifest.json` of a fixture.
pub fn manifest(dir: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dir.join("manifest.json")).expect("read manifest.json");
    serde_json::from_slice(&bytes).expect("parse manifest.json")
}

/// `config.patch_nums` of a fixture's manifest.
pub fn patch_nums(dir: &Path) -> Vec<u16> {
    manifest(dir)["config"]["patch_nums"]
        .as_array()
        .expect("config.patch_nums")
        .iter()
        .map(|v| v.as_u64().expect("patch size") as u16)
        .collect()
}

/// Pack options of a fixture (as the parity runner builds them).
pub fn pack_options(dir: &Path, weights: WeightFormat) -> PackOptions {
    let m = manifest(dir);
    let vq = &m["config"]["vqvae"];
    PackOptions {
        weights,
        patch_nums: Some(patch_nums(dir)),
        encoder: true,
        quant_resi: vq["quant_resi"].as_f64().unwrap_or(0.5) as f32,
        gn_groups: vq["groupnorm_groups"].as_u64().unwrap_or(32) as u32,
        ..PackOptions::default()
    }
}

/// The VAR and VQVAE state dicts of a fixture (the `.safetensors` files, or the `.pth` files when
/// a fixture ships only those).
pub fn state_dicts(dir: &Path) -> (StateDict, StateDict) {
    let read = |stem: &str, role: Role| {
        let st = dir.join(format!("{stem}.safetensors"));
        let p = if st.is_file() {
            st
        } else {
            dir.join(format!("{stem}.pth"))
        };
        read_state_dict(&p, role).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    };
    (read("var", Role::Var), read("vae", Role::Vae))
}

/// A per-test-binary cache of values computed once per fixture directory and weight format.
pub type FixtureCache<T> = OnceLock<Mutex<HashMap<(PathBuf, String), Arc<OnceLock<T>>>>>;

/// The value `make` computes for (`dir`, `weights`), computed once per `cache`. The map's lock is
/// released before `make` runs, so different fixtures are computed in parallel.
pub fn cached<T: Clone>(
    cache: &'static FixtureCache<T>,
    dir: &Path,
    weights: WeightFormat,
    make: impl FnOnce() -> T,
) -> T {
    let cell = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((dir.to_path_buf(), format!("{weights:?}")))
        .or_default()
        .clone();
    cell.get_or_init(make).clone()
}

/// The packed `.srdd` bytes of a fixture in `weights`, 64-byte aligned; cached per test binary.
pub fn packed(dir: &Path, weights: WeightFormat) -> Arc<AlignedBytes> {
    static CACHE: FixtureCache<Arc<AlignedBytes>> = OnceLock::new();
    cached(&CACHE, dir, weights, || {
        let (var, vae) = state_dicts(dir);
        let bytes = pack(&var, &vae, &pack_options(dir, weights)).expect("pack fixture");
        Arc::new(AlignedBytes::new(&bytes))
    })
}

/// The fixture with six scales.
pub const SIX: &str = "tiny-six-scales";
/// The fixture with the official ten-scale schedule.
pub const OFFICIAL: &str = "tiny-official-schedule";

/// Calls `f` with the fixture called `name`, packed in `w` and loaded.
pub fn with_model<R>(name: &str, w: WeightFormat, f: impl FnOnce(&Model<'_>) -> R) -> R {
    let b = packed(&fixture(name), w);
    let model = Model::from_bytes(b.as_bytes()).expect("load packed fixture");
    f(&model)
}

/// Calls `f` with each (fixture, weight format) model and its full schedule.
pub fn with_each_model(
    cases: &[(&str, WeightFormat)],
    f: impl Fn(&str, WeightFormat, &Model<'_>, &Schedule),
) {
    for &(fixture, w) in cases {
        with_model(fixture, w, |model| {
            f(fixture, w, model, &Schedule::full(&model.config))
        });
    }
}

/// What a full run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOut {
    /// Tokens of every step.
    pub tokens: Vec<Vec<u32>>,
    /// Conditional logits of every token, step by step.
    pub logits: Vec<Vec<f32>>,
    /// Final `f_hat`.
    pub f_hat: Vec<f32>,
    /// Decoded image rows, concatenated.
    pub image: Vec<f32>,
}

/// Records tokens and conditional logits.
#[derive(Default)]
pub struct Recorder {
    pub tokens: Vec<Vec<u32>>,
    pub logits: Vec<Vec<f32>>,
}

impl StepHook for Recorder {
    fn logits(&mut self, k: usize, _t: usize, cond: &[f32]) {
        if self.logits.len() <= k {
            self.logits.resize(k + 1, Vec::new());
        }
        self.logits[k].extend_from_slice(cond);
    }
    fn scale_done(&mut self, _k: usize, tokens: &[u32], _f_hat: &[f32]) {
        self.tokens.push(tokens.to_vec());
    }
}

/// Plans, samples every step and decodes, with an arena of exactly `Plan::arena_bytes()`.
pub fn run_full(
    model: &Model<'_>,
    opts: SampleOptions,
    sched: &Schedule,
) -> srdd_core::Result<RunOut> {
    let plan = Plan::new(&model.config, &opts, sched)?;
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(model, opts, sched.clone(), arena.as_bytes_mut())?;
    run_recorded(&mut gen)
}

/// Samples every step of `gen` with a [`Recorder`] and decodes; `f_hat` is taken before decoding.
pub fn run_recorded(gen: &mut Generator<'_, '_>) -> srdd_core::Result<RunOut> {
    let mut rec = Recorder::default();
    gen.run(&mut rec)?;
    let f_hat = gen.f_hat().to_vec();
    let mut image = Vec::new();
    gen.decode(&mut |_y, row| image.extend_from_slice(row))?;
    Ok(RunOut {
        tokens: rec.tokens,
        logits: rec.logits,
        f_hat,
        image,
    })
}

/// What `tokenize` produced for one image.
pub struct Tokenized {
    /// Tokens of every scale of the schedule, concatenated.
    pub tokens: Vec<u32>,
    /// The encoder's latent `f`.
    pub f: Vec<f32>,
    /// The quantized latent `f_hat`.
    pub f_hat: Vec<f32>,
}

/// Tokenizes `image` with `sched` in `arena` (at least `tokenize_bytes`), buffers sized exactly.
pub fn tokenize_image(
    model: &Model<'_>,
    sched: &Schedule,
    image: &[f32],
    arena: &mut [u8],
    par: &dyn Parallel,
) -> srdd_core::Result<Tokenized> {
    let cfg = &model.config;
    let (cv, p) = (cfg.vae.cvae as usize, cfg.latent_side());
    let mut tokens = vec![0u32; sched.total_tokens()];
    let (mut f, mut f_hat) = (vec![0f32; cv * p * p], vec![0f32; cv * p * p]);
    tokenize(
        model,
        sched,
        image,
        arena,
        &mut tokens,
        &mut f,
        &mut f_hat,
        par,
    )?;
    Ok(Tokenized { tokens, f, f_hat })
}

/// Bit patterns of a float slice (for bit-exact comparisons that treat NaN as equal to itself).
pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// VAR-d16 (1024 wide, 16 heads, FFN 4096, 1000 classes, Markov) with the VQVAE of the released
/// checkpoint (ch 160, ch_mult (1,1,2,2,4), Cvae 32, V 4096), int8 weights, 256 px.
pub fn d16_config() -> ModelConfig {
    let patch_nums: [u16; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
    let seq_len: u32 = patch_nums.iter().map(|p| *p as u32 * *p as u32).sum();
    let cfg = ModelConfig {
        var: VarConfig {
            depth: 16,
            embed_dim: 1024,
            num_heads: 16,
            ffn_hidden: 4096,
            num_classes: 1000,
            shared_aln: false,
            attn_l2_norm: true,
            norm_eps: 1e-6,
            seq_len,
        },
        vae: VaeConfig {
            vocab_size: 4096,
            cvae: 32,
            ch: 160,
            ch_mult: [1, 1, 2, 2, 4].into_iter().collect(),
            num_res_blocks: 2,
            using_sa: true,
            using_mid_sa: true,
            num_phi: 4,
            quant_resi: 0.5,
            gn_groups: 32,
            gn_eps: 1e-6,
            has_encoder: false,
        },
        patch_nums: patch_nums.into_iter().collect(),
        level_index: (0..10).collect(),
        phi_index: (0..10)
            .map(|si| srdd_core::config::official_phi_index(4, 10, si) as u8)
            .collect(),
        attention: Attention::Markov,
        weights: WeightFormat::Int8,
    };
    cfg.validate().unwrap();
    cfg
}

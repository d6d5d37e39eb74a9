//! Bodies of the fuzz targets (issue #13). Each `pub fn` takes the fuzzer's input and must
//! return without panicking whatever the bytes: the parsers answer a typed error or a value.
//! The libFuzzer entry points in `fuzz_targets/` call these, and `tests/replay.rs` runs the
//! seed corpora and the kept reproducers through them on stable.
#![deny(missing_docs)]

use srdd_core::aligned::AlignedBytes;
use srdd_core::config::VarConfig;
use srdd_core::format::{align_up, file_checksum, Header, TensorDType, TensorEntry, WeightLayout};
use srdd_core::format::{PREFIX_LEN, TENSOR_ALIGN};
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::parallel::Sequential;
use srdd_core::WeightFormat;
use srdd_core::{Model, NoHook, Schedule};
use srdd_tools::checkpoint::{read_state_dict_bytes, CheckpointError, Role, StateDict};
use srdd_tools::checkpoint::{DType, RawTensor};
use srdd_tools::convert::{catalog, pack, PackOptions};
use std::io::{Cursor, Write};
use std::sync::OnceLock;

/// The built-in model (`srdd_model` mutates it now and then; `edit_upscale` runs it).
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/default-int8.srdd");

/// Largest arena the `srdd_model` target allocates for a plan. The `bad_input` tests bound a
/// mutated model's full-schedule plan by 256 MiB; a larger plan is a finding.
pub const MAX_ARENA: usize = 1 << 28;

/// Reads the fuzz input as a stream of small integers (zero once exhausted).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `max` raw bytes, the count taken from the input.
    fn bytes(&mut self, max: usize) -> &[u8] {
        let n = (self.u8() as usize).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    /// A boundary value or an arbitrary one; `old` lets small deltas keep values plausible.
    fn value(&mut self, old: u64) -> u64 {
        const EDGES: [u64; 16] = [
            0,
            1,
            2,
            3,
            4,
            15,
            16,
            63,
            64,
            255,
            256,
            4096,
            65535,
            u32::MAX as u64,
            1 << 40,
            u64::MAX,
        ];
        match self.u8() % 4 {
            0 => EDGES[(self.u8() % 16) as usize],
            1 => old.wrapping_add(self.u8() as u64 % 17).wrapping_sub(8),
            2 => old
                .wrapping_add(64 * (self.u8() as u64 % 9))
                .wrapping_sub(256),
            _ => self.u32() as u64,
        }
    }
}

/// The parts of an `.srdd` file the `srdd_model` target mutates before re-encoding.
#[derive(Clone)]
struct Parts<'a> {
    header: Header,
    entries: Vec<TensorEntry<'a>>,
    data: Vec<u8>,
    /// Bytes flipped in the encoded header and table after re-encoding: (position, xor).
    raw_flips: Vec<(usize, u8)>,
}

fn decode(bytes: &[u8]) -> Parts<'_> {
    let file = srdd_core::format::parse(bytes).expect("the built-in model parses");
    let mut table = file.table;
    let mut entries = Vec::new();
    for _ in 0..file.header.tensor_count {
        let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table)
            .expect("the base model's tensor table decodes");
        entries.push(e);
        table = rest;
    }
    Parts {
        header: file.header,
        entries,
        data: file.data.to_vec(),
        raw_flips: Vec::new(),
    }
}

/// Encodes the parts as a file (prefix, header, table, data) and reseals the checksum.
fn encode(p: &Parts<'_>) -> AlignedBytes {
    let mut head = postcard::to_allocvec(&p.header).expect("a header encodes");
    for e in &p.entries {
        head.extend(postcard::to_allocvec(e).expect("a tensor entry encodes"));
    }
    for &(pos, x) in &p.raw_flips {
        if !head.is_empty() {
            let at = pos % head.len();
            head[at] ^= x;
        }
    }
    let data_start = align_up(PREFIX_LEN + head.len(), TENSOR_ALIGN);
    let mut file = vec![0u8; data_start + p.data.len()];
    file[..8].copy_from_slice(&srdd_core::format::MAGIC);
    file[8..12].copy_from_slice(&srdd_core::format::FORMAT_VERSION.to_le_bytes());
    file[12..16].copy_from_slice(&(head.len() as u32).to_le_bytes());
    let file_len = file.len() as u64;
    file[16..24].copy_from_slice(&file_len.to_le_bytes());
    file[PREFIX_LEN..PREFIX_LEN + head.len()].copy_from_slice(&head);
    file[data_start..].copy_from_slice(&p.data);
    let sum = file_checksum(&file);
    file[24..32].copy_from_slice(&sum.to_le_bytes());
    AlignedBytes::new(&file)
}

/// Applies one mutation chosen by the input.
fn mutate<'a>(p: &mut Parts<'a>, names: &[&'a str], inp: &mut Input<'_>) {
    let n = p.entries.len();
    match inp.u8() % 12 {
        // A byte of the encoded configuration (patch sizes, widths, depths, vocabulary, ...),
        // kept only when it still decodes.
        0 => {
            let mut cfg = postcard::to_allocvec(&p.header.config).expect("a config encodes");
            let at = inp.u16() as usize % cfg.len();
            cfg[at] ^= inp.u8().max(1);
            if let Ok(c) = postcard::from_bytes(&cfg) {
                p.header.config = c;
            }
        }
        // A header number.
        1 => match inp.u8() % 4 {
            0 => p.header.tensor_count = inp.value(p.header.tensor_count as u64) as u32,
            1 => p.header.data_len = inp.value(p.header.data_len),
            2 => p.header.meta_offset = inp.value(p.header.meta_offset),
            _ => p.header.meta_len = inp.value(p.header.meta_len),
        },
        // A tensor's shape: one dimension, or the rank.
        2 if n > 0 => {
            let e = &mut p.entries[inp.u16() as usize % n];
            let d = inp.u8() as usize;
            if d % 8 == 7 {
                if e.shape.pop().is_none() || inp.u8().is_multiple_of(2) {
                    let _ = e.shape.push(inp.value(1) as u32);
                }
            } else if !e.shape.is_empty() {
                let i = d % e.shape.len();
                e.shape[i] = inp.value(e.shape[i] as u64) as u32;
            }
        }
        // A tensor's offset, length or scales offset.
        3 if n > 0 => {
            let e = &mut p.entries[inp.u16() as usize % n];
            match inp.u8() % 3 {
                0 => e.offset = inp.value(e.offset),
                1 => e.len = inp.value(e.len),
                _ => e.scales_offset = inp.value(e.scales_offset),
            }
        }
        // A tensor's dtype or layout.
        4 if n > 0 => {
            let e = &mut p.entries[inp.u16() as usize % n];
            match inp.u8() % 7 {
                0 => e.dtype = TensorDType::F32,
                1 => e.dtype = TensorDType::F16,
                2 => e.dtype = TensorDType::I8,
                3 => e.layout = WeightLayout::Plain,
                4 => e.layout = WeightLayout::PANELS,
                5 => e.dtype = TensorDType::I8A16,
                _ => {
                    e.layout = WeightLayout::Panels {
                        nr: inp.u8(),
                        kr: inp.u8(),
                    }
                }
            }
        }
        // The table: drop, duplicate or swap entries, or rename one.
        5 if n > 0 => {
            let i = inp.u16() as usize % n;
            let j = inp.u16() as usize % n;
            match inp.u8() % 4 {
                0 => {
                    p.entries.remove(i);
                }
                1 => {
                    let e = p.entries[i].clone();
                    p.entries.insert(j, e);
                }
                2 => p.entries.swap(i, j),
                _ => p.entries[i].name = names[j % names.len()],
            }
        }
        // A metadata byte.
        6 => {
            let (off, len) = (p.header.meta_offset as usize, p.header.meta_len as usize);
            if len > 0 && off.saturating_add(len) <= p.data.len() {
                let at = off + inp.u16() as usize % len;
                p.data[at] = inp.u8();
            }
        }
        // New metadata text appended to the data section: the old text plus lines from the
        // input (e.g. `class_names=...`, `default_cfg=...`), or the input's text alone.
        7 => {
            let keep = inp.u8().is_multiple_of(2);
            let extra = inp.bytes(200).to_vec();
            let (off, len) = (p.header.meta_offset as usize, p.header.meta_len as usize);
            let mut text = match p.data.get(off..off.saturating_add(len)) {
                Some(old) if keep => old.to_vec(),
                _ => Vec::new(),
            };
            text.extend_from_slice(&extra);
            p.header.meta_offset = p.data.len() as u64;
            p.header.meta_len = text.len() as u64;
            p.data.extend_from_slice(&text);
            p.header.data_len = p.data.len() as u64;
        }
        // Tensor bytes: a run of input bytes, or non-finite f32 values, at an offset.
        8 if !p.data.is_empty() => {
            let at = inp.u32() as usize % p.data.len();
            if inp.u8().is_multiple_of(2) {
                let run = inp.bytes(64).to_vec();
                let end = (at + run.len()).min(p.data.len());
                p.data[at..end].copy_from_slice(&run[..end - at]);
            } else {
                let v = [
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1e30,
                    -0.0,
                    f32::MIN_POSITIVE,
                ][inp.u8() as usize % 6];
                let at = at & !3;
                if at + 4 <= p.data.len() {
                    p.data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        // A byte of the encoded header or table, after re-encoding.
        9 => {
            let pos = inp.u16() as usize;
            let x = inp.u8().max(1);
            p.raw_flips.push((pos, x));
        }
        // The data section grows or shrinks (keeping `data_len` in step or not).
        10 => {
            let len = inp
                .value(p.data.len() as u64)
                .min(p.data.len() as u64 + 4096) as usize;
            p.data.resize(len, 0);
            if inp.u8().is_multiple_of(2) {
                p.header.data_len = len as u64;
            }
        }
        _ => {}
    }
}

/// The built-in model, 16-byte aligned (`include_bytes!` gives no alignment; the loader wants
/// 16 bytes).
pub fn builtin_model() -> &'static AlignedBytes {
    static MODEL: OnceLock<AlignedBytes> = OnceLock::new();
    MODEL.get_or_init(|| AlignedBytes::new(DEFAULT_MODEL))
}

/// [`tiny_model_bytes`], packed once per process.
pub fn tiny_model() -> &'static AlignedBytes {
    static MODEL: OnceLock<AlignedBytes> = OnceLock::new();
    MODEL.get_or_init(|| AlignedBytes::new(&tiny_model_bytes()))
}

/// A tiny int8 model with an encoder, packed by `srdd-tools`' own [`pack`] from random weights
/// held in memory (so it is exactly what `srdd-tools pack` writes for such a checkpoint):
/// depth 1, width 16 (2 heads), 3 classes, vocabulary 8, `Cvae` 4, `ch` 4 × (1, 2), mid
/// attention, 2 Phi convolutions, schedule (1, 2, 4), images 8×8. The fuzz targets mutate and run it instead of the 2 MB built-in model, which is
/// ~100× slower per execution under AddressSanitizer; it reaches the same loader, planner,
/// transformer, tokenizer and decoder code.
pub fn tiny_model_bytes() -> Vec<u8> {
    // The built-in model's configuration, shrunk: every field is set here.
    let mut cfg = srdd_core::format::parse(builtin_model().as_bytes())
        .expect("the built-in model parses")
        .header
        .config;
    cfg.var = VarConfig {
        depth: 1,
        embed_dim: 16,
        num_heads: 2,
        ffn_hidden: 32,
        num_classes: 3,
        shared_aln: false,
        attn_l2_norm: true,
        norm_eps: 1e-6,
        seq_len: 1 + 4 + 16,
    };
    let v = &mut cfg.vae;
    (v.vocab_size, v.cvae, v.ch, v.num_res_blocks) = (8, 4, 4, 1);
    v.ch_mult.clear();
    v.ch_mult
        .extend_from_slice(&[1, 2])
        .expect("two levels fit");
    (v.using_sa, v.using_mid_sa, v.num_phi, v.quant_resi) = (false, true, 2, 0.5);
    (v.gn_groups, v.gn_eps, v.has_encoder) = (4, 1e-6, true);
    cfg.patch_nums.clear();
    cfg.patch_nums.extend_from_slice(&[1, 2, 4]).expect("fits");
    let pns = cfg.patch_nums.clone();
    let lv = &mut cfg.level_index;
    lv.clear();
    lv.extend_from_slice(&[0, 1, 2]).expect("fits");
    cfg.phi_index.clear();
    cfg.phi_index.extend_from_slice(&[0, 1, 1]).expect("fits");
    cfg.weights = WeightFormat::Int8;
    // Random weights from a fixed LCG, small enough that activations stay finite.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut var, mut vae) = (StateDict::new(), StateDict::new());
    for e in catalog(&cfg, false).expect("the tiny configuration is valid") {
        let n: usize = e.shape.iter().product();
        let mut data = Vec::with_capacity(4 * n);
        for _ in 0..n {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5;
            data.extend_from_slice(&x.to_le_bytes());
        }
        let t = RawTensor {
            dtype: DType::F32,
            shape: e.shape,
            data,
        };
        let is_vae = [
            "encoder.",
            "decoder.",
            "quantize.",
            "quant_conv.",
            "post_quant_conv.",
        ]
        .iter()
        .any(|p| e.name.starts_with(p));
        if is_vae { &mut vae } else { &mut var }.insert(e.name, t);
    }
    let opts = PackOptions {
        weights: WeightFormat::Int8,
        patch_nums: Some(pns.to_vec()),
        gn_groups: 4,
        metadata: vec![("class_names".into(), "red,green,blue".into())],
        ..PackOptions::default()
    };
    pack(&var, &vae, &opts).expect("the tiny model packs")
}

/// The model the `srdd_model` target mutates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    /// [`tiny_model`]: the default, fast enough for millions of executions.
    Tiny,
    /// The built-in model: about 50× slower per execution under AddressSanitizer (it copies,
    /// reseals and validates 2 MB each time), so it is chosen explicitly, for dedicated runs.
    Builtin,
}

impl Base {
    /// `SRDD_FUZZ_MODEL=builtin` picks [`Base::Builtin`]; unset or `tiny`, [`Base::Tiny`].
    pub fn from_env() -> Base {
        match std::env::var("SRDD_FUZZ_MODEL").as_deref() {
            Ok("builtin") => Base::Builtin,
            Ok("tiny") | Err(_) => Base::Tiny,
            Ok(other) => panic!("SRDD_FUZZ_MODEL={other}: expected tiny or builtin"),
        }
    }
}

/// `srdd_model` on the base model `SRDD_FUZZ_MODEL` names ([`Base::from_env`], read once).
pub fn srdd_model(data: &[u8]) {
    static BASE: OnceLock<Base> = OnceLock::new();
    srdd_model_on(*BASE.get_or_init(Base::from_env), data)
}

/// `srdd_model`: mutates a model's header, tensor table, metadata and tensor bytes as the input
/// directs, re-encodes and reseals the file (so it passes the checksum and reaches the loader),
/// and when [`Model::from_bytes`] accepts it, plans and samples a small image over the first
/// scales. Every step must return an error or a value, never panic.
///
/// The first input byte sets the sampling options; up to 16 mutations follow.
pub fn srdd_model_on(base: Base, data: &[u8]) {
    // Each base is decoded once; every execution mutates a copy.
    static TINY: OnceLock<Parts<'static>> = OnceLock::new();
    static BUILTIN: OnceLock<Parts<'static>> = OnceLock::new();
    let mut parts = match base {
        Base::Tiny => TINY.get_or_init(|| decode(tiny_model().as_bytes())),
        Base::Builtin => BUILTIN.get_or_init(|| decode(builtin_model().as_bytes())),
    }
    .clone();
    let mut inp = Input { data };
    let names: Vec<&str> = parts.entries.iter().map(|e| e.name).collect();
    let knobs = inp.u8();
    let mut ops = 0;
    while !inp.is_empty() && ops < 16 {
        mutate(&mut parts, &names, &mut inp);
        ops += 1;
    }
    let file = encode(&parts);
    let Ok(model) = Model::from_bytes(file.as_bytes()) else {
        return;
    };
    // Sampling costs several loads; every other knob value stops after the loader, so the
    // target runs at a few hundred executions a second and more of its time goes to the loader.
    if knobs & 0x20 != 0 {
        let _ = sample_small(&model, knobs);
    }
}

/// Plans and runs a small sampling run (the first one or two scales and the last, small chunks)
/// and, when `knobs` has bit 6 set, decodes it; `knobs` also picks the label, top-k/top-p, seed,
/// chunk and number of scales.
pub fn sample_small(model: &Model<'_>, knobs: u8) -> srdd_core::Result<()> {
    let cfg = &model.config;
    let classes = cfg.var.num_classes;
    // An out-of-range label now and then checks that it is refused.
    let label = if knobs & 0x80 != 0 {
        classes
    } else {
        knobs as u32 % classes.max(1)
    };
    let mut opts = SampleOptions::new(label);
    opts.top_k = (knobs as u32 % 5 + 1).min(cfg.vae.vocab_size);
    opts.top_p = [1.0, 0.9, 0.0][knobs as usize % 3];
    opts.seed = knobs as u64;
    opts.chunk = [0, 1, 3][(knobs as usize / 3) % 3];
    let steps = 2 + (knobs as usize / 9) % 2;
    // A schedule must end at the latent size: the first scales, then the last one.
    let all = cfg.patch_nums.as_slice();
    let mut pns: Vec<u16> = all.iter().copied().take(steps - 1).collect();
    if let Some(&last) = all.last() {
        if pns.last() != Some(&last) {
            pns.push(last);
        }
    }
    let sched = Schedule::subset(cfg, &pns)?;
    let plan = Plan::new(cfg, &opts, &sched)?;
    assert!(
        plan.arena_bytes() < MAX_ARENA,
        "a plan of {} bytes for {} scales",
        plan.arena_bytes(),
        pns.len()
    );
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(model, opts, sched, arena.as_bytes_mut())?;
    gen.run(&mut NoHook)?;
    // Decoding is half the time of a run; every other knob value skips it.
    if knobs & 0x40 != 0 {
        gen.decode(&mut |_, row| {
            assert!(row.iter().all(|v| v.is_finite() || v.is_nan()));
        })?;
    }
    Ok(())
}

/// Reads a checkpoint held in memory; a nested one once per role. The tensors are converted
/// too, so every accepted dtype is exercised.
fn read_checkpoint(bytes: &[u8]) {
    let touch = |sd: StateDict| {
        for (_, t) in sd.iter() {
            let _ = if t.dtype.is_float() {
                t.to_f32().map(|_| ())
            } else {
                t.to_i64().map(|_| ())
            };
        }
    };
    match read_state_dict_bytes(bytes, Role::Any) {
        Ok(sd) => touch(sd),
        Err(CheckpointError::NestedNeedsRole { .. }) => {
            for role in [Role::Var, Role::Vae] {
                if let Ok(sd) = read_state_dict_bytes(bytes, role) {
                    touch(sd);
                }
            }
        }
        Err(_) => {}
    }
}

/// `pickle`: the input is `data.pkl` of a `.pth` archive that also holds a 64-byte storage
/// `0` (so persistent ids `('storage', .., '0', ..)` resolve); the archive is read as a
/// checkpoint. The unpickler is crate-private, so this reaches it the way `srdd-tools` does.
pub fn pickle(data: &[u8]) {
    read_checkpoint(&pth_archive(data, &[0x3c; 64]));
}

/// The zip archive `archive/data.pkl` = `pkl`, `archive/byteorder` = `little`,
/// `archive/data/0` = `storage`, stored (no compression).
pub fn pth_archive(pkl: &[u8], storage: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [
        ("archive/data.pkl", pkl),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", storage),
    ] {
        zip.start_file(name, opts)
            .expect("an in-memory zip entry starts");
        zip.write_all(bytes).expect("an in-memory zip entry writes");
    }
    zip.finish()
        .expect("an in-memory zip finishes")
        .into_inner()
}

/// `pth`: the input as a `.pth` zip archive.
pub fn pth(data: &[u8]) {
    read_checkpoint(data);
}

/// `safetensors`: the input as a safetensors file.
pub fn safetensors(data: &[u8]) {
    read_checkpoint(data);
}

/// `png`: the input as a PNG for `reconstruct`, `edit`, `upscale` and masks.
pub fn png(data: &[u8]) {
    if let Ok(img) = srdd::decode_png_rgb(data, "fuzz.png") {
        assert_eq!(img.rgb.len(), img.width * img.height * 3);
    }
}

/// Reads `n` bytes as a length-prefixed chunk (u16 little-endian length, then the bytes).
fn chunk<'a>(inp: &mut Input<'a>) -> &'a [u8] {
    let n = (inp.u16() as usize).min(inp.data.len());
    let (head, rest) = inp.data.split_at(n);
    inp.data = rest;
    head
}

/// `edit_upscale`: what `srdd edit` and `srdd upscale` do with the user's files and options, on
/// the library functions the CLI calls. The input is ten option bytes, then the image PNG
/// (u16 length prefix), then the mask PNG (the rest):
///
/// * byte 0: bits 0–1 the command (0 edit with a mask, 1 edit with a box, 2 edit with both a
///   mask and a box, 3 upscale), bit 2 `--invert`, bit 3 the built-in model (else
///   [`tiny_model`]), bit 4 run the generation too (else stop after the tokenizer), bits 5–7
///   drop steps of the schedule (`--schedule`);
/// * byte 1 `--feather` (255: `usize::MAX`), byte 2 `--keep-steps` (0: not given, else n − 1);
/// * bytes 3–6 the `--box` numbers, byte 7 how many of them are given (`4` unless its value
///   mod 6 says 0, 3 or 5 — clap accepts any count);
/// * byte 8 the class label (mod classes + 1: the null class too), byte 9 the seed.
///
/// When the inputs are accepted, the tokenizer, the forced sampling, the paste-back with
/// feathering and the PSNR run as in the CLI. Every step must return an error or a value.
pub fn edit_upscale(data: &[u8]) {
    let mut inp = Input { data };
    let flags = inp.u8();
    let feather = match inp.u8() {
        255 => usize::MAX,
        f => f as usize,
    };
    let keep_steps = match inp.u8() {
        0 => None,
        k => Some(k as usize - 1),
    };
    let b = [inp.u8(), inp.u8(), inp.u8(), inp.u8()].map(usize::from);
    let nbox = [4, 4, 4, 0, 3, 5][inp.u8() as usize % 6];
    let b5 = [b[0], b[1], b[2], b[3], b[0]];
    let (label, seed) = (inp.u8(), inp.u8());
    let image = chunk(&mut inp);
    let mask_bytes = inp.data;

    // Loaded once: this target fuzzes the user's files and options, not the model.
    static TINY: OnceLock<Model<'static>> = OnceLock::new();
    static BUILTIN: OnceLock<Model<'static>> = OnceLock::new();
    let (cell, base) = if flags & 8 != 0 {
        (&BUILTIN, builtin_model())
    } else {
        (&TINY, tiny_model())
    };
    let model = cell.get_or_init(|| Model::from_bytes(base.as_bytes()).expect("the model loads"));
    let cfg = &model.config;
    // `--schedule`: the model's steps without those the bits drop; the last always stays.
    let all = cfg.patch_nums.as_slice();
    let pns: Vec<u16> = all
        .iter()
        .enumerate()
        .filter(|&(k, _)| k + 1 == all.len() || (flags >> 5) & (1 << (k % 3)) == 0)
        .map(|(_, &p)| p)
        .collect();
    let Ok(sched) = Schedule::subset(cfg, &pns) else {
        return;
    };
    let mut opts = SampleOptions::for_model(model, label as u32 % (cfg.var.num_classes + 1));
    opts.seed = seed as u64;
    let generate_too = flags & 16 != 0;
    let par = Sequential;
    let mut policy = srdd::ResampleChoice::Keep.instance();
    let side = cfg.image_side();
    if flags & 3 == 3 {
        // upscale
        let Ok(src) = srdd::zero_shot::decode_upscale_image(model, &sched, image, "in.png") else {
            return;
        };
        let Ok((forced, kept)) =
            srdd::zero_shot::upscale_source(model, &sched, &src, keep_steps, &par)
        else {
            return;
        };
        assert!(kept >= 1 && kept <= sched.len());
        if !generate_too {
            return;
        }
        let Ok(out) = srdd::zero_shot::upscale_from(
            model,
            opts,
            &sched,
            &forced,
            &mut *policy,
            &par,
            &mut || {},
        ) else {
            return;
        };
        assert_eq!((out.width, out.height), (side, side));
        let _ = srdd::zero_shot::psnr(&src, &srdd::zero_shot::downscale_box(&out, src.width), None);
        return;
    }
    // edit
    let Ok(src) = srdd::zero_shot::decode_model_image(model, image, "in.png") else {
        return;
    };
    let mask = if flags & 3 != 1 {
        match srdd::zero_shot::decode_mask(mask_bytes, "mask.png", side) {
            Ok(m) => Some(m),
            Err(_) => return,
        }
    } else {
        None
    };
    let r#box = (flags & 3 != 0).then_some(&b5[..nbox]);
    let Ok(generate) = srdd::zero_shot::edit_region(side, mask, r#box, flags & 4 != 0) else {
        return;
    };
    assert_eq!(generate.len(), side * side);
    let Ok(toks) = srdd::zero_shot::tokens_of(model, &sched, &src, &par) else {
        return;
    };
    let keep = srdd::zero_shot::keep_mask(&generate, side, cfg.latent_side());
    assert!(keep.iter().all(|k| (0.0..=1.0).contains(k)));
    let mut out = if generate_too {
        match srdd::zero_shot::sample_forced(
            model,
            opts,
            &sched,
            &toks,
            &keep,
            &mut *policy,
            &par,
            &mut || {},
        ) {
            Ok(out) => out,
            Err(_) => return,
        }
    } else {
        srdd::Image {
            width: src.width,
            height: src.height,
            rgb: src.rgb.clone(),
        }
    };
    let kept: Vec<bool> = generate.iter().map(|g| !g).collect();
    let _ = srdd::zero_shot::psnr(&src, &out, Some(&kept));
    srdd::zero_shot::paste_back_feathered(&mut out, &src, &generate, feather);
    // Kept pixels are the input's, byte for byte, whatever the feather.
    for (i, g) in generate.iter().enumerate() {
        if !g {
            assert_eq!(out.rgb[i * 3..i * 3 + 3], src.rgb[i * 3..i * 3 + 3]);
        }
    }
}

//! Bodies of the fuzz targets (issue #13). Each `pub fn` takes the fuzzer's input and must
//! return without panicking whatever the bytes: the parsers answer a typed error or a value.
//! The libFuzzer entry points in `fuzz_targets/` call these, and `tests/replay.rs` runs the
//! seed corpora and the kept reproducers through them on stable.
#![deny(missing_docs)]

use srdd_core::aligned::AlignedBytes;
use srdd_core::format::{align_up, file_checksum, Header, TensorDType, TensorEntry, WeightLayout};
use srdd_core::format::{PREFIX_LEN, TENSOR_ALIGN};
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::{Model, NoHook, Schedule};
use srdd_tools::checkpoint::{read_state_dict_bytes, CheckpointError, Role, StateDict};
use std::io::{Cursor, Write};

/// The built-in model the `srdd_model` target mutates.
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
            .expect("the built-in model's tensor table decodes");
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
            match inp.u8() % 6 {
                0 => e.dtype = TensorDType::F32,
                1 => e.dtype = TensorDType::F16,
                2 => e.dtype = TensorDType::I8,
                3 => e.layout = WeightLayout::Plain,
                4 => e.layout = WeightLayout::PANELS,
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

/// `srdd_model`: mutates the built-in model's header, tensor table, metadata and tensor bytes
/// as the input directs, re-encodes and reseals the file (so it passes the checksum and reaches
/// the loader), and when [`Model::from_bytes`] accepts it, plans and samples a small image over
/// the first scales. Every step must return an error or a value, never panic.
pub fn srdd_model(data: &[u8]) {
    // `include_bytes!` gives no alignment; the loader wants 16 bytes.
    static MODEL: std::sync::OnceLock<AlignedBytes> = std::sync::OnceLock::new();
    let mut parts = decode(
        MODEL
            .get_or_init(|| AlignedBytes::new(DEFAULT_MODEL))
            .as_bytes(),
    );
    let names: Vec<&str> = parts.entries.iter().map(|e| e.name).collect();
    let mut inp = Input { data };
    // The first byte sets the sampling options; up to 16 mutations follow.
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
    let _ = sample_small(&model, knobs);
}

/// Plans and runs a small sampling run (the first one or two scales and the last, small chunks) and decodes it;
/// `knobs` picks the label, top-k/top-p, seed, chunk and number of scales.
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
    gen.decode(&mut |_, row| {
        assert!(row.iter().all(|v| v.is_finite() || v.is_nan()));
    })?;
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

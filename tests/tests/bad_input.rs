//! Malformed model bytes and malformed checkpoints: every one must end in a typed error, never a
//! panic, and a mutated file the loader accepts must also sample without panicking.

mod common;

use srdd_core::aligned::AlignedBytes;
use srdd_core::format::{align_up, file_checksum, FORMAT_VERSION, MAGIC, PREFIX_LEN, TENSOR_ALIGN};
use srdd_core::generate::{Generator, Guidance, Plan, SampleOptions};
use srdd_core::{Error, Model, NoHook, Schedule, WeightFormat};
use srdd_tools::checkpoint::{DType, RawTensor, StateDict};
use srdd_tools::convert::{pack, ConvertError};
use std::panic::{catch_unwind, AssertUnwindSafe};

const FIXTURE: &str = "tiny-six-scales";

fn load(bytes: &[u8]) -> Result<(), Error> {
    Model::from_bytes(bytes).map(|_| ())
}

/// `n` evenly spaced values in `0..len`, plus `extra`, deduplicated and sorted.
fn spaced(len: usize, n: usize, extra: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).map(|i| i * len / n).collect();
    v.extend(extra.iter().copied().filter(|&x| x < len));
    v.sort_unstable();
    v.dedup();
    v
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Offset of the data section (end of the header and tensor table, rounded up).
fn data_start(bytes: &[u8]) -> usize {
    align_up(PREFIX_LEN + le_u32(bytes, 12) as usize, TENSOR_ALIGN)
}

fn reseal(bytes: &mut [u8]) {
    let sum = file_checksum(bytes);
    bytes[24..32].copy_from_slice(&sum.to_le_bytes());
}

/// Calls `f` with the packed fixture in each of f32 and int8.
fn for_each_format(f: impl Fn(WeightFormat, &[u8])) {
    for w in [WeightFormat::F32, WeightFormat::Int8] {
        f(w, common::packed(&common::fixture(FIXTURE), w).as_bytes());
    }
}

#[test]
fn packed_fixture_loads() {
    for_each_format(|w, bytes| {
        let model = Model::from_bytes(bytes).expect("the unmodified file loads");
        assert_eq!(model.config.weights, w);
        assert_eq!(&bytes[..8], &MAGIC);
        assert_eq!(le_u64(bytes, 16), bytes.len() as u64);
    });
}

#[test]
fn every_truncation_is_a_truncated_error() {
    for_each_format(|w, bytes| {
        let n = bytes.len();
        let ds = data_start(bytes);
        let lens = spaced(
            n,
            300,
            &[0, 1, 7, 8, 12, 31, 32, 33, ds - 1, ds, ds + 1, n - 1],
        );
        assert!(lens.len() >= 300);
        for l in lens {
            let want_expected = if l < PREFIX_LEN {
                PREFIX_LEN as u64
            } else {
                n as u64
            };
            match load(&bytes[..l]) {
                Err(Error::Truncated { expected, found }) => {
                    assert_eq!(found, l as u64, "{w:?} length {l}");
                    assert_eq!(expected, want_expected, "{w:?} length {l}");
                }
                other => panic!("{w:?}: truncated to {l} of {n} bytes gave {other:?}"),
            }
        }
    });
}

#[test]
fn every_single_byte_flip_is_rejected() {
    for_each_format(|w, orig| {
        let n = orig.len();
        let stored = le_u64(orig, 24);
        let mut buf = AlignedBytes::new(orig);
        let positions = spaced(n, 300, &(0..40).chain([n - 1]).collect::<Vec<_>>());
        for (i, &pos) in positions.iter().enumerate() {
            let x = [0x01u8, 0x80, 0xff, 0x10][i % 4];
            let bytes = buf.as_bytes_mut();
            bytes[pos] ^= x;
            let r = catch_unwind(AssertUnwindSafe(|| load(buf.as_bytes())))
                .unwrap_or_else(|_| panic!("{w:?}: flipping byte {pos} (^{x:#04x}) panicked"));
            if (12..16).contains(&pos) {
                println!("{w:?}: header-length byte {pos} ^{x:#04x}: {r:?}");
            }
            let ok = match (pos, r) {
                (0..=7, Err(Error::BadMagic)) => true,
                (8..=11, Err(Error::UnsupportedVersion { found, supported })) => {
                    found != FORMAT_VERSION && supported == FORMAT_VERSION
                }
                // The header length is outside the checksum: any outcome but a panic. An `Ok` is
                // possible when the data section still starts at the same 64-byte boundary.
                (12..=15, _) => true,
                // The declared file length: longer is truncation, shorter changes the checksummed
                // range.
                (16..=23, Err(Error::Truncated { .. }))
                | (16..=23, Err(Error::ChecksumMismatch { .. })) => true,
                (
                    24..=31,
                    Err(Error::ChecksumMismatch {
                        stored: s,
                        computed,
                    }),
                ) => s != stored && computed == stored,
                (
                    32..,
                    Err(Error::ChecksumMismatch {
                        stored: s,
                        computed,
                    }),
                ) => s == stored && computed != stored,
                (_, r) => panic!("{w:?}: flipping byte {pos} (^{x:#04x}) gave {r:?}"),
            };
            assert!(
                ok,
                "{w:?}: flipping byte {pos} (^{x:#04x}) gave the wrong numbers"
            );
            buf.as_bytes_mut()[pos] ^= x;
        }
        assert_eq!(buf.as_bytes(), orig);
    });
}

/// A tiny sampling run (guided, filtered) on whatever model the bytes hold; errors are fine.
fn try_sample(model: &Model<'_>) -> Result<(), Error> {
    let cfg = &model.config;
    let mut opts = SampleOptions::new(0);
    opts.top_k = 10.min(cfg.vae.vocab_size);
    opts.top_p = 0.9;
    opts.seed = 7;
    opts.guidance = Guidance::Linear;
    let sched = Schedule::full(cfg);
    let plan = Plan::new(cfg, &opts, &sched)?;
    // Mutated configurations must not be able to ask for absurd amounts of memory.
    assert!(
        plan.arena_bytes() < 1 << 28,
        "plan of {} bytes",
        plan.arena_bytes()
    );
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let mut gen = Generator::new(model, opts, sched, arena.as_bytes_mut())?;
    gen.run(&mut NoHook)?;
    let mut rows = 0;
    gen.decode(&mut |_, _| rows += 1)?;
    assert_eq!(rows, cfg.image_side());
    Ok(())
}

#[test]
fn resealed_header_and_table_flips_never_panic() {
    for_each_format(|w, orig| {
        let end = PREFIX_LEN + le_u32(orig, 12) as usize;
        let mut buf = AlignedBytes::new(orig);
        let positions = spaced(end - PREFIX_LEN, 700, &(0..160).collect::<Vec<_>>());
        let (mut accepted, mut sampled, mut kinds) =
            (0usize, 0usize, std::collections::BTreeMap::new());
        for (i, &p) in positions.iter().enumerate() {
            let pos = PREFIX_LEN + p;
            let x = [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff][i % 9];
            buf.as_bytes_mut()[pos] ^= x;
            reseal(buf.as_bytes_mut());
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                match Model::from_bytes(buf.as_bytes()) {
                    Ok(model) => Ok(try_sample(&model)),
                    Err(e) => Err(e),
                }
            }));
            match outcome {
                Err(_) => panic!("{w:?}: flipping header/table byte {pos} (^{x:#04x}) panicked"),
                Ok(Ok(run)) => {
                    accepted += 1;
                    sampled += run.is_ok() as usize;
                }
                Ok(Err(e)) => {
                    assert!(
                        !matches!(
                            e,
                            Error::ChecksumMismatch { .. }
                                | Error::Truncated { .. }
                                | Error::BadMagic
                        ),
                        "{w:?}: byte {pos}: resealed file gave {e:?}"
                    );
                    let name = format!("{e:?}");
                    *kinds
                        .entry(name.split([' ', '(']).next().unwrap().to_string())
                        .or_insert(0usize) += 1;
                }
            }
            buf.as_bytes_mut()[pos] ^= x;
        }
        reseal(buf.as_bytes_mut());
        assert_eq!(buf.as_bytes(), orig);
        println!(
            "{w:?}: {} resealed flips in {} header/table bytes: {accepted} accepted ({sampled} sampled to the end), rejected {kinds:?}",
            positions.len(),
            end - PREFIX_LEN
        );
        // The table names, shapes and lengths are checked, so most flips must be rejected.
        assert!(
            kinds.values().sum::<usize>() > positions.len() / 2,
            "{kinds:?}"
        );
    });
}

#[test]
fn misaligned_bytes_are_rejected_and_16_byte_alignment_suffices() {
    let b = common::packed(&common::fixture(FIXTURE), WeightFormat::F32);
    let orig = b.as_bytes();
    for off in [1usize, 2, 4, 8, 15, 16, 32, 48] {
        let mut buf = AlignedBytes::zeroed(orig.len() + off);
        buf.as_bytes_mut()[off..].copy_from_slice(orig);
        let r = load(&buf.as_bytes()[off..]);
        if off % 16 == 0 {
            assert_eq!(r, Ok(()), "offset {off}");
        } else {
            assert_eq!(r, Err(Error::Misaligned { needed: 16 }), "offset {off}");
        }
    }
}

#[test]
fn wrong_version_and_bad_magic() {
    let b = common::packed(&common::fixture(FIXTURE), WeightFormat::Int8);
    // Version 1 (int8 rows before the panel layout) is refused, not misread.
    for v in [0u32, 1, FORMAT_VERSION + 1, u32::MAX] {
        let mut buf = AlignedBytes::new(b.as_bytes());
        buf.as_bytes_mut()[8..12].copy_from_slice(&v.to_le_bytes());
        assert_eq!(
            load(buf.as_bytes()),
            Err(Error::UnsupportedVersion {
                found: v,
                supported: FORMAT_VERSION
            })
        );
    }
    for i in 0..8 {
        let mut buf = AlignedBytes::new(b.as_bytes());
        buf.as_bytes_mut()[i] ^= 0x20;
        assert_eq!(load(buf.as_bytes()), Err(Error::BadMagic), "magic byte {i}");
    }
    // Short inputs: a wrong magic is reported as such, a right one as truncation.
    assert_eq!(
        load(AlignedBytes::new(b"GGUF\x03\0\0\0\0\0").as_bytes()),
        Err(Error::BadMagic)
    );
    assert_eq!(
        load(AlignedBytes::new(&MAGIC).as_bytes()),
        Err(Error::Truncated {
            expected: PREFIX_LEN as u64,
            found: 8
        })
    );
    assert_eq!(
        load(&[]),
        Err(Error::Truncated {
            expected: PREFIX_LEN as u64,
            found: 0
        })
    );
}

/// A prefix whose declared file length is shorter than the prefix itself must be an error.
#[test]
fn declared_length_shorter_than_the_prefix_is_an_error() {
    for declared in [0u64, 8, 16, 24, 31] {
        let mut p = [0u8; 64];
        p[..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        p[12..16].copy_from_slice(&0u32.to_le_bytes());
        p[16..24].copy_from_slice(&declared.to_le_bytes());
        let buf = AlignedBytes::new(&p);
        let r = catch_unwind(|| load(buf.as_bytes()));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(())) => panic!("declared length {declared}: accepted"),
            Err(_) => panic!("declared length {declared}: Model::from_bytes panicked (format::parse slices to the declared length before checking it covers the prefix)"),
        }
    }
}

#[test]
fn appended_bytes_are_ignored() {
    // The declared length bounds the checksummed file; trailing bytes are not part of it.
    let b = common::packed(&common::fixture(FIXTURE), WeightFormat::Int8);
    let mut v = b.as_bytes().to_vec();
    v.extend_from_slice(&[0xAB; 100]);
    assert_eq!(load(AlignedBytes::new(&v).as_bytes()), Ok(()));
}

// ---- Converter ----

fn f32_tensor(shape: &[usize], values: impl Fn(usize) -> f32) -> RawTensor {
    let n: usize = shape.iter().product();
    RawTensor {
        dtype: DType::F32,
        shape: shape.to_vec(),
        data: (0..n).flat_map(|i| values(i).to_le_bytes()).collect(),
    }
}

fn six() -> (StateDict, StateDict, srdd_tools::convert::PackOptions) {
    let dir = common::fixture(FIXTURE);
    let (var, vae) = common::state_dicts(&dir);
    (var, vae, common::pack_options(&dir, WeightFormat::F32))
}

#[test]
fn converter_accepts_the_fixture() {
    let (var, vae, opts) = six();
    let bytes = pack(&var, &vae, &opts).expect("pack");
    assert_eq!(
        bytes,
        common::packed(&common::fixture(FIXTURE), WeightFormat::F32).as_bytes()
    );
}

#[test]
fn converter_names_a_missing_key() {
    let (mut var, mut vae, opts) = six();
    let key = "blocks.0.attn.proj.weight";
    assert!(var.remove(key).is_some());
    match pack(&var, &vae, &opts) {
        Err(ConvertError::MissingKeys(k)) => assert_eq!(k, vec![format!("var:{key}")]),
        other => panic!("removing {key}: {:?}", other.map(|b| b.len())),
    }
    let (var, _, _) = six();
    let key = "decoder.conv_out.bias";
    assert!(vae.remove(key).is_some());
    match pack(&var, &vae, &opts) {
        Err(ConvertError::MissingKeys(k)) => assert_eq!(k, vec![format!("vae:{key}")]),
        other => panic!("removing {key}: {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn converter_rejects_every_missing_var_key_except_the_buffers() {
    // tiny-official-schedule has two blocks, so every per-block tensor is needed by the shape
    // inference of the other block too.
    let dir = common::fixture("tiny-official-schedule");
    let (var, vae) = common::state_dicts(&dir);
    let opts = common::pack_options(&dir, WeightFormat::Int8);
    let keys: Vec<String> = var.keys().map(String::from).collect();
    for key in keys {
        let mut v = var.clone();
        v.remove(&key);
        let buffer =
            key == "lvl_1L" || key == "attn_bias_for_masking" || key.ends_with(".attn.zero_k_bias");
        match pack(&v, &vae, &opts) {
            Ok(_) if buffer => {}
            Ok(_) => panic!("packing without {key} succeeded"),
            Err(e) if !buffer => {
                let msg = e.to_string();
                // Block 0's `scale_mul_1H11` is what marks L2-normalised attention: without it the
                // converter infers a model without that feature and reports block 1's copy as
                // unexpected instead.
                let twin = key.replace(
                    "blocks.0.attn.scale_mul_1H11",
                    "blocks.1.attn.scale_mul_1H11",
                );
                assert!(
                    msg.contains(&key) || msg.contains(&twin),
                    "removing {key}: error does not name it: {msg}"
                );
            }
            Err(e) => panic!("removing the buffer {key} failed: {e}"),
        }
    }
}

#[test]
fn converter_names_an_unexpected_key() {
    let (mut var, mut vae, opts) = six();
    var.insert("mystery.weight", f32_tensor(&[3], |i| i as f32));
    match pack(&var, &vae, &opts) {
        Err(ConvertError::UnexpectedKeys(k)) => {
            assert_eq!(k, vec!["var:mystery.weight".to_string()])
        }
        other => panic!("{:?}", other.map(|b| b.len())),
    }
    var.remove("mystery.weight");
    vae.insert("decoder.extra.weight", f32_tensor(&[2, 2], |_| 0.0));
    match pack(&var, &vae, &opts) {
        Err(ConvertError::UnexpectedKeys(k)) => {
            assert_eq!(k, vec!["vae:decoder.extra.weight".to_string()])
        }
        other => panic!("{:?}", other.map(|b| b.len())),
    }
}

/// The key, found and expected shape of a `ConvertError::Shape`; anything else panics.
fn shape_error(packed: Result<Vec<u8>, ConvertError>) -> (String, Vec<usize>, Vec<usize>) {
    match packed {
        Err(ConvertError::Shape {
            key,
            found,
            expected,
        }) => (key, found, expected),
        other => panic!("{:?}", other.map(|b| b.len())),
    }
}

#[test]
fn converter_reports_a_wrong_shape() {
    let (mut var, vae, opts) = six();
    let key = "blocks.0.ffn.fc2.bias";
    let old = var.get(key).expect("key").clone();
    assert_eq!(old.shape, vec![64]);
    var.insert(key, f32_tensor(&[65], |i| i as f32 * 0.01));
    let (k, found, expected) = shape_error(pack(&var, &vae, &opts));
    assert_eq!(k, key);
    assert_eq!(found, vec![65]);
    assert_eq!(expected, vec![64]);
    // Same element count, different layout.
    let key = "blocks.0.attn.proj.weight";
    let t = var.get(key).unwrap().clone();
    var.insert("blocks.0.ffn.fc2.bias", old);
    var.insert(
        key,
        RawTensor {
            shape: vec![32, 128],
            ..t
        },
    );
    let (k, found, expected) = shape_error(pack(&var, &vae, &opts));
    assert_eq!(
        (k.as_str(), found, expected),
        (key, vec![32, 128], vec![64, 64])
    );
}

#[test]
fn converter_rejects_a_nonzero_k_bias() {
    let (mut var, vae, opts) = six();
    let key = "blocks.0.attn.zero_k_bias";
    let t = var
        .get(key)
        .expect("the fixture has the zero k bias buffer")
        .clone();
    assert!(t.to_f32().unwrap().iter().all(|v| *v == 0.0));
    var.insert(
        key,
        f32_tensor(&t.shape, |i| if i == 5 { 1e-3 } else { 0.0 }),
    );
    match pack(&var, &vae, &opts) {
        Err(ConvertError::Value(k, _)) => assert_eq!(k, key),
        other => panic!("{:?}", other.map(|b| b.len())),
    }
}

#[test]
fn an_int8_weight_in_another_layout_is_refused() {
    let b = common::packed(&common::fixture(FIXTURE), WeightFormat::Int8);
    let bytes = b.as_bytes();
    // The entry of the first int8 weight: its name, then dtype I8 (variant 2) and the layout
    // Panels { nr: 16, kr: 4 } (variant 1, then the two bytes) in postcard.
    let name = b"word_embed.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("the entry is in the table")
        + name.len();
    assert_eq!(
        &bytes[at..at + 4],
        &[2, 1, 16, 4],
        "dtype and layout follow the name"
    );
    for (i, v) in [(2, 8u8), (3, 8), (1, 0)] {
        let mut buf = AlignedBytes::new(bytes);
        let m = buf.as_bytes_mut();
        m[at + i] = v;
        reseal(m);
        match load(buf.as_bytes()) {
            Err(Error::TensorMismatch { what, .. }) => assert!(what.contains("layout"), "{what}"),
            // Panels → Plain shortens the entry by two bytes: the table no longer decodes.
            Err(Error::BadHeader) if i == 1 => {}
            other => panic!("byte {i} = {v}: {other:?}"),
        }
    }
}

// ---- Metadata the engine reads ----

/// The fixture packed with valid typed metadata, each value padded so that a same-length
/// patch can make it invalid.
fn with_typed_metadata() -> Vec<u8> {
    let (var, vae, mut opts) = six();
    opts.metadata = [
        ("class_names", "aa,bb,cc,dd,ee"),
        ("default_cfg", "1.5"),
        ("default_top_k", "00000010"),
        ("default_top_p", "0.5"),
        ("resample_policy", "1,2,3,4"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    pack(&var, &vae, &opts).expect("valid metadata packs")
}

#[test]
fn metadata_that_contradicts_the_model_is_rejected_on_load() {
    let bytes = with_typed_metadata();
    let model_bytes = AlignedBytes::new(&bytes);
    let model = Model::from_bytes(model_bytes.as_bytes()).expect("the valid file loads");
    assert_eq!(model.config.var.num_classes, 5);
    let opts = SampleOptions::for_model(&model, 0);
    assert_eq!((opts.cfg, opts.top_k, opts.top_p), (1.5, 10, 0.5));
    let meta_at = data_start(&bytes);
    for (from, to, key) in [
        (
            "class_names=aa,bb,cc,dd,ee",
            "class_names=aa,bb,cc,dd;ee",
            "class_names",
        ),
        (
            "class_names=aa,bb,cc,dd,ee",
            "class_names=aa,bb,cc,dd,AA",
            "class_names",
        ),
        (
            "class_names=aa,bb,cc,dd,ee",
            "class_names=aa,bb,  ,dd,ee",
            "class_names",
        ),
        (
            "class_names=aa,bb,cc,dd,ee",
            "class_names=aa,bb,cc,dd,12",
            "class_names",
        ),
        ("default_cfg=1.5", "default_cfg=-.5", "default_cfg"),
        ("default_cfg=1.5", "default_cfg=abc", "default_cfg"),
        ("default_cfg=1.5", "default_cfg=inf", "default_cfg"),
        (
            "default_top_k=00000010",
            "default_top_k=99999999",
            "default_top_k",
        ),
        (
            "default_top_k=00000010",
            "default_top_k=000001.5",
            "default_top_k",
        ),
        (
            "default_top_k=00000010",
            "default_top_k=-0000001",
            "default_top_k",
        ),
        ("default_top_p=0.5", "default_top_p=1.5", "default_top_p"),
        ("default_top_p=0.5", "default_top_p=NaN", "default_top_p"),
        (
            "resample_policy=1,2,3,4",
            "resample_policy=1,2,3;4",
            "resample_policy",
        ),
        (
            "resample_policy=1,2,3,4",
            "resample_policy=1,2,3,x",
            "resample_policy",
        ),
        // A second `default_cfg` line: which one would count is not for the reader to guess.
        ("default_top_p=0.5", "default_cfg=0.500", "default_cfg"),
    ] {
        assert_eq!(from.len(), to.len());
        let mut buf = AlignedBytes::new(&bytes);
        let m = buf.as_bytes_mut();
        let at = meta_at
            + m[meta_at..]
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .expect("the metadata line is in the data section");
        m[at..at + to.len()].copy_from_slice(to.as_bytes());
        reseal(m);
        let got = catch_unwind(AssertUnwindSafe(|| load(buf.as_bytes())))
            .unwrap_or_else(|_| panic!("{to}: the loader panicked"));
        match got {
            Err(e @ Error::BadMetadata { key: k, .. }) => {
                assert_eq!(k, key, "{to}: {e}");
                assert!(e
                    .to_string()
                    .starts_with(&format!("model metadata {key}: ")));
            }
            other => panic!("{to}: {other:?}"),
        }
    }
}

#[test]
fn the_shipped_model_metadata_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default-int8.srdd");
    let bytes = AlignedBytes::read(path.as_ref()).expect("model file");
    let model = Model::from_bytes(bytes.as_bytes()).expect("the shipped model loads");
    Model::check_metadata(model.metadata, &model.config).expect("its metadata is valid");
    assert_eq!(model.class_index("flags"), Some(8));
}

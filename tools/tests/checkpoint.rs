//! Tests of `srdd_tools::checkpoint` against the golden fixtures in
//! `tests/fixtures/*` and the small PyTorch-written files in
//! `tools/tests/data/checkpoints/` (regenerate with `make.py` there).

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use srdd_tools::checkpoint::{
    read_state_dict, read_state_dict_bytes, CheckpointError, DType, RawTensor, Role, StateDict,
};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/checkpoints")
        .join(name)
}

fn read(path: &Path, role: Role) -> StateDict {
    read_state_dict(path, role).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tiny xorshift PRNG, so the "random" tests are deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn assert_well_formed(sd: &StateDict) {
    for (k, t) in sd.iter() {
        assert_eq!(t.data.len(), t.numel() * t.dtype.size(), "{k}: byte length");
    }
}

// ---- golden fixtures: .pth == .safetensors --------------------------------

#[test]
fn fixtures_pth_equal_safetensors() {
    for name in ["tiny-six-scales", "tiny-official-schedule"] {
        let dir = fixture(name);
        let manifest: Json =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        for model in ["vae", "var"] {
            let pth = read(&dir.join(format!("{model}.pth")), Role::Any);
            let st = read(&dir.join(format!("{model}.safetensors")), Role::Any);
            let count = manifest["state_dict_keys"][model].as_u64().unwrap() as usize;
            assert_eq!(pth.len(), count, "{name}/{model}.pth key count");
            assert_eq!(st.len(), count, "{name}/{model}.safetensors key count");
            assert_well_formed(&pth);
            for (k, t) in pth.iter() {
                let s = st
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}/{model}: {k} missing in safetensors"));
                assert_eq!(t.dtype, s.dtype, "{k}");
                assert_eq!(t.shape, s.shape, "{k}");
                assert!(t.data == s.data, "{name}/{model}: {k} data differs");
            }
            // Module order, as in `model.state_dict()`.
            let first: Vec<&str> = pth.keys().take(3).collect();
            if model == "var" {
                assert_eq!(first, ["pos_start", "pos_1LC", "lvl_1L"]);
                let lvl = pth.get("lvl_1L").unwrap();
                assert_eq!(lvl.dtype, DType::I64);
                let levels = lvl.to_i64().unwrap();
                assert_eq!(levels[0], 0);
                assert!(levels.windows(2).all(|w| w[0] <= w[1]));
                assert!(lvl.to_f32().is_err());
            } else {
                assert_eq!(
                    first[..2],
                    ["encoder.conv_in.weight", "encoder.conv_in.bias"]
                );
            }
            // In-memory reading gives the same result.
            let bytes = std::fs::read(dir.join(format!("{model}.pth"))).unwrap();
            assert_eq!(read_state_dict_bytes(&bytes, Role::Any).unwrap(), pth);
        }
    }
}

#[test]
fn fixture_values_convert() {
    let sd = read(&fixture("tiny-six-scales/var.pth"), Role::Var);
    let t = sd.get("pos_start").unwrap();
    assert_eq!(t.dtype, DType::F32);
    assert_eq!(t.shape, [1, 1, 64]);
    let v = t.to_f32().unwrap();
    assert_eq!(v.len(), 64);
    assert_eq!(v[0].to_le_bytes(), t.data[..4]);
    assert!(t.to_i64().is_err());
}

// ---- PyTorch-written special cases ----------------------------------------

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap()
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F64 => "F64",
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::I8 => "I8",
        DType::U8 => "U8",
        DType::Bool => "Bool",
    }
}

fn float_values(t: &RawTensor) -> Vec<f64> {
    match t.dtype {
        DType::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => t.to_f32().unwrap().into_iter().map(f64::from).collect(),
    }
}

/// Floats are stored as Python `repr()` strings ("0.1", "-inf"): parsed
/// with Rust's correctly rounded parser, they are exact.
fn json_float(v: &Json) -> f64 {
    v.as_str().unwrap().parse::<f64>().unwrap()
}

/// Checks a state dict against `expected.json[entry]`: same keys in the same
/// order, dtypes, shapes and exact values.
fn check_against(sd: &StateDict, entry: &str) {
    let exp = expected();
    let exp = exp[entry]
        .as_array()
        .unwrap_or_else(|| panic!("no {entry}"));
    let keys: Vec<&str> = sd.keys().collect();
    let exp_keys: Vec<&str> = exp.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, exp_keys, "{entry}: keys/order");
    assert_well_formed(sd);
    for e in exp {
        let key = e["key"].as_str().unwrap();
        let t = sd.get(key).unwrap();
        assert_eq!(
            dtype_name(t.dtype),
            e["dtype"].as_str().unwrap(),
            "{entry}:{key}"
        );
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{entry}:{key}");
        let values = e["values"].as_array().unwrap();
        if t.dtype.is_float() {
            let got = float_values(t);
            let want: Vec<f64> = values.iter().map(json_float).collect();
            assert_eq!(got.len(), want.len(), "{entry}:{key}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "{entry}:{key}: {got:?} != {want:?}"
                );
            }
        } else {
            let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(t.to_i64().unwrap(), want, "{entry}:{key}");
        }
    }
}

#[test]
fn nested_training_checkpoint() {
    let path = data("nested.pth");
    check_against(&read(&path, Role::Var), "nested.pth:var");
    check_against(&read(&path, Role::Vae), "nested.pth:vae");
    let var = read(&path, Role::Var);
    assert_eq!(var.keys().next(), Some("pos_start"));
    assert_eq!(var.get("lvl_1L").unwrap().dtype, DType::I64);
    match read_state_dict(&path, Role::Any) {
        Err(CheckpointError::NestedNeedsRole { available }) => {
            assert!(
                available.contains(&"trainer.var_wo_ddp".to_string()),
                "{available:?}"
            );
            assert!(
                available.contains(&"trainer.vae_local".to_string()),
                "{available:?}"
            );
            assert!(
                !available.iter().any(|a| a.contains("var_opt")),
                "{available:?}"
            );
        }
        other => panic!("expected NestedNeedsRole, got {other:?}"),
    }
}

#[test]
fn prefixes_are_stripped_and_wrappers_unwrapped() {
    check_against(&read(&data("prefixed.pth"), Role::Any), "prefixed.pth");
    check_against(&read(&data("prefixed.pth"), Role::Var), "prefixed.pth");
    check_against(&read(&data("wrapped.pth"), Role::Any), "wrapped.pth");
    check_against(&read(&data("wrapped.pth"), Role::Vae), "wrapped.pth");
    match read_state_dict(&data("duplicate.pth"), Role::Any) {
        Err(CheckpointError::DuplicateKey(k)) => assert_eq!(k, "w"),
        other => panic!("expected DuplicateKey, got {other:?}"),
    }
}

#[test]
fn views_dtypes_and_shared_storages() {
    for file in ["views.pth", "views_p4.pth"] {
        let sd = read(&data(file), Role::Any);
        check_against(&sd, file);
        let t = sd.get("transposed").unwrap();
        assert_eq!(t.shape, [4, 3]);
        assert_eq!(t.to_f32().unwrap()[..4], [0.0, 4.0, 8.0, 1.0]);
        assert_eq!(
            sd.get("shared_b").unwrap().to_f32().unwrap(),
            [10.0, 12.0, 14.0, 16.0, 18.0]
        );
        assert_eq!(sd.get("half").unwrap().dtype, DType::F16);
        assert_eq!(sd.get("bfloat").unwrap().dtype, DType::BF16);
        assert_eq!(sd.get("scalar").unwrap().shape, Vec::<usize>::new());
        assert_eq!(sd.get("scalar").unwrap().numel(), 1);
        assert_eq!(sd.get("empty").unwrap().data.len(), 0);
    }
}

#[test]
fn state_dict_api() {
    let mut sd = read(&data("views.pth"), Role::Any);
    let n = sd.len();
    let keys: Vec<String> = sd.keys().map(String::from).collect();
    let removed = sd.remove("shared_a").unwrap();
    assert_eq!(removed.shape, [2, 3]);
    assert!(sd.remove("shared_a").is_none());
    assert_eq!(sd.len(), n - 1);
    let after: Vec<&str> = sd.keys().collect();
    let want: Vec<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "shared_a")
        .collect();
    assert_eq!(after, want);
    // Index stays consistent after removal.
    for (k, t) in sd.iter() {
        assert_eq!(sd.get(k), Some(t));
    }
    assert!(!sd.is_empty());
}

// ---- not a checkpoint ------------------------------------------------------

#[test]
fn not_a_checkpoint() {
    for bytes in [
        &b""[..],
        b"hello world, this is not a checkpoint",
        &[0u8; 64],
        b"PK\x05\x06",
    ] {
        let err = read_state_dict_bytes(bytes, Role::Any).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NotACheckpoint(_)),
            "{bytes:?}: {err:?}"
        );
    }
    let dir = std::env::temp_dir().join(format!("srdd-ckpt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("text.pth");
    std::fs::write(&p, "just text\n").unwrap();
    assert!(matches!(
        read_state_dict(&p, Role::Any),
        Err(CheckpointError::NotACheckpoint(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    match read_state_dict(&data("legacy.pth"), Role::Any) {
        Err(CheckpointError::NotACheckpoint(msg)) => assert!(msg.contains("legacy"), "{msg}"),
        other => panic!("expected NotACheckpoint, got {other:?}"),
    }
    assert!(matches!(
        read_state_dict(Path::new("/nonexistent/x.pth"), Role::Any),
        Err(CheckpointError::Io(_))
    ));
}

// ---- hostile input ---------------------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    for file in ["var.pth", "var.safetensors"] {
        let bytes = std::fs::read(fixture("tiny-six-scales").join(file)).unwrap();
        let steps = 200;
        for i in 0..steps {
            let len = bytes.len() * i / steps;
            let r = read_state_dict_bytes(&bytes[..len], Role::Any);
            assert!(r.is_err(), "{file} truncated to {len} bytes was accepted");
        }
        assert!(read_state_dict_bytes(&bytes[..bytes.len() - 1], Role::Any).is_err());
    }
}

/// Rebuilds a zip archive, letting `edit` replace (or drop) each entry's
/// content. Entries are stored uncompressed with correct CRCs, so the
/// reader gets past the zip layer and sees the edited content.
fn rebuild_zip(src: &[u8], edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    rewrite_zip(src, CompressionMethod::Stored, edit)
}

/// [`rebuild_zip`] with every entry written with `method`.
fn rewrite_zip(
    src: &[u8],
    method: CompressionMethod,
    mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let mut zin = ZipArchive::new(Cursor::new(src)).unwrap();
    let mut zout = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(method);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut content = Vec::new();
        f.read_to_end(&mut content).unwrap();
        if let Some(content) = edit(&name, content) {
            zout.start_file(name, opts).unwrap();
            zout.write_all(&content).unwrap();
        }
    }
    zout.finish().unwrap().into_inner()
}

fn with_pickle(pickle: &[u8]) -> Vec<u8> {
    let src = std::fs::read(data("views.pth")).unwrap();
    rebuild_zip(&src, |name, c| {
        Some(if name.ends_with("/data.pkl") {
            pickle.to_vec()
        } else {
            c
        })
    })
}

#[test]
fn rebuilt_archive_reads_the_same() {
    // Sanity check of the rebuild helper (also: deflate-free rewrite with
    // unaligned entries still reads identically).
    let src = std::fs::read(data("views.pth")).unwrap();
    let rebuilt = rebuild_zip(&src, |_, c| Some(c));
    assert_eq!(
        read_state_dict_bytes(&rebuilt, Role::Any).unwrap(),
        read_state_dict_bytes(&src, Role::Any).unwrap()
    );
    // Deflate-compressed entries are read too.
    let deflated = rewrite_zip(&src, CompressionMethod::Deflated, |_, c| Some(c));
    assert_eq!(
        read_state_dict_bytes(&deflated, Role::Any).unwrap(),
        read_state_dict_bytes(&src, Role::Any).unwrap()
    );
}

#[test]
fn corrupted_pickles_never_panic() {
    let src = std::fs::read(fixture("tiny-six-scales/var.pth")).unwrap();
    let mut zin = ZipArchive::new(Cursor::new(&src[..])).unwrap();
    let mut pkl = Vec::new();
    zin.by_name("var/data.pkl")
        .unwrap()
        .read_to_end(&mut pkl)
        .unwrap();
    let rebuild = |p: &[u8]| {
        rebuild_zip(&src, |name, c| {
            Some(if name.ends_with("/data.pkl") {
                p.to_vec()
            } else {
                c
            })
        })
    };

    // Every truncation of the pickle itself is an error.
    for len in (0..pkl.len()).step_by(7) {
        assert!(
            read_state_dict_bytes(&rebuild(&pkl[..len]), Role::Any).is_err(),
            "len {len}"
        );
    }
    // Random byte flips: Ok or Err, never a panic; Ok results are well formed.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..400 {
        let mut p = pkl.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(p.len());
            p[i] = rng.next() as u8;
        }
        match read_state_dict_bytes(&rebuild(&p), Role::Any) {
            Ok(sd) => {
                assert_well_formed(&sd);
                ok += 1;
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    // Raw flips anywhere in the pickle's zip region (CRC now wrong).
    let start = src.windows(8).position(|w| w == b"data.pkl").unwrap();
    for _ in 0..200 {
        let mut f = src.clone();
        let i = start + rng.below(pkl.len() + 64);
        f[i] ^= 1 << rng.below(8);
        let _ = read_state_dict_bytes(&f, Role::Any);
    }
}

#[test]
fn forbidden_globals_are_rejected() {
    let cases: [(&[u8], &str, &str); 3] = [
        (
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
            "os",
            "system",
        ),
        (
            b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.",
            "builtins",
            "eval",
        ),
        (
            b"\x80\x02X\n\x00\x00\x00subprocessX\x05\x00\x00\x00Popen\x93)R.",
            "subprocess",
            "Popen",
        ),
    ];
    for (p, m, n) in cases {
        match read_state_dict_bytes(&with_pickle(p), Role::Any) {
            Err(CheckpointError::ForbiddenGlobal { module, name }) => {
                assert_eq!((module.as_str(), name.as_str()), (m, n));
            }
            other => panic!("expected ForbiddenGlobal for {m}.{n}, got {other:?}"),
        }
    }
    // An unknown (not forbidden) class is just not a tensor.
    let p = b"\x80\x02}X\x01\x00\x00\x00wcmylib\nThing\n)R\x85s.";
    let err = read_state_dict_bytes(&with_pickle(p), Role::Any).unwrap_err();
    assert!(matches!(err, CheckpointError::NoStateDict(_)), "{err:?}");
}

/// Minimal protocol-2 pickle writer for hand-made tensor dicts.
struct TensorSpec<'a> {
    key: &'a str,
    class: &'a str,
    storage: &'a str,
    numel: u64,
    offset: u64,
    size: &'a [u64],
    stride: &'a [u64],
}

fn pickle_tensors(specs: &[TensorSpec]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.push(b'X');
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    for t in specs {
        s(&mut p, t.key);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        s(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{}\n", t.class).as_bytes());
        s(&mut p, t.storage);
        s(&mut p, "cpu");
        int(&mut p, t.numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, t.offset);
        p.push(b'(');
        for &d in t.size {
            int(&mut p, d);
        }
        p.extend_from_slice(b"t(");
        for &d in t.stride {
            int(&mut p, d);
        }
        p.extend_from_slice(b"t\x89}tR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// An archive with the given pickle and storages `data/0`, `data/1`, ...
fn archive(pickle: &[u8], storages: &[&[u8]]) -> Vec<u8> {
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    z.start_file("x/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    for (i, s) in storages.iter().enumerate() {
        z.start_file(format!("x/data/{i}"), opts).unwrap();
        z.write_all(s).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn spec<'a>(
    key: &'a str,
    numel: u64,
    offset: u64,
    size: &'a [u64],
    stride: &'a [u64],
) -> TensorSpec<'a> {
    TensorSpec {
        key,
        class: "ByteStorage",
        storage: "0",
        numel,
        offset,
        size,
        stride,
    }
}

#[test]
fn hand_made_views() {
    let storage: Vec<u8> = (0..24).collect();
    let p = pickle_tensors(&[
        spec("t", 24, 0, &[4, 6], &[1, 4]),
        spec("off", 24, 5, &[2, 2, 2], &[8, 1, 3]),
        spec("whole", 24, 0, &[24], &[1]),
        TensorSpec {
            key: "i16",
            class: "ShortStorage",
            storage: "0",
            numel: 12,
            offset: 1,
            size: &[2],
            stride: &[5],
        },
    ]);
    let sd = read_state_dict_bytes(&archive(&p, &[&storage]), Role::Any).unwrap();
    let t = &sd.get("t").unwrap().data;
    assert_eq!(t[..8], [0, 4, 8, 12, 16, 20, 1, 5]);
    assert_eq!(sd.get("off").unwrap().data, [5, 8, 6, 9, 13, 16, 14, 17]);
    assert_eq!(sd.get("whole").unwrap().data, storage);
    // i16 elements 1 and 6 of the storage: bytes [2,3] and [12,13].
    assert_eq!(sd.get("i16").unwrap().to_i64().unwrap(), [0x0302, 0x0d0c]);
}

#[test]
fn hand_made_bad_views() {
    let storage = [0u8; 16];
    let case = |s: TensorSpec, storages: &[&[u8]]| {
        read_state_dict_bytes(&archive(&pickle_tensors(&[s]), storages), Role::Any).unwrap_err()
    };
    // View runs past the end of the storage.
    let e = case(spec("a", 16, 10, &[8], &[1]), &[&storage]);
    assert!(
        matches!(e, CheckpointError::StorageTooSmall { needed: 18, .. }),
        "{e:?}"
    );
    // Declared storage larger than the zip entry.
    let e = case(spec("a", 1 << 40, 0, &[1 << 20], &[1]), &[&storage]);
    assert!(
        matches!(e, CheckpointError::StorageTooSmall { available: 16, .. }),
        "{e:?}"
    );
    // Sizes whose product / extent overflows.
    let e = case(spec("a", 16, 0, &[1 << 62, 4], &[1, 1]), &[&storage]);
    assert!(matches!(e, CheckpointError::InvalidTensor { .. }), "{e:?}");
    let e = case(spec("a", 16, 0, &[1 << 62], &[1 << 62]), &[&storage]);
    assert!(matches!(e, CheckpointError::InvalidTensor { .. }), "{e:?}");
    // Offsets far beyond any storage.
    let e = case(spec("a", 16, i64::MAX as u64 - 1, &[2], &[1]), &[&storage]);
    assert!(matches!(e, CheckpointError::TooLarge { .. }), "{e:?}");
    // Negative sizes (LONG1 is signed).
    let e = case(spec("a", 16, 0, &[u64::MAX], &[1]), &[&storage]);
    assert!(matches!(e, CheckpointError::Pickle { .. }), "{e:?}");
    // Huge expansion of a tiny storage (stride 0).
    let e = case(spec("a", 16, 0, &[1 << 40, 1 << 10], &[0, 0]), &[&storage]);
    assert!(matches!(e, CheckpointError::TooLarge { .. }), "{e:?}");
    // Missing storage entry.
    let e = case(spec("a", 16, 0, &[4], &[1]), &[]);
    assert!(
        matches!(e, CheckpointError::MissingStorage(ref k) if k == "0"),
        "{e:?}"
    );
    // Unsupported storage class.
    let e = case(
        TensorSpec {
            key: "a",
            class: "ComplexFloatStorage",
            storage: "0",
            numel: 2,
            offset: 0,
            size: &[2],
            stride: &[1],
        },
        &[&storage],
    );
    assert!(matches!(e, CheckpointError::UnsupportedDType(_)), "{e:?}");
    // Mismatched size/stride ranks.
    let e = case(spec("a", 16, 0, &[2, 2], &[1]), &[&storage]);
    assert!(matches!(e, CheckpointError::Pickle { .. }), "{e:?}");
}

#[test]
fn hostile_safetensors() {
    // Header length far beyond the file.
    let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(read_state_dict_bytes(&b, Role::Any).is_err());
    // A safetensors file: header length, `header`, then `data_len` zero bytes of data.
    let file = |header: &[u8], data_len: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&vec![0; data_len]);
        b
    };
    // Data offsets beyond the buffer.
    let b = file(
        br#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
        16,
    );
    assert!(matches!(
        read_state_dict_bytes(&b, Role::Any),
        Err(CheckpointError::Safetensors(_))
    ));
    // A valid file with an unsupported dtype.
    let b = file(
        br#"{"w":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}}"#,
        4,
    );
    assert!(matches!(
        read_state_dict_bytes(&b, Role::Any),
        Err(CheckpointError::UnsupportedDType(_))
    ));
}

#[test]
fn hostile_zip_directories() {
    // Classic end-of-central-directory record claiming 65535 entries at a
    // far-away offset.
    let mut f = b"PK\x03\x04".to_vec();
    f.extend_from_slice(&[0; 100]);
    f.extend_from_slice(b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff");
    f.extend_from_slice(&0xffff_ff00u32.to_le_bytes());
    f.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    f.extend_from_slice(&[0, 0]);
    assert!(read_state_dict_bytes(&f, Role::Any).is_err());

    // ZIP64 records claiming 2^40 entries and a 2^50 directory offset.
    let mut f = b"PK\x03\x04".to_vec();
    f.extend_from_slice(&[0; 100]);
    let eocd64_at = f.len() as u64;
    f.extend_from_slice(b"PK\x06\x06");
    f.extend_from_slice(&44u64.to_le_bytes());
    f.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&(1u64 << 40).to_le_bytes());
    f.extend_from_slice(&(1u64 << 40).to_le_bytes());
    f.extend_from_slice(&(1u64 << 45).to_le_bytes());
    f.extend_from_slice(&(1u64 << 50).to_le_bytes());
    f.extend_from_slice(b"PK\x06\x07\0\0\0\0");
    f.extend_from_slice(&eocd64_at.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0");
    assert!(read_state_dict_bytes(&f, Role::Any).is_err());

    // Same, but with the directory "inside" the file: the entry count is
    // what must not be trusted.
    let n = f.len();
    f[eocd64_at as usize + 48..eocd64_at as usize + 56].copy_from_slice(&4u64.to_le_bytes());
    assert_eq!(f.len(), n);
    assert!(read_state_dict_bytes(&f, Role::Any).is_err());
}

/// A deflate bomb in a storage entry: a tensor whose bytes inflate more than
/// `MAX_STORAGE_RATIO` times their compressed size is refused with a one-line
/// error before its bytes are read, and a stored storage of any size loads.
#[test]
fn storage_inflation_is_capped_relative_to_the_entry() {
    let numel = 32u64 << 20;
    let pickle = pickle_tensors(&[TensorSpec {
        key: "w",
        ..spec("w", numel, 0, &[numel], &[1])
    }]);
    let zeros = vec![0u8; numel as usize];
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    z.start_file("x/data.pkl", stored).unwrap();
    z.write_all(&pickle).unwrap();
    z.start_file("x/data/0", deflated).unwrap();
    z.write_all(&zeros).unwrap();
    let file = z.finish().unwrap().into_inner();
    assert!((file.len() as u64) * srdd_tools::checkpoint::MAX_STORAGE_RATIO < numel);
    let err = read_state_dict_bytes(&file, Role::Any).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CheckpointError::TooLarge { what, .. } if what.contains("x/data/0")),
        "{err:?}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // The same storage stored: read as before.
    let file = archive(&pickle, &[&zeros]);
    assert!(read_state_dict_bytes(&file, Role::Any).is_ok());
}

//! The streaming `pack` (lazy checkpoints, one tensor at a time, written to a file) gives the
//! bytes the in-memory converter gave, and the same errors; the lazy reader returns what the
//! eager one returns.

use srdd_core::format::{
    align_up, file_checksum, Header, TensorDType, TensorEntry, WeightLayout, FORMAT_VERSION, MAGIC,
    PREFIX_LEN, TENSOR_ALIGN,
};
use srdd_core::kernels::{pack_official, panels_len};
use srdd_core::{Model, WeightFormat};
use srdd_tools::checkpoint::{
    open_checkpoint, read_state_dict, LazyCheckpoint, RawTensor, Role, StateDict, TensorStore,
};
use srdd_tools::convert::{
    catalog, infer_config, pack, pack_to_file, quantize_rows, ConvertError, PackOptions,
};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn options(dir: &str, weights: WeightFormat) -> PackOptions {
    PackOptions {
        weights,
        // The fixtures' schedules (their manifest.json `config.patch_nums`).
        patch_nums: match dir {
            "tiny-six-scales" => Some(vec![1, 2, 3, 4, 6, 8]),
            "emoji32" => Some(vec![1, 2, 3, 4, 5, 6, 8]),
            _ => None,
        },
        ..PackOptions::default()
    }
}

/// The converter as it was before it streamed (commit 1ce6465, `convert::pack` and
/// `write_file`), for valid inputs with the released Phi naming: every tensor converted into
/// memory, then the whole file assembled and checksummed at once.
fn reference_pack(var: &StateDict, vae: &StateDict, opts: &PackOptions) -> Vec<u8> {
    struct Packed {
        name: String,
        shape: Vec<usize>,
        dtype: TensorDType,
        data: Vec<u8>,
        scales: Option<Vec<u8>>,
    }
    let cfg = infer_config(var, vae, opts).unwrap();
    let mut meta = format!("converter=srdd-tools {}\n", env!("CARGO_PKG_VERSION"));
    for (k, v) in &opts.metadata {
        meta.push_str(&format!("{k}={v}\n"));
    }
    let mut packed = Vec::new();
    for e in catalog(&cfg, false).unwrap() {
        let is_vae = [
            "encoder.",
            "decoder.",
            "quantize.",
            "quant_conv.",
            "post_quant_conv.",
        ]
        .iter()
        .any(|p| e.name.starts_with(p));
        let t = if is_vae { vae } else { var }.get(&e.name).unwrap();
        assert_eq!(t.shape, e.shape);
        let values = t.to_f32().unwrap();
        let phi = e.name.starts_with("quantize.quant_resi.");
        let fmt = if e.is_weight && !phi {
            cfg.weights
        } else {
            WeightFormat::F32
        };
        packed.push(match fmt {
            WeightFormat::F32 => Packed {
                name: e.name.clone(),
                shape: e.shape.clone(),
                dtype: TensorDType::F32,
                data: bytemuck::cast_slice(&values).to_vec(),
                scales: None,
            },
            WeightFormat::F16 => {
                let h: Vec<half::f16> = values.iter().map(|v| half::f16::from_f32(*v)).collect();
                Packed {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    dtype: TensorDType::F16,
                    data: bytemuck::cast_slice(&h).to_vec(),
                    scales: None,
                }
            }
            WeightFormat::Int8 => {
                let (q, s) = quantize_rows(&values, e.shape[0]);
                let groups = if e.shape.len() == 4 { e.shape[2] } else { 1 };
                let k = e.shape[1] * e.shape.get(3).copied().unwrap_or(1);
                let mut packed_q = vec![0i8; groups * panels_len(e.shape[0], k)];
                assert!(pack_official(&q, &e.shape, &mut packed_q));
                Packed {
                    name: e.name.clone(),
                    shape: e.shape.clone(),
                    dtype: TensorDType::I8,
                    data: bytemuck::cast_slice(&packed_q).to_vec(),
                    scales: Some(bytemuck::cast_slice(&s).to_vec()),
                }
            }
        });
    }
    let mut offsets = Vec::new();
    let mut at = 0usize;
    for p in &packed {
        let off = at;
        at = align_up(at + p.data.len(), TENSOR_ALIGN);
        let soff = if let Some(s) = &p.scales {
            let o = at;
            at = align_up(at + s.len(), TENSOR_ALIGN);
            o
        } else {
            0
        };
        offsets.push((off, soff));
    }
    let meta_offset = at;
    at = align_up(at + meta.len(), TENSOR_ALIGN);
    let data_len = at;
    let header = Header {
        config: cfg.clone(),
        tensor_count: packed.len() as u32,
        data_len: data_len as u64,
        meta_offset: meta_offset as u64,
        meta_len: meta.len() as u64,
    };
    let mut table = postcard::to_allocvec(&header).unwrap();
    for (p, (off, soff)) in packed.iter().zip(&offsets) {
        let e = TensorEntry {
            name: &p.name,
            dtype: p.dtype,
            layout: match p.dtype {
                TensorDType::I8 | TensorDType::I8A16 => WeightLayout::PANELS,
                TensorDType::F32 | TensorDType::F16 => WeightLayout::Plain,
            },
            shape: p.shape.iter().map(|&d| d as u32).collect(),
            offset: *off as u64,
            len: p.data.len() as u64,
            scales_offset: *soff as u64,
        };
        table.extend(postcard::to_allocvec(&e).unwrap());
    }
    let data_start = align_up(PREFIX_LEN + table.len(), TENSOR_ALIGN);
    let file_len = data_start + data_len;
    let mut out = vec![0u8; file_len];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(table.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(file_len as u64).to_le_bytes());
    out[PREFIX_LEN..PREFIX_LEN + table.len()].copy_from_slice(&table);
    for (p, (off, soff)) in packed.iter().zip(&offsets) {
        let o = data_start + off;
        out[o..o + p.data.len()].copy_from_slice(&p.data);
        if let Some(s) = &p.scales {
            let o = data_start + soff;
            out[o..o + s.len()].copy_from_slice(s);
        }
    }
    out[data_start + meta_offset..data_start + meta_offset + meta.len()]
        .copy_from_slice(meta.as_bytes());
    let sum = file_checksum(&out);
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-pack-stream-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open(p: &Path, role: Role) -> LazyCheckpoint {
    open_checkpoint(p, role).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn streaming_pack_is_byte_identical_to_the_in_memory_converter() {
    let out_dir = temp_dir("bytes");
    let cases = [
        ("tiny-official-schedule", "safetensors"),
        ("tiny-official-schedule", "pth"),
        ("tiny-six-scales", "safetensors"),
        ("tiny-six-scales", "pth"),
        ("emoji32", "pth"),
    ];
    for (dir, ext) in cases {
        let var_p = fixture(dir).join(format!("var.{ext}"));
        let vae_p = fixture(dir).join(format!("vae.{ext}"));
        let var_sd = read_state_dict(&var_p, Role::Var).unwrap();
        let vae_sd = read_state_dict(&vae_p, Role::Vae).unwrap();
        let (var, vae) = (open(&var_p, Role::Var), open(&vae_p, Role::Vae));
        for weights in [WeightFormat::Int8, WeightFormat::F16, WeightFormat::F32] {
            let what = format!("{dir} {ext} {weights:?}");
            let mut opts = options(dir, weights);
            opts.metadata = vec![("note".into(), what.clone())];
            let reference = reference_pack(&var_sd, &vae_sd, &opts);
            assert!(
                Model::from_bytes(srdd_core::aligned::AlignedBytes::new(&reference).as_bytes())
                    .is_ok(),
                "{what}"
            );
            // In memory, from eager state dicts and from lazy checkpoints.
            assert!(
                pack(&var_sd, &vae_sd, &opts).unwrap() == reference,
                "{what}: pack(StateDict)"
            );
            assert!(
                pack(&var, &vae, &opts).unwrap() == reference,
                "{what}: pack(LazyCheckpoint)"
            );
            // Streamed to a file.
            let out = out_dir.join("out.srdd");
            let len = pack_to_file(&var, &vae, &opts, &out).unwrap();
            let file = std::fs::read(&out).unwrap();
            assert_eq!(len, file.len() as u64, "{what}");
            assert!(file == reference, "{what}: pack_to_file");
            assert!(!out_dir.join("out.srdd.partial").exists(), "{what}");
        }
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}

/// Every tensor of the lazily opened file, loaded one at a time, in order.
fn lazy_all(p: &Path, role: Role) -> Result<Vec<(String, RawTensor)>, String> {
    let lazy = open_checkpoint(p, role).map_err(|e| e.to_string())?;
    let names: Vec<String> = lazy.tensor_names().into_iter().map(String::from).collect();
    names
        .into_iter()
        .map(|k| {
            let (dtype, shape) = lazy.tensor_meta(&k).unwrap();
            let (dtype, shape) = (dtype, shape.to_vec());
            let t = lazy
                .load_tensor(&k)
                .map_err(|e| e.to_string())?
                .unwrap()
                .into_owned();
            assert_eq!((t.dtype, &t.shape), (dtype, &shape), "{k}: meta");
            Ok((k, t))
        })
        .collect()
}

#[test]
fn lazy_reader_returns_what_the_eager_reader_returns() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoints");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pth"))
        .collect();
    for dir in ["tiny-official-schedule", "tiny-six-scales", "emoji32"] {
        for stem in ["var", "vae"] {
            for ext in ["pth", "safetensors"] {
                let p = fixture(dir).join(format!("{stem}.{ext}"));
                if p.is_file() {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let mut compared = 0;
    for p in &files {
        for role in [Role::Any, Role::Var, Role::Vae] {
            let eager = read_state_dict(p, role)
                .map(|sd| sd.into_iter().collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            let lazy = lazy_all(p, role);
            assert_eq!(lazy, eager, "{} {role:?}", p.display());
            compared += 1;
        }
    }
    assert!(compared >= 3 * 15, "{compared} comparisons");
}

/// Writes `sd` as a safetensors file.
fn write_safetensors(sd: &StateDict, path: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(String, TensorView<'_>)> = sd
        .iter()
        .map(|(k, t)| {
            let dtype = match t.dtype {
                srdd_tools::checkpoint::DType::F32 => Dtype::F32,
                srdd_tools::checkpoint::DType::I64 => Dtype::I64,
                srdd_tools::checkpoint::DType::F16 => Dtype::F16,
                other => panic!("{other:?}"),
            };
            (
                k.to_string(),
                TensorView::new(dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn streaming_pack_refuses_bad_input_as_the_in_memory_one_does_and_leaves_no_file() {
    let dir = temp_dir("errors");
    let six = fixture("tiny-six-scales");
    let var_sd = read_state_dict(&six.join("var.safetensors"), Role::Var).unwrap();
    let vae_sd = read_state_dict(&six.join("vae.safetensors"), Role::Vae).unwrap();
    let opts = options("tiny-six-scales", WeightFormat::Int8);

    let mut missing = var_sd.clone();
    missing.remove("head.weight");
    let mut extra = var_sd.clone();
    let extra_t = var_sd.get("head.bias").unwrap().clone();
    extra.insert("head.extra", extra_t);
    let mut reshaped = var_sd.clone();
    let mut t = var_sd.get("head.weight").unwrap().clone();
    t.shape = vec![t.shape[1], t.shape[0]];
    reshaped.insert("head.weight", t);
    let mut int_weight = var_sd.clone();
    let t = var_sd.get("head.bias").unwrap();
    int_weight.insert(
        "head.bias",
        RawTensor {
            dtype: srdd_tools::checkpoint::DType::I64,
            shape: t.shape.clone(),
            data: vec![0; t.shape.iter().product::<usize>() * 8],
        },
    );
    let mut k_bias = var_sd.clone();
    if let Some(t) = var_sd.get("blocks.0.attn.zero_k_bias") {
        let mut t = t.clone();
        t.data[..4].copy_from_slice(&1f32.to_le_bytes());
        k_bias.insert("blocks.0.attn.zero_k_bias", t);
    } else {
        k_bias = missing.clone();
    }
    let cases: [(&str, &StateDict, &StateDict); 6] = [
        ("missing", &missing, &vae_sd),
        ("unexpected", &extra, &vae_sd),
        ("shape", &reshaped, &vae_sd),
        ("dtype", &int_weight, &vae_sd),
        ("k bias", &k_bias, &vae_sd),
        ("swapped", &vae_sd, &var_sd),
    ];
    let out = dir.join("model.srdd");
    std::fs::write(&out, b"previous").unwrap();
    for (what, var, vae) in cases {
        let expected = pack(var, vae, &opts).expect_err(what).to_string();
        assert!(!expected.contains('\n'), "{what}: {expected}");
        let (pv, pa) = (dir.join("var.safetensors"), dir.join("vae.safetensors"));
        write_safetensors(var, &pv);
        write_safetensors(vae, &pa);
        let (lv, la) = (open(&pv, Role::Var), open(&pa, Role::Vae));
        let got = pack_to_file(&lv, &la, &opts, &out)
            .expect_err(what)
            .to_string();
        assert_eq!(got, expected, "{what}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"previous",
            "{what}: output untouched"
        );
        assert!(!dir.join("model.srdd.partial").exists(), "{what}");
    }

    // A storage shorter than its header declares is found while writing: the error names it
    // and the partial file is removed.
    let (pv, pa) = (dir.join("var.safetensors"), dir.join("vae.safetensors"));
    write_safetensors(&var_sd, &pv);
    write_safetensors(&vae_sd, &pa);
    let (lv, la) = (open(&pv, Role::Var), open(&pa, Role::Vae));
    let len = std::fs::metadata(&pa).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pa)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let err = pack_to_file(&lv, &la, &opts, &out).expect_err("truncated");
    assert!(matches!(err, ConvertError::Checkpoint(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("vae.safetensors, tensor ") && !msg.contains('\n'),
        "{msg}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert!(!dir.join("model.srdd.partial").exists());

    // An output that cannot be renamed into place: the partial file goes too.
    let (lv, la) = (
        open(&six.join("var.safetensors"), Role::Var),
        open(&six.join("vae.safetensors"), Role::Vae),
    );
    std::fs::create_dir_all(dir.join("taken").join("x")).unwrap();
    let err =
        pack_to_file(&lv, &la, &opts, &dir.join("taken")).expect_err("rename onto a directory");
    assert!(matches!(err, ConvertError::Write(..)), "{err}");
    assert!(!dir.join("taken.partial").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

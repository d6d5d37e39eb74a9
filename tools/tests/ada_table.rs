//! AdaLN tables (`pack --ada-table`): each AdaLN Linear is replaced by its output for every
//! label. In f32 the table gives the Linear's logits (with and without smoothing, which rewrites
//! the `ada_lin` rows the table is computed from), an int8 file stores the tables as f32 in
//! place of the int8 weights, is smaller and spends no AdaLN MACs, and `inspect` lists them.

mod common;

use common::{assert_same, entries, fixture, state_dicts};
use srdd_core::aligned::AlignedBytes;
use srdd_core::format::TensorDType;
use srdd_core::generate::SampleOptions;
use srdd_core::macs::sample_macs;
use srdd_core::parallel::Sequential;
use srdd_core::{Guidance, Model, Schedule, WeightFormat};
use srdd_tools::checkpoint::StateDict;
use srdd_tools::convert::{pack, PackOptions};
use srdd_tools::quant_report::Report;
use srdd_tools::smooth::Smoothing;
use std::process::Command;

const CALIB: usize = 2;

fn options(weights: WeightFormat, ada_tables: bool, smooth: Option<Smoothing>) -> PackOptions {
    PackOptions {
        weights,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        ada_tables: ada_tables.then_some(WeightFormat::F32),
        smooth,
        ..PackOptions::default()
    }
}

fn packed(var: &StateDict, vae: &StateDict, opts: &PackOptions) -> AlignedBytes {
    AlignedBytes::new(&pack(var, vae, opts).expect("packs"))
}

/// `b` teacher-forced against `a` on the calibration images.
fn compare(a: &AlignedBytes, b: &AlignedBytes) -> Report {
    common::compare(a, b, CALIB)
}

#[test]
fn f32_tables_give_the_linear_outputs() {
    let (var, vae) = state_dicts();
    let plain = packed(&var, &vae, &options(WeightFormat::F32, false, None));
    let tables = packed(&var, &vae, &options(WeightFormat::F32, true, None));
    assert_ne!(plain.as_bytes(), tables.as_bytes());
    assert_same(&compare(&plain, &tables), "f32 tables");
    // The decoder is untouched.
    assert!(compare(&plain, &tables).decoder_psnr_db.is_infinite());
}

#[test]
fn tables_are_computed_from_the_smoothed_rows() {
    let (var, vae) = state_dicts();
    let plain = packed(&var, &vae, &options(WeightFormat::F32, false, None));
    let (s, _) = Smoothing::calibrate(
        &var,
        &vae,
        &options(WeightFormat::Int8, false, None),
        0.5,
        CALIB,
        &Sequential,
    )
    .expect("calibrates");
    let both = packed(
        &var,
        &vae,
        &options(WeightFormat::F32, true, Some(s.clone())),
    );
    assert_same(&compare(&plain, &both), "smoothed f32 tables");
    // And an int8 file with both runs close to the float model.
    let int8 = packed(&var, &vae, &options(WeightFormat::Int8, true, Some(s)));
    let r = compare(&plain, &int8);
    assert!(r.forced_agreement() >= 0.95, "{}", r.forced_agreement());
}

#[test]
fn int8_tables_replace_the_ada_weights_and_their_macs() {
    let (var, vae) = state_dicts();
    let plain = packed(&var, &vae, &options(WeightFormat::Int8, false, None));
    let tables = packed(&var, &vae, &options(WeightFormat::Int8, true, None));
    let (pm, tm) = (
        Model::from_bytes(plain.as_bytes()).unwrap(),
        Model::from_bytes(tables.as_bytes()).unwrap(),
    );
    let cfg = &pm.config;
    let (c, labels, depth) = (
        cfg.var.embed_dim,
        cfg.var.num_classes + 1,
        cfg.var.depth as usize,
    );
    let (pe, te) = (entries(plain.as_bytes()), entries(tables.as_bytes()));
    let mut want = Vec::new();
    for i in 0..depth {
        want.push((format!("blocks.{i}.ada_lin.table"), 6 * c));
    }
    want.push(("head_nm.ada_lin.table".to_string(), 2 * c));
    for (name, width) in &want {
        let linear = name.replace(".table", ".1.weight");
        assert!(pe.iter().any(|e| e.0 == linear && e.1 == TensorDType::I8));
        assert!(!te
            .iter()
            .any(|e| e.0.starts_with(&name.replace(".table", ".1."))));
        let t = te.iter().find(|e| &e.0 == name).expect("table present");
        assert_eq!((t.1, t.2.clone()), (TensorDType::F32, vec![labels, *width]));
    }
    // Everything else is the same list, in the same order.
    let rest = |v: &[(String, TensorDType, Vec<u32>)]| -> Vec<String> {
        v.iter()
            .map(|e| e.0.clone())
            .filter(|n| !n.contains("ada_lin"))
            .collect()
    };
    assert_eq!(rest(&pe), rest(&te));
    // Per step and planned CFG row, the AdaLN Linears' MACs are gone and nothing else changed.
    let opts = SampleOptions::for_model(&pm, 1);
    assert!(opts.table.is_none());
    // One AdaLN row per image without guidance, two (conditional and null) with it.
    let rows: u64 = if matches!(opts.guidance, Guidance::Off) {
        1
    } else {
        2
    };
    let sched = Schedule::full(cfg);
    let (mp, mt) = (
        sample_macs(&pm, &opts, &sched),
        sample_macs(&tm, &opts, &sched),
    );
    let (c, depth) = (c as u64, depth as u64);
    let ada = (depth * 6 * c * c + 2 * c * c) * rows * sched.len() as u64;
    assert_eq!(mp.transformer - mt.transformer, ada);
    assert_eq!(mp.decoder, mt.decoder);
    // Runs, and stays close to the float model.
    let float = packed(&var, &vae, &options(WeightFormat::F32, false, None));
    let r = compare(&float, &tables);
    assert!(r.forced_agreement() >= 0.95, "{}", r.forced_agreement());
}

/// The values of the tensor `name` of a packed file, as f32.
fn values(bytes: &[u8], name: &str) -> Vec<f32> {
    let file = srdd_core::format::parse(bytes).expect("parses");
    let mut table = file.table;
    for _ in 0..file.header.tensor_count {
        let (e, rest) =
            postcard::take_from_bytes::<srdd_core::format::TensorEntry<'_>>(table).unwrap();
        table = rest;
        if e.name == name {
            let raw = &file.data[e.offset as usize..(e.offset + e.len) as usize];
            return match e.dtype {
                TensorDType::F32 => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                TensorDType::F16 => raw
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                TensorDType::I8 | TensorDType::I8A16 => panic!("{name} is int8"),
            };
        }
    }
    panic!("{name} not in the file")
}

/// `--ada-table f16`: the same tables rounded once more, to half, in half the bytes; in an f32
/// model they change the logits by f16 rounding only (KL ≤ 1e-6, every greedy token kept).
#[test]
fn f16_tables_are_the_f32_tables_rounded_to_half() {
    let (var, vae) = state_dicts();
    let opts = |weights, t| PackOptions {
        ada_tables: Some(t),
        ..options(weights, false, None)
    };
    let t32 = packed(&var, &vae, &opts(WeightFormat::Int8, WeightFormat::F32));
    let t16 = packed(&var, &vae, &opts(WeightFormat::Int8, WeightFormat::F16));
    let tables: Vec<String> = entries(t16.as_bytes())
        .into_iter()
        .filter(|e| e.0.ends_with(".table"))
        .map(|e| {
            assert_eq!(e.1, TensorDType::F16, "{}", e.0);
            e.0
        })
        .collect();
    assert!(!tables.is_empty());
    let mut saved = 0;
    for name in &tables {
        let (a, b) = (values(t32.as_bytes(), name), values(t16.as_bytes(), name));
        saved += 2 * a.len();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(half::f16::from_f32(*x).to_f32(), *y, "{name}");
        }
    }
    assert!(t32.as_bytes().len() - t16.as_bytes().len() >= saved - 64 * tables.len());
    // In an f32 model: f16 rounding of the AdaLN vectors only.
    let plain = packed(&var, &vae, &options(WeightFormat::F32, false, None));
    let f16 = packed(&var, &vae, &opts(WeightFormat::F32, WeightFormat::F16));
    let r = compare(&plain, &f16);
    for (k, s) in r.scales.iter().enumerate() {
        assert_eq!(s.top1, s.tokens, "step {k}");
        assert!(s.kl_max <= 1e-6, "step {k}: KL {:e}", s.kl_max);
    }
    // int8 is refused as a table format.
    let err = pack(&var, &vae, &opts(WeightFormat::Int8, WeightFormat::Int8)).unwrap_err();
    assert!(err.to_string().contains("f32 or f16"), "{err}");
}

#[test]
fn pack_ada_table_and_inspect_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("srdd-ada-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("t.srdd");
    let tools = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
            .args(args)
            .output()
            .expect("runs")
    };
    let (var, vae) = (fixture().join("var.pth"), fixture().join("vae.pth"));
    let o = tools(&[
        "pack",
        "--var",
        var.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--schedule",
        "1,2,3,4,6,8",
        "--weights",
        "int8",
        "--ada-table",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tools(&["inspect", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("blocks.0.ada_lin.table")
            && text.contains("head_nm.ada_lin.table")
            && text.contains(
                "AdaLN tables (one row per class label, in place of their Linears): 2 f32 "
            ),
        "{text}"
    );
    // quant-report packs both models with tables; with packed files it has nothing to pack.
    let o = tools(&[
        "quant-report",
        "--var",
        var.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "--schedule",
        "1,2,3,4,6,8",
        "--calib",
        "1",
        "--ada-table",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let names: Vec<&str> = v["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("ada_lin.1")), "{names:?}");
    assert!(names.contains(&"head_nm.ada_lin.table"), "{names:?}");
    let o = tools(&[
        "quant-report",
        "--f32",
        out.to_str().unwrap(),
        "--int8",
        out.to_str().unwrap(),
        "--ada-table",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--ada-table needs --var"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Outlier smoothing (`pack --smooth`): the fold is exact in f32 (same logits as the unsmoothed
//! file, blocks and head), it flattens the modulated inputs the int8 kernels quantize, the int8
//! smoothed file runs, shared AdaLN smooths the head only, and bad options are refused.

mod common;

use common::{assert_same, fixture, state_dicts};
use srdd_core::aligned::AlignedBytes;
use srdd_core::parallel::Sequential;
use srdd_core::{Model, WeightFormat};
use srdd_tools::checkpoint::{DType, RawTensor, StateDict};
use srdd_tools::convert::{pack, ConvertError, PackOptions};
use srdd_tools::quant_report::Report;
use srdd_tools::smooth::{collect, Smoothing, Stats};
use std::process::Command;

const CALIB: usize = 2;

/// Blocks of a VAR state dict.
fn depth(var: &StateDict) -> usize {
    (0..)
        .take_while(|i| var.contains_key(&format!("blocks.{i}.ffn.fc1.weight")))
        .count()
}

fn options(weights: WeightFormat, smooth: Option<Smoothing>) -> PackOptions {
    PackOptions {
        weights,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        smooth,
        ..PackOptions::default()
    }
}

fn packed(var: &StateDict, vae: &StateDict, w: WeightFormat, s: Option<Smoothing>) -> AlignedBytes {
    AlignedBytes::new(&pack(var, vae, &options(w, s)).expect("packs"))
}

fn calibrate(var: &StateDict, vae: &StateDict, alpha: f32) -> (Smoothing, Stats) {
    Smoothing::calibrate(
        var,
        vae,
        &options(WeightFormat::Int8, None),
        alpha,
        CALIB,
        &Sequential,
    )
    .expect("calibrates")
}

/// `b` teacher-forced against `a` on the calibration images.
fn compare(a: &AlignedBytes, b: &AlignedBytes) -> Report {
    common::compare(a, b, CALIB)
}

/// A smoothing with these factors everywhere (block factors per block, head factors).
fn uniform(s: &Smoothing, block: Option<f32>, head: Option<f32>) -> Smoothing {
    let c = s.head.len();
    let pick = |v: &Vec<f32>, f: Option<f32>| f.map_or(v.clone(), |f| vec![f; c]);
    Smoothing {
        alpha: s.alpha,
        blocks: s
            .blocks
            .iter()
            .map(|[q, f]| [pick(q, block), pick(f, block)])
            .collect(),
        head: pick(&s.head, head),
    }
}

#[test]
fn the_fold_is_exact_in_f32() {
    let (var, vae) = state_dicts();
    let plain = packed(&var, &vae, WeightFormat::F32, None);
    for alpha in [0.5, 1.0] {
        let (s, _) = calibrate(&var, &vae, alpha);
        assert!(s.note().is_none());
        assert_eq!(s.blocks.len(), depth(&var));
        // The factors are not trivial, so the files differ.
        assert!(s
            .blocks
            .iter()
            .flatten()
            .chain([&s.head])
            .all(|v| v.iter().any(|x| (x - 1.0).abs() > 0.1)));
        let smoothed = packed(&var, &vae, WeightFormat::F32, Some(s.clone()));
        assert_ne!(plain.as_bytes(), smoothed.as_bytes());
        assert_same(&compare(&plain, &smoothed), &format!("alpha {alpha}"));
        // Blocks only, then head only: each fold on its own.
        let blocks = packed(
            &var,
            &vae,
            WeightFormat::F32,
            Some(uniform(&s, None, Some(1.0))),
        );
        assert_same(&compare(&plain, &blocks), "blocks only");
        let head = packed(
            &var,
            &vae,
            WeightFormat::F32,
            Some(uniform(&s, Some(1.0), None)),
        );
        assert_same(&compare(&plain, &head), "head only");
    }
    // The bound tells a fold from quantization: int8 is far below it.
    let q = packed(&var, &vae, WeightFormat::Int8, None);
    let worst = compare(&plain, &q)
        .layers
        .iter()
        .map(|l| l.sqnr_db())
        .fold(f64::INFINITY, f64::min);
    assert!(worst < 60.0, "int8 at {worst:.1} dB");
}

#[test]
fn smoothing_flattens_the_modulated_inputs() {
    let (var, vae) = state_dicts();
    let (s, before) = calibrate(&var, &vae, 0.5);
    let smoothed = packed(&var, &vae, WeightFormat::F32, Some(s));
    let m = Model::from_bytes(smoothed.as_bytes()).unwrap();
    let after = collect(&m, CALIB, &Sequential).unwrap();
    let pairs = before
        .qkv
        .iter()
        .zip(&after.qkv)
        .chain(before.fc1.iter().zip(&after.fc1))
        .chain([(&before.head, &after.head)]);
    for (i, (b, a)) in pairs.enumerate() {
        assert!(b.tokens > 0 && a.tokens == b.tokens, "input {i}");
        assert!(
            a.peak_to_rms() < b.peak_to_rms(),
            "input {i}: peak/RMS {:.3} -> {:.3}",
            b.peak_to_rms(),
            a.peak_to_rms()
        );
    }
    assert!(after.mean_peak_to_rms() < before.mean_peak_to_rms());
}

#[test]
fn the_int8_smoothed_pack_runs() {
    let (var, vae) = state_dicts();
    let (s, _) = calibrate(&var, &vae, 0.5);
    let plain = packed(&var, &vae, WeightFormat::F32, None);
    let q = packed(&var, &vae, WeightFormat::Int8, Some(s));
    let m = Model::from_bytes(q.as_bytes()).expect("loads");
    assert_eq!(m.config.weights, WeightFormat::Int8);
    let r = compare(&plain, &q);
    // Plain int8 agrees 99 % here; a broken fold would not come near.
    assert!(
        r.forced_agreement() >= 0.95,
        "forced {:.3}",
        r.forced_agreement()
    );
    assert!(r.decoder_psnr_db >= 40.0);
}

/// The tiny model with shared AdaLN: block 0's `ada_lin` as `shared_ada_lin`, each block's
/// difference from it as its `ada_gss` (so it computes what the per-block model computes).
fn shared_adaln(var: &StateDict) -> StateDict {
    let f32s = |t: &RawTensor| t.to_f32().unwrap();
    let raw = |shape: Vec<usize>, v: &[f32]| RawTensor {
        dtype: DType::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let w0 = var.get("blocks.0.ada_lin.1.weight").unwrap().clone();
    let b0 = f32s(var.get("blocks.0.ada_lin.1.bias").unwrap());
    let c = b0.len() / 6;
    let mut out = StateDict::new();
    for k in var.keys() {
        if !k.contains(".ada_lin.1.") || k.starts_with("head_nm.") {
            out.insert(k, var.get(k).unwrap().clone());
        }
    }
    out.insert("shared_ada_lin.1.weight", w0);
    out.insert("shared_ada_lin.1.bias", raw(vec![6 * c], &b0));
    for i in 0..depth(var) {
        // Same weight for every block: block i keeps its own bias through ada_gss.
        let bi = f32s(var.get(&format!("blocks.{i}.ada_lin.1.bias")).unwrap());
        let gss: Vec<f32> = bi.iter().zip(&b0).map(|(a, b)| a - b).collect();
        out.insert(format!("blocks.{i}.ada_gss"), raw(vec![1, 1, 6, c], &gss));
    }
    out
}

#[test]
fn shared_adaln_smooths_the_head_only() {
    let (var, vae) = state_dicts();
    let var = shared_adaln(&var);
    let (s, _) = calibrate(&var, &vae, 0.5);
    assert!(s.blocks.is_empty());
    assert!(s.note().unwrap().contains("shared AdaLN"));
    assert!(s.head.iter().any(|x| (x - 1.0).abs() > 0.1));
    let plain = packed(&var, &vae, WeightFormat::F32, None);
    assert!(
        Model::from_bytes(plain.as_bytes())
            .unwrap()
            .config
            .var
            .shared_aln
    );
    let smoothed = packed(&var, &vae, WeightFormat::F32, Some(s.clone()));
    assert_ne!(plain.as_bytes(), smoothed.as_bytes());
    assert_same(&compare(&plain, &smoothed), "shared AdaLN, head");
    // Per-block factors cannot be folded there: a typed error, before anything is written.
    let (ps, _) = calibrate(&state_dicts().0, &vae, 0.5);
    let err = pack(&var, &vae, &options(WeightFormat::Int8, Some(ps))).unwrap_err();
    assert!(matches!(err, ConvertError::Smooth(_)), "{err}");
    assert!(err.to_string().contains("shared AdaLN"), "{err}");
}

#[test]
fn factors_that_do_not_fit_are_refused() {
    let (var, vae) = state_dicts();
    let (s, _) = calibrate(&var, &vae, 0.5);
    let mut short = s.clone();
    short.blocks.pop();
    let mut zero = s.clone();
    zero.head[0] = 0.0;
    let mut nan = s;
    nan.blocks[0][1][3] = f32::NAN;
    for bad in [short, zero, nan] {
        let err = pack(&var, &vae, &options(WeightFormat::Int8, Some(bad))).unwrap_err();
        assert!(matches!(err, ConvertError::Smooth(_)), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}

fn tools(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .args(args)
        .output()
        .expect("run srdd-tools")
}

#[test]
fn bad_options_are_refused_in_one_line() {
    let fx = fixture();
    let var = fx.join("var.pth");
    let vae = fx.join("vae.pth");
    let (var, vae) = (var.to_str().unwrap(), vae.to_str().unwrap());
    let out = std::env::temp_dir().join(format!("srdd-smooth-{}.srdd", std::process::id()));
    let o = out.to_str().unwrap();
    let pack = |extra: &[&str]| {
        let mut a = vec!["pack", "--var", var, "--vae", vae, "-o", o];
        a.extend_from_slice(extra);
        tools(&a)
    };
    let cases: [(Vec<&str>, &str); 8] = [
        (
            vec!["--smooth", "1.5"],
            "--smooth 1.5: alpha must be a number in [0, 1]",
        ),
        (vec!["--smooth", "abc"], "--smooth abc: alpha must be"),
        (vec!["--smooth", "-0.1"], "alpha must be"),
        (
            vec!["--smooth", "--calib", "0"],
            "--calib 0: smoothing needs at least one",
        ),
        (
            vec!["--calib", "3"],
            "--calib needs --max-growth (the automatic precision plan) or --smooth",
        ),
        (vec!["--smooth", "NaN"], "alpha must be"),
        (vec!["--smooth", "0.5,0.8"], "alpha must be"),
        (vec!["--smooth", "inf"], "alpha must be"),
    ];
    for (extra, want) in cases {
        let r = pack(&extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote a file");
    }
    let qr = |extra: &[&str]| {
        let mut a = vec!["quant-report", "--calib", "1"];
        a.extend_from_slice(extra);
        tools(&a)
    };
    let f = fx.join("x.srdd");
    let f = f.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["--f32", f, "--int8", f, "--smooth"],
            "--smooth needs --var",
        ),
        (
            vec!["--f32", f, "--int8", f, "--compare"],
            "--compare needs --var",
        ),
        (
            vec!["--var", var, "--vae", vae, "--compare", "0.5,2"],
            "--compare 0.5,2: each alpha must be",
        ),
        (
            vec!["--var", var, "--vae", vae, "--compare", "--smooth"],
            "--compare prints the option table only",
        ),
    ];
    for (extra, want) in cases {
        let r = qr(&extra);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{extra:?}: {err}");
    }
}

#[test]
fn pack_smooth_writes_a_file_that_matches_the_library() {
    let fx = fixture();
    let out = std::env::temp_dir().join(format!("srdd-smooth-ok-{}.srdd", std::process::id()));
    let r = tools(&[
        "pack",
        "--var",
        fx.join("var.safetensors").to_str().unwrap(),
        "--vae",
        fx.join("vae.safetensors").to_str().unwrap(),
        "--schedule",
        "1,2,3,4,6,8",
        "--weights",
        "int8",
        "--smooth",
        "--calib",
        &CALIB.to_string(),
        "--threads",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (var, vae) = state_dicts();
    let (s, _) = calibrate(&var, &vae, 0.5);
    let lib = pack(&var, &vae, &options(WeightFormat::Int8, Some(s))).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), lib);
    let _ = std::fs::remove_file(&out);
}

#[test]
fn quant_report_compares_the_options() {
    let fx = fixture();
    let r = tools(&[
        "quant-report",
        "--var",
        fx.join("var.pth").to_str().unwrap(),
        "--vae",
        fx.join("vae.pth").to_str().unwrap(),
        "--calib",
        "2",
        "--compare",
        "0.5,1",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("JSON");
    let rows = v["options"].as_array().expect("options");
    let names: Vec<&str> = rows.iter().map(|r| r["option"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "int8",
            "int8 weights only",
            "int8 + smooth a=0.5",
            "int8 + smooth a=1"
        ]
    );
    let ratio = |i: usize| rows[i]["input_peak_to_rms"].as_f64().unwrap();
    let f = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    for (i, row) in rows.iter().enumerate() {
        let forced = row["forced_token_agreement"].as_f64().unwrap();
        assert!(forced > 0.9 && forced <= 1.0, "{row}");
        assert_eq!(row["top1_per_scale"].as_array().unwrap().len(), 6);
        // The smoothed float models' inputs are flatter than the plain one's.
        if i > 1 {
            assert!(ratio(i) < ratio(0), "{row}");
        }
    }
    // The weights alone, with f32 activations: no input ratio (nothing smoothed or quantized
    // there), and less error than int8's weights and activations together.
    assert!(rows[1]["input_peak_to_rms"].is_null());
    assert!(f(1, "kl_mean") < f(0, "kl_mean"), "{v}");
    assert!(f(1, "decoder_psnr_db") > f(0, "decoder_psnr_db"), "{v}");
}

#[test]
fn quant_report_smooth_rates_the_smoothed_weights() {
    let fx = fixture();
    let r = tools(&[
        "quant-report",
        "--var",
        fx.join("var.pth").to_str().unwrap(),
        "--vae",
        fx.join("vae.pth").to_str().unwrap(),
        "--calib",
        "1",
        "--smooth",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("JSON");
    assert!(v["int8"].as_str().unwrap().contains("smoothed a=0.5"));
    // Against the smoothed float weights: int8 rounding only (about 42 dB here; against the
    // plain float weights the folded ones would be off by their factors).
    for t in v["tensors"].as_array().unwrap() {
        let db = t["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(db > 35.0, "{t}");
    }
    let forced = v["end_to_end"]["forced_token_agreement"].as_f64().unwrap();
    assert!(forced > 0.9, "{forced}");
}

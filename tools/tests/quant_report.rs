//! `srdd-tools quant-report` on the tiny fixture: a model against itself agrees exactly, int8
//! against f32 gives plausible, non-trivial figures, the plot is a PNG, bad input exits 2.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-six-scales")
}

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .args(args)
        .output()
        .expect("run srdd-tools")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-qr-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn f(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        _ => v.as_f64().expect("number"),
    }
}

#[test]
fn self_comparison_agrees_exactly() {
    let fx = fixture();
    let model = tmp("f32.srdd");
    let m = model.to_str().unwrap();
    let out = tools(&[
        "pack",
        "--var",
        fx.join("var.pth").to_str().unwrap(),
        "--vae",
        fx.join("vae.pth").to_str().unwrap(),
        "-o",
        m,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&tools(&[
        "quant-report",
        "--f32",
        m,
        "--int8",
        m,
        "--calib",
        "2",
        "--json",
    ]));
    for s in r["scales"].as_array().unwrap() {
        assert_eq!(f(&s["top1"]), 1.0);
        assert_eq!(f(&s["kl_max"]), 0.0);
        assert_eq!(f(&s["free_agreement"]), 1.0);
    }
    for l in r["layers"].as_array().unwrap() {
        assert_eq!(f(&l["sqnr_db"]), f64::INFINITY, "{l}");
    }
    for t in r["tensors"].as_array().unwrap() {
        assert_eq!(f(&t["rmse"]), 0.0, "{t}");
    }
    assert_eq!(f(&r["decoder_psnr_db"]), f64::INFINITY);
    assert_eq!(f(&r["end_to_end"]["free_image_psnr_db"]), f64::INFINITY);
}

#[test]
fn int8_against_f32_is_plausible_and_plots() {
    let fx = fixture();
    let png = tmp("plot.png");
    let r = json(&tools(&[
        "quant-report",
        "--var",
        fx.join("var.pth").to_str().unwrap(),
        "--vae",
        fx.join("vae.pth").to_str().unwrap(),
        "--calib",
        "2",
        "--json",
        "--plot",
        png.to_str().unwrap(),
    ]));
    // Weights: every quantized tensor in the int8 range of a per-row scale (30–60 dB).
    let q: Vec<f64> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| f(&t["rmse"]) > 0.0)
        .map(|t| f(&t["sqnr_db"]))
        .collect();
    assert!(q.len() > 10, "{} quantized tensors", q.len());
    assert!(q.iter().all(|s| (30.0..60.0).contains(s)), "{q:?}");
    // Activations: degraded but far from noise.
    for l in r["layers"].as_array().unwrap() {
        let s = f(&l["sqnr_db"]);
        assert!((20.0..80.0).contains(&s), "{l}");
    }
    // Per scale: some divergence, small.
    let scales = r["scales"].as_array().unwrap();
    assert!(scales.iter().any(|s| f(&s["kl_max"]) > 0.0));
    assert!(scales
        .iter()
        .all(|s| f(&s["kl_mean"]) < 0.05 && f(&s["top1"]) > 0.8));
    let dec = f(&r["decoder_psnr_db"]);
    assert!((25.0..80.0).contains(&dec), "decoder PSNR {dec}");
    assert!(f(&r["end_to_end"]["forced_token_agreement"]) > 0.8);
    // The PNG, written whole (no partial file left).
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let mut partial = png.into_os_string();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists());
}

#[test]
fn bad_input_is_one_line_exit_2() {
    for args in [
        vec![
            "quant-report",
            "--f32",
            "/nonexistent.srdd",
            "--int8",
            "/nonexistent.srdd",
        ],
        vec!["quant-report", "--calib", "1"],
    ] {
        let out = tools(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.starts_with("srdd-tools: "), "{err}");
    }
}

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

/// Packs `var.pth`/`vae.pth` of `dir` as f32 (extra `pack` flags in `extra`) into `out`.
fn pack_f32(dir: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "pack",
        "--var",
        dir.join("var.pth").to_str().unwrap(),
        "--vae",
        dir.join("vae.pth").to_str().unwrap(),
        "--weights",
        "f32",
        "-o",
        out.to_str().unwrap(),
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = tools(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A `side × side` PNG: tile (r, c) of the committed emoji grid when `side` is 32, else a
/// gradient.
fn write_png(path: &Path, side: usize, r: usize, c: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let grid = srdd::read_png_rgb(&root.join("tools/tests/data/classifier/grid.png")).unwrap();
    let mut rgb = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            if side == 32 {
                let at = ((34 * r + y) * grid.width + 34 * c + x) * 3;
                rgb.extend_from_slice(&grid.rgb[at..at + 3]);
            } else {
                rgb.extend([(x * 4) as u8, (y * 4) as u8, 128]);
            }
        }
    }
    let img = srdd::Image {
        width: side,
        height: side,
        rgb,
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, srdd::png_bytes(&img).unwrap()).unwrap();
}

#[test]
fn calib_dir_encodes_images() {
    let fx = fixture();
    let model = tmp("calib-f32.srdd");
    pack_f32(&fx, &model, &["--class-names", "a,b,c,d,e"]);
    let dir = tmp("calib-dir");
    write_png(&dir.join("x.png"), 32, 0, 0);
    write_png(&dir.join("c/y.png"), 32, 8, 1);
    write_png(&dir.join("nothing/z.png"), 32, 1, 0);
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    // Classes from the subdirectory names, else the null class (5).
    let bytes = srdd_core::aligned::AlignedBytes::read(&model).unwrap();
    let m = srdd_core::Model::from_bytes(bytes.as_bytes()).unwrap();
    let imgs = srdd_tools::quant_report::calib_images(&m, &dir).unwrap();
    let labels: Vec<(String, u32)> = imgs
        .iter()
        .map(|i| {
            (
                i.path.file_name().unwrap().to_string_lossy().into(),
                i.label,
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            ("y.png".into(), 2),
            ("z.png".into(), 5),
            ("x.png".into(), 5)
        ]
    );
    // Against itself: exact, every token of every image teacher forced.
    let (m, d) = (model.to_str().unwrap(), dir.to_str().unwrap());
    let r = json(&tools(&[
        "quant-report",
        "--f32",
        m,
        "--int8",
        m,
        "--calib",
        d,
        "--json",
    ]));
    assert_eq!(r["calib_images"], 3);
    assert!(r["calib_source"]
        .as_str()
        .unwrap()
        .starts_with("encoded from"));
    for (s, pn) in r["scales"]
        .as_array()
        .unwrap()
        .iter()
        .zip([1, 2, 3, 4, 6, 8])
    {
        assert_eq!(s["tokens"], 3 * pn * pn, "{s}");
        assert_eq!(f(&s["top1"]), 1.0);
        assert_eq!(f(&s["kl_max"]), 0.0);
    }
    assert_eq!(f(&r["decoder_psnr_db"]), f64::INFINITY);
    // int8 on the encoded images: degraded, not broken.
    let r = json(&tools(&[
        "quant-report",
        "--var",
        fx.join("var.pth").to_str().unwrap(),
        "--vae",
        fx.join("vae.pth").to_str().unwrap(),
        "--calib",
        d,
        "--json",
    ]));
    let scales = r["scales"].as_array().unwrap();
    assert!(scales.iter().any(|s| f(&s["kl_max"]) > 0.0));
    assert!(scales
        .iter()
        .all(|s| f(&s["kl_mean"]) < 0.05 && f(&s["top1"]) > 0.8));
    let dec = f(&r["decoder_psnr_db"]);
    assert!((25.0..80.0).contains(&dec), "decoder PSNR {dec}");
    // The numeric form keeps its meaning.
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
    assert_eq!(r["calib_images"], 2);
    assert_eq!(r["calib_source"], "sampled from the float model");
}

#[test]
fn calib_dir_errors_are_one_line() {
    let fx = fixture();
    let model = tmp("calib-err-f32.srdd");
    pack_f32(&fx, &model, &[]);
    let m = model.to_str().unwrap();
    let big = tmp("calib-big");
    write_png(&big.join("a.png"), 48, 0, 0);
    let empty = tmp("calib-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let clf = Path::new(env!("CARGO_MANIFEST_DIR")).join("train/emoji32-classifier.pt");
    for (args, want) in [
        (
            vec!["--calib", big.to_str().unwrap()],
            "calibration image is 48x48, expected 32x32",
        ),
        (vec!["--calib", empty.to_str().unwrap()], "no PNG images"),
        (vec!["--calib", "/nonexistent-dir"], "/nonexistent-dir"),
        // The tiny model has no emoji32 class names and 5 classes.
        (vec!["--per-class", "2"], "--per-class needs --classifier"),
        (
            vec!["--per-class", "2", "--classifier", clf.to_str().unwrap()],
            "the classifier has 9 classes, the model 5",
        ),
        (
            vec![
                "--per-class",
                "2",
                "--classifier",
                fx.join("var.pth").to_str().unwrap(),
            ],
            "not an EmojiClassifier checkpoint",
        ),
    ] {
        let mut a = vec!["quant-report", "--f32", m, "--int8", m];
        a.extend(args.iter());
        let out = tools(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The built-in model's f32 reference (packed as `docs/MODEL.md` shows, class names included).
fn emoji_f32() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tmp("emoji-f32.srdd");
    let names = std::fs::read_to_string(root.join("tools/train/emoji32-classes.txt"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(",");
    pack_f32(
        &root.join("tests/fixtures/emoji32"),
        &out,
        &[
            "--schedule",
            "1,2,3,4,5,6,8",
            "--class-names",
            &names,
            "--meta",
            "default_cfg=3",
            "--meta",
            "default_top_k=40",
            "--meta",
            "default_top_p=0",
            &format!(
                "--resample-policy={}",
                std::fs::read_to_string(root.join("tools/train/logs/resample_policy.txt"))
                    .unwrap()
                    .trim()
            ),
        ],
    );
    out
}

/// Issue #12's thresholds on the committed model (two-pass activations on every int8 Linear,
/// seven f16 weights, f16 AdaLN tables: `docs/MODEL.md`) against its f32 reference, teacher
/// forced on 64 images sampled from the float model (four times the 16 its plan was chosen on):
/// top-1 ≥ 99 % and mean KL ≤ 1e-3 at every scale, forced-token agreement ≥ 98 %, decoder PSNR
/// ≥ 40 dB.
#[test]
fn the_built_in_model_meets_the_int8_thresholds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fm = emoji_f32();
    let int8 = root.join("models/default-int8.srdd");
    let r = json(&tools(&[
        "quant-report",
        "--f32",
        fm.to_str().unwrap(),
        "--int8",
        int8.to_str().unwrap(),
        "--calib",
        "64",
        "--json",
    ]));
    let scales = r["scales"].as_array().unwrap();
    assert_eq!(scales.len(), 7);
    for s in scales {
        assert!(f(&s["top1"]) >= 0.99, "{s}");
        assert!(f(&s["kl_mean"]) <= 1e-3, "{s}");
    }
    assert!(f(&r["end_to_end"]["forced_token_agreement"]) >= 0.98, "{r}");
    assert!(f(&r["decoder_psnr_db"]) >= 40.0, "{}", r["decoder_psnr_db"]);
}

#[test]
fn per_class_on_the_built_in_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fm = emoji_f32();
    let m = fm.to_str().unwrap();
    // Against itself (the committed classifier chosen from the class names): identical
    // consistency, distance 0.
    let r = json(&tools(&[
        "quant-report",
        "--f32",
        m,
        "--int8",
        m,
        "--calib",
        "1",
        "--per-class",
        "2",
        "--json",
    ]));
    let c = &r["classes"];
    assert!(c["classifier"]
        .as_str()
        .unwrap()
        .ends_with("emoji32-classifier.pt"));
    assert_eq!(c["float_consistency"], c["int8_consistency"]);
    assert!(f(&c["frechet_int8_vs_float"]).abs() < 1e-6, "{c}");
    assert_eq!(
        c["frechet_float_even_vs_odd"],
        c["frechet_int8_even_vs_float_odd"]
    );
    let per = c["per_class_consistency"].as_array().unwrap();
    assert_eq!(per.len(), 9);
    assert_eq!(per[0]["class"], "smileys");
    // The committed int8 model: the same seeds give nearby images, closer in feature space
    // than other seeds of the float model.
    let int8 = root.join("models/default-int8.srdd");
    let r = json(&tools(&[
        "quant-report",
        "--f32",
        m,
        "--int8",
        int8.to_str().unwrap(),
        "--calib",
        "1",
        "--per-class",
        "2",
        "--json",
    ]));
    let c = &r["classes"];
    let (paired, halves) = (
        f(&c["frechet_int8_vs_float"]),
        f(&c["frechet_float_even_vs_odd"]),
    );
    assert!(paired > 0.0 && paired < halves, "{c}");
    for k in ["float_consistency", "int8_consistency"] {
        assert!((0.3..=1.0).contains(&f(&c[k])), "{c}");
    }
}

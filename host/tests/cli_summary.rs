//! What the image commands say when they finish (a closing timing line; `--json`: one object
//! instead), and the one-line hints for common mistakes: a PyTorch checkpoint as `--model`,
//! negative numbers, `--mask` with `--box`, an output that is not `.png`; short flags and
//! case-insensitive values; `info --classes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn srdd(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-cli-summary-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn succeeds(args: &[&str], out: &Path) -> Output {
    let o = srdd(args, out);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    o
}

/// The closing line: `done: N image(s) in S s (M ms/image, R images/s), isa ISA, T thread(s),
/// backend cpu`, with numbers that agree; returns the ISA name.
fn check_done_line(line: &str, images: usize, threads: usize) -> String {
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    let head = format!("done: {} in ", plural(images, "image"));
    let rest = line
        .strip_prefix(&head)
        .unwrap_or_else(|| panic!("{line:?} does not start with {head:?}"));
    let tail = format!(", {}, backend cpu", plural(threads, "thread"));
    let rest = rest
        .strip_suffix(&tail)
        .unwrap_or_else(|| panic!("{line:?} does not end with {tail:?}"));
    let (wall, rest) = rest.split_once(" s (").unwrap();
    let (ms, rest) = rest.split_once(" ms/image, ").unwrap();
    let (rate, isa) = rest.split_once(" images/s), isa ").unwrap();
    let (wall, ms, rate): (f64, f64, f64) = (
        wall.parse().unwrap(),
        ms.parse().unwrap(),
        rate.parse().unwrap(),
    );
    assert!(wall >= 0.0 && ms > 0.0 && rate > 0.0, "{line}");
    // ms/image and images/s are the same measurement (to the printed rounding).
    assert!((ms * rate / 1e3 - 1.0).abs() < 0.02, "{line}");
    assert!(
        !isa.is_empty() && isa.chars().all(|c| c.is_ascii_alphanumeric()),
        "{line}"
    );
    isa.to_string()
}

#[test]
fn sample_ends_with_a_timing_line() {
    let out = tmp("grid.png");
    let o = succeeds(
        &["sample", "--class", "1", "--count", "4", "--threads", "2"],
        &out,
    );
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("wrote "), "{err}");
    check_done_line(lines[1], 4, 2);
    assert!(o.stdout.is_empty());
}

#[test]
fn zero_shot_commands_end_with_a_timing_line() {
    let src = tmp("zs-src.png");
    succeeds(&["sample", "--class", "smileys", "--seed", "3"], &src);
    let s = src.to_str().unwrap();
    let low = tmp("zs-low.png");
    // Any 16x16 image divides the built-in model's 32x32.
    write_grey_png(&low, 16);
    for (args, name) in [
        (vec!["reconstruct", s, "--threads", "1"], "zs-rec.png"),
        (
            vec!["edit", s, "--box", "8,8,24,24", "--threads", "1"],
            "zs-edit.png",
        ),
        (
            vec!["upscale", low.to_str().unwrap(), "--threads", "1"],
            "zs-up.png",
        ),
    ] {
        let o = succeeds(&args, &tmp(name));
        // The text line stays on stdout, as before; the timing goes to stderr.
        let out = text(&o.stdout);
        assert_eq!(out.trim_end().lines().count(), 1, "{args:?}: {out}");
        assert!(out.starts_with("wrote "), "{args:?}: {out}");
        let err = text(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        check_done_line(err.trim_end(), 1, 1);
    }
}

fn write_grey_png(path: &Path, side: u32) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 256) as u8).collect();
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
}

/// Runs a command with `--json`: exactly one JSON object on stdout, nothing on stderr.
fn json_of(args: &[&str], out: &Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = succeeds(&a, out);
    assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o.stderr));
    let s = text(&o.stdout);
    assert_eq!(s.trim_end().lines().count(), 1, "one object: {s}");
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn check_timings(v: &serde_json::Value, images: u64, threads: u64, out: &Path) {
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {v}"))
    };
    assert_eq!(v["images"], images, "{v}");
    assert_eq!(v["threads"], threads, "{v}");
    assert_eq!(v["output"], out.to_str().unwrap(), "{v}");
    let wall = num("wall_s");
    assert!(wall > 0.0, "{v}");
    assert!((num("ms_per_image") - 1e3 * wall / images as f64).abs() < 1e-9 * (1.0 + wall));
    assert!(
        (num("images_per_s") * wall - images as f64).abs() < 1e-6,
        "{v}"
    );
    assert!(!v["isa"].as_str().unwrap().is_empty(), "{v}");
}

#[test]
fn sample_json_has_settings_timings_and_output() {
    let out = tmp("json-grid.png");
    let args = [
        "sample",
        "--class",
        "1",
        "--seed",
        "5",
        "--count",
        "3",
        "--batch",
        "2",
        "--threads",
        "2",
        "--cfg",
        "2.5",
        "--top-p",
        "0.9",
        "--schedule",
        "1,2,4,6,8",
        "--top-k",
        "1,1,50,50,50",
    ];
    let v = json_of(&args, &out);
    check_timings(&v, 3, 2, &out);
    assert_eq!(v["model"], "<built-in>");
    assert_eq!(v["class"], 1);
    assert_eq!(v["seed"], 5);
    assert_eq!(v["seeds"], serde_json::json!([5, 6, 7]));
    assert_eq!(v["count"], 3);
    assert_eq!(v["batch"], 2);
    assert_eq!(v["cfg"], 2.5);
    assert!((v["top_p"].as_f64().unwrap() - 0.9).abs() < 1e-6, "{v}");
    assert_eq!(v["top_k"], serde_json::json!([1, 1, 50, 50, 50]));
    assert_eq!(v["schedule"], serde_json::json!([1, 2, 4, 6, 8]));
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(66), Some(66))
    );
    // --json changes what is printed, not one byte of the image.
    let plain = tmp("plain-grid.png");
    succeeds(&args, &plain);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&plain).unwrap());
}

#[test]
fn zero_shot_json_has_psnr_and_timings() {
    let src = tmp("zj-src.png");
    succeeds(&["sample", "--class", "smileys", "--seed", "3"], &src);
    let s = src.to_str().unwrap();
    let rec = tmp("zj-rec.png");
    let v = json_of(&["reconstruct", s, "--threads", "1"], &rec);
    check_timings(&v, 1, 1, &rec);
    assert!(v["psnr_db"].as_f64().unwrap() > 0.0, "{v}");
    let ed = tmp("zj-edit.png");
    let v = json_of(
        &[
            "edit",
            s,
            "--box",
            "8,8,24,24",
            "--seed",
            "1",
            "--threads",
            "1",
        ],
        &ed,
    );
    check_timings(&v, 1, 1, &ed);
    assert_eq!(v["pixels_generated"], 256, "{v}");
    assert_eq!(v["pixels"], 1024, "{v}");
    assert_eq!(v["seed"], 1, "{v}");
    assert!(v["psnr_kept_db"].as_f64().unwrap() > 0.0, "{v}");
    let low = tmp("zj-low.png");
    write_grey_png(&low, 16);
    let up = tmp("zj-up.png");
    let v = json_of(&["upscale", low.to_str().unwrap(), "--threads", "1"], &up);
    check_timings(&v, 1, 1, &up);
    assert_eq!(
        (v["input_side"].as_u64(), v["output_side"].as_u64()),
        (Some(16), Some(32))
    );
    assert!(v["psnr_downscaled_db"].as_f64().is_some(), "{v}");
}

/// The command fails with exit status 2, one line on stderr that is `srdd: ` + `message`, and
/// nothing written.
fn fails_exactly(args: &[&str], out: &Path, message: &str) {
    let _ = std::fs::remove_file(out);
    let o = srdd(args, out);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    assert_eq!(text(&o.stderr), format!("srdd: {message}\n"), "{args:?}");
    assert!(o.stdout.is_empty(), "{args:?}");
    assert!(!out.exists(), "{args:?}: nothing written on error");
}

#[test]
fn a_pytorch_checkpoint_as_model_gets_a_hint() {
    let out = tmp("pt.png");
    let hint = "this is a PyTorch checkpoint, not a .srdd model; convert it with \
                `srdd-tools pack --vae VAE.pth --var VAR.pth -o model.srdd`";
    // torch.save's zip format, and the legacy pickle (PROTO opcode 0x80, protocol 2).
    for (name, bytes) in [
        ("zip.pth", b"PK\x03\x04archive/data.pkl........".to_vec()),
        (
            "pickle.pth",
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(),
        ),
    ] {
        let pt = tmp(name);
        std::fs::write(&pt, &bytes).unwrap();
        let p = pt.to_str().unwrap();
        fails_exactly(
            &["sample", "--model", p, "--class", "1"],
            &out,
            &format!("{p}: {hint}"),
        );
        fails_exactly(&["upscale", p, "--model", p], &out, &format!("{p}: {hint}"));
    }
}

#[test]
fn negative_numbers_reach_srdds_own_checks() {
    let out = tmp("neg.png");
    fails_exactly(
        &["sample", "--class", "1", "--cfg", "-1"],
        &out,
        "bad option: cfg must be a finite value in [0, 1000]",
    );
    fails_exactly(
        &["sample", "--class", "1", "--seed", "-3"],
        &out,
        "invalid value '-3' for '--seed <SEED>': a seed is a whole number in \
         0..=18446744073709551615",
    );
    // Per-step lists with a negative value, and a negative unsigned one.
    let o = srdd(&["sample", "--class", "1", "--top-p", "-0.5"], &out);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.starts_with("srdd: ") && err.contains("top-p"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let o = srdd(&["sample", "--class", "1", "--top-k", "-1"], &out);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("srdd: invalid value '-1' for '--top-k"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // An unknown flag is still clap's own error, with its usage.
    let o = srdd(&["sample", "--class", "1", "--bogus"], &out);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("unexpected argument '--bogus'"));
}

#[test]
fn edit_wants_a_mask_or_a_box_not_both() {
    let src = tmp("both-src.png");
    succeeds(&["sample", "--class", "1"], &src);
    let mask = tmp("both-mask.png");
    write_grey_png(&mask, 32);
    fails_exactly(
        &[
            "edit",
            src.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--box",
            "8,8,24,24",
        ],
        &tmp("both.png"),
        "give either --mask FILE or --box x0,y0,x1,y1, not both",
    );
}

#[test]
fn outputs_must_be_png() {
    let src = tmp("ext-src.png");
    succeeds(&["sample", "--class", "1"], &src);
    let s = src.to_str().unwrap();
    for (name, args) in [
        ("x.jpg", vec!["sample", "--class", "1"]),
        ("x", vec!["sample", "--class", "1"]),
        ("x.png.jpeg", vec!["reconstruct", s]),
        ("x.webp", vec!["edit", s, "--box", "8,8,24,24"]),
        ("x.jpg", vec!["upscale", s]),
    ] {
        let out = tmp(name);
        fails_exactly(
            &args,
            &out,
            &format!(
                "-o {}: srdd writes PNG: give an output ending in .png",
                out.display()
            ),
        );
    }
    // Before any work: even a missing model is not read.
    let out = tmp("y.jpg");
    fails_exactly(
        &["sample", "--class", "1", "--model", "/nonexistent.srdd"],
        &out,
        &format!(
            "-o {}: srdd writes PNG: give an output ending in .png",
            out.display()
        ),
    );
    // The extension in any case.
    succeeds(&["sample", "--class", "1"], &tmp("UPPER.PNG"));
}

#[test]
fn short_flags_and_case_insensitive_values_mean_the_long_ones() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default-int8.srdd");
    let (long, short) = (tmp("long.png"), tmp("short.png"));
    succeeds(
        &[
            "sample",
            "--model",
            model,
            "--count",
            "2",
            "--seed",
            "4",
            "--class",
            "1",
            "--attention",
            "causal",
        ],
        &long,
    );
    succeeds(
        &[
            "sample",
            "-m",
            model,
            "-n",
            "2",
            "-s",
            "4",
            "--class",
            "1",
            "--attention",
            "CAUSAL",
        ],
        &short,
    );
    assert_eq!(
        std::fs::read(&long).unwrap(),
        std::fs::read(&short).unwrap()
    );
}

#[test]
fn info_lists_the_classes_and_takes_the_model_either_way() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default-int8.srdd");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_srdd"))
            .args(args)
            .output()
            .unwrap()
    };
    let built_in = run(&["info", "--classes"]);
    assert!(built_in.status.success());
    let lines: Vec<String> = text(&built_in.stdout).lines().map(String::from).collect();
    assert_eq!(lines.first().map(String::as_str), Some("0 smileys"));
    assert_eq!(lines.last().map(String::as_str), Some("9 null"));
    assert_eq!(lines.len(), 10);
    for args in [
        &["info", model, "--classes"][..],
        &["info", "--model", model, "--classes"],
        &["info", "-m", model, "--classes"],
    ] {
        assert_eq!(run(args).stdout, built_in.stdout, "{args:?}");
    }
    let both = run(&["info", model, "-m", model]);
    assert_eq!(both.status.code(), Some(2));
    assert_eq!(
        text(&both.stderr).trim(),
        "srdd: give the model as FILE or as --model FILE, not both"
    );
}

#[test]
fn info_says_which_named_schedules_the_model_runs() {
    let o = Command::new(env!("CARGO_BIN_EXE_srdd"))
        .arg("info")
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(
        out.contains("schedule full: [1, 2, 3, 4, 5, 6, 8]"),
        "{out}"
    );
    assert!(
        out.contains("schedule distilled-6: not for this model"),
        "{out}"
    );
}

#[test]
fn every_command_help_ends_with_examples() {
    for cmd in ["sample", "reconstruct", "edit", "upscale", "bench", "info"] {
        let o = Command::new(env!("CARGO_BIN_EXE_srdd"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = text(&o.stdout);
        assert!(help.contains("Example"), "{cmd}: {help}");
        assert!(help.contains(&format!("srdd {cmd}")), "{cmd}: {help}");
    }
}

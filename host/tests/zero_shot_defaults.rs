//! The zero-shot defaults on the built-in model: `edit` pastes the kept pixels back byte for
//! byte, `--class auto` finds the class of a sampled image, and `upscale` names the input sizes
//! it accepts (and takes every one of them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn srdd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-zsd-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `srdd ARGS -o OUT` and asserts that it succeeds.
fn succeeds(args: &[&str], out: &Path) -> Output {
    let o = srdd().args(args).arg("-o").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json_of(args: &[&str], out: &Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let o = succeeds(&a, out);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A sample of the built-in model.
fn sample(class: &str, seed: u32) -> PathBuf {
    let out = tmp(&format!("src-{class}-{seed}.png"));
    succeeds(
        &["sample", "--class", class, "--seed", &seed.to_string()],
        &out,
    );
    out
}

/// (width, height, RGB8 pixels) of a PNG the CLI wrote.
fn read_rgb(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn write_png(path: &Path, side: usize, rgb: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), side as u32, side as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

/// Box-filter downscale of a square RGB8 image to `side`.
fn downscale(rgb: &[u8], from: usize, side: usize) -> Vec<u8> {
    let f = from / side;
    let mut out = vec![0u8; side * side * 3];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                let mut t = 0u32;
                for dy in 0..f {
                    for dx in 0..f {
                        t += rgb[((y * f + dy) * from + x * f + dx) * 3 + c] as u32;
                    }
                }
                out[(y * side + x) * 3 + c] = ((t as f32) / (f * f) as f32).round() as u8;
            }
        }
    }
    out
}

/// Pixels (index, kept?) of a 32×32 image with the box 8..24 generated (inverted: kept).
fn kept_pixels(invert: bool) -> impl Iterator<Item = (usize, bool)> {
    (0..32 * 32).map(move |i| {
        let (y, x) = (i / 32, i % 32);
        let inside = (8..24).contains(&x) && (8..24).contains(&y);
        (i, inside == invert)
    })
}

#[test]
fn edit_pastes_the_kept_pixels_back_byte_for_byte() {
    let src = sample("smileys", 3);
    let s = src.to_str().unwrap();
    let (_, _, source) = read_rgb(&src);
    for invert in [false, true] {
        let out = tmp(&format!("pasted-{invert}.png"));
        let mut args = vec!["edit", s, "--box", "8,8,24,24", "--seed", "1"];
        if invert {
            args.push("--invert");
        }
        let o = succeeds(&args, &out);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("pasted back"), "{text}");
        let (w, h, edited) = read_rgb(&out);
        assert_eq!((w, h), (32, 32));
        let mut generated_changed = false;
        for (i, kept) in kept_pixels(invert) {
            let (a, b) = (&source[i * 3..i * 3 + 3], &edited[i * 3..i * 3 + 3]);
            if kept {
                assert_eq!(a, b, "kept pixel {i} (invert {invert}) changed");
            } else {
                generated_changed |= a != b;
            }
        }
        assert!(generated_changed, "the edited region was regenerated");
        // The PSNR reported is the kept region's before paste-back: finite, the model's own.
        let v = json_of(&args, &out);
        assert_eq!(v["paste_back"], true, "{v}");
        let db = v["psnr_kept_db"].as_f64().unwrap();
        assert!(db.is_finite() && db > 0.0, "{v}");
        assert_eq!(read_rgb(&out).2, edited, "--json writes the same image");
        // Without paste-back the kept region is the decoder's (re-encoded), not the input's.
        let raw = tmp(&format!("raw-{invert}.png"));
        let mut no = args.clone();
        no.push("--no-paste-back");
        let v = json_of(&no, &raw);
        assert_eq!(v["paste_back"], false, "{v}");
        assert_eq!(v["psnr_kept_db"].as_f64(), Some(db), "same sampling");
        let (_, _, unpasted) = read_rgb(&raw);
        assert!(
            kept_pixels(invert)
                .any(|(i, k)| k && unpasted[i * 3..i * 3 + 3] != source[i * 3..i * 3 + 3]),
            "--no-paste-back leaves the re-encoded pixels"
        );
        // Pasting back changes the kept pixels only.
        for (i, kept) in kept_pixels(invert) {
            if !kept {
                assert_eq!(unpasted[i * 3..i * 3 + 3], edited[i * 3..i * 3 + 3]);
            }
        }
    }
}

#[test]
fn class_auto_finds_the_class_of_a_sample() {
    // (class, label, seeds) that the classifier gets right on the built-in model; over 9 classes
    // × 12 seeds it is right on 77 of 108 (docs/SAMPLING.md).
    let cases = [
        ("animals", 2u64, &[1u32, 3][..]),
        ("flags", 8, &[0, 1, 2, 3]),
    ];
    for (class, label, seeds) in cases {
        for &seed in seeds {
            let src = sample(class, seed);
            let s = src.to_str().unwrap();
            let out = tmp(&format!("auto-{class}-{seed}.png"));
            // `auto` is the default.
            let v = json_of(&["edit", s, "--box", "8,8,24,24"], &out);
            assert_eq!(v["class_auto"], label, "{class} seed {seed}: {v}");
            assert_eq!(v["class"], label, "{class} seed {seed}: {v}");
            assert_eq!(v["class_auto_name"], class, "{v}");
            let o = succeeds(&["edit", s, "--box", "8,8,24,24", "--class", "auto"], &out);
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains(&format!("class auto: {class} ({label})")),
                "{text}"
            );
        }
    }
    // An explicit class is used as given, and nothing is guessed.
    let src = sample("animals", 1);
    let out = tmp("explicit.png");
    let v = json_of(
        &[
            "edit",
            src.to_str().unwrap(),
            "--box",
            "8,8,24,24",
            "--class",
            "food",
        ],
        &out,
    );
    assert_eq!(v["class"], 3, "{v}");
    assert!(v.get("class_auto").is_none(), "{v}");
}

#[test]
fn upscale_names_the_sizes_it_accepts_and_takes_each() {
    // The built-in model: 32×32 images, latent side 8, patch sizes 1,2,3,4,5,6,8 → inputs of
    // side 4, 8, 16 (latent 1, 2, 4); 2 (latent ½), 24 (not a divisor) and 32 (the model's own
    // side, once answered "expected 16x16") are refused, each naming the sizes it takes.
    let src = sample("smileys", 3);
    let (_, _, full) = read_rgb(&src);
    for bad in [2usize, 24, 32] {
        let p = tmp(&format!("bad-{bad}.png"));
        write_png(&p, bad, &downscale(&full[..], 32, 32)[..bad * bad * 3]);
        let out = tmp(&format!("bad-up-{bad}.png"));
        let _ = std::fs::remove_file(&out);
        let o = srdd()
            .args(["upscale", p.to_str().unwrap(), "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("low-resolution image is {bad}x{bad}"))
                && err.contains("accepts 4x4, 8x8, 16x16"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    for (side, steps) in [(4usize, 1u64), (8, 2), (16, 4)] {
        let p = tmp(&format!("low-{side}.png"));
        write_png(&p, side, &downscale(&full, 32, side));
        let out = tmp(&format!("up-{side}.png"));
        let v = json_of(&["upscale", p.to_str().unwrap()], &out);
        assert_eq!(v["input_side"], side as u64, "{v}");
        assert_eq!(v["steps_fixed"], steps, "{v}");
        assert!(v["class_auto"].as_u64().is_some_and(|c| c < 9), "{v}");
        if side == 16 {
            // The smiley's 16×16 version is still a smiley (the reported yellow-disc case).
            assert_eq!(v["class_auto_name"], "smileys", "{v}");
        }
        assert_eq!(read_rgb(&out).0, 32);
    }
}

//! The `srdd` binary end to end: PNG output, grids, and one-line errors with nothing written.

use std::path::PathBuf;
use std::process::Command;

fn srdd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn png_size(path: &PathBuf) -> (u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let r = dec.read_info().unwrap();
    (r.info().width, r.info().height)
}

/// Runs `srdd sample --class CLASS --seed SEED -o OUT` and asserts that it succeeds.
fn sample_to(class: &str, seed: &str, out: &PathBuf) {
    let st = srdd()
        .args(["sample", "--class", class, "--seed", seed, "-o"])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn samples_the_builtin_model_to_png() {
    let out = tmp("one.png");
    sample_to("3", "7", &out);
    assert_eq!(png_size(&out), (32, 32));
    // Same seed, same bytes.
    let out2 = tmp("one-again.png");
    sample_to("3", "7", &out2);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn count_makes_a_grid() {
    let out = tmp("grid.png");
    let st = srdd()
        .args([
            "sample",
            "--class",
            "1",
            "--count",
            "4",
            "--threads",
            "2",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(png_size(&out), (66, 66));
}

fn fails_with(args: &[&str], needle: &str) {
    let out = tmp(&format!("fail-{}.png", needle.len()));
    let _ = std::fs::remove_file(&out);
    let o = srdd().args(args).arg("-o").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!out.exists(), "nothing written on error");
}

#[test]
fn bad_options_are_one_line_errors() {
    fails_with(&["sample", "--class", "11"], "out of range");
    fails_with(&["sample", "--class", "dragons"], "unknown class");
    fails_with(&["sample", "--class", "1", "--top-p", "1.5"], "top-p");
    fails_with(&["sample", "--class", "1", "--top-k", "100000"], "top-k");
    fails_with(&["sample", "--class", "1", "--cfg", "NaN"], "cfg");
    fails_with(
        &["sample", "--class", "1", "--schedule", "1,3,7"],
        "schedule",
    );
}

#[test]
fn corrupt_model_is_a_one_line_error() {
    let bad = tmp("bad.srdd");
    let mut bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/default-int8.srdd"
    ))
    .unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&bad, &bytes).unwrap();
    fails_with(
        &["sample", "--model", bad.to_str().unwrap(), "--class", "1"],
        "corrupt",
    );
    std::fs::write(&bad, &bytes[..1000]).unwrap();
    fails_with(
        &["sample", "--model", bad.to_str().unwrap(), "--class", "1"],
        "truncated",
    );
}

#[test]
fn info_prints_the_arena() {
    let o = srdd().args(["info"]).output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("arena for one CFG sample (markov)"), "{s}");
}

fn write_png(path: &PathBuf, w: u32, h: u32, rgb: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

fn read_rgb(path: &PathBuf) -> Vec<u8> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

/// A sample of the built-in model to edit (class by name: the model stores its class names).
fn source_image(name: &str) -> PathBuf {
    let out = tmp(name);
    sample_to("smileys", "3", &out);
    out
}

fn stdout_of(args: &[&str], out: &PathBuf) -> String {
    let o = srdd().args(args).arg("-o").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn zero_shot_commands_work_on_the_builtin_model() {
    let src = source_image("zs-src.png");
    let s = src.to_str().unwrap();
    // Reconstruct: encode -> tokens -> decode, with the PSNR reported.
    let rec = tmp("zs-rec.png");
    let msg = stdout_of(&["reconstruct", s], &rec);
    assert!(msg.contains("PSNR"), "{msg}");
    assert_eq!(png_size(&rec), (32, 32));
    // Inpainting a box: outside the box the result is the reconstruction's neighbourhood,
    // inside it is regenerated; a class steers it.
    let ed = tmp("zs-edit.png");
    let msg = stdout_of(
        &[
            "edit",
            s,
            "--box",
            "8,8,24,24",
            "--class",
            "animals",
            "--seed",
            "1",
        ],
        &ed,
    );
    assert!(msg.contains("256 of 1024 pixels generated"), "{msg}");
    // Outpainting: the same box inverted, with a mask file instead.
    let mask = tmp("zs-mask.png");
    let rgb: Vec<u8> = (0..32 * 32)
        .flat_map(|i| {
            let (y, x) = (i / 32, i % 32);
            let inside = (8..24).contains(&x) && (8..24).contains(&y);
            [if inside { 0u8 } else { 255 }; 3]
        })
        .collect();
    write_png(&mask, 32, 32, &rgb);
    let out = tmp("zs-out.png");
    let msg = stdout_of(&["edit", s, "--mask", mask.to_str().unwrap()], &out);
    assert!(msg.contains("768 of 1024 pixels generated"), "{msg}");
    let boxed = tmp("zs-out-box.png");
    stdout_of(&["edit", s, "--box", "8,8,24,24", "--invert"], &boxed);
    assert_eq!(
        read_rgb(&out),
        read_rgb(&boxed),
        "mask file == inverted box"
    );
    // Keeping every pixel forces every token: the edit is exactly the reconstruction.
    let black = tmp("zs-black.png");
    write_png(&black, 32, 32, &[0u8; 32 * 32 * 3]);
    let kept = tmp("zs-kept.png");
    let msg = stdout_of(
        &[
            "edit",
            s,
            "--mask",
            black.to_str().unwrap(),
            "--no-paste-back",
        ],
        &kept,
    );
    assert!(msg.contains("0 of 1024 pixels generated"), "{msg}");
    assert_eq!(
        read_rgb(&kept),
        read_rgb(&rec),
        "forcing every token == reconstruct"
    );
    // Upscale a 16x16 version back to 32x32.
    let full = read_rgb(&src);
    let mut low = vec![0u8; 16 * 16 * 3];
    for y in 0..16 {
        for x in 0..16 {
            for c in 0..3 {
                let mut t = 0u32;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    t += full[((2 * y + dy) * 32 + 2 * x + dx) * 3 + c] as u32;
                }
                low[(y * 16 + x) * 3 + c] = (t / 4) as u8;
            }
        }
    }
    let lowp = tmp("zs-low.png");
    write_png(&lowp, 16, 16, &low);
    let up = tmp("zs-up.png");
    let msg = stdout_of(&["upscale", lowp.to_str().unwrap(), "--seed", "2"], &up);
    assert!(msg.contains("from 16x16"), "{msg}");
    assert_eq!(png_size(&up), (32, 32));
    // Sampling-plan options.
    let o = tmp("zs-plan.png");
    stdout_of(
        &[
            "sample",
            "--class",
            "flags",
            "--refine",
            "1",
            "--resample",
            "learned",
            "--cfg-schedule",
            "constant",
            "--band-rows",
            "1",
            "--chunk",
            "4",
        ],
        &o,
    );
    stdout_of(
        &[
            "sample",
            "--class",
            "food",
            "--schedule",
            "1,2,4,6,8",
            "--top-k",
            "1,1,50,50,50",
            "--resample",
            "threshold:0.4",
            "--refine",
            "2",
        ],
        &o,
    );
}

#[test]
fn zero_shot_bad_inputs_are_one_line_errors() {
    let src = source_image("zb-src.png");
    let s = src.to_str().unwrap();
    let small = tmp("zb-small.png");
    write_png(&small, 8, 8, &[0u8; 8 * 8 * 3]);
    let sm = small.to_str().unwrap();
    let garbage = tmp("zb-garbage.png");
    std::fs::write(&garbage, b"not a png at all").unwrap();
    let g = garbage.to_str().unwrap();
    fails_with(&["reconstruct", sm], "expected 32x32");
    fails_with(&["reconstruct", g], "not a readable PNG");
    fails_with(&["reconstruct", "/nonexistent/x.png"], "No such file");
    fails_with(&["edit", s, "--mask", sm], "mask is 8x8");
    fails_with(&["edit", s, "--mask", g], "not a readable PNG");
    fails_with(&["edit", s, "--box", "8,8,40,24"], "--box");
    fails_with(&["edit", s, "--box", "8,8,8,24"], "--box");
    fails_with(&["edit", s], "--mask FILE or --box");
    fails_with(&["upscale", s], "low-resolution image");
    fails_with(&["upscale", sm, "--keep-steps", "99"], "--keep-steps");
    fails_with(
        &["sample", "--class", "1", "--resample", "magic"],
        "--resample",
    );
    fails_with(
        &["sample", "--class", "1", "--resample", "fraction:2"],
        "[0, 1]",
    );
    fails_with(&["sample", "--class", "1", "--top-k", "1,2"], "values for");
    fails_with(
        &["sample", "--class", "1", "--cfg-schedule", "1,2"],
        "weights for",
    );
    fails_with(&["sample", "--class", "1", "--refine", "99"], "refinement");
    fails_with(
        &["sample", "--class", "1", "--band-rows", "33"],
        "band rows",
    );
}

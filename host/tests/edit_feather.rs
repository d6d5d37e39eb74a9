//! `srdd edit --feather N` on the built-in model: kept pixels stay byte-identical to the input,
//! generated pixels at chessboard distance ≥ N from the kept region are the hard-seam output's,
//! and those nearer blend the input with it by the linear weight; with `--box` and `--mask`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn srdd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-feather-{}", std::process::id()));
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

/// RGB8 pixels of a 32×32 PNG the CLI wrote.
fn read_rgb(path: &Path) -> Vec<u8> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (32, 32));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    buf
}

fn write_png(path: &Path, side: usize, rgb: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), side as u32, side as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
}

/// Chessboard distance of each pixel of a 32×32 grid to the nearest kept pixel, by brute force.
fn distance(generate: &[bool]) -> Vec<usize> {
    (0..32 * 32)
        .map(|i: usize| {
            (0..32 * 32)
                .filter(|&j: &usize| !generate[j])
                .map(|j| (i / 32).abs_diff(j / 32).max((i % 32).abs_diff(j % 32)))
                .min()
                .unwrap_or(usize::MAX)
        })
        .collect()
}

/// Edits `src` with `args` (hard seam and `--feather 4`, same seed) and checks the three zones.
fn check_feather(src: &Path, args: &[&str], generate: &[bool], name: &str) {
    let source = read_rgb(src);
    let mut base = vec!["edit", src.to_str().unwrap(), "--seed", "2"];
    base.extend_from_slice(args);
    let hard = tmp(&format!("{name}-hard.png"));
    succeeds(&base, &hard);
    let hard = read_rgb(&hard);
    let soft_path = tmp(&format!("{name}-soft.png"));
    let mut soft_args = base.clone();
    soft_args.extend(["--feather", "4", "--json"]);
    let o = succeeds(&soft_args, &soft_path);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["feather"], 4, "{v}");
    assert_eq!(v["paste_back"], true, "{v}");
    let soft = read_rgb(&soft_path);
    let (mut blended, mut far) = (0, 0);
    for (i, d) in distance(generate).into_iter().enumerate() {
        let px = i * 3..i * 3 + 3;
        match d {
            0 => assert_eq!(
                soft[px.clone()],
                source[px],
                "{name}: kept pixel {i} changed"
            ),
            d if d >= 4 => {
                far += 1;
                assert_eq!(
                    soft[px.clone()],
                    hard[px],
                    "{name}: pixel {i} at distance {d}"
                );
            }
            d => {
                blended += 1;
                let w = (4 - d) as f32 / 4.0;
                for c in px {
                    let want = (w * source[c] as f32 + (1.0 - w) * hard[c] as f32).round() as u8;
                    assert_eq!(soft[c], want, "{name}: channel {c} at distance {d}");
                    // Between the input and the generated value (inclusive: they may agree).
                    let (lo, hi) = (source[c].min(hard[c]), source[c].max(hard[c]));
                    assert!((lo..=hi).contains(&soft[c]));
                }
            }
        }
    }
    assert!(
        blended > 0 && far > 0,
        "{name}: {blended} blended, {far} far"
    );
    assert_ne!(soft, hard, "{name}: the seam was feathered");
}

/// A sample of the built-in model, the source of the edits.
fn source() -> PathBuf {
    let src = tmp("src.png");
    succeeds(&["sample", "--class", "smileys", "--seed", "5"], &src);
    src
}

#[test]
fn feather_blends_the_seam_of_box_and_mask_edits() {
    let src = source();
    let boxed: Vec<bool> = (0..32 * 32)
        .map(|i| (6..26).contains(&(i % 32)) && (6..26).contains(&(i / 32)))
        .collect();
    check_feather(&src, &["--box", "6,6,26,26"], &boxed, "box");
    let outside: Vec<bool> = boxed.iter().map(|g| !g).collect();
    check_feather(
        &src,
        &["--box", "6,6,26,26", "--invert"],
        &outside,
        "box-invert",
    );
    // A disc: a seam that is not axis-aligned.
    let disc: Vec<bool> = (0..32 * 32usize)
        .map(|i| {
            let (y, x) = ((i / 32) as i32 - 15, (i % 32) as i32 - 17);
            x * x + y * y <= 100
        })
        .collect();
    let mask = tmp("disc-mask.png");
    let rgb: Vec<u8> = disc
        .iter()
        .flat_map(|&g| [if g { 255 } else { 0 }; 3])
        .collect();
    write_png(&mask, 32, &rgb);
    check_feather(&src, &["--mask", mask.to_str().unwrap()], &disc, "mask");
}

#[test]
fn feather_without_paste_back_is_a_one_line_error() {
    let src = tmp("src-err.png");
    succeeds(&["sample", "--class", "smileys"], &src);
    let out = tmp("never.png");
    let o = srdd()
        .args(["edit", src.to_str().unwrap(), "--box", "8,8,24,24"])
        .args(["--feather", "3", "--no-paste-back", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--feather") && err.contains("--no-paste-back"),
        "{err}"
    );
    assert!(!out.exists());
}

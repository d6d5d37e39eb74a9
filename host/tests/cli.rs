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

#[test]
fn samples_the_builtin_model_to_png() {
    let out = tmp("one.png");
    let st = srdd()
        .args(["sample", "--class", "3", "--seed", "7", "-o"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(png_size(&out), (32, 32));
    // Same seed, same bytes.
    let out2 = tmp("one-again.png");
    assert!(srdd()
        .args(["sample", "--class", "3", "--seed", "7", "-o"])
        .arg(&out2)
        .status()
        .unwrap()
        .success());
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
    fails_with(&["sample", "--class", "smileys"], "unknown class");
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

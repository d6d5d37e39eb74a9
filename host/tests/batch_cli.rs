//! `srdd sample --count N --batch B`: the grid does not depend on how the images are batched,
//! nor on the threads; a bad `--batch` is a one-line error with nothing written.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sample(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_srdd"))
        .args(["sample", "--class", "flags", "--seed", "4", "--count", "5"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("srdd-batch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn batching_changes_no_byte_of_the_grid() {
    let mut grids = Vec::new();
    for (name, extra) in [
        ("b1.png", &["--batch", "1", "--threads", "1"][..]),
        ("b2.png", &["--batch", "2", "--threads", "2"][..]),
        ("b5.png", &["--batch", "5", "--threads", "2"][..]),
        ("b8-refine.png", &["--batch", "8", "--refine", "1"][..]),
        ("b1-refine.png", &["--batch", "1", "--refine", "1"][..]),
    ] {
        let out = tmp(name);
        let r = sample(&out, extra);
        assert!(
            r.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        grids.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(grids[0], grids[1], "batch 2 vs one at a time");
    assert_eq!(grids[0], grids[2], "batch 5 vs one at a time");
    assert_eq!(grids[3], grids[4], "refinement: batch 8 vs one at a time");
    assert_ne!(grids[0], grids[3], "refinement changes the images");
}

#[test]
fn a_bad_batch_is_a_one_line_error() {
    for bad in ["0", "65"] {
        let out = tmp(&format!("bad-{bad}.png"));
        let r = sample(&out, &["--batch", bad]);
        assert_eq!(r.status.code(), Some(2), "--batch {bad}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("--batch"), "{err}");
        assert!(!out.exists());
    }
}

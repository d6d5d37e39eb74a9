//! `srdd-core` links into a `#![no_std]`, `#![no_main]` host binary without libc (`nostd-check/`):
//! a dependency that pulled in `std` would break the link. The binary loads the embedded model,
//! plans a sample and runs two scales in a static arena.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn core_links_and_runs_without_std() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nostd-check");
    let build = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--target-dir"])
        .arg(dir.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo runs");
    assert!(build.success(), "the no_std binary failed to build or link");
    let out = Command::new(dir.join("target/release/srdd-nostd-check"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}: {text}", out.status.code());
    assert!(
        text.contains("srdd-core linked without std: model ok"),
        "{text}"
    );
}

//! The `srdd-tools pack` items of issue #14's "Observed" list that no other CLI test runs through
//! the binary: duplicate class names are refused in one line, and a checkpoint that carries its
//! own schedule (`lvl_1L`, as the official ones do) packs without `--schedule`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Five classes, six scales; its VAR checkpoint keeps the official `lvl_1L` buffer.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-six-scales")
}

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "srdd-tools-observed-{tag}-{}.srdd",
        std::process::id()
    ))
}

/// `srdd-tools pack --var … --vae … -o OUT ARGS` on the fixture.
fn pack(out: &Path, args: &[&str]) -> Output {
    let dir = fixture_dir();
    Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .arg("pack")
        .arg("--var")
        .arg(dir.join("var.safetensors"))
        .arg("--vae")
        .arg(dir.join("vae.safetensors"))
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .expect("run srdd-tools")
}

#[test]
fn pack_refuses_duplicate_class_names_in_one_line() {
    let out = scratch("dup");
    let _ = std::fs::remove_file(&out);
    // Five names for five classes, one of them twice.
    let o = pack(&out, &["--class-names", "cat,dog,cat,bird,frog"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("class_names=cat,dog,cat,bird,frog") && err.contains("a name appears twice"),
        "names the key and the fault: {err}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn pack_takes_the_schedule_from_the_checkpoint_without_a_flag() {
    let out = scratch("nosched");
    let o = pack(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let i = Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .arg("inspect")
        .arg(&out)
        .arg("--json")
        .output()
        .expect("run srdd-tools");
    assert!(i.status.success());
    let v: Value = serde_json::from_slice(&i.stdout).expect("inspect --json is JSON");
    assert_eq!(
        v["config"]["patch_nums"],
        serde_json::json!([1, 2, 3, 4, 6, 8])
    );
    let _ = std::fs::remove_file(&out);
}

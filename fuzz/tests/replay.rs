//! Replays every seed in `fuzz/corpus/<target>/` and every kept reproducer in
//! `fuzz/reproducers/<target>/` through the target bodies on stable: none may panic. Files listed
//! in `fuzz/reproducers/KNOWN.md` (open findings, one `` `target/file` `` per line) are skipped
//! and counted, so a fixed finding is re-checked as soon as its line is removed.

use std::path::{Path, PathBuf};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 5] = [
    ("srdd_model", srdd_fuzz::srdd_model),
    ("pickle", srdd_fuzz::pickle),
    ("pth", srdd_fuzz::pth),
    ("safetensors", srdd_fuzz::safetensors),
    ("png", srdd_fuzz::png),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `target/file` names listed as open findings in KNOWN.md.
fn known() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("reproducers/KNOWN.md")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn corpora_and_reproducers_replay_without_panics() {
    let known = known();
    let (mut ran, mut skipped) = (0, 0);
    for (target, body) in TARGETS {
        let seeds = files(&root().join("corpus").join(target));
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        let repro = files(&root().join("reproducers").join(target));
        for path in seeds.iter().chain(&repro) {
            let name = format!("{target}/{}", path.file_name().unwrap().to_string_lossy());
            if known.contains(&name) {
                println!("skipped (open finding in KNOWN.md): {name}");
                skipped += 1;
                continue;
            }
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{} panicked", path.display());
            ran += 1;
        }
    }
    println!("replayed {ran} inputs, skipped {skipped} known findings");
}

/// The seeds are valid inputs, so the fuzzers start past the format checks.
#[test]
fn seeds_are_accepted() {
    use srdd_tools::checkpoint::{read_state_dict_bytes, Role};
    for dir in ["pth", "safetensors"] {
        for p in files(&root().join("corpus").join(dir)) {
            let bytes = std::fs::read(&p).unwrap();
            let r = read_state_dict_bytes(&bytes, Role::Var);
            assert!(r.is_ok(), "{}: {:?}", p.display(), r.err());
        }
    }
    for p in files(&root().join("corpus/pickle")) {
        if p.to_string_lossy().contains("state-dict") || p.to_string_lossy().contains("nested") {
            let zip = srdd_fuzz::pth_archive(&std::fs::read(&p).unwrap(), &[0; 64]);
            let r = read_state_dict_bytes(&zip, Role::Var);
            assert!(r.is_ok(), "{}: {:?}", p.display(), r.err());
        }
    }
    for p in files(&root().join("corpus/png")) {
        let bytes = std::fs::read(&p).unwrap();
        let r = srdd::decode_png_rgb(bytes.as_slice(), "seed");
        assert!(r.is_ok(), "{}: {:?}", p.display(), r.err());
    }
    // The unmutated built-in model loads.
    let model = srdd_core::aligned::AlignedBytes::new(srdd_fuzz::DEFAULT_MODEL);
    let model = srdd_core::Model::from_bytes(model.as_bytes()).unwrap();
    // ... and the `srdd_model` target's small sampling run completes on it.
    for knobs in [0u8, 13, 40] {
        let r = srdd_fuzz::sample_small(&model, knobs);
        assert!(r.is_ok(), "knobs {knobs}: {r:?}");
    }
}

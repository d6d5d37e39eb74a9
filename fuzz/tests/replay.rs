//! Replays every seed in `fuzz/corpus/<target>/` and every kept reproducer in
//! `fuzz/reproducers/<target>/` through the target bodies on stable: none may panic. Files listed
//! in `fuzz/reproducers/KNOWN.md` (open findings, one `` `target/file` `` per line) are skipped
//! and counted, so a fixed finding is re-checked as soon as its line is removed.

use std::path::{Path, PathBuf};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 6] = [
    ("srdd_model", srdd_fuzz::srdd_model),
    ("pickle", srdd_fuzz::pickle),
    ("pth", srdd_fuzz::pth),
    ("safetensors", srdd_fuzz::safetensors),
    ("png", srdd_fuzz::png),
    ("edit_upscale", srdd_fuzz::edit_upscale),
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

/// `srdd_model` fuzzes the tiny model by default; its seeds and reproducers also run on the
/// built-in model (`SRDD_FUZZ_MODEL=builtin`), which a fuzzing run reaches only when asked.
#[test]
fn srdd_model_inputs_replay_on_the_builtin_model() {
    let known = known();
    let dirs = [
        root().join("corpus/srdd_model"),
        root().join("reproducers/srdd_model"),
    ];
    for path in dirs.iter().flat_map(|d| files(d)) {
        let name = format!("srdd_model/{}", path.file_name().unwrap().to_string_lossy());
        if known.contains(&name) {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let r =
            std::panic::catch_unwind(|| srdd_fuzz::srdd_model_on(srdd_fuzz::Base::Builtin, &data));
        assert!(
            r.is_ok(),
            "{} panicked on the built-in model",
            path.display()
        );
    }
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
    // The unmutated base models (built-in and tiny) load ...
    for base in [srdd_fuzz::builtin_model(), srdd_fuzz::tiny_model()] {
        let model = srdd_core::Model::from_bytes(base.as_bytes()).unwrap();
        assert!(model.weights.encoder.is_some());
        // ... and the `srdd_model` target's small sampling run completes on them.
        for knobs in [0u8, 13, 40, 0x40 | 13] {
            let r = srdd_fuzz::sample_small(&model, knobs);
            assert!(r.is_ok(), "knobs {knobs}: {r:?}");
        }
    }
}

/// The `edit_upscale` seeds get past the input checks: their images (and masks) are the size
/// the chosen model and command need, so the fuzzer starts at the tokenizer.
#[test]
fn edit_upscale_seeds_reach_the_tokenizer() {
    use srdd::zero_shot::{decode_mask, decode_model_image, decode_upscale_image};
    let seeds = files(&root().join("corpus/edit_upscale"));
    let mut reached = 0;
    for p in &seeds {
        let data = std::fs::read(p).unwrap();
        let flags = data[0];
        let base = if flags & 8 != 0 {
            srdd_fuzz::builtin_model()
        } else {
            srdd_fuzz::tiny_model()
        };
        let model = srdd_core::Model::from_bytes(base.as_bytes()).unwrap();
        let n = u16::from_le_bytes([data[10], data[11]]) as usize;
        let (image, mask) = (&data[12..12 + n], &data[12 + n..]);
        let side = model.config.image_side();
        let sched = srdd_core::Schedule::full(&model.config);
        let par = srdd_core::parallel::Sequential;
        let src = if flags & 3 == 3 {
            decode_upscale_image(&model, &sched, image, "seed")
        } else {
            assert!(flags & 3 == 1 || decode_mask(mask, "seed", side).is_ok());
            decode_model_image(&model, image, "seed")
        };
        let src = src.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // Seeds with the "generate" flag run the whole command: it must succeed on them.
        if flags & 16 != 0 {
            let opts = srdd_core::SampleOptions::for_model(&model, 1);
            let mut pol = srdd::ResampleChoice::Keep.instance();
            let r = if flags & 3 == 3 {
                srdd::zero_shot::upscale(
                    &model,
                    opts,
                    &sched,
                    &src,
                    None,
                    &mut *pol,
                    &par,
                    &mut || {},
                )
                .map(|(out, _)| out)
            } else {
                let toks = srdd::zero_shot::tokens_of(&model, &sched, &src, &par).unwrap();
                let keep = vec![0.5; model.config.latent_side().pow(2)];
                srdd::zero_shot::sample_forced(
                    &model,
                    opts,
                    &sched,
                    &toks,
                    &keep,
                    &mut *pol,
                    &par,
                    &mut || {},
                )
            };
            let out = r.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(out.width, side);
        }
        reached += 1;
    }
    assert!(reached >= 6, "only {reached} edit_upscale seeds");
}

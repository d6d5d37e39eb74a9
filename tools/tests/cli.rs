//! The `srdd-tools` command line: one vocabulary with `srdd` (`--schedule`, `--resample`,
//! `-m/--model`, `-o`, `--weights` in any case), the old spellings still accepted, and the
//! schema of `inspect --json`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The built-in model.
fn model() -> PathBuf {
    root().join("models/default-int8.srdd")
}

/// Five classes, six scales.
fn fixture_dir() -> PathBuf {
    root().join("tests/fixtures/tiny-six-scales")
}

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .args(args)
        .output()
        .expect("run srdd-tools")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and requires success; stdout.
fn ok(args: &[&str]) -> String {
    let o = tools(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs and requires the one-line error of a bad request (exit 2); stderr.
fn refused(args: &[&str]) -> String {
    let o = tools(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    err
}

fn inspect_json(path: &Path) -> Value {
    let p = path.to_str().expect("utf-8 path");
    serde_json::from_str(&ok(&["inspect", p, "--json"])).expect("inspect --json is JSON")
}

fn uint(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not a count: {v}"))
}

/// A buffer: name, bytes, and children only when made of others, whose bytes then add up
/// to the buffer's (except where a banded decoder overlays them).
fn check_buffer(b: &Value, what: &str) -> u64 {
    let o = b.as_object().unwrap_or_else(|| panic!("{what}: {b}"));
    let name = o["name"].as_str().unwrap_or_else(|| panic!("{what}: {b}"));
    assert!(
        !name.starts_with(' '),
        "{what}: nesting is structure: {name:?}"
    );
    let bytes = uint(&o["bytes"], what);
    for k in o.keys() {
        assert!(
            ["name", "bytes", "children"].contains(&k.as_str()),
            "{what}: {k}"
        );
    }
    if let Some(c) = o.get("children") {
        let c = c.as_array().unwrap_or_else(|| panic!("{what}: {c}"));
        assert!(!c.is_empty(), "{what}: empty children are left out");
        let sum: u64 = c
            .iter()
            .map(|x| check_buffer(x, &format!("{what}/{name}")))
            .sum();
        if what.contains("banded") {
            // The band decoder's streamed part reuses the latent part's bytes.
            assert!(sum >= bytes, "{what}/{name}: parts {sum} < {bytes}");
        } else {
            assert_eq!(sum, bytes, "{what}/{name}: the parts make the whole");
        }
    }
    bytes
}

#[test]
fn inspect_json_schema() {
    let v = inspect_json(&model());
    let top = v.as_object().expect("object");
    for k in [
        "file_bytes",
        "format_version",
        "config",
        "image_side",
        "metadata",
        "parameters",
        "tensors",
        "arena",
    ] {
        assert!(top.contains_key(k), "missing {k}");
    }
    assert!(!top.contains_key("arena_bytes"), "the flat list is gone");
    assert_eq!(v["config"]["weights"], "int8");
    assert_eq!(v["config"]["attention"], "markov");

    // Metadata: typed values keyed by name.
    let md = v["metadata"].as_object().expect("metadata object");
    assert_eq!(md["default_cfg"].as_f64(), Some(3.0));
    assert_eq!(md["default_top_k"].as_u64(), Some(40));
    assert!(md["default_top_p"].is_number(), "{}", md["default_top_p"]);
    let names = md["class_names"].as_array().expect("class_names array");
    assert_eq!(names.len(), 9);
    assert!(names.iter().all(Value::is_string));
    assert_eq!(names[0], "smileys");
    let policy = md["resample_policy"].as_array().expect("policy array");
    assert_eq!(policy.len(), 4);
    assert!(policy.iter().all(Value::is_number));
    assert!(md["converter"].is_string());

    // Parameters per module, and their total.
    let params = v["parameters"].as_object().expect("parameters object");
    let mut sum = 0;
    for k in [
        "transformer_blocks",
        "embeddings_and_head",
        "vqvae_decoder",
        "vqvae_encoder",
        "quantizer",
    ] {
        let n = uint(&params[k], k);
        assert!(n > 0, "{k}");
        sum += n;
    }
    assert_eq!(uint(&params["total"], "total"), sum);

    // Tensors: each with its storage type in the CLI's words and its layout; their element
    // counts are the parameters.
    let tensors = v["tensors"].as_array().expect("tensors array");
    let mut elements = 0;
    for t in tensors {
        assert!(t["name"].is_string(), "{t}");
        let dtype = t["dtype"].as_str().expect("dtype");
        assert!(["int8", "i8a16", "f16", "f32"].contains(&dtype), "{t}");
        let layout = t["layout"].as_str().expect("layout");
        let panels = dtype == "int8" || dtype == "i8a16";
        assert_eq!(layout.starts_with("panels"), panels, "{t}");
        assert!(layout == "plain" || panels, "{t}");
        let shape = t["shape"].as_array().expect("shape");
        elements += shape.iter().map(|d| uint(d, "dim")).product::<u64>();
        for k in ["offset", "bytes", "scales_offset"] {
            uint(&t[k], k);
        }
    }
    assert_eq!(elements, sum);
    assert!(tensors.iter().any(|t| t["dtype"] == "int8"));
    // The built-in model's plan: every int8 Linear with two-pass activations (docs/MODEL.md).
    assert!(tensors.iter().any(|t| t["dtype"] == "i8a16"));

    // Arena: one object per operation, its buffers nested.
    let arena = v["arena"].as_array().expect("arena array");
    let ops: Vec<&str> = arena
        .iter()
        .map(|o| o["operation"].as_str().expect("operation"))
        .collect();
    for want in ["sample markov cfg", "sample causal no-cfg", "decode only"] {
        assert!(ops.contains(&want), "{want} in {ops:?}");
    }
    for op in arena {
        let name = op["operation"].as_str().unwrap_or_default();
        let bytes = uint(&op["bytes"], name);
        uint(&op["kv_cache_bytes"], name);
        let buffers = op["buffers"].as_array().expect("buffers array");
        let sizes: Vec<u64> = buffers
            .iter()
            .map(|b| check_buffer(b, &format!("{name}/{}", b["name"])))
            .collect();
        if name.starts_with("sample") {
            // persistent + max(per-scale step scratch, decoder scratch)
            assert_eq!(sizes.len(), 3, "{name}");
            assert_eq!(buffers[0]["name"], "persistent");
            assert_eq!(bytes, sizes[0] + sizes[1].max(sizes[2]), "{name}");
            assert!(buffers[0]["children"].is_array(), "{name}");
            // The decoder scratch holds the decoder's own buffers one level further down.
            let dec = &buffers[2]["children"][0]["children"];
            assert!(dec.as_array().is_some_and(|d| !d.is_empty()), "{name}");
        }
    }
    let markov_cfg = &arena[ops.iter().position(|&o| o == "sample markov cfg").unwrap()];
    assert_eq!(uint(&markov_cfg["kv_cache_bytes"], "kv"), 0);
}

#[test]
fn inspect_takes_the_model_positionally_or_with_m() {
    let m = model();
    let m = m.to_str().unwrap();
    let text = ok(&["inspect", m]);
    assert_eq!(ok(&["inspect", "-m", m]), text);
    assert_eq!(ok(&["inspect", "--model", m]), text);
    assert!(text.contains("weights: int8"), "{text}");
    assert!(!text.contains("Int8") && !text.contains(" I8 "), "{text}");
    let err = refused(&["inspect", m, "-m", m]);
    assert!(err.contains("given twice"), "{err}");
    let err = refused(&["inspect"]);
    assert!(err.contains("no model given"), "{err}");
    let help = ok(&["inspect", "--help"]);
    assert!(
        help.contains("-m, --model") && help.contains("Example"),
        "{help}"
    );
}

#[test]
fn parity_takes_the_fixture_positionally_or_with_fixture() {
    let missing = "/nonexistent/srdd-fixture";
    let a = refused(&["parity", missing]);
    let b = refused(&["parity", "--fixture", missing, "--weights", "INT8"]);
    assert_eq!(a, b);
    assert!(a.contains(missing), "{a}");
    let err = refused(&["parity", missing, "--fixture", missing]);
    assert!(err.contains("given twice"), "{err}");
    let dir = fixture_dir();
    let dir = dir.to_str().unwrap();
    let report = ok(&["parity", dir]);
    assert!(report.contains(" passed, 0 failed"), "{report}");
    assert_eq!(
        ok(&["parity", "--fixture", dir, "--weights", "F32"]),
        report
    );
    let help = ok(&["parity", "--help"]);
    assert!(
        help.contains("[FIXTURE]") && help.contains("Example"),
        "{help}"
    );
}

#[test]
fn pack_help_uses_the_shared_vocabulary() {
    let help = ok(&["pack", "--help"]);
    for want in [
        "--schedule",
        "--resample ",
        "-o, --output",
        "[default: f32]",
        "[default: full]",
        "Default: none",
        "Example",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    let err = stderr(&tools(&["pack", "--weights", "int4", "-o", "x"]));
    assert!(err.contains("int8") && err.contains("f16"), "{err}");
}

/// Packs the fixture with `args` and returns the file.
fn pack(args: &[&str], tag: &str) -> Vec<u8> {
    let dir = fixture_dir();
    let out =
        std::env::temp_dir().join(format!("srdd-tools-cli-{tag}-{}.srdd", std::process::id()));
    let var = dir.join("var.safetensors");
    let vae = dir.join("vae.safetensors");
    let mut all = vec![
        "pack",
        "--var",
        var.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    ok(&all);
    let v = inspect_json(&out);
    assert_eq!(v["config"]["weights"], "int8", "{tag}");
    assert_eq!(
        v["config"]["patch_nums"],
        serde_json::json!([1, 2, 3, 4, 6, 8])
    );
    let policy = v["metadata"]["resample_policy"].as_array().expect("policy");
    assert_eq!(policy[0].as_f64(), Some(-3.5), "{tag}");
    let bytes = std::fs::read(&out).expect("packed file");
    let _ = std::fs::remove_file(&out);
    bytes
}

#[test]
fn pack_accepts_new_and_old_spellings_alike() {
    const POLICY: &str = "-3.5,0.3,1.1,-1.4";
    let new = pack(
        &[
            "--schedule",
            "1,2,3,4,6,8",
            "--resample",
            POLICY,
            "--weights",
            "INT8",
        ],
        "new",
    );
    let old = pack(
        &[
            "--patch-nums",
            "1,2,3,4,6,8",
            "--resample-policy",
            POLICY,
            "--weights",
            "int8",
        ],
        "old",
    );
    assert!(new == old, "the same request gives the same file");
    let mixed = pack(
        &[
            "--schedule",
            "1,2,3,4,6,8",
            "--resample",
            POLICY,
            "--weights",
            "Int8",
        ],
        "mixed",
    );
    assert!(mixed == new);
    let err = refused(&[
        "pack",
        "--var",
        "a",
        "--vae",
        "b",
        "-o",
        "c",
        "--resample",
        "1,2",
    ]);
    assert!(err.contains("--resample 1,2"), "{err}");
}

/// `pack --fake-quant`: an int8 file's rounded weights stored as f32 (the plan's kept weights as
/// kept), refused without `--weights int8` or with `--max-growth`.
#[test]
fn pack_fake_quant_stores_every_int8_weight_as_f32() {
    let args = [
        "--schedule",
        "1,2,3,4,6,8",
        "--resample",
        "-3.5,0.3,1.1,-1.4",
    ];
    let plain = pack(&[&args[..], &["--weights", "int8"]].concat(), "fq-plain");
    let fake = pack(
        &[
            &args[..],
            &["--weights", "int8", "--fake-quant", "--keep", "head.weight"],
        ]
        .concat(),
        "fq",
    );
    let dir = std::env::temp_dir().join(format!("srdd-tools-cli-fq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p, f) = (dir.join("plain.srdd"), dir.join("fake.srdd"));
    std::fs::write(&p, &plain).unwrap();
    std::fs::write(&f, &fake).unwrap();
    let count = |path: &Path, format: &str| {
        inspect_json(path)["precision_plan"]["formats"]
            .as_array()
            .expect("formats")
            .iter()
            .find(|e| e["format"] == format)
            .and_then(|e| e["weights"].as_u64())
            .expect("a count per format")
    };
    let all = count(&p, "int8");
    assert!(all > 20, "{all} int8 weights");
    assert_eq!(count(&f, "int8"), 0);
    assert_eq!(count(&f, "f16"), 1);
    assert_eq!(count(&f, "f32"), all - 1);
    let _ = std::fs::remove_dir_all(&dir);
    let fixture = fixture_dir();
    let (var, vae) = (fixture.join("var.pth"), fixture.join("vae.pth"));
    let base = [
        "pack",
        "--var",
        var.to_str().unwrap(),
        "--vae",
        vae.to_str().unwrap(),
        "-o",
        "never-written.srdd",
        "--fake-quant",
    ];
    let err = refused(&[&base[..], &["--weights", "f16"]].concat());
    assert!(err.contains("--weights int8"), "{err}");
    let err = refused(&[&base[..], &["--weights", "int8", "--max-growth", "5%"]].concat());
    assert!(err.contains("--max-growth"), "{err}");
    assert!(!Path::new("never-written.srdd").exists());
}

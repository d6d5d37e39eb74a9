//! `srdd-tools pack` validates the metadata the engine reads against the model, and names a
//! swapped `--vae`/`--var` pair: as a library call and through the CLI.

use srdd_core::aligned::AlignedBytes;
use srdd_core::{Model, SampleOptions, WeightFormat};
use srdd_tools::checkpoint::{read_state_dict, Role, StateDict};
use srdd_tools::convert::{pack, ConvertError, PackOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Five classes, six scales.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-six-scales")
}

const PATCH_NUMS: [u16; 6] = [1, 2, 3, 4, 6, 8];
const NAMES: &str = "cat,dog,fish,bird,frog";

fn state_dicts() -> (StateDict, StateDict) {
    let read = |stem: &str, role| {
        let p = fixture_dir().join(format!("{stem}.safetensors"));
        read_state_dict(&p, role).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    (read("var", Role::Var), read("vae", Role::Vae))
}

fn options(meta: &[(&str, &str)]) -> PackOptions {
    PackOptions {
        weights: WeightFormat::F32,
        patch_nums: Some(PATCH_NUMS.to_vec()),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..PackOptions::default()
    }
}

/// Packs the fixture with `meta`.
fn pack_with(meta: &[(&str, &str)]) -> Result<Vec<u8>, ConvertError> {
    let (var, vae) = state_dicts();
    pack(&var, &vae, &options(meta))
}

/// Packing with `key=value` must fail with a metadata error naming `key`; returns its message.
fn refused(key: &str, value: &str) -> String {
    match pack_with(&[(key, value)]) {
        Err(e @ ConvertError::Metadata { .. }) => {
            let msg = e.to_string();
            let ConvertError::Metadata {
                key: k, value: v, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((k.as_str(), v.as_str()), (key, value), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
        other => panic!("{key}={value}: {:?}", other.map(|b| b.len())),
    }
}

fn vocab() -> u32 {
    let bytes = AlignedBytes::new(&pack_with(&[]).expect("pack"));
    let vocab = Model::from_bytes(bytes.as_bytes())
        .expect("load")
        .config
        .vae
        .vocab_size;
    vocab
}

#[test]
fn class_names_must_name_every_class_once() {
    let msg = refused("class_names", "a,b");
    assert!(
        msg.contains("2 given") && msg.contains("5 classes"),
        "{msg}"
    );
    refused("class_names", "a,b,c,d,e,f");
    refused("class_names", "cat,dog,fish,bird,Cat");
    refused("class_names", "cat,dog,,bird,frog");
    refused("class_names", "cat,dog, ,bird,frog");
    refused("class_names", "cat,dog,7,bird,frog");
    refused("class_names", "cat,dog,null,bird,frog");
    let bytes = AlignedBytes::new(&pack_with(&[("class_names", NAMES)]).expect("five names"));
    let model = Model::from_bytes(bytes.as_bytes()).expect("load");
    assert_eq!(model.config.var.num_classes, 5);
    assert_eq!(model.class_index("frog"), Some(4));
}

#[test]
fn sampling_defaults_must_parse_and_be_in_the_samplers_ranges() {
    for bad in ["abc", "-5", "1000.5", "NaN", "inf", ""] {
        let msg = refused("default_cfg", bad);
        assert!(msg.contains("[0, 1000]"), "{msg}");
    }
    let v = vocab();
    for bad in ["x", "-1", "1.5", &(v + 1).to_string()] {
        let msg = refused("default_top_k", bad);
        assert!(msg.contains(&format!("vocab_size = {v}")), "{msg}");
    }
    for bad in ["1.01", "-0.1", "half"] {
        let msg = refused("default_top_p", bad);
        assert!(msg.contains("[0, 1]"), "{msg}");
    }
    for bad in ["1,2,3", "1,2,3,4,5", "1,2,3,x", "1,2,3,inf"] {
        let msg = refused("resample_policy", bad);
        assert!(msg.contains("4 comma-separated"), "{msg}");
    }
    // The bounds themselves are accepted, and a model's defaults then pass the sampler's check.
    let top_k = v.to_string();
    let bytes = pack_with(&[
        ("default_cfg", "1000"),
        ("default_top_k", &top_k),
        ("default_top_p", "1"),
        ("resample_policy", "-3.5,0.3,1.1,-1.4"),
    ])
    .expect("values at the bounds");
    let bytes = AlignedBytes::new(&bytes);
    let model = Model::from_bytes(bytes.as_bytes()).expect("load");
    let opts = SampleOptions::for_model(&model, 0);
    assert_eq!((opts.cfg, opts.top_k, opts.top_p), (1000.0, v, 1.0));
    opts.validate(&model.config)
        .expect("stored defaults are valid options");
    let bytes = pack_with(&[("default_cfg", "0")]).expect("no guidance");
    let bytes = AlignedBytes::new(&bytes);
    Model::from_bytes(bytes.as_bytes()).expect("load");
}

#[test]
fn a_metadata_key_given_twice_is_refused() {
    for (meta, want) in [
        (&[("default_cfg", "2"), ("default_cfg", "3")][..], "twice"),
        (&[("converter", "me")][..], "itself"),
    ] {
        match pack_with(meta) {
            Err(ConvertError::Value(k, what)) => {
                assert_eq!(k, meta[0].0);
                assert!(what.contains(want), "{what}");
            }
            other => panic!("{meta:?}: {:?}", other.map(|b| b.len())),
        }
    }
}

#[test]
fn swapped_checkpoints_are_named() {
    let (var, vae) = state_dicts();
    match pack(&vae, &var, &options(&[])) {
        Err(e @ ConvertError::Swapped) => assert_eq!(
            e.to_string(),
            "--var looks like a VQVAE checkpoint and --vae like a VAR one; swap them"
        ),
        other => panic!("{:?}", other.map(|b| b.len())),
    }
}

/// Runs `srdd-tools pack` on the fixture with `args` into a scratch file; (exit code, stderr).
fn cli_pack(var: &str, vae: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = fixture_dir();
    let out = std::env::temp_dir().join(format!("srdd-tools-pack-{}.srdd", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_srdd-tools"))
        .arg("pack")
        .arg("--var")
        .arg(dir.join(var))
        .arg("--vae")
        .arg(dir.join(vae))
        .args(["--schedule", "1,2,3,4,6,8", "-o"])
        .arg(&out)
        .args(args)
        .output()
        .expect("run srdd-tools");
    let _ = std::fs::remove_file(&out);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_refuses_bad_metadata_and_swapped_files_in_one_line() {
    for (args, want) in [
        (&["--class-names", "a,b"][..], "class_names=a,b"),
        (&["--meta", "default_cfg=abc"][..], "default_cfg=abc"),
        (&["--meta", "default_cfg=-5"][..], "[0, 1000]"),
    ] {
        let (code, err) = cli_pack("var.safetensors", "vae.safetensors", args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, err) = cli_pack("vae.safetensors", "var.safetensors", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("swap them"), "{err}");
    let (code, err) = cli_pack(
        "var.safetensors",
        "vae.safetensors",
        &["--class-names", NAMES, "--meta", "default_cfg=2.5"],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn the_schedule_comes_from_the_checkpoints_lvl_1l_and_else_the_error_names_the_flag() {
    let (var, vae) = state_dicts();
    assert!(
        var.get("lvl_1L").is_some(),
        "the fixture keeps the official buffer"
    );
    let no_schedule = PackOptions {
        patch_nums: None,
        ..options(&[])
    };
    let bytes = pack(&var, &vae, &no_schedule).expect("packs without --schedule");
    let b = AlignedBytes::new(&bytes);
    let m = Model::from_bytes(b.as_bytes()).unwrap();
    assert_eq!(m.config.patch_nums.as_slice(), &PATCH_NUMS);
    // Without the buffer the official schedule does not fit six scales: the error says what to
    // pass.
    let mut stripped = StateDict::new();
    for (k, t) in var.iter() {
        if k != "lvl_1L" {
            stripped.insert(k, t.clone());
        }
    }
    let e = pack(&stripped, &vae, &no_schedule).unwrap_err().to_string();
    assert!(e.contains("pass --schedule with 6 patch sizes"), "{e}");
}

//! The precision plan (`srdd-tools pack --keep`): matching Linear/Conv weights of an int8 file are
//! stored in f16 or f32, the file records each tensor's format, the engine runs the mixture, and a
//! rule that is malformed, matches nothing or is not more precise than the file is refused.

mod common;

use common::state_dicts;
use srdd_core::aligned::AlignedBytes;
use srdd_core::format::TensorDType;
use srdd_core::{Model, WeightFormat};
use srdd_tools::convert::{pack, ConvertError, KeepRule, PackOptions};
use srdd_tools::quant_report::OptionRow;

fn packed(weights: WeightFormat, keep: &[&str]) -> Result<Vec<u8>, ConvertError> {
    let (var, vae) = state_dicts();
    let opts = PackOptions {
        weights,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        keep: keep
            .iter()
            .map(|k| KeepRule::parse(k))
            .collect::<Result<_, _>>()?,
        ..PackOptions::default()
    };
    pack(&var, &vae, &opts)
}

/// Every tensor's name and stored type.
fn dtypes(bytes: &[u8]) -> Vec<(String, TensorDType)> {
    common::entries(bytes)
        .into_iter()
        .map(|(name, dtype, _)| (name, dtype))
        .collect()
}

#[test]
fn kept_weights_are_stored_as_asked_and_the_engine_loads_the_mixture() {
    let plain = packed(WeightFormat::Int8, &[]).unwrap();
    let mixed = packed(
        WeightFormat::Int8,
        &[
            "head.weight=f32",
            "blocks.*.ffn.fc2.weight",
            "decoder.conv_out.weight",
        ],
    )
    .unwrap();
    let (a, b) = (dtypes(&plain), dtypes(&mixed));
    assert_eq!(a.len(), b.len());
    let mut changed = Vec::new();
    for ((name, da), (name_b, db)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        if da != db {
            assert_eq!(*da, TensorDType::I8, "{name}: only int8 weights change");
            changed.push((name.clone(), *db));
        }
    }
    let fc2: Vec<_> = changed
        .iter()
        .filter(|(n, _)| n.ends_with("ffn.fc2.weight"))
        .collect();
    assert!(!fc2.is_empty());
    assert!(fc2.iter().all(|(_, d)| *d == TensorDType::F16));
    assert!(changed.contains(&("head.weight".into(), TensorDType::F32)));
    assert!(changed.contains(&("decoder.conv_out.weight".into(), TensorDType::F16)));
    assert_eq!(changed.len(), fc2.len() + 2, "{changed:?}");
    for bytes in [&plain, &mixed] {
        let ab = AlignedBytes::new(bytes);
        let m = Model::from_bytes(ab.as_bytes()).expect("the mixture loads");
        assert_eq!(m.config.weights, WeightFormat::Int8);
    }
}

#[test]
fn the_last_matching_rule_wins() {
    let bytes = packed(WeightFormat::Int8, &["blocks.*=f32", "blocks.0.*=f16"]).unwrap();
    for (name, d) in dtypes(&bytes) {
        if name.starts_with("blocks.0.") && name.ends_with(".weight") && !name.contains("ada_lin") {
            assert_eq!(d, TensorDType::F16, "{name}");
        } else if name.starts_with("blocks.1.") && name.ends_with("fc1.weight") {
            assert_eq!(d, TensorDType::F32, "{name}");
        }
    }
}

#[test]
fn bad_rules_are_refused_in_one_line() {
    let refused = |w, keep: &[&str], needle: &str| {
        let e = packed(w, keep).expect_err("refused");
        let msg = e.to_string();
        assert!(matches!(e, ConvertError::Keep(_)), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    };
    refused(
        WeightFormat::Int8,
        &["head.weight=int4"],
        "not f16, f32 or a16",
    );
    refused(WeightFormat::Int8, &["=f16"], "empty tensor name");
    refused(WeightFormat::Int8, &["nope.*"], "matches no quantizable");
    // Norms and biases are float already; Phi convs always stay f32.
    refused(WeightFormat::Int8, &["blocks.0.ffn.fc1.bias"], "matches no");
    refused(WeightFormat::F16, &["head.weight=f16"], "not more precise");
    refused(WeightFormat::F32, &["head.weight=f32"], "not more precise");
    // Two-pass activations are an int8 Linear's: not for float files, not for convs.
    refused(WeightFormat::F16, &["head.weight=a16"], "need int8 weights");
    refused(
        WeightFormat::Int8,
        &["decoder.conv_out.weight=a16"],
        "matches no",
    );
}

/// `--keep NAME=a16`: the Linear weights stay int8 byte for byte (only their dtype tag says
/// two-pass activations), convs are passed over, and the forced run reaches the accuracy of
/// the same int8 weights with f32 activations (the "int8 weights only" file), well below plain
/// int8's error.
#[test]
fn two_pass_activations_cost_no_bytes_and_reach_the_weights_only_accuracy() {
    let (var, vae) = state_dicts();
    let opts = |weights, keep: &[&str], fake_quant| PackOptions {
        weights,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        keep: keep.iter().map(|k| KeepRule::parse(k).unwrap()).collect(),
        fake_quant,
        ..PackOptions::default()
    };
    let int8 = pack(&var, &vae, &opts(WeightFormat::Int8, &[], false)).unwrap();
    let a16 = pack(&var, &vae, &opts(WeightFormat::Int8, &["*=a16"], false)).unwrap();
    let fake = pack(&var, &vae, &opts(WeightFormat::Int8, &[], true)).unwrap();
    let float = pack(&var, &vae, &opts(WeightFormat::F32, &[], false)).unwrap();
    assert_eq!(a16.len(), int8.len());
    let (ei, ea) = (common::entries(&int8), common::entries(&a16));
    let mut two_pass = 0;
    for ((name, ti, shape), (_, ta, _)) in ei.iter().zip(&ea) {
        let linear = *ti == TensorDType::I8 && shape.len() == 2;
        let want = if linear { TensorDType::I8A16 } else { *ti };
        assert_eq!(*ta, want, "{name}");
        two_pass += linear as usize;
    }
    assert!(two_pass >= 5, "{two_pass} Linears");
    assert!(ea.contains(&(
        "head.weight".into(),
        TensorDType::I8A16,
        ei.iter().find(|e| e.0 == "head.weight").unwrap().2.clone()
    )));
    let load = |b: &[u8]| AlignedBytes::new(b);
    let (f, i, a, w) = (load(&float), load(&int8), load(&a16), load(&fake));
    // Mean KL over every token, as `quant-report --compare` pools it.
    let kl = |r: &srdd_tools::quant_report::Report| OptionRow::of("", r, None).kl_mean;
    let (k_int8, k_a16, k_weights) = (
        kl(&common::compare(&f, &i, 4)),
        kl(&common::compare(&f, &a, 4)),
        kl(&common::compare(&f, &w, 4)),
    );
    assert!(k_a16 < 0.6 * k_int8, "a16 KL {k_a16:e}, int8 {k_int8:e}");
    assert!(
        (k_a16 - k_weights).abs() < 0.05 * k_weights,
        "a16 KL {k_a16:e}, weights only {k_weights:e}"
    );
}

#[test]
fn glob_patterns_match_runs_of_characters() {
    let r = KeepRule::parse("blocks.*.attn.*").unwrap();
    assert!(r.matches("blocks.12.attn.mat_qkv.weight"));
    assert!(!r.matches("blocks.1.ffn.fc1.weight"));
    assert!(KeepRule::parse("*").unwrap().matches("anything"));
    assert!(KeepRule::parse("a*b*c").unwrap().matches("aXbYbc"));
    assert!(!KeepRule::parse("a*b*c").unwrap().matches("aXbYb"));
    assert_eq!(
        KeepRule::parse("x").unwrap().format,
        WeightFormat::F16,
        "f16 by default"
    );
}

/// `PackOptions::fake_quant` (quant-report's "int8 weights only" row): every weight the int8 file
/// quantizes is stored as f32 holding exactly the int8 value `q · scale` the GEMM multiplies by,
/// kept weights stay as the plan keeps them, and everything else is the f32 file's.
#[test]
fn fake_quant_stores_the_int8_values_as_f32() {
    use srdd_tools::quant_report::tensor_errors;
    let (var, vae) = state_dicts();
    let opts = |weights, fake_quant| PackOptions {
        weights,
        patch_nums: Some(vec![1, 2, 3, 4, 6, 8]),
        keep: match weights {
            WeightFormat::Int8 => vec![KeepRule::parse("head.weight").unwrap()],
            _ => Vec::new(),
        },
        fake_quant,
        ..PackOptions::default()
    };
    let int8 = pack(&var, &vae, &opts(WeightFormat::Int8, false)).unwrap();
    let fake = pack(&var, &vae, &opts(WeightFormat::Int8, true)).unwrap();
    let float = pack(&var, &vae, &opts(WeightFormat::F32, false)).unwrap();
    let (di, df) = (dtypes(&int8), dtypes(&fake));
    let mut rounded = 0;
    for ((name, ti), (name_f, tf)) in di.iter().zip(&df) {
        assert_eq!(name, name_f);
        match ti {
            TensorDType::I8 => {
                assert_eq!(*tf, TensorDType::F32, "{name}");
                rounded += 1;
            }
            other => assert_eq!(tf, other, "{name}"),
        }
    }
    assert!(rounded > 20, "{rounded} rounded weights");
    // Equal to the int8 file's dequantized panels, bit for bit.
    for e in tensor_errors(&fake, &int8).unwrap() {
        assert_eq!(e.rmse, 0.0, "{}", e.name);
    }
    // And really rounded: the int8 (and the kept f16) weights differ from the float ones, the
    // rest do not.
    let errs = tensor_errors(&float, &fake).unwrap();
    for e in &errs {
        let rounded = di
            .iter()
            .any(|(n, t)| n == &e.name && *t != TensorDType::F32);
        assert_eq!(e.rmse > 0.0, rounded, "{}: rmse {}", e.name, e.rmse);
    }
    // The engine runs it as an f32-activation model.
    let bytes = AlignedBytes::new(&fake);
    Model::from_bytes(bytes.as_bytes()).expect("loads");
    // Without int8 weights there is nothing to round.
    assert_eq!(
        pack(&var, &vae, &opts(WeightFormat::F32, true)).unwrap(),
        float
    );
}

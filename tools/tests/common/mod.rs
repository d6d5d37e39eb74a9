//! Helpers shared by the tools' tests that pack the tiny fixture in memory.
#![allow(dead_code)]

use srdd_core::aligned::AlignedBytes;
use srdd_core::format::{parse, TensorDType, TensorEntry};
use srdd_core::parallel::Sequential;
use srdd_core::Model;
use srdd_tools::checkpoint::{read_state_dict, Role, StateDict};
use srdd_tools::quant_report::{report, Report};
use std::path::{Path, PathBuf};

/// `tests/fixtures/tiny-six-scales` (five classes, six scales).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-six-scales")
}

/// Its VAR and VQVAE state dicts (the `.safetensors` pair).
pub fn state_dicts() -> (StateDict, StateDict) {
    let read = |stem: &str, role| {
        let p = fixture().join(format!("{stem}.safetensors"));
        read_state_dict(&p, role).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    (read("var", Role::Var), read("vae", Role::Vae))
}

/// `b` teacher-forced against `a` on `calib` calibration images.
pub fn compare(a: &AlignedBytes, b: &AlignedBytes, calib: usize) -> Report {
    let fa = Model::from_bytes(a.as_bytes()).expect("loads");
    let fb = Model::from_bytes(b.as_bytes()).expect("loads");
    report(&fa, &fb, calib, &Sequential).expect("reports")
}

/// Within f32 rounding: every greedy choice kept and every probed activation (embedded input,
/// each block's output, the logits) at ≥ 100 dB SQNR (a relative error ≤ 1e-5; int8 gives about
/// 40 dB here, a wrong row, bias or AdaLN vector far less).
pub fn assert_same(r: &Report, what: &str) {
    for l in &r.layers {
        assert!(
            l.sqnr_db() >= 100.0,
            "{what}: {} at {:.1} dB",
            l.name,
            l.sqnr_db()
        );
    }
    for (k, s) in r.scales.iter().enumerate() {
        assert_eq!(s.top1, s.tokens, "{what}: step {k} top-1");
        assert!(s.kl_max <= 1e-9, "{what}: step {k} KL {:e}", s.kl_max);
    }
}

/// Every tensor of a packed file: name, stored type and shape, in file order.
pub fn entries(bytes: &[u8]) -> Vec<(String, TensorDType, Vec<u32>)> {
    let file = parse(bytes).expect("parses");
    let mut table = file.table;
    (0..file.header.tensor_count)
        .map(|_| {
            let (e, rest) = postcard::take_from_bytes::<TensorEntry<'_>>(table).unwrap();
            table = rest;
            (e.name.to_string(), e.dtype, e.shape.to_vec())
        })
        .collect()
}

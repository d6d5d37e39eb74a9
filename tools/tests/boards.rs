//! `srdd-tools inspect --board`: the constants behind the board table match the built-in model,
//! and the table's verdicts follow from the model's exact arena.

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Plan, SampleOptions};
use srdd_core::{Model, Schedule};
use srdd_tools::boards::{self, BUILTIN_MACS, STACK_BYTES};
use std::path::PathBuf;
use std::process::Command;

fn builtin() -> AlignedBytes {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default-int8.srdd");
    AlignedBytes::read(&p).unwrap()
}

#[test]
fn builtin_macs_match_the_model() {
    let bytes = builtin();
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    assert_eq!(boards::firmware_macs(&model), BUILTIN_MACS);
}

#[test]
fn every_board_uses_the_exact_arena_and_the_measured_counts() {
    let bytes = builtin();
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let cfg = &model.config;
    let arena = Plan::new(
        cfg,
        &SampleOptions::for_model_low_memory(&model, 0),
        &Schedule::full(cfg),
    )
    .unwrap()
    .arena_bytes() as u64;
    for b in &boards::BOARDS {
        let f = boards::fit(&model, bytes.as_bytes().len() as u64, b).unwrap();
        assert_eq!(f.arena, arena, "{}", b.name);
        assert_eq!(f.ram_needed, arena + STACK_BYTES);
        assert_eq!(f.ram_ok(), arena + STACK_BYTES <= b.ram_block_bytes);
        if b.kind == boards::CoreKind::ArmDsp {
            assert_eq!(
                f.instructions,
                Some((boards::M4_INSTRUCTIONS_DSP, boards::M4_INSTRUCTIONS_SCALAR))
            );
        } else {
            assert_eq!(f.instructions, None);
        }
    }
    // A 2 MB model plus code does not fit 1 MiB of internal flash.
    let nrf = boards::fit(
        &model,
        bytes.as_bytes().len() as u64,
        boards::find("nrf5340").unwrap(),
    )
    .unwrap();
    assert!(!nrf.flash_ok() && nrf.ram_ok());
}

#[test]
fn cli_prints_the_table_and_refuses_an_unknown_board() {
    let bin = env!("CARGO_BIN_EXE_srdd-tools");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default-int8.srdd");
    let out = Command::new(bin)
        .args(["inspect", "--board", "all"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for b in &boards::BOARDS {
        assert!(text.contains(&format!("`{}`", b.name)), "{text}");
    }
    let out = Command::new(bin)
        .args(["inspect", "--board", "esp32", "--json"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown board 'esp32'"), "{err}");
    let out = Command::new(bin)
        .args(["inspect", "--board", "rp2350", "--json"])
        .arg(&model)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["board"], "rp2350");
    assert_eq!(v[0]["ram_ok"], true);
}

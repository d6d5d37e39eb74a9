//! The Cortex-M4 proof: the firmware in `firmware/` samples one image with the embedded default
//! model under QEMU (`mps2-an386`) and prints the RGB8 image's FNV-1a-64 checksum; the host int8
//! path must produce the same checksum for the same file and options.
//!
//! Needs the `thumbv7em-none-eabihf` target and `qemu-system-arm` (`.ci/run` installs both).
//! Without them the test is skipped locally and fails loudly when `CI=true`.

use srdd_core::aligned::AlignedBytes;
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::parallel::StdThreads;
use srdd_core::{Model, NoHook, Schedule};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn host_checksum(class: u32, seed: u64) -> u64 {
    let bytes = AlignedBytes::read(&root().join("models/default-int8.srdd")).unwrap();
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let mut opts = SampleOptions::new(class);
    opts.seed = seed;
    opts.top_k = opts.top_k.min(model.config.vae.vocab_size);
    let sched = Schedule::full(&model.config);
    let plan = Plan::new(&model.config, &opts, &sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    // Threads on the host: the result must not depend on them either.
    let par = StdThreads(2);
    let mut gen =
        Generator::with_parallel(&model, opts, sched, arena.as_bytes_mut(), &par).unwrap();
    gen.run(&mut NoHook).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    gen.decode(&mut |_, row| {
        for v in row {
            h = (h ^ srdd_core::vae::to_rgb8(*v) as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    })
    .unwrap();
    h
}

#[test]
fn firmware_checksum_equals_the_host_int8_path() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let target_ok = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("thumbv7em-none-eabihf"))
        .unwrap_or(false);
    let qemu_ok = have("qemu-system-arm", "--version");
    if !(target_ok && qemu_ok) {
        let msg = format!("firmware test needs the thumbv7em-none-eabihf target ({target_ok}) and qemu-system-arm ({qemu_ok})");
        assert!(!ci, "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let fw = root().join("firmware");
    let build = Command::new(env!("CARGO"))
        .current_dir(&fw)
        .args(["build", "--release", "--target-dir"])
        .arg(fw.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(build.success(), "firmware build failed");
    let elf = fw.join("target/thumbv7em-none-eabihf/release/srdd-firmware");
    let out = Command::new("timeout")
        .args([
            "900",
            "qemu-system-arm",
            "-cpu",
            "cortex-m4",
            "-machine",
            "mps2-an386",
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
        ])
        .arg(&elf)
        .output()
        .expect("qemu runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "firmware failed under QEMU:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("checksum=0x"))
        .unwrap_or_else(|| panic!("no checksum in:\n{text}"));
    let fw_sum = u64::from_str_radix(line.trim_start_matches("checksum=0x").trim(), 16).unwrap();
    let host_sum = host_checksum(3, 0);
    eprintln!("firmware {fw_sum:#018x}, host {host_sum:#018x}");
    assert_eq!(fw_sum, host_sum, "Cortex-M4 and host int8 images differ");
}

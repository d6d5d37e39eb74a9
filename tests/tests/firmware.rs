//! The Cortex-M4 proof: the firmware in `firmware/` samples one image with the embedded default
//! model under QEMU (`mps2-an386`), with the model's own sampling defaults and the low-memory
//! plan, and prints the RGB8 image's FNV-1a-64 checksum; the PNG of `srdd sample --class 3
//! --seed 0` (default chunk, whole-image decoder, threads, SIMD kernels) must have the same.
//!
//! The firmware's DSP kernels (`Isa::ArmDsp`, active there) must equal the scalar reference:
//! its `kernels` binary compares them on the Cortex-M4 itself (the host cannot run Arm code).
//!
//! The same two checks run on the Cortex-M55 (`mps3-an547`, `Isa::ArmMve`, Helium).
//!
//! Needs the `thumbv7em-none-eabihf` and `thumbv8m.main-none-eabihf` targets and
//! `qemu-system-arm` (`scripts/test-all`, which `.ci/run` calls, installs them). Without them the
//! tests are skipped locally and fail loudly when `CI=true`.

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

fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h = (*h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// The image's checksum through the host library, sampled as one batch of one on two threads
/// with the model's own defaults (the default chunk and whole-image decoder).
fn host_checksum(class: u32, seed: u64) -> u64 {
    let bytes = AlignedBytes::read(&root().join("models/default-int8.srdd")).unwrap();
    let model = Model::from_bytes(bytes.as_bytes()).unwrap();
    let mut opts = SampleOptions::for_model(&model, class);
    opts.seed = seed;
    let sched = Schedule::full(&model.config);
    let plan = Plan::new(&model.config, &opts, &sched).unwrap();
    let mut arena = AlignedBytes::zeroed(plan.arena_bytes());
    let par = StdThreads(2);
    let mut gen =
        Generator::with_parallel(&model, opts, sched, arena.as_bytes_mut(), &par).unwrap();
    gen.run(&mut NoHook).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    gen.decode(&mut |_, row| {
        let rgb: Vec<u8> = row.iter().map(|v| srdd_core::vae::to_rgb8(*v)).collect();
        fnv1a(&mut h, &rgb);
    })
    .unwrap();
    h
}

/// The `srdd` binary next to this test's (same profile), built if it is missing.
fn srdd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let bin = dir.join(format!("srdd{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let ok = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "--release", "-p", "srdd", "--bin", "srdd"])
            .status()
            .expect("cargo runs")
            .success();
        assert!(ok, "building the srdd binary failed");
    }
    assert!(bin.is_file(), "no srdd binary at {}", bin.display());
    bin
}

/// The checksum of the PNG that `srdd sample --class C --seed S` writes.
fn cli_checksum(class: u32, seed: u64) -> u64 {
    // One file per call: the tests run in parallel, and a shared name let one test read (or
    // delete) the PNG another was writing.
    static CALL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!(
        "srdd-fw-cli-{}-{n}-{class}-{seed}.png",
        std::process::id()
    ));
    let st = Command::new(srdd_binary())
        .args([
            "sample",
            "--class",
            &class.to_string(),
            "--seed",
            &seed.to_string(),
            "-o",
        ])
        .arg(&out)
        .output()
        .expect("srdd runs");
    assert!(
        st.status.success(),
        "srdd sample failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let img = srdd::read_png_rgb(&out).expect("read the CLI's PNG");
    std::fs::remove_file(&out).ok();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for row in img.rgb.chunks_exact(img.width * 3) {
        fnv1a(&mut h, row);
    }
    h
}

#[test]
fn the_cli_and_the_host_library_give_the_same_default_image() {
    assert_eq!(cli_checksum(3, 0), host_checksum(3, 0));
}

/// Builds the firmware's binaries and runs `bin` under QEMU; its output, or `None` (test
/// skipped) without the target or QEMU outside CI. Panics when the build or the run fails.
fn run_firmware(bin: &str) -> Option<String> {
    run_on(bin, &M4)
}

/// A firmware target: the Rust target and the QEMU board that runs it.
struct Board {
    target: &'static str,
    cpu: &'static str,
    machine: &'static str,
}
const M4: Board = Board {
    target: "thumbv7em-none-eabihf",
    cpu: "cortex-m4",
    machine: "mps2-an386",
};
/// The Cortex-M55 (Helium): rustc has no thumbv8.1m target; the v8-M Mainline one with
/// `-C target-cpu=cortex-m55` (firmware/.cargo/config.toml) builds for it.
const M55: Board = Board {
    target: "thumbv8m.main-none-eabihf",
    cpu: "cortex-m55",
    machine: "mps3-an547",
};

/// As [`run_firmware`] on `board`.
fn run_on(bin: &str, board: &Board) -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let target_ok = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(board.target))
        .unwrap_or(false);
    let qemu_ok = have("qemu-system-arm", "--version");
    if !(target_ok && qemu_ok) {
        let msg = format!(
            "firmware test needs the {} target ({target_ok}) and qemu-system-arm ({qemu_ok})",
            board.target
        );
        assert!(!ci, "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let fw = root().join("firmware");
    let build = Command::new(env!("CARGO"))
        .current_dir(&fw)
        .args([
            "build",
            "--release",
            "--target",
            board.target,
            "--target-dir",
        ])
        .arg(fw.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(build.success(), "firmware build failed");
    let elf = fw
        .join("target")
        .join(board.target)
        .join("release")
        .join(bin);
    let out = Command::new("timeout")
        .args([
            "900",
            "qemu-system-arm",
            "-cpu",
            board.cpu,
            "-machine",
            board.machine,
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
    assert!(
        out.status.success(),
        "firmware {bin} failed under QEMU:\n{text}"
    );
    Some(text)
}

/// The sample firmware's output `text` ran on `isa` and printed the checksum of the image
/// `srdd sample --class 3 --seed 0` writes.
fn image_equals_srdd_sample(text: &str, isa: &str, board: &str) {
    assert!(
        text.contains(&format!("isa {isa}")),
        "the {board} firmware should sample on {isa}:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("checksum=0x"))
        .unwrap_or_else(|| panic!("no checksum in:\n{text}"));
    let fw_sum = u64::from_str_radix(line.trim_start_matches("checksum=0x").trim(), 16).unwrap();
    let cli_sum = cli_checksum(3, 0);
    eprintln!("{board} {fw_sum:#018x}, srdd sample --class 3 --seed 0 {cli_sum:#018x}");
    assert_eq!(
        fw_sum, cli_sum,
        "the {board} image differs from `srdd sample --class 3 --seed 0`"
    );
}

/// The kernel self-test's output `text` passed on `isa`, the f16 conversion included.
fn kernels_pass(text: &str, isa: &str) {
    let line = text
        .lines()
        .find(|l| l.starts_with("kernels ok: ") && l.ends_with(isa))
        .unwrap_or_else(|| panic!("no {isa} pass line in:\n{text}"));
    eprintln!("{line}");
    assert!(
        text.contains("f16 ok: 63488 finite halves convert exactly"),
        "the FPU's f16 conversion was not checked:\n{text}"
    );
}

#[test]
fn firmware_image_equals_srdd_sample_for_the_same_class_and_seed() {
    let Some(text) = run_firmware("srdd-firmware") else {
        return;
    };
    image_equals_srdd_sample(&text, "ArmDsp", "Cortex-M4");
}

#[test]
fn firmware_dsp_kernels_equal_the_scalar_reference_on_the_cortex_m4() {
    let Some(text) = run_firmware("kernels") else {
        return;
    };
    kernels_pass(&text, "ArmDsp");
}

#[test]
fn cortex_m55_image_equals_srdd_sample_for_the_same_class_and_seed() {
    let Some(text) = run_on("srdd-firmware", &M55) else {
        return;
    };
    image_equals_srdd_sample(&text, "ArmMve", "Cortex-M55");
}

#[test]
fn firmware_mve_kernels_equal_the_scalar_reference_on_the_cortex_m55() {
    let Some(text) = run_on("kernels", &M55) else {
        return;
    };
    kernels_pass(&text, "ArmMve");
}

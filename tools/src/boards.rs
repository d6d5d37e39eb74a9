//! Whether a model runs on a given edge board, and roughly how fast: `srdd-tools inspect MODEL
//! --board NAME|all`.
//!
//! Every row is computed, not written by hand (issue #15):
//!
//! * **flash** = the model file + the firmware's code ([`FIRMWARE_CODE_BYTES`], measured on the
//!   Cortex-M4 firmware);
//! * **RAM** = the exact low-memory arena of the model ([`Plan::arena_bytes`] with
//!   [`SampleOptions::for_model_low_memory`], what the firmware runs) + [`STACK_BYTES`], against
//!   the board's largest contiguous RAM block (the arena is one static buffer);
//! * **instructions per image** = the instructions the Cortex-M4 firmware spent on the built-in
//!   model under `qemu-system-arm -icount shift=0` ([`M4_INSTRUCTIONS_DSP`],
//!   [`M4_INSTRUCTIONS_SCALAR`]; docs/EMBEDDED.md), scaled by this model's MACs over the built-in
//!   model's ([`BUILTIN_MACS`]) — exact for the built-in model, an estimate for others. Only
//!   cores that run the same Thumb-2 + DSP code get a count; the rest say why not;
//! * **time per image** = instructions ÷ (clock × instructions per cycle), an *estimate* (no
//!   memory stalls, the stated IPC).
//!
//! The board figures are the vendors' datasheet numbers for the named part.

use serde_json::{json, Value};
use srdd_core::generate::{Plan, SampleOptions};
use srdd_core::macs::sample_macs;
use srdd_core::{Model, Schedule};

/// Code (`.text` less the embedded model) of the Cortex-M4 firmware with the DSP kernels
/// (`firmware/`, thumbv7em-none-eabihf, release, LTO; `size`): 2,259,600 B − 2,024,128 B.
pub const FIRMWARE_CODE_BYTES: u64 = 2_259_600 - 2_024_128;
/// RAM reserved for the stack next to the arena: the DSP kernel's 4 KiB activation buffer plus
/// the call frames, rounded up to 16 KiB (a budget, not a measurement).
pub const STACK_BYTES: u64 = 16 * 1024;
/// Instructions of one built-in-model image on the Cortex-M4 with the DSP kernels (QEMU
/// `-icount shift=0`, class 3, seed 0, low-memory plan; `scripts/firmware-icount`).
pub const M4_INSTRUCTIONS_DSP: u64 = 2_640_291_280;
/// The same with the scalar kernels (`--features scalar-kernels`).
pub const M4_INSTRUCTIONS_SCALAR: u64 = 3_913_024_920;
/// MACs of that image ([`sample_macs`] of the built-in model in the firmware's configuration;
/// `tests/boards.rs` recomputes it from `models/default-int8.srdd`).
pub const BUILTIN_MACS: u64 = 285_944_576;

/// What a core can run of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreKind {
    /// Armv7E-M / Armv8-M Mainline with the DSP extension: the firmware's Thumb-2 code and the
    /// `SMLAD` kernels run as on the Cortex-M4.
    ArmDsp,
    /// Not an Arm core (no build of ours is measured there).
    Xtensa,
    /// An application core running Linux: the host build for AArch64 (NEON kernels), RAM
    /// measured in hundreds of MiB.
    Aarch64Linux,
}

/// One board (its microcontroller or SoC).
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// Short name for `--board`.
    pub name: &'static str,
    /// Part and core.
    pub part: &'static str,
    /// What runs there.
    pub kind: CoreKind,
    /// Core clock.
    pub clock_mhz: u32,
    /// Instructions per cycle assumed for the time estimate.
    pub ipc: f64,
    /// Flash the model and code can live in, and what that flash is.
    pub flash_bytes: u64,
    /// Where that flash figure comes from.
    pub flash_note: &'static str,
    /// Largest contiguous RAM block (the arena is one buffer).
    pub ram_block_bytes: u64,
    /// What that RAM is.
    pub ram_note: &'static str,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The boards of docs/EMBEDDED.md's table.
pub const BOARDS: [Board; 6] = [
    Board {
        name: "stm32h7",
        part: "STM32H743 (Cortex-M7)",
        kind: CoreKind::ArmDsp,
        clock_mhz: 480,
        ipc: 1.0,
        flash_bytes: 2 * MIB,
        flash_note: "internal flash",
        ram_block_bytes: 512 * KIB,
        ram_note: "AXI SRAM (1 MiB SRAM in all)",
    },
    Board {
        name: "stm32h7-dual-issue",
        part: "STM32H743 (Cortex-M7), dual issue",
        kind: CoreKind::ArmDsp,
        clock_mhz: 480,
        ipc: 1.5,
        flash_bytes: 2 * MIB,
        flash_note: "internal flash",
        ram_block_bytes: 512 * KIB,
        ram_note: "AXI SRAM (1 MiB SRAM in all)",
    },
    Board {
        name: "rp2350",
        part: "RP2350 (Cortex-M33), Pico 2",
        kind: CoreKind::ArmDsp,
        clock_mhz: 150,
        ipc: 1.0,
        flash_bytes: 4 * MIB,
        flash_note: "QSPI flash of the Pico 2 (execute in place)",
        ram_block_bytes: 512 * KIB,
        ram_note: "striped SRAM0-7 (520 KiB SRAM in all)",
    },
    Board {
        name: "esp32-s3",
        part: "ESP32-S3 (Xtensa LX7), N8R8 module",
        kind: CoreKind::Xtensa,
        clock_mhz: 240,
        ipc: 1.0,
        flash_bytes: 8 * MIB,
        flash_note: "module flash",
        ram_block_bytes: 8 * MIB,
        ram_note: "module PSRAM (512 KiB internal SRAM)",
    },
    Board {
        name: "nrf5340",
        part: "nRF5340 application core (Cortex-M33)",
        kind: CoreKind::ArmDsp,
        clock_mhz: 128,
        ipc: 1.0,
        flash_bytes: MIB,
        flash_note: "internal flash",
        ram_block_bytes: 512 * KIB,
        ram_note: "application-core SRAM",
    },
    Board {
        name: "cortex-a53",
        part: "Raspberry Pi Zero 2 W (4× Cortex-A53)",
        kind: CoreKind::Aarch64Linux,
        clock_mhz: 1000,
        ipc: 1.0,
        flash_bytes: 0,
        flash_note: "microSD card (the model is a file)",
        ram_block_bytes: 512 * MIB,
        ram_note: "LPDDR2 (shared with Linux)",
    },
];

/// The board called `name`, or the list of names in the error.
pub fn find(name: &str) -> Result<&'static Board, String> {
    BOARDS.iter().find(|b| b.name == name).ok_or_else(|| {
        let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
        format!("unknown board '{name}' (one of: {}, all)", names.join(", "))
    })
}

/// A model's figures on one board.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The board.
    pub board: &'static Board,
    /// Model file + firmware code (0 code on a Linux board: the binary lives on the card).
    pub flash_needed: u64,
    /// Low-memory arena.
    pub arena: u64,
    /// Arena + stack.
    pub ram_needed: u64,
    /// Instructions per image with the DSP kernels and with the scalar ones, when a count applies.
    pub instructions: Option<(u64, u64)>,
    /// Why there is no count, or how the count was obtained.
    pub instructions_note: &'static str,
}

impl Fit {
    /// Whether the model and code fit the board's flash (always on a card).
    pub fn flash_ok(&self) -> bool {
        self.board.flash_bytes == 0 || self.flash_needed <= self.board.flash_bytes
    }
    /// Whether arena + stack fit the largest RAM block.
    pub fn ram_ok(&self) -> bool {
        self.ram_needed <= self.board.ram_block_bytes
    }
    /// Estimated seconds per image (DSP, scalar) at the board's clock and IPC.
    pub fn seconds(&self) -> Option<(f64, f64)> {
        let per_s = self.board.clock_mhz as f64 * 1e6 * self.board.ipc;
        self.instructions
            .map(|(dsp, scalar)| (dsp as f64 / per_s, scalar as f64 / per_s))
    }
}

/// MACs of one image in the firmware's configuration (the model's defaults, low-memory plan).
pub fn firmware_macs(model: &Model<'_>) -> u64 {
    let opts = SampleOptions::for_model_low_memory(model, 0);
    sample_macs(model, &opts, &Schedule::full(&model.config)).total()
}

/// The figures of `model` (its file is `file_bytes` long) on `board`.
pub fn fit(model: &Model<'_>, file_bytes: u64, board: &'static Board) -> Result<Fit, String> {
    let cfg = &model.config;
    let opts = SampleOptions::for_model_low_memory(model, 0);
    let arena = Plan::new(cfg, &opts, &Schedule::full(cfg))
        .map_err(|e| e.to_string())?
        .arena_bytes() as u64;
    let macs = firmware_macs(model);
    let scale = |n: u64| (n as u128 * macs as u128 / BUILTIN_MACS as u128) as u64;
    let (instructions, instructions_note) = match board.kind {
        CoreKind::ArmDsp if macs == BUILTIN_MACS => (
            Some((M4_INSTRUCTIONS_DSP, M4_INSTRUCTIONS_SCALAR)),
            "Cortex-M4 count, QEMU -icount",
        ),
        CoreKind::ArmDsp => (
            Some((scale(M4_INSTRUCTIONS_DSP), scale(M4_INSTRUCTIONS_SCALAR))),
            "estimated: the Cortex-M4 count of the built-in model × this model's MACs",
        ),
        CoreKind::Xtensa => (None, "not counted: no Xtensa build is measured"),
        CoreKind::Aarch64Linux => (None, "not counted: runs the AArch64 host build"),
    };
    let code = match board.kind {
        CoreKind::Aarch64Linux => 0,
        _ => FIRMWARE_CODE_BYTES,
    };
    Ok(Fit {
        board,
        flash_needed: file_bytes + code,
        arena,
        ram_needed: arena + STACK_BYTES,
        instructions,
        instructions_note,
    })
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIB as f64)
}

fn verdict(ok: bool, need: u64, have: u64) -> String {
    if ok {
        "fits".into()
    } else {
        format!("short by {}", mib(need - have))
    }
}

/// The board table for `names` (`all` or one name) as text or JSON.
pub fn report(
    model: &Model<'_>,
    file_bytes: u64,
    name: &str,
    as_json: bool,
) -> Result<String, String> {
    let boards: Vec<&'static Board> = if name == "all" {
        BOARDS.iter().collect()
    } else {
        vec![find(name)?]
    };
    let fits = boards
        .into_iter()
        .map(|b| fit(model, file_bytes, b))
        .collect::<Result<Vec<_>, _>>()?;
    if as_json {
        let rows: Vec<Value> = fits
            .iter()
            .map(|f| {
                json!({
                    "board": f.board.name,
                    "part": f.board.part,
                    "clock_mhz": f.board.clock_mhz,
                    "ipc_assumed": f.board.ipc,
                    "flash_bytes": f.board.flash_bytes,
                    "flash_note": f.board.flash_note,
                    "flash_needed": f.flash_needed,
                    "flash_ok": f.flash_ok(),
                    "ram_block_bytes": f.board.ram_block_bytes,
                    "ram_note": f.board.ram_note,
                    "arena_bytes": f.arena,
                    "ram_needed": f.ram_needed,
                    "ram_ok": f.ram_ok(),
                    "instructions_dsp": f.instructions.map(|i| i.0),
                    "instructions_scalar": f.instructions.map(|i| i.1),
                    "instructions_note": f.instructions_note,
                    "seconds_estimate_dsp": f.seconds().map(|s| s.0),
                    "seconds_estimate_scalar": f.seconds().map(|s| s.1),
                })
            })
            .collect();
        return serde_json::to_string_pretty(&Value::Array(rows)).map_err(|e| e.to_string());
    }
    let mut out = String::from(
        "| board | flash: needed / has | RAM: arena + stack / largest block | instructions per image (DSP / scalar) | est. time per image (DSP / scalar) |\n|---|---|---|---|---|\n",
    );
    for f in &fits {
        let b = f.board;
        let flash = if b.flash_bytes == 0 {
            format!("{} / {} — fits", mib(f.flash_needed), b.flash_note)
        } else {
            format!(
                "{} / {} {} — {}",
                mib(f.flash_needed),
                mib(b.flash_bytes),
                b.flash_note,
                verdict(f.flash_ok(), f.flash_needed, b.flash_bytes)
            )
        };
        let ram = format!(
            "{} + {} KiB / {} {} — {}",
            mib(f.arena),
            STACK_BYTES / KIB,
            mib(b.ram_block_bytes),
            b.ram_note,
            verdict(f.ram_ok(), f.ram_needed, b.ram_block_bytes)
        );
        let (ins, time) = match (f.instructions, f.seconds()) {
            (Some((d, s)), Some((td, ts))) => (
                format!(
                    "{:.2} G / {:.2} G ({})",
                    d as f64 / 1e9,
                    s as f64 / 1e9,
                    f.instructions_note
                ),
                format!(
                    "{td:.1} s / {ts:.1} s at {} MHz, IPC {}",
                    b.clock_mhz, b.ipc
                ),
            ),
            _ => (f.instructions_note.to_string(), "—".to_string()),
        };
        out.push_str(&format!(
            "| {} `{}` | {flash} | {ram} | {ins} | {time} |\n",
            b.part, b.name
        ));
    }
    out.push_str("\nTimes are estimates: instructions ÷ (clock × IPC), no memory stalls.");
    Ok(out)
}

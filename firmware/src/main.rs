//! Samples one image with the embedded default model (int8) on a Cortex-M4 under QEMU, in a
//! `static` arena, and prints the RGB8 image's checksum (FNV-1a-64) over semihosting. The host
//! test `tests/tests/firmware.rs` computes the same checksum with the host int8 path.
//!
//! It also prints the instructions spent per phase (`icount …` lines): meaningful under
//! `qemu-system-arm -icount shift=0` (see `icount.rs` and `scripts/firmware-icount`). With the
//! `scalar-kernels` feature the generator runs the scalar reference kernels (the baseline).
#![no_std]
#![no_main]

mod icount;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use srdd_core::aligned::Aligned;
use srdd_core::generate::{Generator, Plan, SampleOptions, StepHook};
use srdd_core::{Model, Schedule};

#[cfg(not(an547))]
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../../models/default-int8.srdd"));
// The an547's ITCM (code) is 512 KiB: the model goes to the ISRAM (memory-an547.x).
#[cfg(an547)]
#[link_section = ".model"]
static MODEL_DATA: Aligned<[u8; include_bytes!("../../models/default-int8.srdd").len()]> =
    Aligned(*include_bytes!("../../models/default-int8.srdd"));
#[cfg(an547)]
static MODEL: &Aligned<[u8]> = &MODEL_DATA;

// `ARENA_BYTES`: the plan's exact size, computed from the model file by build.rs.
include!(concat!(env!("OUT_DIR"), "/arena.rs"));
#[repr(C, align(64))]
struct Arena([u8; ARENA_BYTES]);
static mut ARENA: Arena = Arena([0; ARENA_BYTES]);

/// The options the host test uses too.
const CLASS: u32 = 3;
const SEED: u64 = 0;

/// Prints each scale's end and the instructions it took (from the previous scale's end).
struct Progress {
    last: u64,
    sum: u64,
}
impl StepHook for Progress {
    fn scale_done(&mut self, k: usize, _tokens: &[u32], _f_hat: &[f32]) {
        let now = icount::instructions();
        self.sum += now - self.last;
        hprintln!("scale {} done", k);
        hprintln!("icount scale {}: {}", k, now - self.last);
        // The print's own instructions are left out of the next scale.
        self.last = icount::instructions();
    }
}

fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h = (*h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn run() -> Result<u64, srdd_core::Error> {
    let t0 = icount::instructions();
    let model = Model::from_bytes(&MODEL.0)?;
    // Parsing and validating the file, the non-finite check over every f32 tensor and int8
    // scale included: part of "setup".
    let load = icount::instructions() - t0;
    // The model's own sampling defaults, as `srdd sample` uses them; the low-memory plan
    // changes no bit of the result.
    let mut opts = SampleOptions::for_model_low_memory(&model, CLASS);
    opts.seed = SEED;
    let sched = Schedule::full(&model.config);
    let need = Plan::new(&model.config, &opts, &sched)?.arena_bytes();
    hprintln!(
        "model {} bytes, arena {} bytes (static {})",
        MODEL.0.len(),
        need,
        ARENA_BYTES
    );
    // SAFETY: the only reference to ARENA, taken once in the single-threaded entry.
    let arena = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    // Exactly the static arena: the generator checks it against the plan before any work.
    let mut gen = Generator::new(&model, opts, sched, &mut arena.0[..])?;
    let setup = icount::instructions() - t0;
    let mut progress = Progress {
        last: icount::instructions(),
        sum: 0,
    };
    gen.run(&mut progress)?;
    let decode_from = icount::instructions();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut row8 = [0u8; 3 * 256];
    gen.decode(&mut |_, row| {
        for (o, v) in row8.iter_mut().zip(row) {
            *o = srdd_core::vae::to_rgb8(*v);
        }
        fnv1a(&mut h, &row8[..row.len()]);
    })?;
    let decoder = icount::instructions() - decode_from;
    hprintln!("icount setup: {}", setup);
    hprintln!("icount load: {}", load);
    hprintln!("icount decoder: {}", decoder);
    // The phases' sum: the progress prints between them are left out.
    hprintln!("icount total: {}", setup + progress.sum + decoder);
    hprintln!("isa {:?}", srdd_core::kernels::Isa::active());
    Ok(h)
}

#[entry]
fn main() -> ! {
    let cp = cortex_m::Peripherals::take().unwrap();
    icount::start(cp.SYST);
    // A loop of exactly 20,000,000 instructions: checks the clock `icount.rs` assumes, under -icount.
    hprintln!("icount calibration: {}", icount::calibrate(10_000_000));
    match run() {
        Ok(h) => {
            hprintln!("checksum=0x{:016x}", h);
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(e) => {
            hprintln!("error: {}", e);
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("PANIC: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

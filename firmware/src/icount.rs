//! Instruction counts under `qemu-system-arm -icount shift=0`, where every guest instruction
//! advances virtual time by exactly 1 ns. SysTick runs on the processor clock, which QEMU's
//! mps2-an386 model sets to 25 MHz (`SYSCLK_FRQ`), so one tick is 40 ns = 40 instructions, and
//! its mps3-an547 (Cortex-M55) model to 32 MHz (one tick = 31.25 instructions);
//! [`calibrate`] checks that against a loop of a known instruction count. The 24-bit counter
//! wraps every 2^24 ticks (≈ 671 M instructions); the SysTick exception counts the wraps.
//! Without `-icount` the same figures are host-time noise: only the icount run means anything.

use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};
use cortex_m_rt::exception;

/// The processor clock of QEMU's board model: 1 ns per instruction (`-icount shift=0`) makes
/// a tick `10^9 / SYSCLK_HZ` instructions.
#[cfg(not(an547))]
const SYSCLK_HZ: u64 = 25_000_000;
#[cfg(an547)]
const SYSCLK_HZ: u64 = 32_000_000;
const RELOAD: u32 = 0x00ff_ffff;
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Starts SysTick from the processor clock, full 24-bit range, wrap exception on.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    // The cleared counter reads 0 until its first reload (the next tick): start from there, so
    // that reading 0 never means a full period.
    while SYST::get_current() == 0 {}
}

/// Ticks since [`start`] (monotonic, 64-bit).
pub fn ticks() -> u64 {
    loop {
        let before = WRAPS.load(Ordering::Relaxed);
        let v = SYST::get_current();
        let pending = SCB::is_pendst_pending();
        if WRAPS.load(Ordering::Relaxed) != before {
            continue;
        }
        // A wrap whose exception has not been taken yet: the counter restarted near RELOAD.
        let wraps = before as u64 + (pending && v > RELOAD / 2) as u64;
        return wraps * (RELOAD as u64 + 1) + (RELOAD - v) as u64;
    }
}

/// Instructions since [`start`], in units of one tick (`10^9 / SYSCLK_HZ`).
pub fn instructions() -> u64 {
    ticks() * 1_000_000_000 / SYSCLK_HZ
}

/// Counts a loop of exactly `2 · iters` instructions (`subs` + `bne` per iteration) and returns
/// the instructions the timer saw for it: equal to within the timer's resolution and the few
/// instructions around the loop when the conversion is right.
pub fn calibrate(iters: u32) -> u64 {
    let t0 = instructions();
    // SAFETY: a register-only countdown loop.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) iters => _,
            options(nomem, nostack),
        );
    }
    instructions() - t0
}

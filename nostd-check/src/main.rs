//! Links srdd-core into a `#![no_std]`, `#![no_main]` x86-64 Linux binary with its own panic
//! handler, entry point and memory functions, and without libc: if any dependency of the core
//! pulled in `std`, this would fail to link (duplicate `panic_impl` lang item). It loads and
//! validates the embedded default model, plans a sample, samples its first two scales in a
//! static arena, prints a line and exits 0.
#![no_std]
#![no_main]

use core::arch::{asm, naked_asm};
use srdd_core::aligned::Aligned;
use srdd_core::generate::{Generator, Plan, SampleOptions};
use srdd_core::{Model, NoHook, Schedule};

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../../models/default-int8.srdd"));

const ARENA_CAP: usize = 4 << 20;
#[repr(C, align(64))]
struct Arena([u8; ARENA_CAP]);
static mut ARENA: Arena = Arena([0; ARENA_CAP]);

fn write(s: &[u8]) {
    // SAFETY: write(2) on fd 1 with a valid buffer.
    unsafe {
        asm!("syscall", inlateout("rax") 1usize => _, in("rdi") 1usize, in("rsi") s.as_ptr(),
             in("rdx") s.len(), lateout("rcx") _, lateout("r11") _, options(nostack));
    }
}

fn exit(code: usize) -> ! {
    // SAFETY: exit_group(2).
    unsafe {
        asm!("syscall", in("rax") 231usize, in("rdi") code, options(noreturn, nostack));
    }
}

fn write_usize(mut v: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    write(&buf[i..]);
}

fn run() -> Result<usize, srdd_core::Error> {
    let model = Model::from_bytes(&MODEL.0)?;
    let opts = SampleOptions::for_model(&model, 1);
    let sched = Schedule::full(&model.config);
    let need = Plan::new(&model.config, &opts, &sched)?.arena_bytes();
    // SAFETY: the only reference to ARENA, single-threaded.
    let arena = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    let mut gen = Generator::new(&model, opts, sched, &mut arena.0[..need.min(ARENA_CAP)])?;
    gen.step(&mut NoHook)?;
    gen.step(&mut NoHook)?;
    Ok(need)
}

extern "C" fn main_rust() -> ! {
    match run() {
        Ok(need) => {
            write(b"srdd-core linked without std: model ok, arena ");
            write_usize(need);
            write(b" bytes, 2 scales sampled\n");
            exit(0)
        }
        Err(_) => {
            write(b"srdd-core error\n");
            exit(1)
        }
    }
}

/// Entry point: clear the frame pointer, align the stack to 16 bytes, call Rust.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    naked_asm!("xor ebp, ebp", "and rsp, -16", "call {}", "ud2", sym main_rust)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    write(b"panic\n");
    exit(101)
}

/// The precompiled libcore references it even with panic = "abort".
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// Memory functions libcore expects from libc. Volatile accesses keep the optimizer from turning
// the loops back into calls to these very functions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller passes valid, non-overlapping ranges of n bytes.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
    d
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        for i in 0..n {
            // SAFETY: valid ranges; forward copy is safe when d < s.
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: valid ranges; backward copy is safe when d >= s.
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    }
    d
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller passes a valid range of n bytes.
        unsafe { core::ptr::write_volatile(d.add(i), c as u8) };
    }
    d
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller passes valid ranges of n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

//! Compiles the emulator and, through it, every kernel file of `gpu/kernels` as C++.

fn main() {
    println!("cargo:rerun-if-changed=emu.cpp");
    println!("cargo:rerun-if-changed=emu.h");
    println!("cargo:rerun-if-changed=../kernels");
    cc::Build::new()
        .cpp(true)
        .file("emu.cpp")
        .flag_if_supported("-std=c++17")
        .flag_if_supported("-Wno-unknown-pragmas")
        // Kernels are f32 code written for the GPU: no contraction into FMA beyond what they
        // write, as on the CPU engine.
        .flag_if_supported("-ffp-contract=off")
        .opt_level(2)
        .compile("srdd_gpu_emu");
}

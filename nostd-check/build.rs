//! Link the binary without the C runtime or libc (binaries only, so build scripts still link).
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=../models/default-int8.srdd");
}

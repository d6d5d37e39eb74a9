//! libFuzzer entry point of the `pth` target; the body is [`srdd_fuzz::pth`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::pth(data));

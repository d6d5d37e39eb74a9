//! libFuzzer entry point of the `png` target; the body is [`srdd_fuzz::png`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::png(data));

//! libFuzzer entry point of the `pickle` target; the body is [`srdd_fuzz::pickle`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::pickle(data));

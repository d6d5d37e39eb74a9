//! libFuzzer entry point of the `srdd_model` target; the body is [`srdd_fuzz::srdd_model`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::srdd_model(data));

//! libFuzzer entry point of the `safetensors` target; the body is [`srdd_fuzz::safetensors`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::safetensors(data));

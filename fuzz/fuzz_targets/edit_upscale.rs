//! libFuzzer entry point of the `edit_upscale` target; the body is [`srdd_fuzz::edit_upscale`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| srdd_fuzz::edit_upscale(data));

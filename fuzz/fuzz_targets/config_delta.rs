#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::config_delta(data));

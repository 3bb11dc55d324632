#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::policy_authorize(data));

//! Every seed under `fuzz/corpus/TARGET/` and every saved crash under
//! `fuzz/regressions/TARGET/` through its target, so a crash the fuzzer once found fails
//! `cargo test` until it is fixed (docs/fuzzing.md).

use ambit_fuzz::{FuzzBody, TARGETS};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, target: &str, run: FuzzBody) -> usize {
    let inputs = files(&fuzz_dir().join(kind).join(target));
    for input in &inputs {
        let Ok(data) = std::fs::read(input) else {
            panic!("cannot read {}", input.display());
        };
        eprintln!("{target}: {}", input.display());
        run(&data);
    }
    inputs.len()
}

#[test]
fn every_seed_runs_through_its_target() {
    for (target, run) in TARGETS {
        let seeds = replay("corpus", target, *run);
        assert!(seeds > 0, "fuzz/corpus/{target}/ has no seed");
    }
}

#[test]
fn every_saved_crash_runs_through_its_target() {
    for (target, run) in TARGETS {
        replay("regressions", target, *run);
    }
}

#[test]
fn every_target_has_a_libfuzzer_binary() {
    let declared: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    let mut named: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    named.sort();
    assert_eq!(declared, named);
}

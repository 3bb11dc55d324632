//! ambit's end-to-end tests live in `tests/`: `chart.rs` (the Helm chart renders, lints and
//! matches `manifests/`), and the user's path over the testbed. Nothing here but this note.

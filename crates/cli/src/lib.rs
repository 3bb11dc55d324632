//! `kubectl-ambit`, the kubectl plugin for ambit. The logic lives here; `main.rs` only parses
//! arguments, connects and prints.
//!
//! - [`args`]: the command line, kubectl style (clap), into a typed [`args::Request`];
//! - [`complete`]: completion scripts and the candidates kubectl asks `kubectl_complete-ambit` for;
//! - [`client`]: kubeconfig (`--kubeconfig`, `KUBECONFIG`, `--context`) to a client, and
//!   readable kube errors;
//! - [`waypoint`]: the Gateway `waypoint apply` writes, name rules, how Gateway status reads;
//! - [`health`]: `status` verdicts computed from objects;
//! - [`check`]: `check` verdicts (pre-install and installed), one line each;
//! - [`threats`]: the install's settings and the `threats` report (scores from `ambit-risk`);
//! - [`commands`]: each command against the apiserver;
//! - [`table`], [`output`]: kubectl-style tables, `-o json|yaml`.
#![forbid(unsafe_code)]

pub mod args;
pub mod check;
pub mod client;
pub mod commands;
pub mod complete;
pub mod health;
pub mod output;
pub mod table;
pub mod threats;
pub mod waypoint;

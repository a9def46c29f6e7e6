//! `edgeml`: pack, sign, verify, inspect, run and benchmark signed model
//! bundles. The work happens in `edgeml-bundle` and `edgeml-runtime`; this
//! binary parses arguments and prints results.

mod args;
mod audit;
mod bench;
mod card;
mod commands;
mod fleet;
mod monitor;
mod npy;
mod progress;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The fleetctl binary: parses flags and hands them to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    fleetctl::run(fleetctl::args::Cli::parse())
}

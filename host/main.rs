//! The `kiln` command line: see `kiln --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match kiln::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole context chain.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

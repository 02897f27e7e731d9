//! The `kiln` command line: see `kiln --help`.

use std::io::Write;
use std::process::ExitCode;

use kiln::cli::{StdoutClosed, UsageError};

fn main() -> ExitCode {
    match kiln::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`kiln … | head`): it has what it wanted.
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole context chain.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

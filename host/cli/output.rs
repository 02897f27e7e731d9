//! How the CLI talks to its user: results on stdout, progress on stderr, output files.
//!
//! - stdout: every line goes through [`line`] (the `outln!` macro), which turns a reader that
//!   went away (`kiln info F | head -1`) into [`StdoutClosed`]; `main` ends quietly on it, as
//!   a Unix filter does, instead of the panic `println!` gives.
//! - stderr: [`Progress`] draws a bar on a terminal and, when stderr is a pipe or a log file,
//!   writes plain lines at most every few seconds, so long work is never silent there.
//! - files: [`PendingOutput`] checks an output path and creates its temporary beside it before
//!   the work starts, and moves it into place only when it is complete.

use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// stdout was closed by its reader: not a failure of kiln's, `main` exits with status 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed by its reader")]
pub struct StdoutClosed;

/// Writes one line to stdout.
pub fn line(args: fmt::Arguments) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Writes `bytes` to stdout as they are (streamed text: a token may be part of a UTF-8
/// character) and flushes them, so that the reader sees each token as it comes.
pub fn raw(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `println!` that returns an error instead of panicking when stdout is closed.
macro_rules! outln {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// A line on stderr for the user watching (progress, a notice); a closed stderr is ignored:
/// nobody is watching.
pub fn note(args: fmt::Arguments) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Seconds between plain progress lines when stderr is not a terminal
/// (`KILN_PROGRESS_EVERY_S`, default 5; 0 writes one line per step).
fn plain_interval() -> Duration {
    let secs = std::env::var("KILN_PROGRESS_EVERY_S")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

/// Progress of one phase (`synth`, `load`, `upload`) over a known number of steps.
pub struct Progress {
    what: String,
    total: u64,
    unit: &'static str,
    start: Instant,
    view: View,
}

enum View {
    Bar(ProgressBar),
    Plain(Mutex<Plain>),
}

struct Plain {
    every: Duration,
    last: Instant,
    done: u64,
    lines: usize,
}

impl Progress {
    pub fn new(what: &str, total: u64, unit: &'static str) -> Self {
        let start = Instant::now();
        let view = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(what.to_string());
            View::Bar(bar)
        } else {
            View::Plain(Mutex::new(Plain {
                every: plain_interval(),
                last: start,
                done: 0,
                lines: 0,
            }))
        };
        Progress {
            what: what.to_string(),
            total,
            unit,
            start,
            view,
        }
    }

    /// `n` more steps done; `item` names the last one.
    pub fn inc(&self, n: u64, item: &str) {
        match &self.view {
            View::Bar(bar) => {
                bar.inc(n);
                bar.set_message(item.to_string());
            }
            View::Plain(plain) => {
                let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
                p.done += n;
                if p.last.elapsed() >= p.every {
                    p.last = Instant::now();
                    p.lines += 1;
                    note(format_args!(
                        "{}: {}/{} {} ({:.0}%, {:.1} s) {item}",
                        self.what,
                        p.done,
                        self.total,
                        self.unit,
                        100.0 * p.done as f64 / self.total.max(1) as f64,
                        self.start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Ends the phase: the bar is cleared; a plain log that said anything says it finished.
    pub fn finish(self) {
        match self.view {
            View::Bar(bar) => bar.finish_and_clear(),
            View::Plain(plain) => {
                let p = plain.into_inner().unwrap_or_else(|e| e.into_inner());
                if p.lines > 0 {
                    note(format_args!(
                        "{}: done, {} {} in {:.1} s",
                        self.what,
                        p.done,
                        self.unit,
                        self.start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// An output file that is checked and opened before the work that fills it: its temporary
/// sits beside the destination (so a directory that is missing or not writable fails at once,
/// and the rename cannot cross file systems), and it replaces the destination only on
/// [`PendingOutput::commit`]; dropped without a commit it is removed and the destination is
/// left as it was.
pub struct PendingOutput {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl PendingOutput {
    /// `what` names the option in errors (`--dump-logits`); an existing file is replaced only
    /// when `overwrite` is set (else the error names `overwrite_flag`).
    pub fn create(
        path: &Path,
        what: &str,
        overwrite: bool,
        overwrite_flag: &str,
    ) -> anyhow::Result<Self> {
        if path.is_dir() {
            bail!("{what} {} is a directory, not a file", path.display());
        }
        if !overwrite && path.symlink_metadata().is_ok() {
            bail!(
                "{what} {} already exists; pass {overwrite_flag} to replace it",
                path.display()
            );
        }
        let name = path
            .file_name()
            .with_context(|| format!("{what} {} names no file", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".kiln-{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {what} {}", path.display()))?;
        Ok(PendingOutput {
            path: path.to_path_buf(),
            tmp,
            file,
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open temporary, to write the contents into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the contents and moves them into place.
    pub fn commit(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

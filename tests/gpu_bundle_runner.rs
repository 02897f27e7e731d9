//! The GPU bundle's runner (`scripts/gpu-bundle-run.sh`) reports ALL STEPS PASSED only when
//! every step ran and passed: run here on a fake bundle (a test executable that prints libtest
//! results) with fake CUDA tools, then with a tool missing, with the deadline already past, and
//! with a failing test. Needs only bash and coreutils, so it also runs inside the bundle.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const RUNNER: &str = include_str!("../scripts/gpu-bundle-run.sh");

/// Commands the runner uses, linked into a private bin directory so that no real CUDA tool on
/// this machine's PATH takes part.
const SYSTEM: &[&str] = &[
    "bash", "timeout", "grep", "awk", "tee", "mktemp", "rm", "cat", "date", "hostname", "uname",
    "ldd", "head", "tail", "sort", "basename", "dirname", "mkdir", "ln", "sleep",
];

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

struct Bundle {
    root: PathBuf,
}

impl Bundle {
    /// A bundle whose one test executable prints `result` and exits with `rc`, and a tools
    /// directory with fake `compute-sanitizer`, `ptxas` and `cuobjdump` minus `missing`.
    fn new(name: &str, result: &str, rc: i32, missing: &[&str]) -> Bundle {
        let root = std::env::temp_dir().join(format!("kiln-runner-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["bundle/tests", "bundle/ptx", "tools", "sys", "out"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("bundle/run.sh"), RUNNER).unwrap();
        fs::write(root.join("bundle/ptx/kernels.ptx"), "// fake PTX\n").unwrap();
        script(
            &root.join("bundle/tests/kernels_fake"),
            &format!("echo 'test result: {result}; 0 measured; 0 filtered out'\nexit {rc}"),
        );
        let tools = [
            (
                "compute-sanitizer",
                "echo '========= ERROR SUMMARY: 0 errors'",
            ),
            // Writes the file after -o, as ptxas writes the cubin.
            (
                "ptxas",
                "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && : > \"$2\"; shift; done",
            ),
            ("cuobjdump", "echo 'fake SASS'"),
        ];
        for (tool, body) in tools {
            if !missing.contains(&tool) {
                script(&root.join("tools").join(tool), body);
            }
        }
        for cmd in SYSTEM {
            if let Some(p) = which(cmd) {
                std::os::unix::fs::symlink(p, root.join("sys").join(cmd)).unwrap();
            }
        }
        Bundle { root }
    }

    /// Runs the runner; returns its exit code and its summary.
    fn run(&self, env: &[(&str, &str)]) -> (i32, String) {
        let path = format!(
            "{}:{}",
            self.root.join("tools").display(),
            self.root.join("sys").display()
        );
        let out = Command::new(self.root.join("sys/bash"))
            .arg(self.root.join("bundle/run.sh"))
            .arg(self.root.join("out"))
            .env_clear()
            .env("PATH", path)
            .env("KILN_TOOL_DIRS", "")
            .envs(env.iter().copied())
            .output()
            .expect("running the bundle runner");
        let summary = fs::read_to_string(self.root.join("out/summary.txt")).unwrap_or_default();
        let _ = fs::remove_dir_all(&self.root);
        (out.status.code().unwrap_or(-1), summary)
    }
}

const PASS: &str = "ok. 2 passed; 0 failed; 0 ignored";

#[test]
fn every_step_run_and_passed_is_all_steps_passed() {
    let (rc, summary) = Bundle::new("pass", PASS, 0, &[]).run(&[]);
    assert!(summary.contains("ALL STEPS PASSED"), "{summary}");
    assert_eq!(rc, 0, "{summary}");
}

#[test]
fn a_missing_ptxas_is_skipped_not_passed() {
    let (rc, summary) = Bundle::new("no-ptxas", PASS, 0, &["ptxas"]).run(&[]);
    assert!(!summary.contains("ALL STEPS PASSED"), "{summary}");
    assert!(summary.contains("SKIPPED"), "{summary}");
    assert_eq!(rc, 3, "{summary}");
}

#[test]
fn a_missing_sanitizer_is_skipped_not_passed() {
    let (rc, summary) = Bundle::new("no-sanitizer", PASS, 0, &["compute-sanitizer"]).run(&[]);
    assert!(!summary.contains("ALL STEPS PASSED"), "{summary}");
    assert_eq!(rc, 3, "{summary}");
}

#[test]
fn steps_skipped_at_the_deadline_are_not_a_pass() {
    let (rc, summary) = Bundle::new("deadline", PASS, 0, &[]).run(&[("KILN_DEADLINE", "0")]);
    assert!(!summary.contains("ALL STEPS PASSED"), "{summary}");
    assert!(summary.contains("deadline"), "{summary}");
    assert_eq!(rc, 3, "{summary}");
}

#[test]
fn a_failing_test_fails_the_run() {
    let result = "FAILED. 1 passed; 1 failed; 0 ignored";
    let (rc, summary) = Bundle::new("fail", result, 101, &[]).run(&[]);
    assert!(summary.contains("STEP(S) FAILED"), "{summary}");
    assert_eq!(rc, 1, "{summary}");
}

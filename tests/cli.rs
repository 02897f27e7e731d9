//! The `kiln` binary end to end: output on fixtures, and one-line errors with a non-zero exit
//! (never a panic) on bad input.

mod common;

use std::process::{Command, Output};

use common::{argmax, model_path, open, prompt, reference, rewrite, temp_path};
use kiln::gguf::Value;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("running kiln")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails unless `kiln args` exits non-zero with exactly one stderr line "error: ..." that
/// contains `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let o = kiln(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: stderr {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

fn tokens_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn info_on_fixture() {
    let o = kiln(&["info", model_path("qwen3moe-q4_k_m").to_str().unwrap()]);
    assert!(o.status.success());
    let out = stdout(&o);
    for needle in [
        "qwen3moe",
        "blk.1.ffn_down_exps.weight",
        "Q6_K",
        "Q4_K",
        "[256, 256, 4]",
        "vocab 512",
    ] {
        assert!(out.contains(needle), "info lacks {needle:?}:\n{out}");
    }
}

#[test]
fn prefill_reproduces_reference_top1_and_dumps_logits() {
    let npy = temp_path("p5.npy");
    let o = kiln(&[
        "prefill",
        "--device",
        "cpu",
        "-m",
        model_path("qwen3moe-f32").to_str().unwrap(),
        "--tokens",
        &tokens_arg(&prompt("p5")),
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let want = reference("qwen3moe-f32", "p5", "numpy64");
    let top1 = argmax(&want.data);
    let first = out
        .lines()
        .skip_while(|l| !l.starts_with("top-5"))
        .nth(1)
        .expect("top-5 list");
    assert_eq!(
        first.split_whitespace().next(),
        Some(top1.to_string().as_str()),
        "{out}"
    );
    assert!(out.contains("prompt: 5 tokens"), "{out}");
    let dumped = kiln::npy::read_f32(&npy).unwrap();
    std::fs::remove_file(&npy).ok();
    assert_eq!(dumped.shape, vec![512]);
    assert!(common::rel_l2_f32(&dumped.data, &want.data) <= 2e-6);
}

#[test]
fn prefill_default_model_and_all_logits() {
    let npy = temp_path("all.npy");
    let o = kiln(&[
        "prefill",
        "-p",
        "hello world",
        "--all-logits",
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    // `auto` takes the GPU where one works and otherwise says, in one line, that it fell back.
    if kiln::gpu::Device::cuda().is_ok() {
        assert!(out.contains("chunks: 1"), "{out}");
    } else {
        assert!(
            out.contains("no usable GPU") && out.contains("running on the CPU reference"),
            "{out}"
        );
    }
    assert!(out.contains("embedded default"), "{out}");
    let dumped = kiln::npy::read_f32(&npy).unwrap();
    std::fs::remove_file(&npy).ok();
    assert_eq!(dumped.shape[1], 512);
    assert!(kiln(&["prefill"]).status.success());
}

#[test]
fn synth_then_info() {
    let path = temp_path("cli-synth.gguf");
    let p = path.to_str().unwrap();
    let o = kiln(&[
        "synth", "--arch", "qwen2moe", "--preset", "tiny", "--layers", "1", "--dtype", "q8_0",
        "--seed", "3", "-o", p,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = stdout(&kiln(&["info", p]));
    std::fs::remove_file(&path).ok();
    assert!(info.contains("qwen2moe") && info.contains("Q8_0"), "{info}");
}

#[test]
fn errors_are_one_line() {
    let f32_model = model_path("qwen3-f32");
    let m = f32_model.to_str().unwrap();
    assert_one_line_error(
        &["info", "/nonexistent/model.gguf"],
        "/nonexistent/model.gguf",
    );
    assert_one_line_error(
        &["prefill", "-m", "/nonexistent/model.gguf", "--tokens", "1"],
        "cannot open",
    );

    let bytes = std::fs::read(&f32_model).unwrap();
    let truncated = temp_path("truncated.gguf");
    std::fs::write(&truncated, &bytes[..5000]).unwrap();
    assert_one_line_error(&["info", truncated.to_str().unwrap()], "truncated");

    let mut bad_dtype = bytes.clone();
    let f = open("qwen3-f32");
    // output.weight's info: name, n_dims (4 bytes), 2 dims (16 bytes), then the type.
    let name = b"output.weight";
    let pos = bytes.windows(name.len()).rposition(|w| w == name).unwrap();
    let ty_at = pos + name.len() + 4 + 2 * 8;
    bad_dtype[ty_at..ty_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let bad_dtype_path = temp_path("dtype.gguf");
    std::fs::write(&bad_dtype_path, &bad_dtype).unwrap();
    assert_one_line_error(
        &["info", bad_dtype_path.to_str().unwrap()],
        "unknown ggml type 77",
    );

    let arch = temp_path("arch.gguf");
    std::fs::write(
        &arch,
        rewrite(&f, |w| {
            w.set_kv("general.architecture", Value::String("mamba".into()))
        }),
    )
    .unwrap();
    assert_one_line_error(
        &["prefill", "-m", arch.to_str().unwrap(), "--tokens", "1"],
        "mamba",
    );

    let long = tokens_arg(&vec![1u32; 4097]);
    assert_one_line_error(&["prefill", "-m", m, "--tokens", &long], "ctx = 4096");
    assert_one_line_error(&["prefill", "-m", m, "--tokens", "1,512"], "vocab = 512");
    assert_one_line_error(&["synth", "--arch", "llama", "-o", "/tmp/x.gguf"], "llama");
    assert_one_line_error(&["synth", "--dtype", "q4_k", "-o", "/tmp/x.gguf"], "Q4_K");

    for p in [truncated, bad_dtype_path, arch] {
        std::fs::remove_file(p).ok();
    }
}

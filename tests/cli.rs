//! The `kiln` binary end to end: output on fixtures, and one-line errors with a non-zero exit
//! (never a panic) on bad input.

mod common;

use std::process::{Command, Output};

use common::{
    argmax, assert_one_line_error, assert_quiet_on_closed_stdout, kiln, model_path, open, prompt,
    reference, rewrite, temp_path, tokens_arg,
};
use kiln::gguf::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
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
    assert!(out.contains("prefill: 5 tokens"), "{out}");
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
            out.contains("device: CPU reference") && out.contains("no usable CUDA GPU"),
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
    assert_one_line_error(
        &["synth", "--arch", "gemma3", "-o", "/tmp/x.gguf"],
        "gemma3",
    );
    assert_one_line_error(&["synth", "--dtype", "q4_k", "-o", "/tmp/x.gguf"], "Q4_K");

    for p in [truncated, bad_dtype_path, arch] {
        std::fs::remove_file(p).ok();
    }
}

/// `kiln info` and `kiln prefill` (CPU) on the llama and qwen2 fixtures of tests/data: the arch,
/// RoPE pairing and LM head are shown; prefill's top-1 and dumped logits are the fixture's
/// (tolerance as tests/arch_fixtures.rs); a text prompt runs on each file's gpt2 vocabulary.
#[test]
fn llama_and_qwen2_fixtures_info_and_prefill() {
    for (name, rope, head, types) in [
        ("llama-legacy", "Norm", "output.weight", ["Q4_1", "IQ4_NL"]),
        ("qwen2-kquant", "Neox", "tied", ["Q3_K", "IQ4_XS"]),
    ] {
        let fx = common::arch_fixture(name);
        let path = common::test_data(&format!("{name}.gguf"));
        let p = path.to_str().unwrap();
        let o = kiln(&["info", p]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = stdout(&o);
        let arch = name.split('-').next().unwrap();
        for needle in [arch, rope, head, types[0], types[1]] {
            assert!(
                out.contains(needle),
                "{name}: info lacks {needle:?}:\n{out}"
            );
        }
        let npy = temp_path(&format!("{name}.npy"));
        let o = kiln(&[
            "prefill",
            "--device",
            "cpu",
            "-m",
            p,
            "--tokens",
            &tokens_arg(&fx.prompt),
            "--dump-logits",
            npy.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dumped = kiln::npy::read_f32(&npy).unwrap();
        std::fs::remove_file(&npy).ok();
        let want = &fx.want.data[(fx.prompt.len() - 1) * fx.cfg.vocab..];
        assert!(common::rel_l2_f32(&dumped.data, want) <= 1e-6, "{name}");
        let first = stdout(&o)
            .lines()
            .skip_while(|l| !l.starts_with("top-5"))
            .nth(1)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string());
        assert_eq!(first, Some(argmax(want).to_string()), "{name}");
        let o = kiln(&["prefill", "--device", "cpu", "-m", p, "-p", "hello world"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

// ---- issue 9: the CLI as a user meets it ----------------------------------------------------

#[test]
fn item1_output_into_a_closed_pipe_ends_quietly() {
    let m = model_path("qwen3moe-f32");
    assert_quiet_on_closed_stdout(&["prefill", "--device", "cpu"]);
    assert_quiet_on_closed_stdout(&["info", "--metadata", m.to_str().unwrap()]);
    assert_quiet_on_closed_stdout(&["--help"]);
}

#[test]
fn item2_synth_refuses_to_overwrite_without_force() {
    let path = temp_path("existing.gguf");
    std::fs::write(&path, b"keep me").unwrap();
    let p = path.to_str().unwrap();
    assert_one_line_error(&["synth", "-o", p], "already exists; pass --force");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let o = kiln(&["synth", "-o", p, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"GGUF");
    std::fs::remove_file(&path).ok();
    // No temporary is left beside it (only this file's: other tests of this process write
    // their own temporaries at the same time; seen on the GPU machine's 16 cores).
    let dir = std::env::temp_dir();
    let ours = format!(".{}", path.file_name().unwrap().to_string_lossy());
    let stray = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&ours));
    assert!(!stray, "a temporary was left in {}", dir.display());
}

#[test]
fn item3_options_that_would_do_nothing_are_errors() {
    assert_one_line_error(
        &["prefill", "--device", "cpu", "--check"],
        "--check applies to the GPU pipeline",
    );
    assert_one_line_error(
        &["prefill", "--device", "cpu", "--chunk", "4"],
        "--chunk applies to the GPU pipeline",
    );
    assert_one_line_error(&["prefill", "--chunk", "0"], "at least 1 token");
    assert_one_line_error(
        &["prefill", "--wave-budget-mib", "0"],
        "--wave-budget-mib was removed",
    );
    assert_one_line_error(
        &["prefill", "--all-logits"],
        "--all-logits only changes what --dump-logits writes",
    );
    // Without a GPU, `auto` cannot honour --check either, and says so instead of skipping it.
    if kiln::gpu::Device::cuda().is_err() {
        assert_one_line_error(&["prefill", "--check"], "--device emulator");
    }
}

#[test]
fn item4_bad_paths_fail_before_the_work() {
    let dir = std::env::temp_dir();
    assert_one_line_error(
        &["prefill", "-m", dir.to_str().unwrap()],
        "is a directory, not a GGUF file",
    );
    assert_one_line_error(&["info", dir.to_str().unwrap()], "is a directory");
    let o = kiln(&["prefill", "--dump-logits", "/nonexistent-dir/logits.npy"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.starts_with("error: cannot create --dump-logits /nonexistent-dir/logits.npy"),
        "{err}"
    );
    assert!(!err.contains("read/write"), "{err}");
    assert!(stdout(&o).is_empty(), "work ran first:\n{}", stdout(&o));
    assert_one_line_error(
        &["prefill", "--dump-logits", dir.to_str().unwrap()],
        "is a directory",
    );
}

/// qwen3-f32 with `blk.0.attn_q.weight` stored as IQ2_XXS (a ggml type kiln does not run).
fn iq2_xxs_model() -> std::path::PathBuf {
    let f = open("qwen3-f32");
    let bytes = rewrite(&f, |w| {
        let t = w
            .tensors_mut()
            .iter_mut()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        t.dtype = kiln::gguf::GgmlType::IQ2_XXS;
    });
    let path = temp_path("iq2_xxs.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn item5_unsupported_types_are_named_and_info_still_lists_the_file() {
    let path = iq2_xxs_model();
    let p = path.to_str().unwrap();
    let o = kiln(&["info", "--metadata", p]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("general.architecture"), "no metadata:\n{out}");
    assert!(
        out.contains("blk.0.ffn_down.weight"),
        "no tensor table:\n{out}"
    );
    let q = out
        .lines()
        .find(|l| l.starts_with("blk.0.attn_q.weight"))
        .expect("the IQ2_XXS tensor's row");
    assert!(q.contains("IQ2_XXS"), "{q}");
    assert!(
        out.contains("kiln cannot run 1 tensor(s)")
            && out.contains("blk.0.attn_q.weight (IQ2_XXS)"),
        "{out}"
    );
    assert_one_line_error(
        &["prefill", "-m", p, "--tokens", "1"],
        &format!(
            "blk.0.attn_q.weight (IQ2_XXS) (kiln runs {})",
            kiln::gguf::GgmlType::supported_list()
        ),
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn item6_one_device_vocabulary_and_one_fallback_line() {
    // cuda (alias gpu), cpu, emulator and auto are words of every subcommand.
    for args in [
        &["prefill", "--device", "cuda", "--tokens", "1"][..],
        &["prefill", "--device", "gpu", "--tokens", "1"][..],
        &["bench", "--device", "gpu", "--lengths", "0"][..],
        &["bench", "--device", "cuda", "--lengths", "0"][..],
        &["bench", "--device", "auto", "--lengths", "0"][..],
    ] {
        let err = String::from_utf8_lossy(&kiln(args).stderr).into_owned();
        assert!(!err.contains("invalid value"), "{args:?}: {err}");
    }
    assert_one_line_error(
        &["bench", "--device", "cpu"],
        "kiln bench measures the GPU pipeline",
    );
    if kiln::gpu::Device::cuda().is_ok() {
        return;
    }
    let o = kiln(&["prefill"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let device_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("device:")).collect();
    assert_eq!(device_lines.len(), 1, "{out}");
    assert!(device_lines[0].contains("CPU reference"), "{out}");
    assert!(
        !out.contains("--device cpu"),
        "advises the CPU while on it:\n{out}"
    );
    assert_one_line_error(&["prefill", "--device", "cuda"], "--device emulator");
}

#[test]
fn item7_byte_tokens_print_as_hex_and_text_is_escaped() {
    let m = model_path("qwen3moe-f32");
    let o = kiln(&[
        "prefill",
        "--device",
        "cpu",
        "-m",
        m.to_str().unwrap(),
        "--tokens",
        "1,2,3",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let top: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("top-5"))
        .skip(1)
        .collect();
    assert_eq!(top.len(), 5, "{out}");
    // With this prompt two of the five are lone bytes of multi-byte characters.
    assert!(top.iter().any(|l| l.ends_with("\"<0xAB>\"")), "{out}");
    assert!(top.iter().any(|l| l.ends_with("\"<0x85>\"")), "{out}");
    assert!(!out.contains('\u{FFFD}') && !out.contains("\\u{"), "{out}");
}

#[test]
fn item8_token_lists_and_the_tokens_hint() {
    let m = model_path("qwen3moe-f32");
    let m = m.to_str().unwrap();
    let o = kiln(&["prefill", "--device", "cpu", "-m", m, "--tokens", "1, 2,3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("prefill: 3 tokens"), "{}", stdout(&o));
    assert_one_line_error(
        &["prefill", "-m", m, "--tokens", "-1,2"],
        "\"-1\" is not a token id",
    );
    assert_one_line_error(&["prefill", "-m", m, "--tokens", "1,x"], "\"x\"");
    let f = open("qwen3moe-f32");
    let no_tok = temp_path("no-tokenizer.gguf");
    std::fs::write(
        &no_tok,
        rewrite(&f, |w| {
            for k in ["tokenizer.ggml.model", "tokenizer.ggml.tokens"] {
                w.remove_kv(k);
            }
        }),
    )
    .unwrap();
    assert_one_line_error(
        &["prefill", "-m", no_tok.to_str().unwrap(), "-p", "hello"],
        "give the prompt as token ids instead (--tokens 1,2,3)",
    );
    std::fs::remove_file(&no_tok).ok();
}

#[test]
fn item9_progress_on_a_pipe_and_separate_times() {
    let path = temp_path("progress.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["synth", "--force", "-o", path.to_str().unwrap()])
        .env("KILN_PROGRESS_EVERY_S", "0")
        .output()
        .expect("running kiln");
    std::fs::remove_file(&path).ok();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("synth: 1/27 tensors"),
        "no progress lines:\n{err}"
    );
    assert!(err.contains("synth: done, 27 tensors"), "{err}");

    let o = kiln(&["prefill", "--device", "emulator", "--tokens", "1,2"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for phase in ["load: ", "upload: ", "prefill: 2 tokens", "time: "] {
        assert!(
            out.lines().any(|l| l.starts_with(phase)),
            "no {phase:?} line:\n{out}"
        );
    }
    let time = out.lines().find(|l| l.starts_with("time: ")).unwrap();
    for part in ["load ", "upload ", "warm-up ", "prefill "] {
        assert!(time.contains(part), "{time}");
    }
}

#[test]
fn item11_metadata_of_the_wrong_type_is_rejected_naming_the_key() {
    let f = open("qwen3moe-f32");
    type Edit = Box<dyn FnOnce(&mut kiln::gguf::GgufWriter)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "token types as U8",
            Box::new(|w| {
                let n = 512;
                w.set_kv(
                    "tokenizer.ggml.token_type",
                    Value::Array(kiln::gguf::ValueType::U8, vec![Value::U8(1); n]),
                )
            }),
            "\"tokenizer.ggml.token_type\": the GGUF spec makes it an array of I32",
        ),
        (
            "tokens that are not strings",
            Box::new(|w| {
                w.set_kv(
                    "tokenizer.ggml.tokens",
                    Value::Array(kiln::gguf::ValueType::U32, vec![Value::U32(7); 512]),
                )
            }),
            "\"tokenizer.ggml.tokens\": the GGUF spec makes it an array of String",
        ),
        (
            "a negative block count",
            Box::new(|w| w.set_kv("qwen3moe.block_count", Value::I32(-2))),
            "\"qwen3moe.block_count\": the GGUF spec makes it a U32 or U64, the file has I32",
        ),
        (
            "an integer rope base",
            Box::new(|w| w.set_kv("qwen3moe.rope.freq_base", Value::U32(10000))),
            "\"qwen3moe.rope.freq_base\": the GGUF spec makes it an F32",
        ),
        (
            "a zero epsilon",
            Box::new(|w| w.set_kv("qwen3moe.attention.layer_norm_rms_epsilon", Value::F32(0.0))),
            "layer_norm_rms_epsilon 0 must be positive",
        ),
        (
            "a zero context length",
            Box::new(|w| w.set_kv("qwen3moe.context_length", Value::U32(0))),
            "qwen3moe.context_length = 0 is out of range",
        ),
    ];
    for (what, edit, needle) in cases {
        let path = temp_path("meta.gguf");
        std::fs::write(&path, rewrite(&f, edit)).unwrap();
        let p = path.to_str().unwrap();
        let o = kiln(&["prefill", "--device", "cpu", "-m", p, "--tokens", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: accepted");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
        std::fs::remove_file(&path).ok();
    }
}

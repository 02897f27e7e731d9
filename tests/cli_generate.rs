//! `kiln generate` end to end: the streamed text is the tokens the library generates, the
//! report (stop reason, prompt and generation speeds, time to first token) is on stderr, the
//! three stop reasons, `--chat`, and bad options as one-line errors.

mod common;

use std::process::Output;

use common::{
    assert_one_line_error, assert_quiet_on_closed_stdout, kiln, load, model_path, open, prompt,
    rewrite, temp_path, tokens_arg,
};
use kiln::generate::{GenerateOptions, PipelineDecoder, ReferenceDecoder, generate};
use kiln::gguf::Value;
use kiln::tokenizer::Tokenizer;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn greedy(max_new: usize) -> GenerateOptions {
    GenerateOptions {
        max_new,
        sampling: Default::default(),
        stop: Vec::new(),
        keep_logits: false,
    }
}

/// The bytes `kiln generate` should stream for `tokens`: each token's bytes, then a newline.
fn text_of(tok: &Tokenizer, tokens: &[u32]) -> Vec<u8> {
    let mut out: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| tok.token_bytes(t).unwrap())
        .collect();
    out.push(b'\n');
    out
}

#[test]
fn generate_on_the_cpu_streams_the_library_tokens_and_reports_on_stderr() {
    let (file, cfg, w) = load("qwen3moe-f32");
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let p = prompt("p5");
    let mut dec = ReferenceDecoder::new(&cfg, &w);
    let want = generate(&mut dec, &p, cfg.ctx, &greedy(8), &mut |_| Ok(())).unwrap();
    let m = model_path("qwen3moe-f32");
    let args = ["generate", "--device", "cpu", "-m", m.to_str().unwrap()];
    let o = kiln(&[&args[..], &["--tokens", &tokens_arg(&p), "-n", "8"]].concat());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(o.stdout, text_of(&tok, &want.tokens), "{err}");
    for needle in [
        "device: CPU reference",
        "stop: 8 tokens generated (-n 8)",
        "prompt: 5 tokens,",
        "generation: 8 tokens, 7 decode steps,",
        "time to first token: ",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

#[test]
fn generate_on_the_emulator_in_chunks() {
    let (file, cfg, w) = load("qwen3-f32");
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let p = &prompt("p33")[..6];
    let dev = kiln::gpu::Device::emulator();
    let model = kiln::pipeline::GpuModel::upload(&dev, &cfg, &w, &|_| {}).unwrap();
    let mut dec = PipelineDecoder::new(&model, &dev, p.len(), p.len() + 3, Some(4)).unwrap();
    let want = generate(&mut dec, p, p.len() + 3, &greedy(4), &mut |_| Ok(())).unwrap();
    let m = model_path("qwen3-f32");
    let o = kiln(&[
        "generate",
        "--device",
        "emulator",
        "-m",
        m.to_str().unwrap(),
        "--tokens",
        &tokens_arg(p),
        "-n",
        "4",
        "--chunk",
        "4",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(o.stdout, text_of(&tok, &want.tokens), "{err}");
    assert!(err.contains("device: CPU emulator"), "{err}");
    assert!(err.contains("stop: 4 tokens generated"), "{err}");
}

/// An end-of-text token stops the text (and is not printed); so does the context's end.
#[test]
fn generate_stops_at_end_of_text_and_at_the_context_end() {
    let (file, cfg, w) = load("qwen3-f32");
    let p = prompt("p5");
    let mut dec = ReferenceDecoder::new(&cfg, &w);
    let first = generate(&mut dec, &p, cfg.ctx, &greedy(1), &mut |_| Ok(()))
        .unwrap()
        .tokens[0];
    let run = |edit: Box<dyn FnOnce(&mut kiln::gguf::GgufWriter)>, n: &str| {
        let path = temp_path(&format!("gen-stop-{n}.gguf"));
        std::fs::write(&path, rewrite(&file, edit)).unwrap();
        let o = kiln(&[
            "generate",
            "--device",
            "cpu",
            "-m",
            path.to_str().unwrap(),
            "--tokens",
            &tokens_arg(&p),
            "-n",
            n,
        ]);
        std::fs::remove_file(&path).ok();
        o
    };
    let o = run(
        Box::new(move |w| w.set_kv("tokenizer.ggml.eos_token_id", Value::U32(first))),
        "8",
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(o.stdout.is_empty(), "{:?}", o.stdout);
    assert!(
        err.contains(&format!("stop: end-of-text token {first} ")),
        "{err}"
    );
    assert!(
        err.contains("generation: 1 tokens, 0 decode steps"),
        "{err}"
    );
    let o = run(
        Box::new(|w| w.set_kv("qwen3.context_length", Value::U32(7))),
        "10",
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("stop: the context is full (ctx = 7 positions)"),
        "{err}"
    );
    assert!(
        err.contains("generation: 3 tokens, 2 decode steps"),
        "{err}"
    );
}

/// `--chat` wraps the message in ChatML when the template is ChatML, and otherwise says so.
#[test]
fn chat_needs_a_chatml_template() {
    let f = open("qwen3-f32");
    let chatml =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    let path = temp_path("chatml.gguf");
    std::fs::write(
        &path,
        rewrite(&f, |w| {
            w.set_kv("tokenizer.chat_template", Value::String(chatml.into()))
        }),
    )
    .unwrap();
    let o = kiln(&[
        "generate",
        "--device",
        "cpu",
        "-m",
        path.to_str().unwrap(),
        "--chat",
        "-p",
        "hi",
        "-n",
        "2",
    ]);
    std::fs::remove_file(&path).ok();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(chat).unwrap();
    assert_eq!(
        ids[0],
        tok.id_of("<|im_start|>").unwrap(),
        "a control token"
    );
    let want = format!("prompt: {} tokens,", ids.len());
    assert!(err.contains(&want), "{err}");

    let path = temp_path("llama3-template.gguf");
    let other = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}";
    std::fs::write(
        &path,
        rewrite(&f, |w| {
            w.set_kv("tokenizer.chat_template", Value::String(other.into()))
        }),
    )
    .unwrap();
    let p = path.to_str().unwrap().to_string();
    assert_one_line_error(
        &[
            "generate", "--device", "cpu", "-m", &p, "--chat", "-p", "hi",
        ],
        "not ChatML",
    );
    std::fs::remove_file(&path).ok();
    let m = model_path("qwen3-f32");
    assert_one_line_error(
        &[
            "generate",
            "--device",
            "cpu",
            "-m",
            m.to_str().unwrap(),
            "--chat",
            "-p",
            "hi",
        ],
        "no chat template",
    );
}

#[test]
fn bad_generate_options_are_one_line_errors() {
    let m = model_path("qwen3-f32");
    let m = m.to_str().unwrap();
    let base = ["generate", "--device", "cpu", "-m", m, "--tokens", "1,2"];
    let cases: &[(&[&str], &str)] = &[
        (&["-n", "0"], "at least 1 token"),
        (&["-n", "x"], "not a positive integer"),
        (&["--temp", "-1"], "not a temperature"),
        (&["--temp", "nan"], "not a temperature"),
        (&["--temp", "1", "--top-k", "0"], "not a top-k"),
        (&["--temp", "1", "--top-p", "1.5"], "not a top-p"),
        (&["--top-k", "5"], "--top-k applies to sampling"),
        (&["--seed", "5"], "--seed applies to sampling"),
        (
            &["--temp", "0", "--top-p", "0.5"],
            "--top-p applies to sampling",
        ),
        (&["--chunk", "2"], "--chunk applies to the GPU pipeline"),
        (&["--chat"], "--chat wraps a text prompt"),
        (&["--tokens", "512"], "out of range"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        if extra.first() == Some(&"--tokens") {
            args.truncate(5);
        }
        args.extend_from_slice(extra);
        assert_one_line_error(&args, needle);
    }
}

#[test]
fn generate_output_into_a_closed_pipe_ends_quietly() {
    assert_quiet_on_closed_stdout(&["generate", "--device", "cpu", "-n", "3"]);
}

/// With `auto`, the device line (and its fallback notice) goes to stderr: stdout is the text.
#[test]
fn generate_keeps_stdout_for_the_text() {
    let o = kiln(&["generate", "--tokens", "1,2,3", "-n", "2"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert!(err.contains("device: "), "{err}");
    for word in ["device:", "model:", "stop:", "prompt:"] {
        assert!(!out.contains(word), "stdout has {word:?}: {out:?}");
    }
    assert!(out.lines().count() <= 1, "{out:?}");
}

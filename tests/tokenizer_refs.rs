//! The GGUF tokenizers against an independent implementation: tests/data/tok-*.gguf hold
//! vocabularies trained by scripts/make_tokenizer_refs.py (HF `tokenizers` byte-level BPE for
//! each gpt2 pre-tokenizer, `sentencepiece` BPE for llama), and tests/data/tok-refs.json the
//! ids those libraries give a set of tricky texts.

mod common;

use common::{rewrite, test_data};
use kiln::gguf::{GgufFile, Value};
use kiln::tokenizer::{Tokenizer, TokenizerError};

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_bos: Vec<u32>,
}

struct RefFile {
    name: String,
    model: String,
    add_bos: bool,
    vocab: usize,
    cases: Vec<Case>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn refs() -> Vec<RefFile> {
    let text = std::fs::read_to_string(test_data("tok-refs.json")).expect("tok-refs.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("tok-refs.json parses");
    let files = json["files"].as_object().expect("files");
    files
        .iter()
        .map(|(name, f)| RefFile {
            name: name.clone(),
            model: f["model"].as_str().unwrap().to_string(),
            add_bos: f["add_bos"].as_bool().unwrap(),
            vocab: f["vocab"].as_u64().unwrap() as usize,
            cases: f["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| Case {
                    text: c["text"].as_str().unwrap().to_string(),
                    ids: ids(&c["ids"]),
                    ids_with_bos: ids(&c["ids_with_bos"]),
                })
                .collect(),
        })
        .collect()
}

fn open(name: &str) -> GgufFile {
    GgufFile::open(test_data(name)).unwrap_or_else(|e| panic!("opening {name}: {e}"))
}

fn edited(name: &str, edit: impl FnOnce(&mut kiln::gguf::GgufWriter)) -> GgufFile {
    GgufFile::from_bytes(rewrite(&open(name), edit)).expect("the edited file reads back")
}

fn with_specials(text: &str) -> bool {
    ["<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>"]
        .iter()
        .any(|s| text.contains(s))
}

#[test]
fn every_vocabulary_tokenizes_as_the_reference_library() {
    let refs = refs();
    let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    for want in [
        "tok-gpt2-qwen2.gguf",
        "tok-gpt2-llama-bpe.gguf",
        "tok-gpt2-smollm.gguf",
        "tok-gpt2-default.gguf",
        "tok-spm-llama.gguf",
    ] {
        assert!(names.contains(&want), "tok-refs.json lacks {want}");
    }
    let mut failures = Vec::new();
    for r in &refs {
        let tok =
            Tokenizer::from_gguf(&open(&r.name)).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        assert_eq!(tok.vocab_size(), r.vocab, "{}", r.name);
        assert!(tok.notes().is_empty(), "{}: {:?}", r.name, tok.notes());
        assert_eq!(tok.bos().is_some(), r.add_bos, "{}", r.name);
        for c in &r.cases {
            let got = tok.encode(&c.text).unwrap();
            if got != c.ids {
                failures.push(format!(
                    "{} {:?}:\n  got  {got:?}\n  want {:?}",
                    r.name, c.text, c.ids
                ));
            }
            let got = tok.encode_prompt(&c.text).unwrap();
            if got != c.ids_with_bos {
                failures.push(format!(
                    "{} {:?} (prompt, add_bos = {}):\n  got  {got:?}\n  want {:?}",
                    r.name, c.text, r.add_bos, c.ids_with_bos
                ));
            }
            if !with_specials(&c.text) && tok.decode(&c.ids) != c.text {
                failures.push(format!(
                    "{} {:?}: decodes to {:?}",
                    r.name,
                    c.text,
                    tok.decode(&c.ids)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The references exercise what they are meant to: byte fallback on the SentencePiece
/// vocabulary, and on Llama 3's the whole-word token that merges alone would not build.
#[test]
fn references_cover_byte_fallback_and_ignore_merges() {
    let refs = refs();
    let spm = refs.iter().find(|r| r.model == "llama").unwrap();
    let tok = Tokenizer::from_gguf(&open(&spm.name)).unwrap();
    let bytes = spm
        .cases
        .iter()
        .flat_map(|c| &c.ids)
        .filter(|&&id| {
            tok.display_token(id).starts_with("\"<0x") || tok.decode_token(id).len() == 1
        })
        .count();
    assert!(bytes > 0);
    let emoji = tok.encode("🦀").unwrap();
    // "▁" then four byte tokens: the crab is in no piece.
    assert_eq!(emoji.len(), 5, "{emoji:?}");
    assert_eq!(tok.decode(&emoji), "🦀");
    let l3 = Tokenizer::from_gguf(&open("tok-gpt2-llama-bpe.gguf")).unwrap();
    assert_eq!(
        l3.encode(" supercalifragilistic").unwrap(),
        vec![l3.vocab_size() as u32 - 1]
    );
}

#[test]
fn unknown_pre_tokenizer_is_an_error_and_a_missing_one_is_noted() {
    let f = edited("tok-gpt2-qwen2.gguf", |w| {
        w.set_kv("tokenizer.ggml.pre", Value::String("no-such-pre".into()))
    });
    let err = Tokenizer::from_gguf(&f)
        .err()
        .expect("an unknown pre is refused");
    assert!(matches!(err, TokenizerError::UnknownPre(_)), "{err}");
    let msg = err.to_string();
    for needle in ["no-such-pre", "qwen2", "llama-bpe", "smollm", "default"] {
        assert!(msg.contains(needle), "{msg}");
    }
    // Missing: llama.cpp's fallback to 'default', said out loud.
    let f = edited("tok-gpt2-default.gguf", |w| {
        w.remove_kv("tokenizer.ggml.pre")
    });
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert_eq!(tok.notes().len(), 1);
    assert!(tok.notes()[0].contains("default"), "{:?}", tok.notes());
    let r = refs()
        .into_iter()
        .find(|r| r.name == "tok-gpt2-default.gguf")
        .unwrap();
    for c in &r.cases {
        assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "{:?}", c.text);
    }
}

/// `tokenizer.ggml.add_bos_token` overrides each model's default either way.
#[test]
fn add_bos_token_key_overrides_the_default() {
    for (name, add) in [
        ("tok-gpt2-llama-bpe.gguf", false),
        ("tok-spm-llama.gguf", false),
        ("tok-gpt2-qwen2.gguf", true),
    ] {
        let f = edited(name, |w| {
            w.set_kv("tokenizer.ggml.add_bos_token", Value::Bool(add))
        });
        let bos = f.get_u32("tokenizer.ggml.bos_token_id").unwrap();
        let tok = Tokenizer::from_gguf(&f).unwrap();
        let plain = tok.encode("Hello world").unwrap();
        let prompt = tok.encode_prompt("Hello world").unwrap();
        if add {
            assert_eq!(prompt[0], bos, "{name}");
            assert_eq!(&prompt[1..], &plain[..], "{name}");
        } else {
            assert_eq!(prompt, plain, "{name}");
        }
    }
    // Asking for BOS without naming it is malformed, not a silent guess (gpt2 has no default).
    let f = edited("tok-gpt2-qwen2.gguf", |w| {
        w.set_kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
        w.remove_kv("tokenizer.ggml.bos_token_id");
    });
    assert!(Tokenizer::from_gguf(&f).is_err());
}

#[test]
fn malformed_vocabularies_are_errors() {
    let no_scores = edited("tok-spm-llama.gguf", |w| {
        w.remove_kv("tokenizer.ggml.scores")
    });
    let err = Tokenizer::from_gguf(&no_scores)
        .err()
        .expect("scores are needed");
    assert!(err.to_string().contains("scores"), "{err}");
    let short = edited("tok-spm-llama.gguf", |w| {
        w.set_kv(
            "tokenizer.ggml.scores",
            Value::Array(kiln::gguf::ValueType::F32, vec![Value::F32(0.0); 3]),
        )
    });
    assert!(Tokenizer::from_gguf(&short).is_err());
    let bad_bos = edited("tok-spm-llama.gguf", |w| {
        w.set_kv("tokenizer.ggml.bos_token_id", Value::U32(1_000_000))
    });
    assert!(Tokenizer::from_gguf(&bad_bos).is_err());
    let other = edited("tok-spm-llama.gguf", |w| {
        w.set_kv("tokenizer.ggml.model", Value::String("bert".into()))
    });
    assert!(matches!(
        Tokenizer::from_gguf(&other),
        Err(TokenizerError::UnsupportedModel(_))
    ));
}

/// `kiln prefill --prompt` on the llama fixture: the BOS the vocabulary asks for is added, a
/// missing pre-tokenizer is a note on stderr, an unknown one a one-line error.
#[test]
fn prefill_prompt_follows_the_vocabulary() {
    let f = open("llama-legacy.gguf");
    let run = |name: &str, edit: &dyn Fn(&mut kiln::gguf::GgufWriter)| {
        let path = common::temp_path(name);
        std::fs::write(&path, rewrite(&f, edit)).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["prefill", "--device", "cpu", "-m"])
            .arg(&path)
            .args(["-p", "hello world"])
            .output()
            .expect("running kiln");
        std::fs::remove_file(&path).ok();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.success(), out, err)
    };
    let n_tokens = |out: &str| -> usize {
        out.lines()
            .find_map(|l| l.strip_prefix("prefill: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no token count in {out}"))
    };
    let (ok, plain, err) = run("tok-plain.gguf", &|_| {});
    assert!(ok, "{err}");
    let (ok, bos, err) = run("tok-bos.gguf", &|w| {
        w.set_kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
    });
    assert!(ok, "{err}");
    assert_eq!(n_tokens(&bos), n_tokens(&plain) + 1);
    let (ok, _, err) = run("tok-no-pre.gguf", &|w| w.remove_kv("tokenizer.ggml.pre"));
    assert!(ok, "{err}");
    assert!(
        err.contains("note:") && err.contains("tokenizer.ggml.pre"),
        "{err}"
    );
    let (ok, _, err) = run("tok-bad-pre.gguf", &|w| {
        w.set_kv("tokenizer.ggml.pre", Value::String("no-such-pre".into()))
    });
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("\"no-such-pre\""),
        "{err}"
    );
}

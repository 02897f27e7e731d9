//! The metadata keys kiln knows and the types the GGUF spec gives them, checked when a file is
//! parsed: a value of another type (an array of tokens whose elements are not strings, token
//! types stored as another integer type, a signed or floating hyperparameter) is rejected
//! there, naming the key, rather than reinterpreted later. Element-type confusion in arrays
//! is a class of past llama.cpp advisories.
//!
//! Unsigned integer hyperparameters accept u32 or u64: the spec lists some as uint64
//! (`context_length`, `block_count`, …) while llama.cpp's own writer (gguf-py) stores them as
//! uint32, and files of both kinds exist. Everything else must be the spec's type exactly.

use super::types::{Value, ValueType};
use super::{GgufError, Result};

/// What a known key must hold.
#[derive(Clone, Copy, Debug)]
enum Expected {
    Str,
    Bool,
    F32,
    U32,
    /// u32 or u64 (see the module comment).
    Unsigned,
    ArrayOf(ValueType),
}

impl Expected {
    fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (Expected::Str, Value::String(_)) => true,
            (Expected::Bool, Value::Bool(_)) => true,
            (Expected::F32, Value::F32(_)) => true,
            (Expected::U32, Value::U32(_)) => true,
            (Expected::Unsigned, Value::U32(_) | Value::U64(_)) => true,
            (Expected::ArrayOf(want), Value::Array(elem, _)) => *elem == want,
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Expected::Str => "a string".into(),
            Expected::Bool => "a bool".into(),
            Expected::F32 => "an F32".into(),
            Expected::U32 => "a U32".into(),
            Expected::Unsigned => "a U32 or U64".into(),
            Expected::ArrayOf(t) => format!("an array of {t:?}"),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(t, items) => format!("an array of {} {t:?}", items.len()),
        other => format!("{:?}", other.value_type()),
    }
}

/// Keys outside any architecture's namespace.
const GLOBAL: &[(&str, Expected)] = {
    use Expected::*;
    &[
        ("general.architecture", Str),
        ("general.name", Str),
        ("general.basename", Str),
        ("general.finetune", Str),
        ("general.author", Str),
        ("general.organization", Str),
        ("general.version", Str),
        ("general.description", Str),
        ("general.license", Str),
        ("general.url", Str),
        ("general.size_label", Str),
        ("general.quantized_by", Str),
        ("general.alignment", U32),
        ("general.file_type", U32),
        ("general.quantization_version", U32),
        ("tokenizer.ggml.model", Str),
        ("tokenizer.ggml.pre", Str),
        ("tokenizer.ggml.tokens", ArrayOf(ValueType::String)),
        ("tokenizer.ggml.token_type", ArrayOf(ValueType::I32)),
        ("tokenizer.ggml.scores", ArrayOf(ValueType::F32)),
        ("tokenizer.ggml.merges", ArrayOf(ValueType::String)),
        ("tokenizer.ggml.added_tokens", ArrayOf(ValueType::String)),
        ("tokenizer.ggml.bos_token_id", U32),
        ("tokenizer.ggml.eos_token_id", U32),
        ("tokenizer.ggml.unknown_token_id", U32),
        ("tokenizer.ggml.separator_token_id", U32),
        ("tokenizer.ggml.padding_token_id", U32),
        ("tokenizer.ggml.add_bos_token", Bool),
        ("tokenizer.ggml.add_eos_token", Bool),
        ("tokenizer.chat_template", Str),
    ]
};

/// Keys in the architecture's namespace (`{general.architecture}.KEY`).
const PER_ARCH: &[(&str, Expected)] = {
    use Expected::*;
    &[
        ("context_length", Unsigned),
        ("embedding_length", Unsigned),
        ("block_count", Unsigned),
        ("feed_forward_length", Unsigned),
        ("expert_feed_forward_length", Unsigned),
        ("expert_shared_feed_forward_length", Unsigned),
        ("expert_count", Unsigned),
        ("expert_used_count", Unsigned),
        ("attention.head_count", Unsigned),
        ("attention.head_count_kv", Unsigned),
        ("attention.key_length", Unsigned),
        ("attention.value_length", Unsigned),
        ("attention.layer_norm_epsilon", F32),
        ("attention.layer_norm_rms_epsilon", F32),
        ("rope.dimension_count", Unsigned),
        ("rope.freq_base", F32),
        ("rope.scale_linear", F32),
        ("rope.scaling.factor", F32),
    ]
};

/// Fails on the first known key (in file order) whose value has another type than the spec's.
pub(super) fn check_types(metadata: &[(String, Value)]) -> Result<()> {
    let arch = metadata
        .iter()
        .find(|(k, _)| k == "general.architecture")
        .and_then(|(_, v)| v.as_str());
    for (key, value) in metadata {
        let expected = GLOBAL
            .iter()
            .find(|(k, _)| k == key)
            .or_else(|| {
                let rest = key.strip_prefix(arch?)?.strip_prefix('.')?;
                PER_ARCH.iter().find(|(k, _)| *k == rest)
            })
            .map(|&(_, e)| e);
        if let Some(e) = expected.filter(|e| !e.accepts(value)) {
            return Err(GgufError::KeyType {
                key: key.clone(),
                expected: e.describe(),
                found: describe(value),
            });
        }
    }
    Ok(())
}

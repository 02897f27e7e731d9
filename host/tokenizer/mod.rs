//! Tokenizers from a GGUF's embedded vocabulary, as llama.cpp runs them:
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE with merges by rank, after the pre-tokenizer
//!   split that `tokenizer.ggml.pre` names (see [`bpe`]: `qwen2`, `llama-bpe`, `smollm`,
//!   `default` and their llama.cpp aliases);
//! - `tokenizer.ggml.model = llama`: SentencePiece BPE with merges by score, the `▁` space
//!   convention and byte fallback to `<0xNN>` tokens (see [`spm`]).
//!
//! Control, user-defined and unknown-type tokens written in the text are matched literally
//! first (llama.cpp's `parse_special`); the text between them goes through the model. A BOS
//! (and EOS) token is added when the GGUF asks for it (`tokenizer.ggml.add_bos_token`, with
//! llama.cpp's defaults: on for `llama` and Llama 3 vocabularies, off for other gpt2 ones).

mod bpe;
mod spm;

use std::collections::HashMap;

use crate::gguf::{GgufError, GgufFile, Value};

pub use bpe::{PreTokenizer, byte_alphabet};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "unsupported tokenizer model {0:?} (kiln supports gpt2 byte-level BPE and llama \
         SentencePiece BPE)"
    )]
    UnsupportedModel(String),
    #[error(
        "unknown pre-tokenizer tokenizer.ggml.pre = {0:?}; kiln knows {known}",
        known = bpe::known_pre()
    )]
    UnknownPre(String),
    #[error("tokenizer metadata: {0}")]
    Malformed(String),
    #[error("text piece {0:?} has no token in the vocabulary")]
    NoToken(String),
}

enum Model {
    Bpe(Box<bpe::Bpe>),
    Spm(Box<spm::Spm>),
}

/// The vocabulary shared by both models.
struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Token types (empty when the file has none).
    types: Vec<i64>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    fn token_type(&self, id: u32) -> i64 {
        self.types.get(id as usize).copied().unwrap_or(1)
    }
}

pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    /// Tokens matched literally in the text before tokenizing, longest first.
    specials: Vec<(String, u32)>,
    bos: Option<u32>,
    eos: Option<u32>,
    notes: Vec<String>,
}

fn strings(values: &[Value], key: &str) -> Result<Vec<String>, TokenizerError> {
    values
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::Malformed(format!("{key} holds a non-string")))
        })
        .collect()
}

/// An optional bool key; a present key of another type is an error.
fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match f.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(f.get_bool(key)?)),
    }
}

/// An optional token id key, checked against the vocabulary size.
fn opt_id(f: &GgufFile, key: &str, n: usize) -> Result<Option<u32>, TokenizerError> {
    if f.get(key).is_none() {
        return Ok(None);
    }
    let id = f.get_u32(key)?;
    if id as usize >= n {
        return Err(TokenizerError::Malformed(format!(
            "{key} = {id} is outside the vocabulary ({n} tokens)"
        )));
    }
    Ok(Some(id))
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let model_name = f.get_str("tokenizer.ggml.model")?;
        if model_name != "gpt2" && model_name != "llama" {
            return Err(TokenizerError::UnsupportedModel(model_name.to_string()));
        }
        let tokens = strings(
            f.get_array("tokenizer.ggml.tokens")?,
            "tokenizer.ggml.tokens",
        )?;
        let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
            Some(Value::Array(_, v)) => v
                .iter()
                .map(|x| match x {
                    Value::I32(t) => i64::from(*t),
                    other => other.as_u64().map_or(-1, |t| t as i64),
                })
                .collect(),
            _ => Vec::new(),
        };
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let vocab = Vocab { tokens, ids, types };
        let n = vocab.tokens.len();
        let mut notes = Vec::new();
        let (model, default_bos, bos_fallback) = if model_name == "gpt2" {
            let pre = match f.get("tokenizer.ggml.pre") {
                None => {
                    notes.push(
                        "the GGUF has no tokenizer.ggml.pre; using llama.cpp's fallback, the \
                         'default' pre-tokenizer (text may tokenize unlike the original model)"
                            .to_string(),
                    );
                    PreTokenizer::DEFAULT
                }
                Some(_) => {
                    let name = f.get_str("tokenizer.ggml.pre")?;
                    PreTokenizer::from_name(name)
                        .ok_or_else(|| TokenizerError::UnknownPre(name.to_string()))?
                }
            };
            let merges = strings(
                f.get_array("tokenizer.ggml.merges")?,
                "tokenizer.ggml.merges",
            )?;
            let bpe = bpe::Bpe::new(pre, &merges)?;
            (Model::Bpe(Box::new(bpe)), pre.adds_bos(), None)
        } else {
            let scores: Vec<f32> = match f.get("tokenizer.ggml.scores") {
                Some(Value::Array(_, v)) => v
                    .iter()
                    .map(|x| x.as_f64().map(|s| s as f32))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        TokenizerError::Malformed("tokenizer.ggml.scores holds a non-number".into())
                    })?,
                _ => {
                    return Err(TokenizerError::Malformed(
                        "a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores".into(),
                    ));
                }
            };
            if scores.len() < n {
                return Err(TokenizerError::Malformed(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    scores.len()
                )));
            }
            let space_prefix = opt_bool(f, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let spm = spm::Spm::new(&vocab, scores, space_prefix);
            // llama.cpp's default ids for SentencePiece vocabularies: BOS 1.
            (Model::Spm(Box::new(spm)), true, (n > 1).then_some(1))
        };
        let add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos);
        let add_eos = opt_bool(f, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let bos_id = opt_id(f, "tokenizer.ggml.bos_token_id", n)?.or(bos_fallback);
        let eos_id = opt_id(f, "tokenizer.ggml.eos_token_id", n)?;
        let bos = match (add_bos, bos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(TokenizerError::Malformed(
                    "the vocabulary asks for a BOS token but has no tokenizer.ggml.bos_token_id"
                        .into(),
                ));
            }
        };
        let eos = match (add_eos, eos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(TokenizerError::Malformed(
                    "tokenizer.ggml.add_eos_token is true but there is no \
                     tokenizer.ggml.eos_token_id"
                        .into(),
                ));
            }
        };
        let mut specials: Vec<(String, u32)> = (0..n)
            .filter(|&i| {
                matches!(
                    vocab.token_type(i as u32),
                    TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN
                )
            })
            .map(|i| (vocab.tokens[i].clone(), i as u32))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        specials.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(Tokenizer {
            vocab,
            model,
            specials,
            bos,
            eos,
            notes,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    /// What the tokenizer had to assume (e.g. a missing `tokenizer.ggml.pre`): to be shown.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The BOS token a prompt starts with, when the vocabulary asks for one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The text as tokens, control tokens written in it included, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenize(text, false)
    }

    /// A prompt's tokens: [`Tokenizer::encode`] with the BOS (and EOS) tokens the vocabulary
    /// asks for (llama.cpp's `add_special`).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenize(text, true)
    }

    fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        if add_special {
            out.extend(self.bos);
        }
        // SentencePiece prefixes a space to the first text and to text after a special token.
        let mut after_special = true;
        for fragment in self.fragments(text) {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe(b) => b.encode(&self.vocab, t, &mut out)?,
                        Model::Spm(s) => s.encode(&self.vocab, t, after_special, &mut out)?,
                    }
                    after_special = false;
                }
            }
        }
        if add_special {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// The text cut around the special tokens written in it (earliest first, longest on a
    /// tie); empty text between them is left out.
    fn fragments<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            match next {
                Some((at, len, id)) => {
                    if at > 0 {
                        out.push(Fragment::Text(&rest[..at]));
                    }
                    out.push(Fragment::Special(id));
                    rest = &rest[at + len..];
                }
                None => {
                    out.push(Fragment::Text(rest));
                    rest = "";
                }
            }
        }
        out
    }

    /// The text of one token (control tokens as written; invalid UTF-8 replaced).
    pub fn decode_token(&self, id: u32) -> String {
        let bytes = self.token_bytes(id).unwrap_or_else(|| "\u{FFFD}".into());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of a token sequence; for SentencePiece without the space prefix of the first
    /// text token.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut first = true;
        for &id in ids {
            match self.token_bytes(id) {
                Some(b) => {
                    let strip = first
                        && matches!(&self.model, Model::Spm(s) if s.space_prefix())
                        && b.first() == Some(&b' ')
                        && !self.is_special(id);
                    bytes.extend(&b[usize::from(strip)..]);
                }
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
            first &= self.is_special(id);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn is_special(&self, id: u32) -> bool {
        matches!(
            self.vocab.token_type(id),
            TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN
        ) || self.specials.iter().any(|(_, s)| *s == id)
    }

    /// The id of the token spelled exactly `text` in the vocabulary (e.g. `<|im_end|>`).
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// The bytes a token stands for (a control token's text as written), or `None` for an id
    /// outside the vocabulary. Byte tokens give their one byte, which may be part of a UTF-8
    /// character that the next tokens complete: streamed output writes these bytes as they
    /// come (as llama.cpp does), and the terminal assembles the characters.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.vocab.tokens.get(id as usize)?;
        if self.is_special(id) {
            return Some(tok.as_bytes().to_vec());
        }
        Some(match &self.model {
            Model::Bpe(b) => b.token_bytes(tok),
            Model::Spm(_) => {
                if self.vocab.token_type(id) == TYPE_BYTE
                    && let Some(b) = spm::parse_byte_token(tok)
                {
                    vec![b]
                } else {
                    tok.replace(spm::SPACE, " ").into_bytes()
                }
            }
        })
    }

    /// A token as a listing shows it, quoted: its text, with bytes that are not (complete)
    /// UTF-8 and ASCII control bytes as `<0x94>` (llama.cpp's spelling of byte tokens), `\n`,
    /// `\r`, `\t`, `\"` and `\\` escaped, other control characters as `\u{…}`; `?` for an id
    /// outside the vocabulary.
    pub fn display_token(&self, id: u32) -> String {
        let Some(bytes) = self.token_bytes(id) else {
            return "?".into();
        };
        let mut out = String::from("\"");
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_ascii_control() => out.push_str(&format!("<0x{:02X}>", c as u32)),
                    c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("<0x{b:02X}>"));
            }
        }
        out.push('"');
        out
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

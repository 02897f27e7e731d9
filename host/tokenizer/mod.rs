//! GPT-2 byte-level BPE from the GGUF's embedded vocabulary (`tokenizer.ggml.model = gpt2`),
//! with the `qwen2` pre-tokenizer.
//!
//! Text → split around control tokens → pre-tokenize with the qwen2 regex → each piece's UTF-8
//! bytes mapped to GPT-2's printable byte alphabet → BPE merges by rank → vocabulary ids.

use std::collections::HashMap;
use std::sync::OnceLock;

use fancy_regex::Regex;

use crate::gguf::{GgufError, GgufFile, Value};

/// The qwen2 pre-tokenizer (as in llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2` and the HF
/// tokenizer.json): contractions, letter runs with one optional leading non-letter, single
/// digits, punctuation runs, newlines, and whitespace not followed by a non-space.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` value of control tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported tokenizer model {0:?} (kiln supports gpt2 byte-level BPE)")]
    UnsupportedModel(String),
    #[error("tokenizer metadata: {0}")]
    Malformed(String),
    #[error("text piece {0:?} has no token in the vocabulary")]
    NoToken(String),
}

pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Merge rank of each (left, right) pair: lower merges first.
    ranks: HashMap<(String, String), usize>,
    /// Control tokens, longest first, matched literally in the text before pre-tokenizing.
    specials: Vec<(String, u32)>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    pre: &'static Regex,
}

/// The compiled qwen2 pattern, built once: compiling its Unicode classes costs milliseconds.
fn qwen2_regex() -> Result<&'static Regex, TokenizerError> {
    static RE: OnceLock<Result<Regex, String>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(QWEN2_PATTERN).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TokenizerError::Malformed(format!("pre-tokenizer regex: {e}")))
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100 onwards in byte order, so every byte has a visible, unambiguous character.
pub fn byte_alphabet() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
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

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let model = f.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let tokens = strings(
            f.get_array("tokenizer.ggml.tokens")?,
            "tokenizer.ggml.tokens",
        )?;
        let merges = strings(
            f.get_array("tokenizer.ggml.merges")?,
            "tokenizer.ggml.merges",
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
        let ranks = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                let (a, b) = m.split_once(' ').ok_or_else(|| {
                    TokenizerError::Malformed(format!("merge {rank} {m:?} has no space"))
                })?;
                Ok(((a.to_string(), b.to_string()), rank))
            })
            .collect::<Result<_, TokenizerError>>()?;
        let mut specials: Vec<(String, u32)> = types
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == TOKEN_TYPE_CONTROL)
            .filter_map(|(i, _)| tokens.get(i).map(|t| (t.clone(), i as u32)))
            .filter(|(t, _)| !t.is_empty())
            .collect();
        specials.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        let byte_to_char = byte_alphabet();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let pre = qwen2_regex()?;
        Ok(Tokenizer {
            tokens,
            ids,
            ranks,
            specials,
            byte_to_char,
            char_to_byte,
            pre,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest control token in the rest of the text (longest on a tie).
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (plain, special) = match next {
                Some((at, len, id)) => (&rest[..at], Some((id, at + len))),
                None => (rest, None),
            };
            self.encode_plain(plain, &mut out)?;
            match special {
                Some((id, end)) => {
                    out.push(id);
                    rest = &rest[end..];
                }
                None => rest = "",
            }
        }
        Ok(out)
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        for piece in self.pre.find_iter(text) {
            let piece = piece
                .map_err(|e| TokenizerError::Malformed(format!("pre-tokenizer: {e}")))?
                .as_str();
            let symbols: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize].to_string())
                .collect();
            for s in self.bpe(symbols) {
                let id = self
                    .ids
                    .get(&s)
                    .ok_or_else(|| TokenizerError::NoToken(s.clone()))?;
                out.push(*id);
            }
        }
        Ok(())
    }

    /// Repeatedly merges the adjacent pair with the lowest rank (every occurrence, left to
    /// right) until no pair has a rank.
    fn bpe(&self, mut symbols: Vec<String>) -> Vec<String> {
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0].clone(), w[1].clone())))
                .min();
            let Some(&best) = best else {
                return symbols;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&best)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(symbols[i].clone());
                    i += 1;
                }
            }
            symbols = merged;
        }
    }

    /// The text of one token (control tokens as written; invalid UTF-8 replaced).
    pub fn decode_token(&self, id: u32) -> String {
        self.decode(&[id])
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.token_bytes(id) {
                Some(b) => bytes.extend(b),
                None => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes a token stands for (a control token's text as written), or `None` for an id
    /// outside the vocabulary.
    fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.tokens.get(id as usize)?;
        if self.specials.iter().any(|(_, s)| *s == id) {
            return Some(tok.as_bytes().to_vec());
        }
        let mut bytes = Vec::with_capacity(tok.len());
        for c in tok.chars() {
            match self.char_to_byte.get(&c) {
                Some(&b) => bytes.push(b),
                None => bytes.extend_from_slice(c.to_string().as_bytes()),
            }
        }
        Some(bytes)
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

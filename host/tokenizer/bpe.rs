//! GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`).
//!
//! Text → pre-tokenizer split (the regexes of `tokenizer.ggml.pre`, as llama.cpp lists them in
//! `llm_tokenizer_bpe`) → each piece's UTF-8 bytes mapped to GPT-2's printable byte alphabet →
//! BPE merges by rank (or, for Llama 3, the whole piece when it is a token: `ignore_merges`) →
//! vocabulary ids.
//!
//! A pre-tokenizer is a list of regexes applied in turn: each one cuts every piece of the
//! previous one into its matches and the text between them (both kept), and cannot see past
//! the piece it cuts (so a lookahead stops at the piece's end).

use std::collections::HashMap;
use std::sync::OnceLock;

use fancy_regex::Regex;

use super::{TokenizerError, Vocab};

/// Contractions (ASCII case-insensitive, spelled out as llama.cpp does: `(?i:…)` would also
/// fold `ſ` into `s`), letter runs with one optional leading non-letter, punctuation runs
/// with the newlines after them, newline runs, and whitespace not followed by a non-space.
/// `{N}` is where the two differ: qwen2 takes digits one by one, Llama 3 up to three.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's own split: lowercase contractions, and a run of letters, of digits or of other
/// non-space characters, each with one optional leading space.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The regex lists (llama.cpp's pre-tokenizer types that kiln implements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Qwen2,
    Llama3,
    /// Single digits, then GPT-2's split (llama.cpp's SMOLLM/STARCODER/… type).
    Smollm,
    Gpt2,
    /// llama.cpp's DEFAULT: punctuation runs, GPT-2's split, digit runs, then three-digit
    /// groups.
    Default,
}

impl Split {
    fn patterns(self) -> &'static [&'static str] {
        match self {
            Split::Qwen2 => &[QWEN2],
            Split::Llama3 => &[LLAMA3],
            Split::Smollm => &[r"\p{N}", GPT2],
            Split::Gpt2 => &[GPT2],
            Split::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        }
    }

    /// The compiled regexes, built once per list: compiling the Unicode classes costs
    /// milliseconds.
    fn regexes(self) -> Result<&'static [Regex], TokenizerError> {
        static CACHE: [OnceLock<Result<Vec<Regex>, String>>; 5] = [const { OnceLock::new() }; 5];
        CACHE[self as usize]
            .get_or_init(|| {
                self.patterns()
                    .iter()
                    .map(|p| Regex::new(p).map_err(|e| e.to_string()))
                    .collect()
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(|e| TokenizerError::Malformed(format!("pre-tokenizer regex: {e}")))
    }
}

/// What a `tokenizer.ggml.pre` value means (llama.cpp's `llama_vocab::impl::load`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreTokenizer {
    split: Split,
    /// A piece that is itself a token is that token, whatever the merges would make of it.
    ignore_merges: bool,
    /// Whether a prompt starts with BOS unless `tokenizer.ggml.add_bos_token` says otherwise.
    add_bos: bool,
}

const fn pre(split: Split, ignore_merges: bool, add_bos: bool) -> PreTokenizer {
    PreTokenizer {
        split,
        ignore_merges,
        add_bos,
    }
}

/// The `tokenizer.ggml.pre` values kiln knows, with llama.cpp's meaning of each.
const NAMES: &[(&str, PreTokenizer)] = &[
    ("default", pre(Split::Default, false, false)),
    ("qwen2", pre(Split::Qwen2, false, false)),
    ("deepseek-r1-qwen", pre(Split::Qwen2, false, false)),
    ("stablelm2", pre(Split::Qwen2, false, false)),
    ("megrez", pre(Split::Qwen2, false, false)),
    ("llama-bpe", pre(Split::Llama3, true, true)),
    ("llama3", pre(Split::Llama3, true, true)),
    ("llama-v3", pre(Split::Llama3, true, true)),
    ("falcon3", pre(Split::Llama3, true, true)),
    ("dbrx", pre(Split::Llama3, false, false)),
    ("smaug-bpe", pre(Split::Llama3, false, false)),
    ("smollm", pre(Split::Smollm, false, false)),
    ("starcoder", pre(Split::Smollm, false, false)),
    ("refact", pre(Split::Smollm, false, false)),
    ("command-r", pre(Split::Smollm, false, false)),
    ("codeshell", pre(Split::Smollm, false, false)),
    ("exaone", pre(Split::Smollm, false, false)),
    ("minerva-7b", pre(Split::Smollm, false, false)),
    ("gpt-2", pre(Split::Gpt2, false, false)),
    ("phi-2", pre(Split::Gpt2, false, false)),
    ("mpt", pre(Split::Gpt2, false, false)),
    ("olmo", pre(Split::Gpt2, false, false)),
];

/// The known `tokenizer.ggml.pre` values, for error messages.
pub(super) fn known_pre() -> String {
    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

impl PreTokenizer {
    /// llama.cpp's fallback when `tokenizer.ggml.pre` is missing.
    pub const DEFAULT: PreTokenizer = pre(Split::Default, false, false);

    pub fn from_name(name: &str) -> Option<Self> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    pub fn adds_bos(self) -> bool {
        self.add_bos
    }

    /// The pieces the text is cut into before BPE (concatenated, they are the text).
    pub fn split(self, text: &str) -> Result<Vec<&str>, TokenizerError> {
        let mut pieces = vec![text];
        for re in self.split.regexes()? {
            let mut next = Vec::with_capacity(pieces.len());
            for piece in pieces {
                let mut at = 0;
                for m in re.find_iter(piece) {
                    let m =
                        m.map_err(|e| TokenizerError::Malformed(format!("pre-tokenizer: {e}")))?;
                    if m.start() > at {
                        next.push(&piece[at..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    at = m.end();
                }
                if at < piece.len() {
                    next.push(&piece[at..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

pub(super) struct Bpe {
    pre: PreTokenizer,
    /// Merge rank of each (left, right) pair: lower merges first.
    ranks: HashMap<(String, String), usize>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
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

impl Bpe {
    pub(super) fn new(pre: PreTokenizer, merges: &[String]) -> Result<Self, TokenizerError> {
        // Compile (or fetch) the regexes now, so that a bad pattern fails at load.
        pre.split.regexes()?;
        let ranks = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                // The separating space is the first one after the first character (a merge's
                // left side is never empty).
                let skip = m.chars().next().map_or(0, char::len_utf8);
                let at = m[skip..].find(' ').map(|p| p + skip).ok_or_else(|| {
                    TokenizerError::Malformed(format!("merge {rank} {m:?} has no space"))
                })?;
                Ok(((m[..at].to_string(), m[at + 1..].to_string()), rank))
            })
            .collect::<Result<_, TokenizerError>>()?;
        let byte_to_char = byte_alphabet();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Bpe {
            pre,
            ranks,
            byte_to_char,
            char_to_byte,
        })
    }

    pub(super) fn encode(
        &self,
        vocab: &Vocab,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        for piece in self.pre.split(text)? {
            let mapped: String = piece
                .bytes()
                .map(|b| self.byte_to_char[b as usize])
                .collect();
            if self.pre.ignore_merges
                && let Some(id) = vocab.id(&mapped)
            {
                out.push(id);
                continue;
            }
            let symbols = mapped.chars().map(String::from).collect();
            for s in self.merge(symbols) {
                out.push(vocab.id(&s).ok_or(TokenizerError::NoToken(s))?);
            }
        }
        Ok(())
    }

    /// Repeatedly merges the adjacent pair with the lowest rank (every occurrence, left to
    /// right) until no pair has a rank.
    fn merge(&self, mut symbols: Vec<String>) -> Vec<String> {
        let rank = |a: &String, b: &String| self.ranks.get(&(a.clone(), b.clone())).copied();
        loop {
            let Some(best) = symbols.windows(2).filter_map(|w| rank(&w[0], &w[1])).min() else {
                return symbols;
            };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && rank(&symbols[i], &symbols[i + 1]) == Some(best) {
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

    /// A vocabulary entry's bytes: each character mapped back through the byte alphabet
    /// (characters outside it as their own UTF-8).
    pub(super) fn token_bytes(&self, tok: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(tok.len());
        for c in tok.chars() {
            match self.char_to_byte.get(&c) {
                Some(&b) => bytes.push(b),
                None => bytes.extend_from_slice(c.to_string().as_bytes()),
            }
        }
        bytes
    }
}

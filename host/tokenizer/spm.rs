//! SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm`:
//!
//! 1. Spaces become `▁` (U+2581); a text that starts the prompt or follows a special token
//!    gets one `▁` in front (`tokenizer.ggml.add_space_prefix`, on by default).
//! 2. Each character is a symbol. While two adjacent symbols spell a vocabulary token, the
//!    pair whose token has the highest score merges (the leftmost pair on a tie).
//! 3. Each final symbol is its token; a single character with no token is written as its
//!    UTF-8 bytes, each the `<0xNN>` byte token (byte fallback).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{TokenizerError, Vocab};

/// SentencePiece's visible space.
pub(super) const SPACE: &str = "\u{2581}";

pub(super) struct Spm {
    scores: Vec<f32>,
    space_prefix: bool,
    /// The token of each byte: `<0xNN>`, else (as llama.cpp) the byte itself as a token.
    byte_tokens: [Option<u32>; 256],
}

/// `<0xNN>` → the byte.
pub(super) fn parse_byte_token(tok: &str) -> Option<u8> {
    let hex = tok.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// A pair of adjacent symbols whose concatenation is a token.
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    /// The pair's length in bytes when found: it changes when a side merges on.
    size: usize,
}

impl Ord for Candidate {
    /// The greatest is the highest score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// One symbol of the text being merged: a byte range, linked to its live neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub(super) fn new(vocab: &Vocab, scores: Vec<f32>, space_prefix: bool) -> Self {
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.id(&format!("<0x{b:02X}>")).or_else(|| {
                let b = u8::try_from(b).ok().filter(u8::is_ascii)?;
                vocab.id(&char::from(b).to_string())
            });
        }
        Spm {
            scores,
            space_prefix,
            byte_tokens,
        }
    }

    pub(super) fn space_prefix(&self) -> bool {
        self.space_prefix
    }

    pub(super) fn encode(
        &self,
        vocab: &Vocab,
        text: &str,
        after_special: bool,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut s = String::with_capacity(text.len() + 3);
        if self.space_prefix && after_special {
            s.push(' ');
        }
        s.push_str(text);
        let s = s.replace(' ', SPACE);
        let mut symbols: Vec<Symbol> = s
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            })
            .collect();
        let n = symbols.len();
        for (i, sym) in symbols.iter_mut().enumerate() {
            sym.next = (i + 1 < n).then_some(i + 1);
        }
        let mut heap = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: usize, right: usize| {
            let (l, r) = (symbols[left], symbols[right]);
            let id = vocab.id(&s[l.start..r.start + r.len])?;
            let score = self.scores.get(id as usize).copied()?;
            Some(Candidate {
                score,
                left,
                right,
                size: l.len + r.len,
            })
        };
        for i in 1..n {
            heap.extend(candidate(&symbols, i - 1, i));
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (symbols[c.left], symbols[c.right]);
            // Stale: one side has merged since (it is gone, or its neighbour changed).
            if l.len == 0 || r.len == 0 || l.next != Some(c.right) || l.len + r.len != c.size {
                continue;
            }
            symbols[c.left].len += r.len;
            symbols[c.left].next = r.next;
            symbols[c.right].len = 0;
            if let Some(nn) = r.next {
                symbols[nn].prev = Some(c.left);
            }
            if let Some(p) = symbols[c.left].prev {
                heap.extend(candidate(&symbols, p, c.left));
            }
            if let Some(nn) = symbols[c.left].next {
                heap.extend(candidate(&symbols, c.left, nn));
            }
        }
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let sym = symbols[i];
            let piece = &s[sym.start..sym.start + sym.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        let id = self.byte_tokens[b as usize].ok_or_else(|| {
                            TokenizerError::NoToken(format!("{piece} (byte <0x{b:02X}>)"))
                        })?;
                        out.push(id);
                    }
                }
            }
            at = sym.next;
        }
        Ok(())
    }
}

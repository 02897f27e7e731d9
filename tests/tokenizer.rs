//! The GGUF-embedded GPT-2 BPE tokenizer on the fixtures' synthetic vocabulary.

mod common;

use common::open;
use kiln::tokenizer::Tokenizer;

#[test]
fn ascii_round_trip_on_fixture() {
    let f = open("qwen3moe-q4_k_m");
    let tok = Tokenizer::from_gguf(&f).unwrap();
    assert_eq!(tok.vocab_size(), 512);
    for text in [
        "The quick brown fox jumps over the lazy dog.",
        "hello, world!  12345\n\ttabs and   spaces ",
        "it's we'll they'd I'M",
        "",
    ] {
        let ids = tok.encode(text).unwrap();
        assert!(ids.iter().all(|&i| i < 512), "{ids:?}");
        assert_eq!(tok.decode(&ids), text);
    }
}

#[test]
fn merges_and_control_tokens() {
    let tok = Tokenizer::from_gguf(&open("qwen3-f32")).unwrap();
    // "ab" is merge 1 (token 257); "js" (the last merge) is token 508.
    assert_eq!(tok.encode("ab").unwrap(), vec![257]);
    assert_eq!(tok.encode("js").unwrap(), vec![508]);
    // Pre-tokenization keeps the space with the following word: " ab" is [' ', 'ab'].
    assert_eq!(tok.encode(" ab").unwrap(), vec![b' ' as u32, 257]);
    let ids = tok.encode("<|im_start|>ab<|endoftext|>").unwrap();
    assert_eq!(ids, vec![510, 257, 509]);
    assert_eq!(tok.decode(&ids), "<|im_start|>ab<|endoftext|>");
    // Non-ASCII text goes through byte symbols and back.
    let s = "naïve café — ok";
    assert_eq!(tok.decode(&tok.encode(s).unwrap()), s);
}

/// Issue 9, item 7: how a token reads in the top-5 list. The fixture vocabulary's first 256
/// ids are the byte symbols in byte order.
#[test]
fn tokens_display_bytes_as_hex_and_escape_control_text() {
    let tok = Tokenizer::from_gguf(&open("qwen3-f32")).unwrap();
    assert_eq!(tok.display_token(b'a' as u32), "\"a\"");
    assert_eq!(tok.display_token(0x94), "\"<0x94>\"");
    assert_eq!(tok.display_token(0xAB), "\"<0xAB>\"");
    assert_eq!(tok.display_token(0x10), "\"<0x10>\"");
    assert_eq!(tok.display_token(0x7F), "\"<0x7F>\"");
    assert_eq!(tok.display_token(b'\n' as u32), "\"\\n\"");
    assert_eq!(tok.display_token(b'"' as u32), "\"\\\"\"");
    assert_eq!(tok.display_token(b'\\' as u32), "\"\\\\\"");
    assert_eq!(tok.display_token(510), "\"<|im_start|>\"");
    assert_eq!(tok.display_token(100_000), "?");
}

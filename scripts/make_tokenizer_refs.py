#!/usr/bin/env python3
"""Writes tiny tokenizer-only GGUFs and reference token ids for tests/tokenizer_refs.rs.

Output (tests/data/, flat: the GPU bundle copies that folder's files):
  tok-gpt2-{qwen2,llama-bpe,smollm,default}.gguf   byte-level BPE vocabularies (tokenizer.ggml.
                                                    model = gpt2) with that tokenizer.ggml.pre
  tok-spm-llama.gguf                                a SentencePiece BPE vocabulary (model = llama)
  tok-refs.json                                     for each file, texts and the ids the
                                                    independent tokenizer gives them (with and
                                                    without BOS)

Method (no code shared with kiln):
  * gpt2: a byte-level BPE is trained with HF `tokenizers` on the deterministic corpus below
    (split only at whitespace, so it has merges across digits, letters and punctuation that the
    pre-tokenizers below keep apart in different places), and tokenizes with the pre-tokenizer of each
    `tokenizer.ggml.pre` as HF spells it:
      qwen2      Split(Qwen2's tokenizer.json regex, isolated) + ByteLevel(use_regex=False)
      llama-bpe  Split(Llama 3's tokenizer.json regex, isolated) + ByteLevel(use_regex=False),
                 BPE(ignore_merges=True), BOS `<|begin_of_text|>` added by a template
                 post-processor (Llama 3's tokenizer.json does both)
      smollm     Digits(individual_digits=True) + ByteLevel(use_regex=True) (SmolLM's
                 tokenizer.json)
      default    the regexes llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT applies in turn, each as a
                 Split(isolated), then ByteLevel(use_regex=False)
    The trained vocabulary and merges go into the GGUF (control tokens type 3), and the
    references are what that HF tokenizer gives (special tokens parsed from the text).
    llama-bpe's vocabulary also gets a whole-word token that no merge sequence builds, so
    ignore_merges shows. The script checks that each file's references differ from what the
    other pre-tokenizers give on the same vocabulary (so the tests tell them apart).
  * llama: a SentencePiece BPE (byte_fallback, identity normalization, dummy prefix, digits
    split, as Llama 2's tokenizer.model) is trained with `sentencepiece` on the same corpus and
    converted as llama.cpp's convert_hf_to_gguf.py does (pieces, scores, token types); the
    references are `sp.encode`. Text after a control token (`<s>`) is encoded on its own (with
    its dummy prefix), as llama.cpp does.

Needs `pip install tokenizers sentencepiece gguf` (made with tokenizers 0.23.3,
sentencepiece 0.2.3, gguf 0.19.0). Deterministic:
    python3 scripts/make_tokenizer_refs.py [OUTDIR]
"""
import importlib.metadata
import io
import json
import random
import sys
from pathlib import Path

import gguf
import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors, trainers

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else (
    Path(__file__).resolve().parent.parent / "tests/data")

QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DEFAULT_RES = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"]


def split(regex):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def byte_level(use_regex):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


PRE = {
    "qwen2": lambda: pre_tokenizers.Sequence([split(QWEN2_RE), byte_level(False)]),
    "llama-bpe": lambda: pre_tokenizers.Sequence([split(LLAMA3_RE), byte_level(False)]),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
    "default": lambda: pre_tokenizers.Sequence([split(r) for r in DEFAULT_RES] + [byte_level(False)]),
}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
WHOLE_WORD = "Ġsupercalifragilistic"  # byte-level " supercalifragilistic"


def corpus():
    rng = random.Random(1010)
    words = ("the quick brown fox jumps over lazy dog hello world token tokens tokenizer model "
             "models prefill kernel kernels people said would could should there their about "
             "number numbers year years time first second third naïve café façade straße über "
             "école déjà vu résumé Ünïcödé cat dog it's don't we'll they'd I'M YOU'RE she's "
             "isn't won't can't we've you'd IT'S HE'S THAT'S WHAT'S LET'S WE'RE THEY'RE I'LL YOU'LL "
             "WON'T 'TIS 'TWAS O'TOOLE").split()
    puncts = [".", ",", "!", "?", ";", ":", " -", " (", ")", " \"", "\"", "...", " —", " x=1+2*3;",
              " a<=b", " c!=d", " e&&f", " g||h", " $5", " ~t", " ^u"]
    lines = []
    for _ in range(1200):
        n = rng.randint(3, 12)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.15:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
            elif r < 0.25:
                parts.append(rng.choice(words).capitalize())
            else:
                parts.append(rng.choice(words))
            if rng.random() < 0.2:
                parts[-1] += rng.choice(puncts)
        sep = rng.choice([" ", " ", " ", "  ", "\t", "\n", " \n"])
        lines.append(sep.join(parts) + rng.choice(["", "\n", "\n\n", "  "]))
    return lines


TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, and trailing  ",
    " ",
    "a   b    c\t\td",
    "line one\nline two\r\n\n\tTabbed\n\n\n",
    "numbers 1 12 123 1234 12345 3.14159 2024-11-29 007",
    "0123456789 1000000 99999 31415926535",
    "it's don't we'll they'd I'M YOU'RE she's IT'S 'tis",
    "WHAT'S THAT'S HE'S WE'RE I'LL WON'T",
    "'Sorry IT'SELF x'Tis 9'REALLY WE'LLama 'Dave 'TIS x'TWAS O'TOOLE",
    "naïve café façade — “quotes” … straße Ünïcödé",
    "emoji 🦀🔥 and a flag 🇫🇷!",
    "中文字符 日本語の文 한국어 текст",
    "x=1+2*3; y<=4 && z!=5 || a^b ~c $d @e #f %g",
    "((nested)) [brackets] {braces} <angle> ... !!! ???",
    "supercalifragilistic and a supercalifragilistic word",
    "control \u0001 bytes \u007f and NBSP\u00a0here",
    "tokenizer tokenizers prefill kernels",
]
SPECIAL_TEXTS = [
    "<|begin_of_text|>hello world<|end_of_text|>",
    "a<|end_of_text|> b<|begin_of_text|><|begin_of_text|>12345",
]


def train_gpt2(pre, lines):
    # One vocabulary for all four, trained on whitespace-separated words with their leading
    # space: it has merges (digit runs, punctuation with letters, contractions, space runs) that
    # each pre-tokenizer's split stops in different places.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([split(r" ?\S+|\s+"), byte_level(False)])
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(SPECIALS) + 600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if pre == "llama-bpe":
        assert WHOLE_WORD not in vocab
        vocab[WHOLE_WORD] = len(vocab)
    return vocab, merges


def hf_tokenizer(pre, vocab, merges, add_bos):
    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges),
                               ignore_merges=(pre == "llama-bpe")))
    tok.pre_tokenizer = PRE[pre]()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    if add_bos:
        bos = SPECIALS[0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return tok


def write_gguf(path, kvs):
    w = gguf.GGUFWriter(str(path), "llama")
    for fn, *args in kvs:
        getattr(w, fn)(*args)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gpt2_file(pre, lines):
    vocab, merges = train_gpt2(pre, lines)
    add_bos = pre == "llama-bpe"
    tok = hf_tokenizer(pre, vocab, merges, add_bos)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    types = [3 if t in SPECIALS else 1 for t in tokens]
    name = f"tok-gpt2-{pre}.gguf"
    kvs = [("add_tokenizer_model", "gpt2"), ("add_tokenizer_pre", pre),
           ("add_token_list", tokens), ("add_token_types", types),
           ("add_token_merges", [f"{a} {b}" for a, b in merges]),
           ("add_bos_token_id", vocab[SPECIALS[0]]), ("add_eos_token_id", vocab[SPECIALS[1]])]
    if add_bos:
        kvs.append(("add_add_bos_token", True))
    write_gguf(OUT / name, kvs)
    cases = []
    for text in TEXTS + SPECIAL_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        with_bos = tok.encode(text, add_special_tokens=True).ids
        cases.append({"text": text, "ids": ids, "ids_with_bos": with_bos})
    return name, {"model": "gpt2", "pre": pre, "add_bos": add_bos, "vocab": len(tokens),
                  "cases": cases}, (vocab, merges)


def spm_file(lines):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=700,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, max_sentence_length=100000, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 1)
    name = "tok-spm-llama.gguf"
    write_gguf(OUT / name, [
        ("add_tokenizer_model", "llama"), ("add_tokenizer_pre", "default"),
        ("add_token_list", tokens), ("add_token_scores", scores), ("add_token_types", types),
        ("add_bos_token_id", sp.bos_id()), ("add_eos_token_id", sp.eos_id()),
        ("add_unk_token_id", sp.unk_id()), ("add_add_bos_token", True),
        ("add_add_eos_token", False), ("add_add_space_prefix", True)])
    cases = []
    for text in TEXTS:
        ids = sp.encode(text) if text else []
        cases.append({"text": text, "ids": ids, "ids_with_bos": [sp.bos_id()] + ids})
    # llama.cpp parses control tokens in the text; the text after each is encoded on its own,
    # with the dummy prefix (its `is_prev_special`).
    for parts in [["<s>", "hello world", "</s>"], ["a", "</s>", " b 12345"]]:
        ids = []
        for p in parts:
            ids += [sp.piece_to_id(p)] if p in ("<s>", "</s>") else sp.encode(p)
        cases.append({"text": "".join(parts), "ids": ids, "ids_with_bos": [sp.bos_id()] + ids})
    assert any(t == 6 for t in types)
    n_bytes = sum(1 for c in cases for i in c["ids"] if types[i] == 6)
    assert n_bytes > 0, "no case exercises byte fallback"
    return name, {"model": "llama", "pre": "default", "add_bos": True, "vocab": len(tokens),
                  "cases": cases}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    lines = corpus()
    files, vocabs = {}, {}
    for pre in PRE:
        name, entry, vm = gpt2_file(pre, lines)
        files[name], vocabs[pre] = entry, vm
    # Each file's references must differ from what the other pre-tokenizers make of the same
    # vocabulary, or the tests could not tell a wrong pre-tokenizer from the right one.
    for pre, (vocab, merges) in vocabs.items():
        ref = [c["ids"] for c in files[f"tok-gpt2-{pre}.gguf"]["cases"]]
        for other in PRE:
            if other == pre:
                continue
            tok = hf_tokenizer(other, vocab, merges, False)
            if pre == "llama-bpe":  # only the pre-tokenizer differs, not ignore_merges
                tok.model = models.BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=True)
            got = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS + SPECIAL_TEXTS]
            assert got != ref, f"{other} tokenizes like {pre} on {pre}'s vocabulary"
    # ignore_merges shows on llama-bpe's vocabulary.
    vocab, merges = vocabs["llama-bpe"]
    plain = hf_tokenizer("qwen2", vocab, merges, False)
    plain.pre_tokenizer = PRE["llama-bpe"]()
    assert plain.encode(" supercalifragilistic").ids != [vocab[WHOLE_WORD]]
    name, entry = spm_file(lines)
    files[name] = entry
    versions = {p: importlib.metadata.version(p) for p in ["tokenizers", "sentencepiece", "gguf"]}
    (OUT / "tok-refs.json").write_text(json.dumps({"made_with": versions, "files": files},
                                              ensure_ascii=False, indent=1) + "\n")
    for f in sorted(OUT.glob("tok-*")):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()

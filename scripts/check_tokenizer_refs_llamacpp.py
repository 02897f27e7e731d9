#!/usr/bin/env python3
"""Cross-checks tests/data/tok-refs.json (made by make_tokenizer_refs.py with HF tokenizers and
sentencepiece) against llama.cpp itself, through llama-cpp-python: each tok-*.gguf is copied
with the few llama hyperparameters llama.cpp's loader requires (the vocabulary untouched),
loaded with vocab_only=True, and every reference text is tokenized with special tokens parsed
(as `kiln prefill --prompt` does), without and with BOS (`add_bos` = llama.cpp's add_special).
Prints each difference; exits 1 if there is any. Not part of the test suite (no llama.cpp in
CI): a check to run by hand after changing the references.

    pip install llama-cpp-python gguf   # builds llama.cpp from source: 5-20 minutes on 2 cores
    python3 scripts/check_tokenizer_refs_llamacpp.py
"""
import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path

import gguf
from llama_cpp import Llama

DATA = Path(__file__).resolve().parent.parent / "tests/data"


def with_hparams(src, dst):
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    refs = json.loads((DATA / "tok-refs.json").read_text())
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, f in refs["files"].items():
            path = Path(tmp) / name
            with_hparams(DATA / name, path)
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
            for c in f["cases"]:
                text = c["text"].encode()
                for add_bos, want in [(False, c["ids"]), (True, c["ids_with_bos"])]:
                    got = llm.tokenize(text, add_bos=add_bos, special=True)
                    if got != want:
                        bad += 1
                        print(f"{name} {c['text']!r} add_bos={add_bos}:\n  llama.cpp {got}\n"
                              f"  refs      {want}")
            print(f"{name}: {len(f['cases'])} texts checked")
    print(f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}: "
          f"{bad} difference(s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

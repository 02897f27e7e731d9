#!/usr/bin/env python3
"""llama.cpp's logits of kiln's llama and qwen2 fixtures (tests/data/{llama,qwen2}-{legacy,kquant}.gguf
of make_arch_fixtures.py), through llama-cpp-python on the CPU: each file is loaded as it is
(n_ctx 64, KV cache in f32, logits of every position), the 33-token prompt of
arch_fixtures.json is evaluated once (no BOS: the ids go in as they are), and the logits
[33][vocab] are written as OUTDIR/{name}.llamacpp.p33.npy (float32), with their rel L2 and
argmax agreement against the float64 NumPy reference {name}.p33.npy printed and written to
OUTDIR/llamacpp.json.

llama.cpp's CPU matmuls quantize the activations (to Q8_0 / Q8_K) before the dot products with
quantized weights, so it is not the exact answer for the stored weights: expect ~1e-2 relative,
not 1e-6. A cross-check of the arch rules (RoPE pairing, rope_freqs, biases, tied head) by
llama.cpp's own loader and graph, not a tight reference.

    pip install llama-cpp-python numpy   # builds llama.cpp from source: 5-20 minutes on 2 cores
    python3 scripts/arch_refs_llamacpp.py OUTDIR [--data DIR]
"""
import argparse
import importlib.metadata
import json
from pathlib import Path

import numpy as np
from llama_cpp import Llama

NAMES = ["llama-legacy", "llama-kquant", "qwen2-legacy", "qwen2-kquant"]
GGML_TYPE_F32 = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent / "tests/data")
    a = ap.parse_args()
    prompt = json.loads((a.data / "arch_fixtures.json").read_text())["prompt"]
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"), "fixtures": {}}
    for name in NAMES:
        llm = Llama(model_path=str(a.data / f"{name}.gguf"), n_ctx=64, n_batch=64, logits_all=True,
                    n_threads=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
        llm.eval(prompt)
        got = np.array(llm.scores[: len(prompt)], dtype=np.float32)
        np.save(a.out / f"{name}.llamacpp.p33.npy", got)
        ref = np.load(a.data / f"{name}.p33.npy")
        rows = np.linalg.norm((got - ref).astype(np.float64), axis=1) / np.linalg.norm(ref.astype(np.float64), axis=1)
        agree = int(np.sum(got.argmax(1) == ref.argmax(1)))
        e = doc["fixtures"][name] = {
            "worst_row_rel_l2": float(rows.max()),
            "rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
            "argmax_rows_agree": f"{agree}/{len(prompt)}",
        }
        print(f"{name}: worst row rel L2 {e['worst_row_rel_l2']:.3e}, whole {e['rel_l2']:.3e}, "
              f"argmax {e['argmax_rows_agree']}", flush=True)
        del llm
    (a.out / "llamacpp.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

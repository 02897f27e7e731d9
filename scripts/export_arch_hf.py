#!/usr/bin/env python3
"""Exports the llama/qwen2 fixtures of scripts/make_arch_fixtures.py (tests/data/) in the form
HF transformers loads, for scripts/lab/arch_refs_torch.py to build LlamaForCausalLM /
Qwen2ForCausalLM on exactly the weights the float64 NumPy references used.

Reads the committed fixtures (tests/data/{llama,qwen2}-{legacy,kquant}.gguf, arch_fixtures.json,
*.p33.npy; KILN_TEST_DATA or --data to read another copy) and writes into OUTDIR, for each
fixture NAME:
  NAME.config.json   HF config.json (LlamaConfig / Qwen2Config fields, "architectures",
                     "model_type")
  NAME.npz           float32 weights under HF's parameter names in HF's layout: the GGUF's
                     blocks dequantized with gguf-py (bit-exact with ggml) and llama's
                     q_proj/k_proj rows permuted back from GGUF's NORM-RoPE order, as
                     make_arch_fixtures.py does before its float64 forward (step 4 of its
                     header). No lm_head.weight for qwen2 (tie_word_embeddings); llama's
                     rope_freqs.weight is no HF parameter (HF derives it from rope_scaling).
  NAME.p33.npy       the NumPy reference logits (a copy), for the torch script's comparison
plus prompt.json (the 33 prompt ids) and export.json (versions, file hashes, sizes).

Self-check: before writing, make_arch_fixtures.forward64 is run on the exported weights and
must reproduce the committed NAME.p33.npy bit for bit (so these are the reference's weights).

Needs `pip install gguf numpy` (as make_arch_fixtures.py). Deterministic, a few seconds:
    python3 scripts/export_arch_hf.py OUTDIR [--data DIR]
About 22 MB (float32 does not compress much): too big for the GPU bundle, so the bundle carries
this script, make_arch_fixtures.py and a copy of gguf-py (lab/pylib/) instead, and
arch_refs_torch.py runs export() there on the bundle's test-data/.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_arch_fixtures as fx  # noqa: E402  (CONFIGS, unpermute, forward64; writes nothing)
import gguf  # noqa: E402

NAMES = ["llama-legacy", "llama-kquant", "qwen2-legacy", "qwen2-kquant"]


def hf_config(arch, cfg):
    """The HF config.json of a fixture config (make_arch_fixtures.CONFIGS)."""
    c = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "vocab_size": cfg["vocab"],
        "hidden_size": cfg["hidden"],
        "intermediate_size": cfg["ff"],
        "num_hidden_layers": cfg["n_layer"],
        "num_attention_heads": cfg["n_head"],
        "num_key_value_heads": cfg["n_kv"],
        "head_dim": cfg["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": cfg["eps"],
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": dict(cfg["rope_scaling"]) if cfg["rope_scaling"] else None,
        "max_position_embeddings": cfg["ctx"],
        "tie_word_embeddings": cfg["tied"],
        "bos_token_id": cfg["vocab"] - 3,
        "eos_token_id": cfg["vocab"] - 3,
    }
    if arch == "llama":
        c.update(attention_bias=False, mlp_bias=False)
    else:
        # Qwen2's q/k/v always carry biases (no attention_bias switch); no sliding window.
        c.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg["n_layer"])
    assert cfg["bias"] == (arch == "qwen2"), "qwen2 has Q/K/V biases, llama none"
    return c


def hf_weights(arch, cfg, path):
    """HF name -> float32 array, from the GGUF at `path`; also the make_arch_fixtures `back`
    dict that forward64 takes."""
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    used = set()

    def get(name, unperm=None):
        used.add(name)
        x = t[name]
        a = gguf.quants.dequantize(x.data, x.tensor_type).astype(np.float32)
        a = a.reshape([int(d) for d in reversed(x.shape)])  # GGUF dims are innermost first
        return fx.unpermute(a, unperm) if unperm else a

    llama = arch == "llama"
    nh, nkv = cfg["n_head"], cfg["n_kv"]
    w, back = {}, {"layers": []}
    w["model.embed_tokens.weight"] = back["embed"] = get("token_embd.weight")
    for i in range(cfg["n_layer"]):
        p, B = f"model.layers.{i}.", {}
        for hf, gg, key, up in [
            ("input_layernorm.weight", "attn_norm.weight", "input_norm", None),
            ("self_attn.q_proj.weight", "attn_q.weight", "q", nh if llama else None),
            ("self_attn.k_proj.weight", "attn_k.weight", "k", nkv if llama else None),
            ("self_attn.v_proj.weight", "attn_v.weight", "v", None),
            ("self_attn.o_proj.weight", "attn_output.weight", "o", None),
            ("post_attention_layernorm.weight", "ffn_norm.weight", "post_norm", None),
            ("mlp.gate_proj.weight", "ffn_gate.weight", "gate", None),
            ("mlp.up_proj.weight", "ffn_up.weight", "up", None),
            ("mlp.down_proj.weight", "ffn_down.weight", "down", None),
        ] + ([
            ("self_attn.q_proj.bias", "attn_q.bias", "bq", None),
            ("self_attn.k_proj.bias", "attn_k.bias", "bk", None),
            ("self_attn.v_proj.bias", "attn_v.bias", "bv", None),
        ] if cfg["bias"] else []):
            w[p + hf] = B[key] = get(f"blk.{i}.{gg}", up)
        back["layers"].append(B)
    w["model.norm.weight"] = back["norm"] = get("output_norm.weight")
    if not cfg["tied"]:
        w["lm_head.weight"] = back["lm_head"] = get("output.weight")
    if llama:
        used.add("rope_freqs.weight")  # derived by HF from rope_scaling (checked below)
        want = fx.rope_factors(cfg, cfg["head_dim"])
        assert np.array_equal(t["rope_freqs.weight"].data, want), "rope_freqs is not llama3's"
    left = set(t) - used
    assert not left, f"{path}: tensors not exported: {sorted(left)}"
    return w, back


def export(data, out, log=print):
    """Writes the export of the fixtures in `data` into `out` (see the header); returns the
    export.json summary. Raises AssertionError / SystemExit on any inconsistency."""
    data, out = Path(data), Path(out)
    meta = json.loads((data / "arch_fixtures.json").read_text())
    prompt = meta["prompt"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompt.json").write_text(json.dumps({"prompt": prompt}) + "\n")
    summary = {
        "method": "scripts/export_arch_hf.py (see its header)",
        "versions": {"gguf": gguf_version(), "numpy": np.__version__},
        "prompt": prompt,
        "fixtures": {},
    }
    for name in NAMES:
        arch = name.split("-")[0]
        cfg = meta["configs"][arch]
        assert cfg == json.loads(json.dumps(fx.CONFIGS[arch])), f"{arch}: config differs from the script's"
        gpath = data / f"{name}.gguf"
        sha = hashlib.sha256(gpath.read_bytes()).hexdigest()
        assert sha == meta["files"][name]["sha256"], f"{gpath}: not the file arch_fixtures.json lists"
        w, back = hf_weights(arch, cfg, gpath)
        ref = np.load(data / f"{name}.p33.npy")
        again = fx.forward64(cfg, back, prompt).astype(np.float32)
        if not np.array_equal(again, ref):
            d = np.abs(again - ref).max()
            raise SystemExit(f"{name}: forward64 on the exported weights differs from {name}.p33.npy (max {d:.3e})")
        (out / f"{name}.config.json").write_text(json.dumps(hf_config(arch, cfg), indent=1) + "\n")
        # Stored uncompressed: zip's deflate gains little on float32 and np.load reads either.
        np.savez(out / f"{name}.npz", **w)
        np.save(out / f"{name}.p33.npy", ref)
        summary["fixtures"][name] = {
            "gguf_sha256": sha,
            "parameters": {k: list(v.shape) for k, v in w.items()},
            "n_parameters": int(sum(v.size for v in w.values())),
            "npz_bytes": (out / f"{name}.npz").stat().st_size,
        }
        log(f"{name}: {len(w)} tensors, {summary['fixtures'][name]['n_parameters']} parameters, "
            f"npz {summary['fixtures'][name]['npz_bytes']} bytes; forward64 reproduces {name}.p33.npy")
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def gguf_version():
    try:
        return importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:  # a copy of the package (the GPU bundle's)
        return f"copy at {Path(gguf.__file__).parent}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output directory (not tests/data)")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("KILN_TEST_DATA", HERE.parent / "tests/data")),
                    help="where the fixtures are (default: KILN_TEST_DATA, else tests/data)")
    a = ap.parse_args()
    export(a.data, a.out)


if __name__ == "__main__":
    main()

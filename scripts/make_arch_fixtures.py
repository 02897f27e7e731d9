#!/usr/bin/env python3
"""Writes tiny random-weight llama and qwen2 GGUFs in every quantisation kiln reads, with
reference logits from an independent float64 NumPy forward pass written from the semantics of
HF transformers' LlamaForCausalLM / Qwen2ForCausalLM (modeling_llama.py, modeling_qwen2.py).

Output (tests/data/, read by tests/arch_fixtures.rs and tests/pipeline.rs):
  {llama,qwen2}-{legacy,kquant}.gguf      the models (gguf-py's writer)
  {llama,qwen2}-{legacy,kquant}.p33.npy   float32 logits [33][512] of every position of the
                                          prompt in arch_fixtures.json
  arch_fixtures.json                      the prompt, the configs, each file's tensor types

Method:
  1. Weights are drawn in HF's layout (numpy seed below): embeddings N(0, 1) (N(0, 1/hidden)
     when tied, so that the logits stay O(1)), linear weights N(0, 1/fan_in), norm weights
     1 + N(0, 0.1), qwen2's Q/K/V biases N(0, 0.1).
  2. They are converted as llama.cpp's convert_hf_to_gguf.py does: llama's q_proj/k_proj rows
     are permuted into GGUF's NORM-RoPE order (LlamaModel.permute); llama gets rope_freqs.weight
     from its llama3 rope_scaling (LlamaModel.generate_extra_tensors); qwen2 ties its LM head
     (no output.weight).
  3. Each 2-D weight is stored in one type of a mix, cycling over the tensors in order, so each
     file holds every type of its mix at least once:
       legacy: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL
       kquant: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS
     Types gguf-py can quantize (Q4_0..Q8_0) are quantized from the weights; the
     others (gguf-py has no quantizer for them) are random blocks: random bytes with f16 scales
     d (and dmin, sized to centre the values) scaled so the tensor's standard deviation is the
     weight's. Either way the model's weights are what the blocks decode to.
  4. The stored blocks are dequantized with gguf-py (`gguf.quants.dequantize`, bit-exact with
     ggml), permuted back to HF's layout, and the float64 forward runs on those: HF's RMSNorm,
     rotate_half RoPE with its llama3 inv_freq, GQA by repeat_kv, causal softmax attention,
     SiLU-gated MLP, final norm, LM head. So the references are the exact answer for the
     stored weights, computed with no code shared with kiln.

Transformers references (issue 10): scripts/export_arch_hf.py exports these fixtures as HF
config + weights, scripts/lab/arch_refs_torch.py runs LlamaForCausalLM / Qwen2ForCausalLM on
them (on the GPU machine, from the bundle) and writes {name}.hf.p33.npy, which
tests/arch_fixtures.rs compares kiln with once they are committed here.

Needs `pip install gguf numpy` (made with gguf 0.19.0, numpy 2.4.6). Deterministic:
    python3 scripts/make_arch_fixtures.py [OUTDIR]
"""
import hashlib
import importlib.metadata
import json
import math
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data"
SEED = 1010

CONFIGS = {
    "llama": dict(
        vocab=512, hidden=256, n_layer=2, n_head=2, n_kv=1, head_dim=128, ff=512,
        rope_theta=500000.0, eps=1e-5, ctx=4096, tied=False, bias=False,
        # Llama 3.x's rope_scaling, with a short original context so that the frequency
        # factors act on most frequencies within a 33-token prompt.
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64),
    ),
    "qwen2": dict(
        vocab=512, hidden=256, n_layer=2, n_head=2, n_kv=1, head_dim=128, ff=512,
        rope_theta=1000000.0, eps=1e-6, ctx=4096, tied=True, bias=True, rope_scaling=None,
    ),
}
MIXES = {
    "legacy": [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL],
    "kquant": [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS],
}
QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
# Random-block types: byte offset of d, and of dmin with the dmin/d ratio that centres values.
RANDOM_SCALES = {
    T.Q2_K: (80, (82, 1.5)),
    T.Q3_K: (108, None),
    T.Q4_K: (0, (2, 7.5)),
    T.Q5_K: (0, (2, 15.5)),
    T.Q6_K: (208, None),
    T.IQ4_NL: (0, None),
    T.IQ4_XS: (0, None),
}
PROMPT_LEN = 33


# ---- weights -------------------------------------------------------------------------------

def hf_weights(cfg, rng):
    h, hd, ff, v = cfg["hidden"], cfg["head_dim"], cfg["ff"], cfg["vocab"]
    q, kv = cfg["n_head"] * hd, cfg["n_kv"] * hd
    lin = lambda out, inp: (rng.standard_normal((out, inp)) / math.sqrt(inp)).astype(np.float32)
    norm = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    bias = lambda n: (0.1 * rng.standard_normal(n)).astype(np.float32)
    embed_std = 1 / math.sqrt(h) if cfg["tied"] else 1.0
    w = {"embed": (embed_std * rng.standard_normal((v, h))).astype(np.float32), "layers": []}
    for _ in range(cfg["n_layer"]):
        L = dict(input_norm=norm(h), q=lin(q, h), k=lin(kv, h), v=lin(kv, h), o=lin(h, q),
                 post_norm=norm(h), gate=lin(ff, h), up=lin(ff, h), down=lin(h, ff))
        if cfg["bias"]:
            L.update(bq=bias(q), bk=bias(kv), bv=bias(kv))
        w["layers"].append(L)
    w["norm"] = norm(h)
    if not cfg["tied"]:
        w["lm_head"] = lin(v, h)
    return w


def permute(x, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rows -> GGUF NORM-RoPE rows (per head)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def unpermute(x, n_head):
    return x.reshape(n_head, x.shape[0] // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def llama3_inv_freq(cfg, dim):
    """HF's _compute_llama3_parameters, in float64."""
    base, rs = cfg["rope_theta"], cfg["rope_scaling"]
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if rs is None:
        return inv_freq
    factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv_freq
    inv_l = np.where(wavelen > lo_wl, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < hi_wl) & ~(wavelen > lo_wl)
    return np.where(medium, smoothed, inv_l)


def rope_factors(cfg, dim):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: rope_freqs.weight."""
    base, rs = cfg["rope_theta"], cfg["rope_scaling"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ---- storing in a type ---------------------------------------------------------------------

def random_blocks(rng, qtype, rows, cols, target_std):
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_len
    d_off, dmin = RANDOM_SCALES[qtype]

    def make(base):
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        d = (base * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
        raw[:, d_off:d_off + 2] = d.reshape(-1, 1).view(np.uint8).reshape(-1, 2)
        if dmin is not None:
            m = (d.astype(np.float32) * dmin[1]).astype(np.float16)
            raw[:, dmin[0]:dmin[0] + 2] = m.reshape(-1, 1).view(np.uint8).reshape(-1, 2)
        return raw.reshape(rows, -1)

    trial = gguf.quants.dequantize(make(1.0), qtype)
    return make(target_std / float(trial.std()))


def store(rng, x, qtype):
    """GGUF-layout f32 matrix -> (raw array for gguf-py, the f32 values it decodes to)."""
    if qtype in QUANTIZABLE:
        raw = gguf.quants.quantize(x, qtype)
    else:
        raw = random_blocks(rng, qtype, x.shape[0], x.shape[1], float(x.std()))
    back = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(x.shape)
    assert np.all(np.isfinite(back))
    return raw, back


# ---- tokenizer (GPT-2 style, as kiln's synthetic models) -----------------------------------

def byte_alphabet():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tokenizer(vocab):
    controls = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = [(a, b) for a in letters for b in letters][: vocab - 256 - len(controls)]
    tokens = byte_alphabet() + [a + b for a, b in merges] + controls
    types = [1] * (len(tokens) - len(controls)) + [3] * len(controls)
    return tokens, [f"{a} {b}" for a, b in merges], types


# ---- the float64 forward (HF semantics) ----------------------------------------------------

def forward64(cfg, w, tokens):
    f = lambda a: np.asarray(a, dtype=np.float64)
    hd, nh, nkv = cfg["head_dim"], cfg["n_head"], cfg["n_kv"]
    eps = cfg["eps"]

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f(g)

    def rotate_half(x):
        return np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], axis=-1)

    n = len(tokens)
    inv_freq = llama3_inv_freq(cfg, hd)
    ang = np.outer(np.arange(n, dtype=np.float64), inv_freq)
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    x = f(w["embed"])[tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for L in w["layers"]:
        hx = rms(x, L["input_norm"])
        q = hx @ f(L["q"]).T + (f(L["bq"]) if "bq" in L else 0)
        k = hx @ f(L["k"]).T + (f(L["bk"]) if "bk" in L else 0)
        v = hx @ f(L["v"]).T + (f(L["bv"]) if "bv" in L else 0)
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # repeat_kv
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", p, v).reshape(n, nh * hd)
        x = x + a @ f(L["o"]).T
        hx = rms(x, L["post_norm"])
        g, u = hx @ f(L["gate"]).T, hx @ f(L["up"]).T
        x = x + (g / (1 + np.exp(-g)) * u) @ f(L["down"]).T
    x = rms(x, w["norm"])
    head = w["lm_head"] if "lm_head" in w else w["embed"]
    return x @ f(head).T


# ---- one file ------------------------------------------------------------------------------

def write_file(arch, cfg, hf, mix_name, rng, path):
    mix = MIXES[mix_name]
    nh, nkv, hd = cfg["n_head"], cfg["n_kv"], cfg["head_dim"]
    wr = gguf.GGUFWriter(str(path), arch=arch)
    wr.add_name(f"kiln-fixture-{arch}-{mix_name}")
    wr.add_context_length(cfg["ctx"])
    wr.add_embedding_length(cfg["hidden"])
    wr.add_block_count(cfg["n_layer"])
    wr.add_feed_forward_length(cfg["ff"])
    wr.add_head_count(nh)
    wr.add_head_count_kv(nkv)
    wr.add_rope_freq_base(cfg["rope_theta"])
    wr.add_layer_norm_rms_eps(cfg["eps"])
    wr.add_rope_dimension_count(hd)
    wr.add_file_type(0)
    tokens, merges, types = tokenizer(cfg["vocab"])
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(cfg["vocab"] - 3)
    wr.add_eos_token_id(cfg["vocab"] - 3)
    wr.add_add_bos_token(False)

    back = {"layers": [dict() for _ in hf["layers"]]}
    kinds = {}
    counter = [0]

    def matrix(name, x, put, unperm=None):
        qtype = mix[counter[0] % len(mix)]
        counter[0] += 1
        raw, dq = store(rng, x, qtype)
        wr.add_tensor(name, raw, raw_dtype=qtype)
        kinds[name] = qtype.name
        put(unpermute(dq, unperm) if unperm else dq)

    def vector(name, x, put=None):
        wr.add_tensor(name, x.astype(np.float32))
        kinds[name] = "F32"
        if put:
            put(x.astype(np.float32))

    matrix("token_embd.weight", hf["embed"], lambda a: back.__setitem__("embed", a))
    if arch == "llama":
        vector("rope_freqs.weight", rope_factors(cfg, hd))
    for i, L in enumerate(hf["layers"]):
        B = back["layers"][i]
        setter = lambda key: (lambda a: B.__setitem__(key, a))
        llama = arch == "llama"
        vector(f"blk.{i}.attn_norm.weight", L["input_norm"], setter("input_norm"))
        matrix(f"blk.{i}.attn_q.weight", permute(L["q"], nh) if llama else L["q"], setter("q"), nh if llama else None)
        matrix(f"blk.{i}.attn_k.weight", permute(L["k"], nkv) if llama else L["k"], setter("k"), nkv if llama else None)
        matrix(f"blk.{i}.attn_v.weight", L["v"], setter("v"))
        if cfg["bias"]:
            for b in ("bq", "bk", "bv"):
                vector(f"blk.{i}.attn_{b[1]}.bias", L[b], setter(b))
        matrix(f"blk.{i}.attn_output.weight", L["o"], setter("o"))
        vector(f"blk.{i}.ffn_norm.weight", L["post_norm"], setter("post_norm"))
        matrix(f"blk.{i}.ffn_gate.weight", L["gate"], setter("gate"))
        matrix(f"blk.{i}.ffn_up.weight", L["up"], setter("up"))
        matrix(f"blk.{i}.ffn_down.weight", L["down"], setter("down"))
    vector("output_norm.weight", hf["norm"], lambda a: back.__setitem__("norm", a))
    if not cfg["tied"]:
        matrix("output.weight", hf["lm_head"], lambda a: back.__setitem__("lm_head", a))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    assert set(t.name for t in mix) <= set(kinds.values()), (arch, mix_name, kinds)
    return back, kinds


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    prompt = [int(t) for t in rng.integers(0, 509, PROMPT_LEN)]
    meta = {
        "method": "scripts/make_arch_fixtures.py (see its header)",
        "versions": {"gguf": importlib.metadata.version("gguf"), "numpy": np.__version__},
        "prompt": prompt,
        "configs": CONFIGS,
        "files": {},
    }
    for arch, cfg in CONFIGS.items():
        hf = hf_weights(cfg, rng)
        for mix_name in MIXES:
            name = f"{arch}-{mix_name}"
            path = OUT / f"{name}.gguf"
            back, kinds = write_file(arch, cfg, hf, mix_name, rng, path)
            logits = forward64(cfg, back, prompt)
            np.save(OUT / f"{name}.p33.npy", logits.astype(np.float32))
            meta["files"][name] = {
                "tensor_types": kinds,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "bytes": path.stat().st_size,
                "logit_rms": float(np.sqrt(np.mean(logits ** 2))),
            }
            print(f"{name}: {path.stat().st_size} bytes, logit rms {meta['files'][name]['logit_rms']:.3f}, "
                  f"top-1 last {int(np.argmax(logits[-1]))}")
    (OUT / "arch_fixtures.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()

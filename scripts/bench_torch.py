#!/usr/bin/env python3
"""The PyTorch/transformers peer of `kiln bench`, on the same weights and the same prompts.

Reads the GGUF files `kiln synth` wrote (a small numpy GGUF reader, below), builds
`transformers.Qwen3MoeForCausalLM` in bf16 on CUDA with SDPA attention, loads every weight
from the GGUF (failing loudly if any parameter is left unset or any tensor unused), checks the
model computes what kiln computed (last-position logits of the same prompt, from
`kiln bench --logits-dir`), and times the prefill of the same prompt ids with CUDA events.
Kernel-level peers: torch.matmul for the pipeline's big GEMM shapes, the routed experts as a
batched GEMM, F.scaled_dot_product_attention (causal) for one layer, the last-token LM head, a
device copy and a large square matmul (the two measured ceilings).

  bench_torch.py --prompts prompts.json --gguf tiny=/tmp/tiny.gguf --gguf 30b=/tmp/30b.gguf \
      --kiln-json bench.json --json torch.json --combined combined.txt
  bench_torch.py --parse-only FILE.gguf          (numpy only: the tensors and where they go)
  bench_torch.py --combine-only --kiln-json bench.json --json torch.json --combined combined.txt

The model peer runs after the kernel peers, each model in its own try block: if transformers'
API differs or memory runs out, the kernel peers are still reported, with the reason.
"""

import argparse
import json
import math
import mmap
import os
import re
import struct
import sys
import time
import traceback
import warnings

import numpy as np

# ---- GGUF (v2/v3), as host/gguf/reader.rs reads it --------------------------------------------

GGML_TYPES = {  # ggml type id -> (name, numpy dtype or None, bytes per block, elements per block)
    0: ("F32", np.float32, 4, 1),
    1: ("F16", np.float16, 2, 1),
    30: ("BF16", np.uint16, 2, 1),
    8: ("Q8_0", None, 34, 32),
    12: ("Q4_K", None, 144, 256),
    14: ("Q6_K", None, 210, 256),
}
# gguf_type -> struct format of a scalar (8 string, 9 array are special)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
NP_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 10: "<u8",
              11: "<i8", 12: "<f8"}
DEFAULT_ALIGNMENT = 32


class GgufError(Exception):
    pass


class Gguf:
    """A GGUF file: metadata dict, tensor infos, and numpy views of the float tensors."""

    def __init__(self, path):
        self.path = path
        f = open(path, "rb")
        self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        f.close()
        self.pos = 0
        if self._take(4) != b"GGUF":
            raise GgufError(f"{path}: not a GGUF file")
        self.version = self._u32()
        if self.version not in (2, 3):
            raise GgufError(f"{path}: unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._u64(), self._u64()
        self.metadata = {}
        for _ in range(n_kv):
            key = self._str()
            self.metadata[key] = self._value(self._u32(), key, 0)
        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not (isinstance(self.alignment, int) and self.alignment > 0
                and self.alignment & (self.alignment - 1) == 0):
            raise GgufError(f"{path}: bad general.alignment {self.alignment!r}")
        self.tensors = {}
        order = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u32()
            if not 1 <= n_dims <= 4:
                raise GgufError(f"tensor {name}: n_dims {n_dims}")
            ne = [self._u64() for _ in range(n_dims)]
            ty = self._u32()
            rel = self._u64()
            if ty not in GGML_TYPES:
                raise GgufError(f"tensor {name}: unknown ggml type {ty}")
            tname, _, block_bytes, block_len = GGML_TYPES[ty]
            n = math.prod(ne)
            if ne[0] % block_len:
                raise GgufError(f"tensor {name}: row {ne[0]} not a multiple of {block_len}")
            self.tensors[name] = {"name": name, "ne": ne, "type": ty, "dtype": tname, "rel": rel,
                                  "n_bytes": n // block_len * block_bytes}
            order.append(name)
        self.data_offset = -(-self.pos // self.alignment) * self.alignment
        for t in self.tensors.values():
            t["offset"] = self.data_offset + t["rel"]
            if t["rel"] % self.alignment or t["offset"] + t["n_bytes"] > len(self.buf):
                raise GgufError(f"tensor {t['name']}: data out of range or misaligned")
        self.order = order

    # cursor helpers
    def _take(self, n):
        if self.pos + n > len(self.buf):
            raise GgufError(f"{self.path}: truncated at offset {self.pos} (need {n} bytes)")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _u32(self):
        return struct.unpack("<I", self._take(4))[0]

    def _u64(self):
        return struct.unpack("<Q", self._take(8))[0]

    def _str(self):
        return self._take(self._u64()).decode("utf-8")

    def _value(self, ty, key, depth):
        if ty in SCALARS:
            fmt = SCALARS[ty]
            v = struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]
            return bool(v) if ty == 7 else v
        if ty == 8:
            return self._str()
        if ty == 9:
            if depth >= 8:
                raise GgufError(f"{key}: arrays nested too deep")
            ety, count = self._u32(), self._u64()
            if ety in NP_SCALARS:  # numeric arrays in one read
                dt = np.dtype(NP_SCALARS[ety])
                arr = np.frombuffer(self._take(count * dt.itemsize), dtype=dt)
                return arr.tolist()
            if ety == 7:
                return [bool(b) for b in self._take(count)]
            return [self._value(ety, key, depth + 1) for _ in range(count)]
        raise GgufError(f"{key}: unknown value type {ty}")

    def array(self, name):
        """numpy view of a float tensor, shape reversed(ne) (C order: ne0 fastest).
        BF16 comes back as uint16 bit patterns."""
        t = self.tensors.get(name)
        if t is None:
            raise GgufError(f"missing tensor {name}")
        _, dt, _, _ = GGML_TYPES[t["type"]]
        if dt is None:
            raise GgufError(f"tensor {name}: {t['dtype']} is quantised; the torch peer reads "
                            "F32/F16/BF16 files only (kiln synth --dtype BF16)")
        a = np.frombuffer(self.buf, dtype=dt, count=math.prod(t["ne"]), offset=t["offset"])
        return a.reshape(tuple(reversed(t["ne"])))

    def arch(self):
        return self.metadata["general.architecture"]

    def key(self, k, default=None):
        return self.metadata.get(f"{self.arch()}.{k}", default)


def f32_value(v):
    """A GGUF f32 as the shortest decimal that rounds to it (1e-6, not 9.99999997e-07)."""
    return float(str(np.float32(v)))


# Qwen3MoeConfig fields every kiln qwen3moe model has (no tied head, no biases, SiLU, every layer
# MoE, no sliding window); shared with lab/full_depth_torch.py.
QWEN3MOE_FIXED = {
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "use_sliding_window": False,
    "output_router_logits": False,
}


def hf_config_dict(g, max_len):
    """Qwen3MoeConfig fields from GGUF metadata (as host/model/config.rs reads them)."""
    if g.arch() != "qwen3moe":
        raise GgufError(f"{g.path}: architecture {g.arch()}, the torch peer runs qwen3moe")
    hidden = g.key("embedding_length")
    n_head = g.key("attention.head_count")
    vocab = g.tensors["token_embd.weight"]["ne"][1]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": g.key("feed_forward_length", 0) or 4 * hidden,
        "moe_intermediate_size": g.key("expert_feed_forward_length"),
        "num_hidden_layers": g.key("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": g.key("attention.head_count_kv", n_head),
        "head_dim": g.key("attention.key_length", hidden // n_head),
        "num_experts": g.key("expert_count"),
        "num_experts_per_tok": g.key("expert_used_count"),
        "norm_topk_prob": True,
        "rope_theta": f32_value(g.key("rope.freq_base")),
        "rms_norm_eps": f32_value(g.key("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": max(int(g.key("context_length", 0)), int(max_len)),
        **QWEN3MOE_FIXED,
    }


# GGUF name (per layer, after "blk.{i}.") -> the HF module path it loads, for the plain 2-D/1-D
# weights; numpy shape reversed(ne) is already nn.Linear's [out, in].
LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
}
TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
EXPERT_STACKS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def parse_only(path):
    g = Gguf(path)
    print(f"{path}: GGUF v{g.version}, arch {g.arch()}, {len(g.metadata)} metadata keys, "
          f"{len(g.tensors)} tensors, alignment {g.alignment}, data at {g.data_offset}")
    try:
        cfg = hf_config_dict(g, 0)
        print("Qwen3MoeConfig:", json.dumps(cfg, sort_keys=True))
    except (GgufError, KeyError) as e:
        print(f"(no Qwen3MoeConfig: {e})")
    unmapped = []
    total = 0
    for name in g.order:
        t = g.tensors[name]
        shape = list(reversed(t["ne"]))
        m = re.match(r"blk\.(\d+)\.(.+)$", name)
        if name in TOP_MAP:
            dest = TOP_MAP[name]
        elif m and m.group(2) in LAYER_MAP:
            dest = f"model.layers.{m.group(1)}.{LAYER_MAP[m.group(2)]}"
        elif m and m.group(2) in EXPERT_STACKS:
            which = m.group(2).split("_")[1]
            dest = (f"model.layers.{m.group(1)}.mlp.experts "
                    f"({which} of every expert: fused gate_up_proj/down_proj or per expert)")
        else:
            dest = "?"
            unmapped.append(name)
        # Reading the data proves the offsets are right (and catches quantised types).
        if GGML_TYPES[t["type"]][1] is not None:
            a = g.array(name)
            if a.size <= 1 << 22:  # small ones fully: all finite
                if t["dtype"] == "BF16":
                    a = (a.astype(np.uint32) << 16).view(np.float32)
                if not np.isfinite(a).all():
                    raise GgufError(f"tensor {name} has non-finite values")
        total += t["n_bytes"]
        print(f"  {name:<32} {t['dtype']:<5} {str(shape):<22} -> {dest}")
    print(f"total tensor bytes {total}")
    if unmapped:
        print(f"UNMAPPED tensors: {unmapped}")
        return 1
    return 0


# ---- timing helpers -----------------------------------------------------------------------------

def median(xs):
    s = sorted(xs)
    if not s:
        return float("nan")
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


DEVICE = "cuda"  # --device cpu runs the same code on the CPU (a smoke test without a GPU)


def sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache(torch):
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def cuda_time_ms(torch, fn, warmup, reps):
    """Median of `reps` CUDA-event timings of fn() after `warmup` untimed calls (host clock
    on the CPU)."""
    for _ in range(warmup):
        fn()
    sync(torch)
    times = []
    for _ in range(reps):
        if DEVICE != "cuda":
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return median(times), times


# ---- kernel-level peers ---------------------------------------------------------------------------

def kernel_peers(torch, dims, lengths, reps, log, copy_bytes=1 << 30, square=8192):
    """torch.matmul / bmm / SDPA at the pipeline's shapes, and the two ceilings."""
    import torch.nn.functional as F

    dev = DEVICE
    bf = torch.bfloat16
    h, nh, nkv, hd = dims["hidden"], dims["n_head"], dims["n_head_kv"], dims["head_dim"]
    e, k, fe, vocab = dims["n_expert"], dims["n_expert_used"], dims["ff_exp"], dims["vocab"]
    qd, kvd = nh * hd, nkv * hd
    rows = []

    def add(kind, name, n, flops, bytes_moved, fn, r=reps):
        try:
            ms, _ = cuda_time_ms(torch, fn, 2, r)
            row = {"kind": kind, "name": name, "n": n, "ms": ms, "flops": flops,
                   "tflops": flops / ms / 1e9 if flops else None,
                   "bytes": bytes_moved, "tbs": bytes_moved / ms / 1e9 if bytes_moved else None}
        except Exception as ex:  # one failing peer (OOM, missing op) must not stop the others
            row = {"kind": kind, "name": name, "n": n, "error": f"{type(ex).__name__}: {ex}"}
        rows.append(row)
        log(fmt_kernel_row(row))
        empty_cache(torch)

    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=bf, generator=g)

    # Ceilings: a 1 GiB device copy (bytes read + written) and an 8192^3 bf16 matmul.
    src = torch.empty(copy_bytes // 2, device=dev, dtype=torch.int16).random_(generator=g)
    dst = torch.empty_like(src)
    add("ceiling", f"device copy {copy_bytes / 2**30:g} GiB", 0, 0, 2 * copy_bytes,
        lambda: dst.copy_(src))
    del src, dst
    a, b = rnd(square, square), rnd(square, square)
    add("ceiling", f"matmul {square}x{square}x{square}", 0, 2 * square ** 3, 0, lambda: a @ b)
    del a, b
    # LM head for the last position: a weight read (memory bound).
    x1, wl = rnd(1, h), rnd(h, vocab)
    add("gemm", f"lm head 1x{h} . {h}x{vocab}", 1, 2 * h * vocab, 2 * h * vocab,
        lambda: x1 @ wl)
    del x1, wl

    for n in lengths:
        x, xq = rnd(n, h), rnd(n, qd)
        for name, kk, nn_, inp in (
            (f"q proj {n}x{h} . {h}x{qd}", h, qd, x),
            (f"k/v proj {n}x{h} . {h}x{kvd}", h, kvd, x),
            (f"o proj {n}x{qd} . {qd}x{h}", qd, h, xq),
        ):
            w = rnd(kk, nn_)
            add("gemm", name, n, 2 * n * kk * nn_, 2 * (n * kk + kk * nn_ + n * nn_),
                lambda inp=inp, w=w: inp @ w)
            del w
        del x, xq
        if e:
            # Routed experts with perfect balance: E batched GEMMs of n*k/E rows each
            # (gate and up fused as one 2*ff_exp-wide product, then down).
            rows_e = max(1, n * k // e)
            xe, wgu, he, wd = rnd(e, rows_e, h), rnd(e, h, 2 * fe), rnd(e, rows_e, fe), \
                rnd(e, fe, h)
            add("gemm", f"experts gate+up bmm {e}x[{rows_e}x{h} . {h}x{2 * fe}]", n,
                2 * e * rows_e * h * 2 * fe, 2 * e * (h * 2 * fe + rows_e * (h + 2 * fe)),
                lambda: torch.bmm(xe, wgu))
            add("gemm", f"experts down bmm {e}x[{rows_e}x{fe} . {fe}x{h}]", n,
                2 * e * rows_e * fe * h, 2 * e * (fe * h + rows_e * (fe + h)),
                lambda: torch.bmm(he, wd))
            del xe, wgu, he, wd
            # The same work as one dense GEMM of all n*k routed rows (the grouping ideal).
            xr, wr = rnd(n * k, h), rnd(h, 2 * fe)
            add("gemm", f"routed rows dense {n * k}x{h} . {h}x{2 * fe}", n,
                2 * n * k * h * 2 * fe, 2 * (n * k * h + h * 2 * fe + n * k * 2 * fe),
                lambda: xr @ wr)
            del xr, wr
        q, kt, v = rnd(1, nh, n, hd), rnd(1, nkv, n, hd), rnd(1, nkv, n, hd)
        flops = 4 * n * n / 2 * nh * hd

        def sdpa(q=q, kt=kt, v=v):
            try:
                return F.scaled_dot_product_attention(q, kt, v, is_causal=True, enable_gqa=True)
            except TypeError:  # torch < 2.5: no enable_gqa
                rep = nh // nkv
                return F.scaled_dot_product_attention(
                    q, kt.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)

        add("attention", f"sdpa causal {nh}q/{nkv}kv heads x {hd}, N={n}", n, flops,
            2 * (2 * n * qd + 2 * n * kvd), sdpa)
        del q, kt, v
    return rows


def fmt_kernel_row(r):
    if "error" in r:
        return f"  {r['name']:<58} ERROR {r['error']}"
    s = f"  {r['name']:<58} {r['ms']:9.4f} ms"
    if r.get("tflops"):
        s += f" {r['tflops']:8.1f} TFLOP/s"
    if r.get("tbs"):
        s += f" {r['tbs']:7.3f} TB/s"
    return s


# ---- the model peer -------------------------------------------------------------------------------

def qwen3moe_config(transformers, cfgd, log):
    """A transformers Qwen3MoeConfig from a config dict (hf_config_dict's fields), RoPE theta
    set however this transformers version spells it, SDPA attention asked for. Also used by
    lab/full_depth_torch.py and lab/decode_torch.py."""
    theta = cfgd["rope_theta"]
    Config = transformers.Qwen3MoeConfig
    kwargs = dict(cfgd)
    try:  # transformers 5: rope settings live in rope_parameters
        cfg = Config(**kwargs, rope_parameters={"rope_type": "default", "rope_theta": theta})
    except TypeError:
        cfg = Config(**kwargs)
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = theta
        rp.setdefault("rope_type", "default")
    if hasattr(cfg, "rope_theta"):
        try:
            cfg.rope_theta = theta
        except Exception:
            pass
    try:
        cfg._attn_implementation = "sdpa"
    except Exception as ex:
        log(f"  note: cannot set config._attn_implementation: {ex}")
    return cfg


def rope_inv_freq(torch, cfgd):
    """RoPE's default inverse frequencies for cfgd, float64 on the CPU."""
    hd, theta = cfgd["head_dim"], cfgd["rope_theta"]
    return 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))


def check_rope(torch, model, cfgd):
    """Every *inv_freq buffer holds RoPE's frequencies for cfgd's theta (whatever way this
    transformers version spells the config); raises otherwise."""
    want = rope_inv_freq(torch, cfgd)
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            got = buf.detach().double().cpu()
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5):
                raise RuntimeError(f"{name} does not match rope theta {cfgd['rope_theta']}: "
                                   "RoPE config was not applied")


def construct_bf16(torch, transformers, cfg, device):
    """Qwen3MoeForCausalLM(cfg) with bf16 parameters made directly on `device` ("meta": shapes
    only), the default dtype restored afterwards."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return transformers.Qwen3MoeForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)


def build_model(torch, transformers, g, max_len, log):
    cfgd = hf_config_dict(g, max_len)
    cfg = qwen3moe_config(transformers, cfgd, log)
    model = construct_bf16(torch, transformers, cfg, DEVICE)
    # Not model.to(bf16): that would also round the f32 RoPE inv_freq buffer to bf16.
    model = model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise RuntimeError(f"parameters are {dtypes}, expected bf16 only")
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "sdpa":
        log(f"  note: attention implementation is {attn!r}, not 'sdpa'")
    # RoPE check independent of how this transformers version spells the config.
    check_rope(torch, model, cfgd)
    return model, cfgd


def to_torch(torch, g, name):
    """A GGUF tensor as a CUDA tensor (bf16 bit patterns reinterpreted, floats as stored)."""
    a = g.array(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only mmap: torch warns, we only copy from it
        t = torch.from_numpy(a.view(np.int16) if g.tensors[name]["dtype"] == "BF16" else a)
    t = t.to(DEVICE)
    return t.view(torch.bfloat16) if g.tensors[name]["dtype"] == "BF16" else t


def load_weights(torch, model, g, cfgd, log):
    """Copies every GGUF tensor into the model; raises if a parameter or tensor is left over."""
    # Parameters are the weights; persistent buffers (none in Qwen3-MoE) are only reported.
    params = dict(model.named_parameters())
    unset = set(params)
    used = set()
    e, fe, h = cfgd["num_experts"], cfgd["moe_intermediate_size"], cfgd["hidden_size"]

    def put(key, value, src):
        p = params.get(key)
        if p is None:
            raise RuntimeError(f"GGUF {src} -> {key}: no such parameter "
                               f"(state_dict has e.g. {sorted(params)[:6]})")
        if tuple(p.shape) != tuple(value.shape):
            raise RuntimeError(f"GGUF {src} -> {key}: shape {tuple(value.shape)} "
                               f"!= parameter {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(value.to(p.dtype))
        unset.discard(key)

    def layer_prefix(i):
        cands = [k for k in params if re.search(rf"(^|\.)layers\.{i}\.", k)]
        if not cands:
            raise RuntimeError(f"no parameters for layer {i}")
        return cands[0][: re.search(rf"(^|\.)layers\.{i}\.", cands[0]).end()]

    for gname, key in TOP_MAP.items():
        put(key, to_torch(torch, g, gname), gname)
        used.add(gname)
    layouts = set()
    for i in range(cfgd["num_hidden_layers"]):
        pre = layer_prefix(i)
        for suffix, dest in LAYER_MAP.items():
            gname = f"blk.{i}.{suffix}"
            if gname in g.tensors:
                put(pre + dest, to_torch(torch, g, gname), gname)
                used.add(gname)
        gate, up, down = (to_torch(torch, g, f"blk.{i}.{s}") for s in EXPERT_STACKS)
        used.update(f"blk.{i}.{s}" for s in EXPERT_STACKS)
        # gate/up: [E, ff_exp, hidden] ([out, in] per expert); down: [E, hidden, ff_exp].
        ex = pre + "mlp.experts."
        try:
            transposed = getattr(model.get_submodule(pre + "mlp.experts"), "is_transposed", None)
        except AttributeError:
            transposed = None
        if ex + "gate_up_proj" in params:
            shape = tuple(params[ex + "gate_up_proj"].shape)
            if transposed is None:
                transposed = shape == (e, h, 2 * fe) and shape != (e, 2 * fe, h)
            gu = torch.cat([gate, up], dim=1)  # gate first: chunk(2) gives gate, up
            put(ex + "gate_up_proj", gu.transpose(1, 2) if transposed else gu,
                f"blk.{i}.ffn_{{gate,up}}_exps")
            put(ex + "down_proj", down.transpose(1, 2) if transposed else down,
                f"blk.{i}.ffn_down_exps")
            layouts.add(f"fused gate_up_proj {shape}" + (" (transposed)" if transposed else ""))
        elif ex + "gate_proj" in params:
            shape = tuple(params[ex + "gate_proj"].shape)
            if transposed is None:
                transposed = shape == (e, h, fe) and shape != (e, fe, h)
            for nm, t in (("gate_proj", gate), ("up_proj", up), ("down_proj", down)):
                put(ex + nm, t.transpose(1, 2) if transposed else t, f"blk.{i}.{nm}")
            layouts.add(f"stacked gate_proj {shape}" + (" (transposed)" if transposed else ""))
        elif ex + "0.gate_proj.weight" in params:
            for j in range(e):
                put(f"{ex}{j}.gate_proj.weight", gate[j], f"blk.{i}.ffn_gate_exps[{j}]")
                put(f"{ex}{j}.up_proj.weight", up[j], f"blk.{i}.ffn_up_exps[{j}]")
                put(f"{ex}{j}.down_proj.weight", down[j], f"blk.{i}.ffn_down_exps[{j}]")
            layouts.add("per-expert nn.Linear")
        else:
            found = sorted(k for k in params if k.startswith(ex))[:8]
            raise RuntimeError(f"unknown experts layout under {ex}: {found}")
        del gate, up, down
    left = sorted(set(g.tensors) - used)
    if left:
        raise RuntimeError(f"GGUF tensors not loaded into the model: {left}")
    if unset:
        raise RuntimeError(f"model parameters left unset: {sorted(unset)}")
    sync(torch)
    return sorted(layouts)


def forward_fn(torch, model, ids):
    """model(ids) with the cheapest supported way to ask for the last logits only."""
    for kw in ({"logits_to_keep": 1}, {"num_logits_to_keep": 1}, {}):
        try:
            with torch.inference_mode():
                model(input_ids=ids[:, :8], use_cache=False, **kw)
        except TypeError:
            continue

        def run(kw=kw):
            with torch.inference_mode():
                return model(input_ids=ids, use_cache=False, **kw).logits[0, -1].float()

        return run, (next(iter(kw)) if kw else "none (all positions' logits)")
    raise RuntimeError("the model accepts none of logits_to_keep / num_logits_to_keep / plain")


def agreement(torch, got, kiln_npy):
    """rel L2 of the torch logits against kiln's, top-1 and top-5 agreement."""
    if not kiln_npy or not os.path.exists(kiln_npy):
        return None
    ref = np.load(kiln_npy).astype(np.float64)
    t = got.detach().double().cpu().numpy()
    if t.shape != ref.shape:
        return {"error": f"shape {t.shape} vs kiln {ref.shape}"}
    rel = float(np.linalg.norm(t - ref) / max(np.linalg.norm(ref), 1e-300))
    top5_t, top5_k = set(np.argsort(-t)[:5].tolist()), set(np.argsort(-ref)[:5].tolist())
    return {"rel_l2": rel, "top1_match": int(np.argmax(t)) == int(np.argmax(ref)),
            "top5_overlap": len(top5_t & top5_k), "torch_top1": int(np.argmax(t)),
            "kiln_top1": int(np.argmax(ref))}


def model_peer(torch, transformers, name, path, prompts, kiln_rows, args, deadline, log):
    out = {"model": name, "gguf": path, "results": []}
    t0 = time.time()
    g = Gguf(path)
    lengths = sorted(int(n) for n in prompts["lengths"])
    model, cfgd = build_model(torch, transformers, g, max(lengths), log)
    out["config"] = cfgd
    out["build_seconds"] = time.time() - t0
    t1 = time.time()
    out["experts_layout"] = load_weights(torch, model, g, cfgd, log)
    out["load_seconds"] = time.time() - t1
    out["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    log(f"{name}: model built in {out['build_seconds']:.1f} s, weights loaded in "
        f"{out['load_seconds']:.1f} s; experts {out['experts_layout']}, attention "
        f"{out['attn_implementation']}")
    impls = [None]
    if hasattr(model, "set_experts_implementation"):
        try:
            out["experts_implementation_default"] = str(model.get_experts_implementation())
        except Exception:
            pass
        impls = [s for s in args.experts_impls.split(",") if s]
    for impl in impls:
        label = impl or "default"
        if impl:
            try:
                model.set_experts_implementation(impl)
            except Exception as ex:
                out["results"].append({"experts_impl": label, "status": "error",
                                       "reason": f"set_experts_implementation: {ex}"})
                log(f"{name}: experts implementation {impl}: {ex}")
                continue
        skip = None
        for n in lengths:
            row = {"experts_impl": label, "n": n}
            out["results"].append(row)
            if skip or time.time() > deadline:
                row.update(status="skipped", reason=skip or "deadline")
                continue
            ids = torch.tensor([prompts["lengths"][str(n)]], dtype=torch.long, device=DEVICE)
            try:
                run, keep = forward_fn(torch, model, ids)
                wall = time.time()
                ms, times = cuda_time_ms(torch, run, 1, args.repeats)
                logits = run()
                sync(torch)
                row.update(status="ok", median_ms=ms, times_ms=times, tokens_per_s=n / ms * 1e3,
                           logits_mode=keep)
                kr = kiln_rows.get((name, n))
                if kr:
                    row["agreement"] = agreement(torch, logits, kr.get("logits_npy"))
                    row["tflops_by_kiln_count"] = kr["flops"]["total"] / ms / 1e9
                a = row.get("agreement") or {}
                log(f"{name} [{label}] N={n}: {ms:.3f} ms"
                    + (f", vs kiln logits rel L2 {a['rel_l2']:.2e} top-1 "
                       f"{'same' if a['top1_match'] else 'DIFFERENT'}" if "rel_l2" in a else ""))
                if time.time() - wall > args.skip_after_s:
                    skip = f"N={n} took {time.time() - wall:.0f} s"
            except Exception as ex:
                row.update(status="error", reason=f"{type(ex).__name__}: {ex}")
                log(f"{name} [{label}] N={n}: {row['reason']}")
                skip = f"N={n} failed"
                if "out of memory" in str(ex).lower():
                    empty_cache(torch)
            finally:
                del ids
    del model
    empty_cache(torch)
    return out


# ---- combined table -------------------------------------------------------------------------------

# torch (bf16 activations) against kiln (f32 activations, bf16 weights): 8e-3 measured on the
# tiny model at N=8; swapping gate and up in the experts gives 0.46. Above this, look closer.
AGREE_TOL = 5e-2


def combine(kiln_doc, torch_doc):
    lines = []
    peak = (kiln_doc or {}).get("roofline", {}).get("bf16_tflops", 798.0)
    bw = (kiln_doc or {}).get("roofline", {}).get("bandwidth_tbs", 3.0)
    lines.append(f"kiln vs PyTorch prefill (device: {(kiln_doc or {}).get('device', '?')}; "
                 f"kiln {(kiln_doc or {}).get('git_commit') or 'commit unknown'}; torch "
                 f"{(torch_doc or {}).get('torch_version', '?')}, transformers "
                 f"{(torch_doc or {}).get('transformers_version', '?')})")
    lines.append(f"TFLOP/s from kiln's FLOP count (docs/bench.md) for both; roofline {peak} "
                 f"TFLOP/s bf16, {bw} TB/s. ratio = torch ms / kiln ms (> 1: kiln faster).")
    hdr = (f"{'model':<6} {'N':>6} {'kiln ms':>10} {'torch ms':>10} {'torch impl':<12} "
           f"{'ratio':>7} {'kiln TF/s':>10} {'%roof':>6} {'torch TF/s':>10} {'%roof':>6} "
           f"{'kiln TB/s':>9} {'vs kiln logits':>16}")
    lines.append(hdr)
    torch_best = {}
    agree = {}
    for m in (torch_doc or {}).get("models", []):
        for r in m.get("results", []):
            if r.get("status") != "ok":
                continue
            key = (m["model"], r["n"])
            if key not in torch_best or r["median_ms"] < torch_best[key][0]:
                torch_best[key] = (r["median_ms"], r["experts_impl"])
            a = r.get("agreement") or {}
            if "rel_l2" in a:
                verdict = "ok" if a["rel_l2"] <= AGREE_TOL and a["top1_match"] else "CHECK"
                agree[key] = f"{a['rel_l2']:.1e} {verdict}"
    for r in (kiln_doc or {}).get("results", []):
        key = (r["model"], r["n"])
        if r.get("status") != "ok":
            lines.append(f"{r['model']:<6} {r['n']:>6} kiln {r.get('status')}: "
                         f"{r.get('reason', '')}")
            continue
        kms = r["median_ms"]
        ktf = r["flops"]["total"] / kms / 1e9
        tms, impl = torch_best.get(key, (None, "-"))
        ttf = r["flops"]["total"] / tms / 1e9 if tms else None
        lines.append(
            f"{r['model']:<6} {r['n']:>6} {kms:>10.3f} "
            + (f"{tms:>10.3f} " if tms else f"{'-':>10} ")
            + f"{impl:<12} "
            + (f"{tms / kms:>7.2f} " if tms else f"{'-':>7} ")
            + f"{ktf:>10.2f} {100 * ktf / peak:>5.1f}% "
            + (f"{ttf:>10.2f} {100 * ttf / peak:>5.1f}% " if ttf else f"{'-':>10} {'-':>6} ")
            + f"{r['weight_bytes'] / kms / 1e9:>9.3f} {agree.get(key, '-'):>16}")
    for m in (torch_doc or {}).get("models", []):
        if m.get("error"):
            lines.append(f"torch {m['model']}: model peer failed: {m['error']}")
    if torch_doc and torch_doc.get("error"):
        lines.append(f"torch peer failed: {torch_doc['error']}")
    kp = (torch_doc or {}).get("kernel_peers", [])
    if kp:
        lines.append("")
        lines.append("kernel peers (torch, bf16, median of CUDA-event timings):")
        lines.extend(fmt_kernel_row(r) for r in kp)
    stages = [r for r in (kiln_doc or {}).get("results", []) if r.get("profile")]
    if stages:
        lines.append("")
        lines.append("kiln per-stage time (profiled run, synchronised per stage), % of total:")
        for r in stages:
            p = r["profile"]
            parts = " | ".join(f"{s['stage']} {s['pct']:.0f}%" for s in p["stages"])
            lines.append(f"  {r['model']} N={r['n']} ({p['stages_ms_total']:.2f} ms): {parts}")
    return "\n".join(lines) + "\n"


def load_json(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def write_json(args, torch_doc):
    """torch.json as it stands (also mid-run, so a run stopped by a time limit leaves it)."""
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(torch_doc, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


def write_outputs(args, torch_doc):
    write_json(args, torch_doc)
    kiln_doc = load_json(args.kiln_json)
    text = combine(kiln_doc, torch_doc)
    if args.combined:
        with open(args.combined, "w") as f:
            f.write(text)
    print()
    print(text, end="")


# ---- main -----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parse-only", metavar="GGUF",
                    help="read a GGUF and print its tensors and the HF names they load into")
    ap.add_argument("--combine-only", action="store_true",
                    help="only write the side-by-side table from --kiln-json and --json")
    ap.add_argument("--prompts", help="prompts.json written by kiln bench")
    ap.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH",
                    help="the GGUF of a model named in prompts.json (repeatable)")
    ap.add_argument("--kiln-json", help="kiln bench's JSON (FLOP counts, logits paths)")
    ap.add_argument("--json", default="torch.json", help="where to write the results")
    ap.add_argument("--combined", help="where to write the side-by-side table")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kernel-repeats", type=int, default=10)
    ap.add_argument("--experts-impls", default="grouped_mm,eager",
                    help="transformers experts backends to time, where the API exists")
    ap.add_argument("--skip-after-s", type=float, default=60.0)
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="start nothing new after this many seconds (0: no limit)")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel-level peers")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a smoke test of the whole path without a GPU (no kernel peers)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device

    if args.parse_only:
        return parse_only(args.parse_only)
    if args.combine_only:
        write_outputs(argparse.Namespace(**{**vars(args), "json": None}),
                      load_json(args.json) or {"error": f"no {args.json}"})
        return 0

    start = time.time()
    deadline = start + args.deadline_s if args.deadline_s > 0 else float("inf")
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    doc = {"tool": "bench_torch.py", "models": [], "kernel_peers": []}
    prompts = load_json(args.prompts) or {}
    kiln_doc = load_json(args.kiln_json) or {}
    kiln_rows = {(r["model"], r["n"]): r for r in kiln_doc.get("results", [])
                 if r.get("status") == "ok"}
    try:
        import torch
        doc["torch_version"] = torch.__version__
        if DEVICE == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch sees no CUDA device")
            doc["device"] = torch.cuda.get_device_name(0)
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            doc["device"] = "cpu (smoke test: timings mean nothing)"
    except Exception as ex:
        doc["error"] = f"{type(ex).__name__}: {ex}"
        log(f"torch unusable: {doc['error']}")
        write_outputs(args, doc)
        return 1
    try:
        import transformers
        doc["transformers_version"] = transformers.__version__
    except Exception as ex:
        transformers = None
        doc["transformers_error"] = f"{type(ex).__name__}: {ex}"
    log(f"torch {torch.__version__}, transformers {doc.get('transformers_version', '-')}, "
        f"{doc['device']}")

    files = dict(s.split("=", 1) for s in args.gguf)
    all_lengths = sorted({int(n) for m in prompts.get("models", {}).values()
                          for n in m.get("lengths", {})}) or [512, 2048, 4096, 8192]

    # Kernel peers at the largest model's dims (the 30b one when present).
    if not args.no_kernels and DEVICE == "cuda":
        dims = None
        for name in ("30b", *files):
            if name in files:
                try:
                    c = hf_config_dict(Gguf(files[name]), 0)
                    dims = {"hidden": c["hidden_size"], "n_head": c["num_attention_heads"],
                            "n_head_kv": c["num_key_value_heads"], "head_dim": c["head_dim"],
                            "n_expert": c["num_experts"], "n_expert_used": c["num_experts_per_tok"],
                            "ff_exp": c["moe_intermediate_size"], "vocab": c["vocab_size"],
                            "model": name}
                    break
                except Exception as ex:
                    log(f"reading {files[name]} for kernel dims: {ex}")
        if dims is None:  # Qwen3-30B-A3B
            dims = {"hidden": 2048, "n_head": 32, "n_head_kv": 4, "head_dim": 128,
                    "n_expert": 128, "n_expert_used": 8, "ff_exp": 768, "vocab": 151936,
                    "model": "qwen3-30b-a3b defaults"}
        doc["kernel_dims"] = dims
        log(f"kernel peers at {dims['model']} dims:")
        try:
            doc["kernel_peers"] = kernel_peers(torch, dims, all_lengths, args.kernel_repeats, log)
        except Exception as ex:
            doc["kernel_error"] = f"{type(ex).__name__}: {ex}"
            log(f"kernel peers failed: {doc['kernel_error']}")
        empty_cache(torch)
        write_json(args, doc)

    for name, path in files.items():
        p = prompts.get("models", {}).get(name)
        if transformers is None:
            doc["models"].append({"model": name, "error": doc["transformers_error"]})
            continue
        if p is None:
            doc["models"].append({"model": name, "error": f"no prompts for {name} in "
                                                          f"{args.prompts}"})
            continue
        if time.time() > deadline:
            doc["models"].append({"model": name, "error": "skipped: deadline"})
            continue
        try:
            doc["models"].append(model_peer(torch, transformers, name, path, p, kiln_rows,
                                            args, deadline, log))
        except Exception as ex:
            tb = traceback.format_exc(limit=4)
            doc["models"].append({"model": name, "error": f"{type(ex).__name__}: {ex}",
                                  "traceback": tb})
            log(f"{name}: model peer failed: {type(ex).__name__}: {ex}\n{tb}")
            empty_cache(torch)
        write_json(args, doc)
    doc["total_seconds"] = time.time() - start
    write_outputs(args, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

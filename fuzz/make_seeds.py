"""Writes small seed inputs for the gguf_reader fuzz target into corpus/gguf_reader/.

Seeds: a complete tiny model of each architecture (hidden 32, vocab 8, F32/F16/BF16/Q8_0
matrices) and a file with one Q4_K and one Q6_K tensor and every metadata value type.
"""
import os
import struct
import random

random.seed(7)
OUT = os.path.join(os.path.dirname(__file__), "corpus", "gguf_reader")
os.makedirs(OUT, exist_ok=True)


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return s(key) + struct.pack("<I", ty) + payload


def u32(key, v):
    return kv(key, 4, struct.pack("<I", v))


def f32(key, v):
    return kv(key, 6, struct.pack("<f", v))


def string(key, v):
    return kv(key, 8, s(v))


def str_array(key, items):
    return kv(key, 9, struct.pack("<IQ", 8, len(items)) + b"".join(s(i) for i in items))


def tensor_bytes(ty, n):
    if ty == 0:
        return b"".join(struct.pack("<f", random.gauss(0, 0.2)) for _ in range(n))
    if ty in (1, 30):
        return bytes(random.getrandbits(8) & (0x3F if i % 2 else 0xFF) for i in range(2 * n))
    if ty == 8:
        return b"".join(struct.pack("<e", 0.01) + bytes(random.getrandbits(8) for _ in range(32)) for _ in range(n // 32))
    if ty == 12:
        return b"".join(struct.pack("<ee", 0.01, 0.001) + bytes(random.getrandbits(8) for _ in range(140)) for _ in range(n // 256))
    if ty == 14:
        return b"".join(bytes(random.getrandbits(8) for _ in range(208)) + struct.pack("<e", 0.001) for _ in range(n // 256))
    raise ValueError(ty)


def gguf(kvs, tensors, align=32):
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data = b"", b""
    for name, shape, ty in tensors:
        n = 1
        for d in shape:
            n *= d
        infos += s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        infos += struct.pack("<IQ", ty, len(data))
        data += tensor_bytes(ty, n)
        data += b"\0" * (-len(data) % align)
    out = head + infos
    out += b"\0" * (-len(out) % align)
    return out + data


def model(arch, wty):
    h, hd, v, ff, e = 32, 32, 8, 32, 2
    moe = arch != "qwen3"
    kvs = [string("general.architecture", arch)]
    for k, val in [("context_length", 16), ("embedding_length", h), ("feed_forward_length", ff),
                   ("block_count", 1), ("attention.head_count", 1), ("attention.head_count_kv", 1),
                   ("attention.key_length", hd), ("attention.value_length", hd)]:
        kvs.append(u32(f"{arch}.{k}", val))
    kvs += [f32(f"{arch}.rope.freq_base", 1e6), f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)]
    if moe:
        kvs += [u32(f"{arch}.expert_count", e), u32(f"{arch}.expert_used_count", 1),
                u32(f"{arch}.expert_feed_forward_length", ff)]
    if arch == "qwen2moe":
        kvs.append(u32(f"{arch}.expert_shared_feed_forward_length", ff))
    toks = ["a", "b", "c", "ab", "d", "e", "<|endoftext|>", "<|im_start|>"]
    kvs += [string("tokenizer.ggml.model", "gpt2"), str_array("tokenizer.ggml.tokens", toks),
            str_array("tokenizer.ggml.merges", ["a b"]),
            kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, 8) + struct.pack("<8i", 1, 1, 1, 1, 1, 1, 3, 3))]
    t = [("token_embd.weight", [h, v], wty), ("output_norm.weight", [h], 0), ("output.weight", [h, v], wty),
         ("blk.0.attn_norm.weight", [h], 0), ("blk.0.attn_q.weight", [h, hd], wty),
         ("blk.0.attn_k.weight", [h, hd], wty), ("blk.0.attn_v.weight", [h, hd], wty),
         ("blk.0.attn_output.weight", [hd, h], wty), ("blk.0.ffn_norm.weight", [h], 0)]
    if arch == "qwen2moe":
        t += [(f"blk.0.attn_{x}.bias", [hd], 0) for x in "qkv"]
    else:
        t += [("blk.0.attn_q_norm.weight", [hd], 0), ("blk.0.attn_k_norm.weight", [hd], 0)]
    if moe:
        t += [("blk.0.ffn_gate_inp.weight", [h, e], 0), ("blk.0.ffn_gate_exps.weight", [h, ff, e], wty),
              ("blk.0.ffn_up_exps.weight", [h, ff, e], wty), ("blk.0.ffn_down_exps.weight", [ff, h, e], wty)]
    else:
        t += [("blk.0.ffn_gate.weight", [h, ff], wty), ("blk.0.ffn_up.weight", [h, ff], wty),
              ("blk.0.ffn_down.weight", [ff, h], wty)]
    if arch == "qwen2moe":
        t += [("blk.0.ffn_gate_inp_shexp.weight", [h], 0), ("blk.0.ffn_gate_shexp.weight", [h, ff], wty),
              ("blk.0.ffn_up_shexp.weight", [h, ff], wty), ("blk.0.ffn_down_shexp.weight", [ff, h], wty)]
    return gguf(kvs, t)


for arch, wty in [("qwen3", 0), ("qwen3moe", 8), ("qwen2moe", 1), ("qwen3moe", 30)]:
    open(os.path.join(OUT, f"{arch}-{wty}.gguf"), "wb").write(model(arch, wty))

all_types = [kv("u8", 0, b"\x01"), kv("i8", 1, b"\xff"), kv("u16", 2, b"\x01\x00"), kv("i16", 3, b"\xff\xff"),
             u32("u32", 7), kv("i32", 5, struct.pack("<i", -3)), f32("f32", 0.5), kv("bool", 7, b"\x01"),
             string("str", "x"), kv("u64", 10, struct.pack("<Q", 9)), kv("i64", 11, struct.pack("<q", -9)),
             kv("f64", 12, struct.pack("<d", 0.25)),
             kv("nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 1)
                + struct.pack("<IQ", 8, 1) + s("y")),
             u32("general.alignment", 64)]
open(os.path.join(OUT, "kquants.gguf"), "wb").write(
    gguf(all_types, [("q4", [256, 2], 12), ("q6", [256, 2], 14)], align=64)
)

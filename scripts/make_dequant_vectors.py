#!/usr/bin/env python3
"""Writes tests/data/dequant_vectors.gguf: random blocks of every ggml type kiln dequantizes,
each beside gguf-py's own dequantization of it, for tests/dequant_vectors.rs (bit for bit).

For each type NAME the file holds two tensors: `NAME` (the raw blocks, stored as that type)
and `NAME.want` (F32: `gguf.quants.dequantize` of those bytes). The blocks are made
  - by gguf-py's quantizer (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) from random normal
    floats of several magnitudes, plus an all-zero block and a constant block;
  - as random bytes with finite, sane f16 scale fields (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
    IQ4_XS: gguf-py has no quantizer for them), one block per type with a subnormal scale.
The metadata key `gguf_py.type_sizes` lists gguf-py's GGML_QUANT_SIZES ("NAME id block_len
block_bytes") so the test can check kiln's type table against it.

Needs `pip install gguf numpy` (written with gguf 0.19.0, numpy 2.4.6). Deterministic:
    python3 scripts/make_dequant_vectors.py [OUT]
"""
import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/dequant_vectors.gguf"

# Types whose blocks come from gguf-py's quantizer.
QUANTIZED = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# Types made of random bytes: the byte offsets of their f16 scale fields (d, dmin).
RANDOM = {
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}


def quantized_blocks(rng, qtype):
    block_len = max(GGML_QUANT_SIZES[qtype][0], 32)  # F16/BF16: rows of 32
    n_blocks = 48
    rows = []
    for i in range(n_blocks):
        scale = 10.0 ** rng.uniform(-4, 2)
        rows.append(rng.standard_normal(block_len) * scale)
    rows[0][:] = 0.0
    rows[1][:] = 0.75  # constant block (Q4_1/Q5_1: max == min)
    rows[2][:] = rng.standard_normal(block_len) * 1e-7
    x = np.concatenate(rows).astype(np.float32).reshape(1, -1)
    return gguf.quants.quantize(x, qtype).reshape(-1).view(np.uint8)


def random_blocks(rng, qtype):
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = 48 if block_len == 32 else 12
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for b in range(n_blocks):
        for k, off in enumerate(RANDOM[qtype]):
            v = rng.uniform(1e-4, 0.2) * (1 if k == 0 or rng.random() < 0.9 else -1)
            if b == 0:
                v = 3e-7 if k == 0 else v  # subnormal f16 (smallest normal is 6.1e-5)
            raw[b, off:off + 2] = np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
    return raw.reshape(-1)


def main():
    rng = np.random.default_rng(20260101)
    w = gguf.GGUFWriter(str(OUT), arch="dequant-vectors")
    sizes = [f"{t.name} {t.value} {bl} {bb}" for t, (bl, bb) in GGML_QUANT_SIZES.items()]
    w.add_array("gguf_py.type_sizes", sizes)
    w.add_string("gguf_py.version", importlib.metadata.version("gguf"))
    for qtype in QUANTIZED + list(RANDOM):
        raw = quantized_blocks(rng, qtype) if qtype in QUANTIZED else random_blocks(rng, qtype)
        block_len, block_bytes = GGML_QUANT_SIZES[qtype]
        n = raw.size // block_bytes * block_len
        want = gguf.quants.dequantize(raw, qtype).astype(np.float32, copy=False).reshape(-1)
        assert want.size == n and np.all(np.isfinite(want)), qtype.name
        w.add_tensor(qtype.name, raw, raw_dtype=qtype)
        w.add_tensor(qtype.name + ".want", want)
        print(f"{qtype.name:8} {raw.size // block_bytes:3} blocks, max |x| {np.abs(want).max():.3g}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

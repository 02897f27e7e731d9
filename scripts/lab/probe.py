"""Probe lab: TMA load (swizzle layout), one wgmma tile, against the PTX ISA's layouts."""
import faulthandler
import sys
import time

import numpy as np
import torch

from common import kernel, ptr, u32, tensor_map_2d, rel_l2

SHARED = 2 * 16384 + 64 + 1024
T0 = time.time()


def say(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def swizzle_128b_words(tile_words_rows):
    """Expected shared layout: row r's 16-byte chunk c at chunk c ^ (r % 8)."""
    rows, cols = tile_words_rows.shape  # cols = 32 words = 128 bytes
    out = np.empty_like(tile_words_rows)
    for r in range(rows):
        for c in range(8):
            d = c ^ (r % 8)
            out[r, 4 * d:4 * d + 4] = tile_words_rows[r, 4 * c:4 * c + 4]
    return out


def probe_tma():
    rows, cols = 200, 96
    src = torch.arange(rows * cols, dtype=torch.int32, device="cuda").to(torch.int16).view(torch.bfloat16)
    src = src.view(rows, cols).contiguous()
    say("encoding tensor map")
    m = tensor_map_2d(src, 64, 64)
    out = torch.full((64 * 32,), -1, dtype=torch.int32, device="cuda")
    k = kernel("probe_tma_load", SHARED)
    say("launching probe_tma_load")
    k((1, 1, 1), (128, 1, 1), (ptr(m), ptr(out), u32(32), u32(150), u32(64 * 128)), shared_mem=SHARED)
    torch.cuda.synchronize()
    say("probe_tma_load done")
    # Box at x=32 (k), y=150 (row): rows 150..213 (past 200 → zero), cols 32..95.
    s16 = src.view(torch.int16).cpu().numpy().astype(np.int64) & 0xffff
    box = np.zeros((64, 64), dtype=np.int64)
    valid = s16[150:200, 32:96]
    box[:valid.shape[0], :] = valid
    words = (box[:, 0::2] | (box[:, 1::2] << 16)).astype(np.uint32).view(np.int32)
    want = swizzle_128b_words(words)
    got = out.view(64, 32).cpu().numpy()
    same = np.array_equal(got, want)
    plain = np.array_equal(got, words)
    say(f"TMA box vs 128B-swizzled expectation: {'MATCH' if same else 'MISMATCH'}"
        f" (vs unswizzled: {'match' if plain else 'no'})")
    return same


def probe_wgmma():
    a = torch.randn(64, 64, device="cuda").bfloat16()
    b = torch.randn(128, 64, device="cuda").bfloat16()
    ma = tensor_map_2d(a, 64, 64)
    mb = tensor_map_2d(b, 64, 128)
    out = torch.full((128 * 64,), float("nan"), device="cuda")
    k = kernel("probe_wgmma", SHARED)
    say("launching probe_wgmma")
    k((1, 1, 1), (128, 1, 1), (ptr(ma), ptr(mb), ptr(out)), shared_mem=SHARED)
    torch.cuda.synchronize()
    say("probe_wgmma done")
    want = a.double() @ b.double().T  # 64 x 128
    got = torch.full((64, 128), float("nan"), dtype=torch.float64)
    o = out.view(128, 64).cpu().double()
    for t in range(128):
        w, l = t // 32, t % 32
        for j in range(16):
            for e in range(4):
                r = 16 * w + l // 4 + 8 * (e // 2)
                c = 8 * j + 2 * (l % 4) + e % 2
                got[r, c] = o[t, 4 * j + e]
    err = rel_l2(got, want.cpu())
    say(f"wgmma 64x128x64 rel L2 vs float64: {err:.2e}")
    return err < 1e-5


if __name__ == "__main__":
    faulthandler.dump_traceback_later(40, exit=True)
    ok = probe_tma()
    ok = probe_wgmma() and ok
    print("PROBES OK" if ok else "PROBES FAILED", flush=True)
    sys.exit(0 if ok else 1)

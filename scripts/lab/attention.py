"""Flash attention lab: kiln's flash_attention_hd128 against float64 and torch SDPA."""
import faulthandler
import math
import sys

import torch
import torch.nn.functional as F

from common import kernel, ptr, u32, f32, tensor_map_2d, time_ms, rel_l2, table

HD, BQ = 128, 128
THREADS = 384
# gpu_kernels::flash_attention::SHARED_BYTES (tests/lab_constants.rs keeps the two equal)
SHARED = 230464


class Cache:
    def __init__(self, cap, n_kv):
        self.cap = (cap + 127) // 128 * 128
        self.n_kv = n_kv
        self.k = torch.zeros(self.cap, n_kv * HD, dtype=torch.bfloat16, device="cuda")
        self.vt = torch.zeros(n_kv * HD, self.cap, dtype=torch.bfloat16, device="cuda")
        self.mk = tensor_map_2d(self.k, 64, 128)
        self.mv = tensor_map_2d(self.vt, 64, 128)

    def write(self, k, v, start):
        n = k.shape[0]
        self.k[start:start + n] = k.reshape(n, -1)
        self.vt[:, start:start + n] = v.reshape(n, -1).T


def run(q, cache, start, n_head):
    n = q.shape[0]
    q2 = q.reshape(n, n_head * HD).contiguous()
    o = torch.full((n, n_head * HD), float("nan"), dtype=torch.bfloat16, device="cuda")
    mq = tensor_map_2d(q2, 64, 128)
    k = kernel("flash_attention_hd128", SHARED)
    scale = 1 / math.sqrt(HD) * math.log2(math.e)
    grid = (n_head, (n + BQ - 1) // BQ, 1)  # heads along x, query tiles along y (flash_attention.rs)

    def launch():
        k(grid, (THREADS, 1, 1), (ptr(mq), ptr(cache.mk), ptr(cache.mv), ptr(o), u32(n), u32(start), u32(n_head),
                                  u32(cache.n_kv), f32(scale)), shared_mem=SHARED)
    return o, launch, (q2, mq)


def reference(q, k, v, start):
    """float64 causal GQA attention: query i at position start + i over keys 0..start+i."""
    n, n_head, _ = q.shape
    total, n_kv, _ = k.shape
    g = n_head // n_kv
    qd, kd, vd = q.double(), k.double(), v.double()
    kd = kd.repeat_interleave(g, dim=1)
    vd = vd.repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", qd, kd) / math.sqrt(HD)
    pos = torch.arange(start, start + n, device=q.device)[:, None]
    keys = torch.arange(total, device=q.device)[None, :]
    s = s.masked_fill(keys > pos, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hqk,khd->qhd", p, vd)


def correctness():
    ok = True
    rows = []
    for (n, start, n_head, n_kv) in [(1, 0, 4, 4), (5, 0, 8, 4), (33, 7, 8, 1), (257, 0, 32, 4), (300, 1000, 16, 8),
                                     (4100, 0, 8, 1)]:
        total = start + n
        k = torch.randn(total, n_kv, HD, device="cuda").bfloat16()
        v = torch.randn(total, n_kv, HD, device="cuda").bfloat16()
        q = torch.randn(n, n_head, HD, device="cuda").bfloat16()
        cache = Cache(total, n_kv)
        cache.write(k, v, 0)
        o, launch, _keep = run(q, cache, start, n_head)
        launch()
        torch.cuda.synchronize()
        want = reference(q, k, v, start)
        e = rel_l2(o.view(n, n_head, HD), want)
        good = e < 8e-3
        ok &= good
        rows.append((f"n={n} start={start} heads={n_head}/{n_kv}", f"{e:.2e}", "ok" if good else "FAIL"))
    print("== correctness (rel L2 vs float64 on the same bf16 inputs; bf16 P and output)")
    table(rows, ("case", "rel_l2", ""))
    # Invariance: 300 queries at start 1000 vs the same queries one at a time and in chunks.
    n, start, n_head, n_kv = 300, 1000, 16, 4
    total = start + n
    k = torch.randn(total, n_kv, HD, device="cuda").bfloat16()
    v = torch.randn(total, n_kv, HD, device="cuda").bfloat16()
    q = torch.randn(n, n_head, HD, device="cuda").bfloat16()
    cache = Cache(total, n_kv)
    cache.write(k, v, 0)
    full, launch, _k1 = run(q, cache, start, n_head)
    launch()
    inv = []
    for (a, b) in [(0, 1), (17, 18), (299, 300), (0, 100), (100, 300), (45, 222)]:
        part, l2, _k2 = run(q[a:b].contiguous(), cache, start + a, n_head)
        l2()
        torch.cuda.synchronize()
        same = torch.equal(part.view(torch.int16), full[a:b].view(torch.int16))
        ok &= same
        inv.append((f"queries {a}..{b}", "bit-identical" if same else "DIFFERENT"))
    print("== invariance: queries of a 300-query call (start 1000) vs the same queries in other calls")
    table(inv, ("call", "vs full call"))
    return ok


def speed():
    print("== speed: 32 q / 4 kv heads x 128, causal, bf16; TFLOP/s = 4*N^2*d*heads/2 / t")
    rows = []
    n_head, n_kv = 32, 4
    for n in [1024, 4096, 8192, 16384]:
        q = torch.randn(n, n_head, HD, device="cuda").bfloat16()
        k = torch.randn(n, n_kv, HD, device="cuda").bfloat16()
        v = torch.randn(n, n_kv, HD, device="cuda").bfloat16()
        cache = Cache(n, n_kv)
        cache.write(k, v, 0)
        o, launch, _keep = run(q, cache, 0, n_head)
        flops = 4 * n * n * HD * n_head / 2
        t_kiln = time_ms(launch, iters=10)
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        sdpa = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        t_def = time_ms(sdpa, iters=10)
        from torch.nn.attention import sdpa_kernel, SDPBackend
        res = {}
        for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
            try:
                with sdpa_kernel(be):
                    res[name] = time_ms(sdpa, iters=10)
            except Exception as e:  # noqa: BLE001
                res[name] = float("nan")
        tf = lambda t: flops / t / 1e9
        rows.append((n, f"{tf(t_kiln):.0f}", f"{tf(t_def):.0f}", f"{tf(res['flash']):.0f}", f"{tf(res['cudnn']):.0f}",
                     f"{res['flash'] / t_kiln:.2f}", f"{res['cudnn'] / t_kiln:.2f}"))
    table(rows, ("N", "kiln", "sdpa default", "sdpa flash", "sdpa cudnn", "vs flash", "vs cudnn"))


if __name__ == "__main__":
    faulthandler.dump_traceback_later(100, exit=True)
    ok = correctness()
    speed()
    print("ALL OK" if ok else "SOME CHECKS FAILED", flush=True)
    sys.exit(0 if ok else 1)

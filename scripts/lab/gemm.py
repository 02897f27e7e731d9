"""GEMM lab: kiln's wgmma GEMM against cuBLAS (torch) on the issue's shapes; correctness at
odd shapes; bit-exact row invariance across call sizes."""
import os
import statistics
import sys

import torch

from common import kernel, ptr, u32, tensor_map_2d, time_ms, rel_l2, table, ceilings

BM, BN, THREADS = 128, 128, 384
STAGES, BK = 5, 64
# gpu_kernels::gemm_wgmma::SHARED_BYTES and WIDE_SHARED_BYTES (tests/lab_constants.rs keeps
# them and WIDE_MIN_TILES equal to kiln's); the wide kernel's tiles are BM x 2 BN
SHARED = 197712
WIDE_SHARED = 230464
# kiln::gpu::ops::gemm_wgmma::WIDE_MIN_TILES: TileWidth::Auto takes wide tiles from this many
WIDE_MIN_TILES = 72
SMS = torch.cuda.get_device_properties(0).multi_processor_count
# A second build of the kernels (KILN_PTX_ALT) whose wide and paired GEMMs join the speed
# table's interleaved rounds: an A/B of two builds under the same clock.
ALT = os.environ.get("KILN_PTX_ALT")


def run_f32(x, w, bias=None, y=None, add=False, wide=False, pair=False, ptx=None):
    """kiln's f32 GEMM: narrow tiles (BM x BN) or wide (BM x 2 BN, gemm_wgmma_f32_wide, what
    kiln's TileWidth::Auto launches when that still makes 72 tiles or more), or wide in
    clusters of two sharing B (gemm_wgmma_f32_wide_pair: the PTX declares the cluster, so a
    plain launch forms it; the grid is whole clusters, at most one per two multiprocessors)."""
    n_rows, k = x.shape
    m = w.shape[0]
    if y is None:
        y = torch.full((n_rows, m), float("nan"), device="cuda")
    mx = tensor_map_2d(x, 64, BM)
    mw = tensor_map_2d(w, 64, BN)
    name, shared, cols = ("gemm_wgmma_f32_wide", WIDE_SHARED, 2 * BN) if wide or pair else ("gemm_wgmma_f32", SHARED, BN)
    kern = kernel(name + ("_pair" if pair else ""), shared, ptx)
    flags = (1 if bias is not None else 0) | (2 if add else 0)
    b = bias if bias is not None else y
    # Persistent: a block per multiprocessor, at most one per tile.
    tiles = ((m + cols - 1) // cols) * ((n_rows + BM - 1) // BM)
    grid = (min(tiles, SMS), 1, 1)
    if pair:
        pairs = ((m + cols - 1) // cols) * ((n_rows + 2 * BM - 1) // (2 * BM))
        grid = (2 * max(1, min(pairs, SMS // 2)), 1, 1)

    def launch():
        kern(grid, (THREADS, 1, 1), (ptr(mx), ptr(mw), ptr(b), ptr(y), u32(n_rows), u32(m), u32(k), u32(flags)),
             shared_mem=shared)
    return y, launch


def correctness():
    print("== correctness (rel L2 vs float64; f32 out)")
    rows = []
    ok = True
    for (n_rows, m, k) in [(1, 128, 64), (7, 200, 72), (300, 640, 2048), (129, 130, 136), (64, 512, 4096)]:
        x = torch.randn(n_rows, k, device="cuda").bfloat16()
        w = torch.randn(m, k, device="cuda").bfloat16()
        bias = torch.randn(m, device="cuda")
        y0 = torch.randn(n_rows, m, device="cuda")
        y = y0.clone()
        _, launch = run_f32(x, w, bias, y, add=True)
        launch()
        torch.cuda.synchronize()
        want = x.double() @ w.double().T + bias.double() + y0.double()
        e = rel_l2(y, want)
        good = e < 1e-5
        ok &= good
        rows.append((f"{n_rows}x{m}x{k}", f"{e:.2e}", "ok" if good else "FAIL"))
    table(rows, ("shape", "rel_l2", ""))
    print("== invariance: rows of an M-row call vs the same rows in 1-row and 7-row calls")
    k, m = 2048, 384
    x = torch.randn(4096, k, device="cuda").bfloat16()
    w = torch.randn(m, k, device="cuda").bfloat16()
    full, launch = run_f32(x, w)
    launch()
    inv_rows = []
    for n_rows in [1, 7, 64, 300]:
        part, l2 = run_f32(x[:n_rows].contiguous(), w)
        l2()
        torch.cuda.synchronize()
        same = torch.equal(part.view(torch.int32), full[:n_rows].view(torch.int32))
        ok &= same
        inv_rows.append((n_rows, "bit-identical" if same else "DIFFERENT"))
    # The same rows at other positions inside their 128-row tile (as chunked prefill puts them).
    for off, n_rows in [(3, 1), (5, 300), (77, 129)]:
        part, l3 = run_f32(x[off:off + n_rows].contiguous(), w)
        l3()
        torch.cuda.synchronize()
        same = torch.equal(part.view(torch.int32), full[off:off + n_rows].view(torch.int32))
        ok &= same
        inv_rows.append((f"{n_rows} from row {off}", "bit-identical" if same else "DIFFERENT"))
    table(inv_rows, ("M", "rows vs M=4096"))
    return ok


def steady_ms(fn, span_ms=100):
    """Median CUDA-event milliseconds of `fn` over runs spanning about `span_ms` (at least 20),
    after a fifth as many warm-up runs: long enough for the clock to settle to what this
    kernel's power draw allows."""
    iters = max(20, int(span_ms / max(time_ms(fn, warmup=2, iters=3), 1e-3)))
    return time_ms(fn, warmup=max(3, iters // 5), iters=iters)


def speed(rounds=5):
    """cuBLAS and kiln's tilings timed in interleaved rounds (each `steady_ms`; the order
    rotates per round), the median of the rounds reported: on the H200 the same kernel read
    658 and 718 TFLOP/s at 8192^3 one after another, as the clock follows the board's power
    and temperature, so each tiling must see the same conditions."""
    print(f"== speed (bf16 in, f32 accumulate), {rounds} interleaved rounds of ~100 ms each, CUDA events")
    shapes = [(4096, 4096, 2048), (4096, 512, 2048), (4096, 2048, 4096), (4096, 5120, 2048),
              (8192, 8192, 8192), (512, 5120, 2048)]
    rows = []
    for (n_rows, m, k) in shapes:
        x = torch.randn(n_rows, k, device="cuda").bfloat16()
        w = torch.randn(m, k, device="cuda").bfloat16()
        flops = 2 * n_rows * m * k
        runs = {"cublas": lambda: x @ w.T, "narrow": run_f32(x, w)[1],
                "wide": run_f32(x, w, wide=True)[1], "pair": run_f32(x, w, pair=True)[1]}
        if ALT:
            runs["wide alt"] = run_f32(x, w, wide=True, ptx=ALT)[1]
            runs["pair alt"] = run_f32(x, w, pair=True, ptx=ALT)[1]
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(steady_ms(runs[name]))
        t = {name: statistics.median(v) for name, v in times.items()}
        # The tiling kiln's TileWidth::Auto picks (host/gpu/ops/gemm_wgmma.rs, WIDE_MIN_TILES).
        auto = t["wide"] if ((n_rows + BM - 1) // BM) * ((m + 2 * BN - 1) // (2 * BN)) >= WIDE_MIN_TILES else t["narrow"]
        tf = lambda v: flops / v / 1e9
        rows.append((f"{n_rows}x{m}x{k}", f"{tf(t['cublas']):.0f}", f"{tf(t['narrow']):.0f}",
                     f"{tf(t['wide']):.0f}", f"{tf(t['pair']):.0f}",
                     f"{t['cublas'] / auto:.2f}", f"{t['cublas'] / t['pair']:.2f}",
                     f"{tf(max(times['wide'])):.0f}-{tf(min(times['wide'])):.0f}")
                    + ((f"{tf(t['wide alt']):.0f}", f"{tf(t['pair alt']):.0f}") if ALT else ()))
    table(rows, ("M x N x K", "cuBLAS TF/s (bf16 out)", "kiln narrow (f32 out)", "kiln wide",
                 "kiln wide pair", "kiln's pick / cuBLAS", "pair / cuBLAS", "wide: range of rounds")
          + (("wide (KILN_PTX_ALT)", "pair (KILN_PTX_ALT)") if ALT else ()))


def moe_peers():
    """The PyTorch peers of benches/kernels.rs's MoE rows (30b dims, N=4096, 128 experts of ff
    768, top-8): the f32 router GEMM (cuBLAS SGEMM, TF32 off), routing as softmax + topk +
    stable argsort + bincount, and the expert GEMMs as torch._grouped_mm when this torch has it."""
    print("== MoE peers (torch), N=4096, hidden 2048, 128 experts x ff 768, top-8")
    n, hidden, ff, ne, k = 4096, 2048, 768, 128, 8
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    x32 = torch.randn(n, hidden, device="cuda")
    wr = torch.randn(ne, hidden, device="cuda") * 0.02
    rows = []
    t = time_ms(lambda: x32 @ wr.T)
    rows.append(("router f32 GEMM", f"{t:.3f}", f"{2 * n * ne * hidden / t / 1e9:.1f}"))
    logits = x32 @ wr.T

    def route():
        p = torch.softmax(logits, dim=-1)
        w, ids = torch.topk(p, k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        order = torch.argsort(ids.flatten(), stable=True)
        counts = torch.bincount(ids.flatten(), minlength=ne)
        return w, order, counts
    t = time_ms(route)
    rows.append(("routing (softmax/topk/argsort)", f"{t:.3f}", "-"))
    if hasattr(torch, "_grouped_mm"):
        pairs = n * k
        _, order, counts = route()
        offs = torch.cumsum(counts, 0).to(torch.int32)
        xg = torch.randn(pairs, hidden, device="cuda").bfloat16()
        wgu = torch.randn(ne, hidden, 2 * ff, device="cuda").bfloat16() * 0.02
        wd = torch.randn(ne, ff, hidden, device="cuda").bfloat16() * 0.02

        def experts():
            gu = torch._grouped_mm(xg, wgu, offs=offs)
            h = torch.nn.functional.silu(gu[:, :ff]) * gu[:, ff:]
            return torch._grouped_mm(h, wd, offs=offs)
        try:
            t = time_ms(experts)
            rows.append(("experts torch._grouped_mm (+silu)", f"{t:.3f}",
                         f"{6 * pairs * hidden * ff / t / 1e9:.0f}"))
        except Exception as e:  # an older torch or another GPU: say so, keep the table
            rows.append((f"experts torch._grouped_mm: {type(e).__name__}", "-", "-"))
    table(rows, ("peer", "ms", "TFLOP/s"))
    torch.backends.cuda.matmul.allow_tf32 = tf32


if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(150, exit=True)
    bw, peak = ceilings()
    print(f"ceilings: device copy {bw:.2f} TB/s, torch bf16 8192^3 {peak:.0f} TFLOP/s")
    ok = correctness()
    speed()
    moe_peers()
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)

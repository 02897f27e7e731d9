"""GEMM lab: kiln's wgmma GEMM against cuBLAS (torch) on the issue's shapes; correctness at
odd shapes; bit-exact row invariance across call sizes."""
import sys

import torch

from common import kernel, ptr, u32, tensor_map_2d, time_ms, rel_l2, table, ceilings

BM, BN, THREADS = 128, 128, 384
STAGES, BK = 5, 64
SHARED = STAGES * (BM * BK * 2 + BN * BK * 2) + 2 * 8 * STAGES + 1024


def run_f32(x, w, bias=None, y=None, add=False):
    n_rows, k = x.shape
    m = w.shape[0]
    if y is None:
        y = torch.full((n_rows, m), float("nan"), device="cuda")
    mx = tensor_map_2d(x, 64, BM)
    mw = tensor_map_2d(w, 64, BN)
    kern = kernel("gemm_wgmma_f32", SHARED)
    flags = (1 if bias is not None else 0) | (2 if add else 0)
    b = bias if bias is not None else y
    grid = ((m + BN - 1) // BN, (n_rows + BM - 1) // BM, 1)

    def launch():
        kern(grid, (THREADS, 1, 1), (ptr(mx), ptr(mw), ptr(b), ptr(y), u32(n_rows), u32(m), u32(k), u32(flags)),
             shared_mem=SHARED)
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


def speed():
    print("== speed (bf16 in, f32 accumulate), median of 20, CUDA events")
    shapes = [(4096, 4096, 2048), (4096, 512, 2048), (4096, 2048, 4096), (4096, 5120, 2048),
              (8192, 8192, 8192), (512, 5120, 2048)]
    rows = []
    for (n_rows, m, k) in shapes:
        x = torch.randn(n_rows, k, device="cuda").bfloat16()
        w = torch.randn(m, k, device="cuda").bfloat16()
        flops = 2 * n_rows * m * k
        t_torch = time_ms(lambda: x @ w.T)
        _, lf = run_f32(x, w)
        t_f32 = time_ms(lf)
        tf = lambda t: flops / t / 1e9
        rows.append((f"{n_rows}x{m}x{k}", f"{tf(t_torch):.0f}", f"{tf(t_f32):.0f}", f"{t_torch / t_f32:.2f}"))
    table(rows, ("M x N x K", "cuBLAS TF/s (bf16 out)", "kiln TF/s (f32 out)", "kiln / cuBLAS"))


if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(150, exit=True)
    bw, peak = ceilings()
    print(f"ceilings: device copy {bw:.2f} TB/s, torch bf16 8192^3 {peak:.0f} TFLOP/s")
    ok = correctness()
    speed()
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)

"""Shared pieces of the GPU kernel lab: load kiln's PTX with CuPy, encode TMA tensor maps with
the CUDA driver (cuda.bindings), time with CUDA events, compare with float64/float32 peers.

Runs on the GPU machine (python3 with torch, cupy and cuda-bindings). Development tool: the
product's own launch path is the Rust host; this lab times kernels beside PyTorch in one call.
"""
import ctypes
import os
import statistics
import sys

import cupy as cp
import numpy as np
import torch

# A cubin assembled here by ptxas (no driver JIT on the GPU machine), else the PTX.
PTX = os.environ.get("KILN_PTX", "target/ptx/kernels.ptx")
_modules = {}


def module(path=None):
    """The kernels of `path` (default `KILN_PTX`), loaded once."""
    path = path or PTX
    if path not in _modules:
        _modules[path] = cp.RawModule(path=path)
    return _modules[path]


def kernel(name, shared_bytes=0, path=None):
    """Kernel `name` of the module at `path` (default `KILN_PTX`)."""
    k = module(path).get_function(name)
    if shared_bytes > 48 * 1024:
        k.max_dynamic_shared_size_bytes = shared_bytes
    return k


def ptr(t):
    """Device address of a torch tensor, as a kernel argument."""
    return np.uint64(t.data_ptr())


def u32(v):
    return np.uint32(v)


def f32(v):
    return np.float32(v)


def tensor_map_2d(t, box_inner, box_outer, swizzle_128b=True):
    """A CUtensorMap (128 bytes) for a row-major 2-D bf16 torch tensor, in device memory."""
    from cuda.bindings import driver as cu

    rows, cols = t.shape
    assert t.dtype == torch.bfloat16 and t.is_contiguous()
    dtype = cu.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    swz = (cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B if swizzle_128b
           else cu.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_NONE)
    err, tmap = cu.cuTensorMapEncodeTiled(
        dtype, 2, t.data_ptr(),
        [cu.cuuint64_t(cols), cu.cuuint64_t(rows)], [cu.cuuint64_t(cols * 2)],
        [cu.cuuint32_t(box_inner), cu.cuuint32_t(box_outer)], [cu.cuuint32_t(1), cu.cuuint32_t(1)],
        cu.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, swz,
        cu.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        cu.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled: {err}")
    words = np.array([int(w) for w in tmap.opaque], dtype=np.uint64)
    assert words.size == 16, words.size
    dev = torch.from_numpy(words.view(np.int64).copy()).cuda()
    return dev


def time_ms(fn, warmup=3, iters=20):
    """Median milliseconds of `fn` over `iters` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel_l2(got, want):
    got = got.double()
    want = want.double()
    if not torch.isfinite(got).all():
        return float("nan")
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def ceilings():
    """Device copy bandwidth (bytes read + written) and bf16 matmul TFLOP/s, measured now."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a))
    bw = 2 * n / (ms * 1e-3) / 1e12
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms2 = time_ms(lambda: x @ y)
    del a, b, x, y
    return bw, 2 * 8192**3 / ms2 / 1e9


def table(rows, header):
    w = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w[i]) for i, v in enumerate(r))
    print(line(header))
    for r in rows:
        print(line(r))
    sys.stdout.flush()

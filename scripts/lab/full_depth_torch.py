#!/usr/bin/env python3
"""The transformers peer of bench-full-depth (benches/full_depth.rs): Qwen3-30B-A3B's dims at
full depth (48 layers), random bf16 weights made on the GPU, prefill timed at each N.

The model: transformers.Qwen3MoeForCausalLM with kiln's 30b dims (host/synth.rs,
Preset::Qwen3_30bA3b: hidden 2048, 32 q / 4 kv heads x 128, 128 experts top-8 x 768, vocab
151936, rms eps 1e-6, rope theta 1e6, normalised top-k), SDPA attention. It is built on the
"meta" device in bf16 and moved with to_empty() onto the GPU (no fp32 or CPU copy of ~61 GB),
then every parameter is filled in place from a seeded generator: normal(0, 0.02), RMSNorm
weights 1; the RoPE inv_freq buffers (non-persistent, garbage after to_empty) are recomputed
and checked. If that path fails, the model is built directly on the GPU (transformers' own
init) and filled the same way; which one ran is reported. Experts backend: the first of
--experts-impls that runs a 16-token forward (grouped_mm, else eager); reported.

Timing per N: random prompt ids, one warm-up + the median of --repeats CUDA-event timings of
model(ids, use_cache=False, logits_to_keep=1) under torch.inference_mode(); peak GPU memory per
N; an out-of-memory N is recorded and the next one tried; no N is started past --deadline-s.
FLOPs: kiln's count per N from --kiln-json (full-depth-bench.json) when it has the row, else
the same formula (host/bench/cost.rs prefill_flops) computed here.

  full_depth_torch.py --json full-depth-torch.json --kiln-json full-depth-bench.json
  full_depth_torch.py --layers 2 --lengths 512,4096      (a quick look)

Imports bench_torch.py (the directory above this one: scripts/ in the repository, the bundle's
root in gpu-bundle/) for its config, RoPE check and timing helpers; torch and transformers are
imported only when the model is built, so --help works anywhere.
"""

import argparse
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))  # bench_torch.py

from bench_torch import QWEN3MOE_FIXED  # noqa: E402 (needs the path above)

DEFAULT_LENGTHS = "512,2048,4096,8192,16384,32768"


def qwen3_30b_config(layers, max_len):
    """kiln's Preset::Qwen3_30bA3b (host/synth.rs) as Qwen3MoeConfig fields, in the form
    bench_torch.hf_config_dict returns them for a GGUF kiln synth wrote."""
    return {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": int(layers),
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": max(40960, int(max_len)),
        **QWEN3MOE_FIXED,
    }


def kiln_prefill_flops(cfgd, n):
    """host/bench/cost.rs prefill_flops for a qwen3moe config (no shared expert): GEMMs at
    2 FLOPs per weight touched per token (top-k experts only), causal attention
    n_layer * 4 * N^2/2 * n_head * head_dim, the LM head for the last position."""
    h, nl = cfgd["hidden_size"], cfgd["num_hidden_layers"]
    qd = cfgd["num_attention_heads"] * cfgd["head_dim"]
    kvd = cfgd["num_key_value_heads"] * cfgd["head_dim"]
    attn_proj = 2.0 * n * nl * (h * qd + 2.0 * h * kvd + qd * h)
    attention = nl * 4.0 * n * n / 2.0 * qd
    router = 2.0 * n * nl * h * cfgd["num_experts"]
    ffn = 2.0 * n * nl * cfgd["num_experts_per_tok"] * 3.0 * h * cfgd["moe_intermediate_size"]
    lm_head = 2.0 * h * cfgd["vocab_size"]
    return attn_proj + attention + router + ffn + lm_head


def gib(b):
    return b / 2**30


def _fill(torch, model, seed, std, device):
    """Every parameter in place: RMSNorm weights 1, the rest normal(0, std) from one seeded
    generator on the device. Returns (parameters filled, of which norms)."""
    norms = set()
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if type(mod).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter):
            norms.add(id(w))
    if not norms:
        raise RuntimeError("found no RMSNorm weights to set to 1 (module names changed?)")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, p in model.named_parameters():
            if id(p) in norms:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)
            n += 1
    return n, len(norms)


def _scale_attn_output(torch, model, gain):
    """Every attention output projection (`self_attn.o_proj.weight`) times `gain`: kiln's
    synthetic models do the same (host/synth.rs, ATTN_OUTPUT_GAIN: without it the routing of a
    random model collapses onto a few experts with depth). Returns how many were scaled."""
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("self_attn.o_proj.weight"):
                p.mul_(gain)
                n += 1
    if n == 0:
        raise RuntimeError("found no self_attn.o_proj.weight to scale (module names changed?)")
    return n


def experts_reached(torch, model, ids, n_expert, top_k):
    """One forward of `ids` with a hook on every MoE layer's router (`mlp.gate`): the distinct
    experts its tokens' top-k reached, per layer (kiln bench's census counts the same)."""
    counts, hooks = [], []

    def hook(_mod, _inp, out):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        chosen = None
        for t in outs:  # top-k indices if the router returns them, else its logits
            if torch.is_tensor(t) and not t.is_floating_point() and t.shape[-1] == top_k:
                chosen = t
        if chosen is None:
            for t in outs:
                if torch.is_tensor(t) and t.is_floating_point() and t.shape[-1] == n_expert:
                    chosen = t.float().topk(top_k, dim=-1).indices
                    break
        if chosen is None:
            raise RuntimeError("the router's output has neither top-k ids nor logits")
        counts.append(int(torch.unique(chosen).numel()))

    for name, mod in model.named_modules():
        if name.endswith("mlp.gate"):
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    return counts


def _recreate_buffers(torch, model, cfgd):
    """After to_empty every buffer is uninitialised memory: recompute the RoPE frequencies
    (inv_freq, original_inv_freq) as the rotary module computes them; any other buffer is an
    error (this script would not know its value)."""
    from bench_torch import rope_inv_freq

    done = []
    for mname, mod in model.named_modules():
        for bname, buf in list(mod.named_buffers(recurse=False)):
            full = f"{mname}.{bname}" if mname else bname
            if not bname.endswith("inv_freq"):
                raise RuntimeError(f"buffer {full} {tuple(buf.shape)} {buf.dtype} has no known "
                                   "value after to_empty()")
            fn = getattr(type(mod), "compute_default_rope_parameters", None)
            inv = None
            if fn is not None and getattr(mod, "rope_type", "default") == "default":
                try:
                    inv = fn(mod.config)[0]
                except Exception:
                    inv = None
            if inv is None:  # the same formula, in float32 as transformers computes it
                hd, theta = cfgd["head_dim"], cfgd["rope_theta"]
                inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
            with torch.no_grad():
                buf.copy_(inv.to(device=buf.device, dtype=buf.dtype))
            done.append(full)
    if not any(d.endswith(".inv_freq") or d == "inv_freq" for d in done):
        raise RuntimeError("no RoPE inv_freq buffer found to re-create")
    return done


def build_synthetic_model(torch, transformers, cfgd, log, seed=0, std=0.02, device="cuda",
                          o_proj_gain=0.1):
    """Qwen3MoeForCausalLM(cfgd) in bf16 on `device`, weights random from `seed` (see the
    module doc), the attention output projections times `o_proj_gain`. Returns (model, info
    dict)."""
    import bench_torch as bt

    info = {"seed": seed, "std": std, "norm_weights": 1.0, "o_proj_gain": o_proj_gain}
    t0 = time.time()
    cfg = bt.qwen3moe_config(transformers, cfgd, log)
    model = None
    try:
        model = bt.construct_bf16(torch, transformers, cfg, "meta")
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes != {torch.bfloat16}:
            raise RuntimeError(f"parameters are {dtypes} on meta, expected bf16 only")
        model = model.to_empty(device=device)
        info["buffers_recreated"] = _recreate_buffers(torch, model, cfgd)
        info["method"] = "meta + to_empty + in-place fill"
    except Exception as ex:
        info["meta_error"] = f"{type(ex).__name__}: {ex}"
        model = None
    if model is None:  # outside the except block: its traceback no longer holds GPU memory
        log(f"  meta/to_empty build failed ({info['meta_error']}); building on {device} "
            "directly instead")
        if device == "cuda":
            torch.cuda.empty_cache()
        model = bt.construct_bf16(torch, transformers, cfg, device)
        info["method"] = f"built on {device} (transformers init) + in-place fill"
    model = model.eval()
    info["parameters"], info["norm_parameters"] = _fill(torch, model, seed, std, device)
    info["o_proj_scaled"] = _scale_attn_output(torch, model, o_proj_gain)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise RuntimeError(f"parameters are {dtypes}, expected bf16 only")
    bt.check_rope(torch, model, cfgd)
    if device == "cuda":
        torch.cuda.synchronize()
    info["parameter_count"] = sum(p.numel() for p in model.parameters())
    info["weights_gib"] = gib(sum(p.numel() * p.element_size() for p in model.parameters()))
    info["seconds"] = time.time() - t0
    info["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    if info["attn_implementation"] != "sdpa":
        log(f"  note: attention implementation is {info['attn_implementation']!r}, not 'sdpa'")
    return model, info


def pick_experts_impl(torch, model, impls, vocab, log, device="cuda"):
    """Sets the first experts backend in `impls` that runs a 16-token forward; returns
    (name, {backend: error} for those that failed)."""
    errors = {}
    if not hasattr(model, "set_experts_implementation"):
        return "default (no set_experts_implementation in this transformers)", errors
    ids = torch.randint(0, vocab, (1, 16), device=device)
    for impl in impls:
        try:
            model.set_experts_implementation(impl)
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            if device == "cuda":
                torch.cuda.synchronize()
            return impl, errors
        except Exception as ex:
            errors[impl] = f"{type(ex).__name__}: {ex}"
            log(f"  experts backend {impl}: {errors[impl]}")
            if device == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError(f"no experts backend of {impls} works: {errors}")


def is_oom(torch, ex):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(ex, oom)) or "out of memory" in str(ex).lower()


def load_kiln(path, key=lambda r: int(r["n"]), timed="ms"):
    """A kiln bench JSON and its timed rows (those with a `timed` field) by `key`: by N for
    full-depth-bench.json. None when absent or unreadable."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc, {key(r): r for r in doc.get("rows", []) if timed in r}
    except Exception as ex:
        print(f"could not read {path}: {ex}")
        return None


def log_side_by_side(log, kiln, doc, kiln_json, side_by_side):
    """The side-by-side table when `--kiln-json` was given (`kiln` as load_kiln read it)."""
    if not kiln_json:
        return
    if kiln:
        log("")
        log(side_by_side(kiln, doc))
    else:
        log(f"(no kiln figures: {kiln_json} missing or unreadable)")


def kiln_flops(row):
    """kiln's FLOP count of a full-depth row: its `flops`, else TFLOP/s x time."""
    if row is None:
        return None
    if row.get("flops"):
        return float(row["flops"])
    if row.get("tflops") and row.get("ms"):
        return float(row["tflops"]) * float(row["ms"]) * 1e9
    return None


def side_by_side(kiln, doc):
    """N, kiln ms, kiln tok/s, torch ms, torch tok/s, ratio (torch ms / kiln ms)."""
    kdoc, krows = kiln
    lines = [f"full depth, kiln vs transformers ({doc.get('layers')} layers; kiln on "
             f"{kdoc.get('device', '?')}, torch {doc.get('torch_version', '?')} / transformers "
             f"{doc.get('transformers_version', '?')}, experts {doc.get('experts_impl', '?')}); "
             "ratio = torch ms / kiln ms (> 1: kiln faster)",
             f"{'N':>6} {'kiln ms':>10} {'kiln tok/s':>11} {'torch ms':>10} {'torch tok/s':>12} "
             f"{'ratio':>7}"]
    trows = {r["n"]: r for r in doc.get("results", [])}
    for n in sorted(set(krows) | set(trows)):
        k, t = krows.get(n), trows.get(n, {})
        kms = float(k["ms"]) if k else None
        tms = t.get("median_ms") if t.get("status") == "ok" else None
        cell = (lambda v, w, f: f"{v:>{w}{f}}" if v is not None else f"{'-':>{w}}")
        line = (f"{n:>6} {cell(kms, 10, '.1f')} {cell(n / kms * 1e3 if kms else None, 11, ',.0f')} "
                f"{cell(tms, 10, '.1f')} {cell(n / tms * 1e3 if tms else None, 12, ',.0f')} "
                f"{cell(tms / kms if tms and kms else None, 7, '.2f')}")
        if t and t.get("status") != "ok":
            line += f"  torch {t.get('status')}: {t.get('reason', '')[:80]}"
        lines.append(line)
    return "\n".join(lines)


def write_json(path, doc):
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(path + ".tmp", path)


def parse_list(s, what):
    """Positive integers from a comma list, in their order (`what`: the option, for errors)."""
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{what} {s!r}: expected comma-separated integers")
    if not out or min(out) <= 0:
        raise SystemExit(f"{what} {s!r}: expected positive integers")
    return out


def import_torch_stack(doc, log):
    """torch + transformers on a usable CUDA device, or None (the reason in doc['error'])."""
    try:
        import torch
        import transformers
    except Exception as ex:
        doc["error"] = f"cannot import torch/transformers: {type(ex).__name__}: {ex}"
        log(doc["error"])
        return None
    doc["torch_version"] = torch.__version__
    doc["transformers_version"] = transformers.__version__
    if not torch.cuda.is_available():
        doc["error"] = "torch sees no CUDA device"
        log(doc["error"])
        return None
    doc["device"] = torch.cuda.get_device_name(0)
    free, total = torch.cuda.mem_get_info()
    doc["gpu_free_gib_at_start"], doc["gpu_total_gib"] = gib(free), gib(total)
    torch.backends.cuda.matmul.allow_tf32 = False
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, {doc['device']}: "
        f"{gib(free):.1f} of {gib(total):.1f} GiB free")
    return torch, transformers


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--lengths", default=DEFAULT_LENGTHS, help="prompt lengths N (comma list)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per N after 1 warm-up")
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="start no N past this many seconds from the start (0: no limit)")
    ap.add_argument("--experts-impls", default="grouped_mm,eager",
                    help="experts backends to try in order; the first that works is timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--o-proj-gain", type=float, default=0.1,
                    help="scale of the attention output projections (kiln's ATTN_OUTPUT_GAIN; "
                         "1 gives routing that collapses onto a few experts with depth)")
    ap.add_argument("--census", action="store_true",
                    help="also count the experts each MoE layer's routing reached, per N")
    ap.add_argument("--json", default="full-depth-torch.json", help="where to write the results")
    ap.add_argument("--kiln-json", help="bench-full-depth's full-depth-bench.json: its FLOP "
                    "counts, and the side-by-side table")
    args = ap.parse_args()
    lengths = sorted(set(parse_list(args.lengths, "--lengths")))
    if args.layers < 1 or args.repeats < 1:
        raise SystemExit("--layers and --repeats must be at least 1")
    start = time.time()
    deadline = start + args.deadline_s if args.deadline_s > 0 else float("inf")

    def log(s):
        print(s, flush=True)

    cfgd = qwen3_30b_config(args.layers, max(lengths))
    doc = {"tool": "full_depth_torch.py", "layers": args.layers, "config": cfgd,
           "lengths": lengths, "repeats": args.repeats, "warmup": 1,
           "weights": f"random normal(0, 0.02) bf16 made on the GPU, RMSNorm weights 1, "
                      f"attention output projections x {args.o_proj_gain}",
           "timing": "CUDA events; model(ids, use_cache=False, logits_to_keep=1) under "
                     "inference_mode; median of repeats after 1 warm-up",
           "results": [], "complete": False}
    kiln = load_kiln(args.kiln_json)
    stack = import_torch_stack(doc, log)
    if stack is None:
        write_json(args.json, doc)
        return 1
    torch, transformers = stack
    import bench_torch as bt

    try:
        log(f"building Qwen3MoeForCausalLM, {args.layers} layers at Qwen3-30B-A3B dims")
        model, doc["build"] = build_synthetic_model(torch, transformers, cfgd, log, args.seed,
                                                    o_proj_gain=args.o_proj_gain)
        b = doc["build"]
        log(f"  {b['method']}: {b['parameter_count'] / 1e9:.2f} G parameters, "
            f"{b['weights_gib']:.1f} GiB, {b['seconds']:.1f} s; attention "
            f"{b['attn_implementation']}")
        doc["experts_impl"], doc["experts_errors"] = pick_experts_impl(
            torch, model, [s for s in args.experts_impls.split(",") if s], cfgd["vocab_size"], log)
        log(f"  experts backend: {doc['experts_impl']}")
    except Exception as ex:
        doc["error"] = f"{type(ex).__name__}: {ex}"
        doc["traceback"] = traceback.format_exc(limit=6)
        log(f"model build failed: {doc['error']}\n{doc['traceback']}")
        write_json(args.json, doc)
        return 1
    write_json(args.json, doc)

    log(f"{'N':>6} {'median ms':>10} {'tokens/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}  FLOPs from")
    gen = torch.Generator(device="cuda")
    prev = None  # (n, seconds one call took)
    for n in lengths:
        row = {"n": n}
        doc["results"].append(row)
        now = time.time()
        # Quadratic in N from the previous length (attention dominates the long ones), times
        # the warm-up, the repeats and the logits_to_keep probe.
        predicted = prev[1] * (n / prev[0]) ** 2 * (args.repeats + 2) if prev else 0.0
        if now > deadline or now + predicted > deadline:
            row.update(status="skipped", reason=f"deadline ({args.deadline_s:.0f} s; predicted "
                                                f"{predicted:.0f} s for this N)")
            log(f"{n:>6} skipped: {row['reason']}")
            continue
        ids = None
        try:
            gen.manual_seed(args.seed * 1000003 + n)
            ids = torch.randint(0, cfgd["vocab_size"], (1, n), device="cuda", generator=gen)
            torch.cuda.reset_peak_memory_stats()
            run, keep = bt.forward_fn(torch, model, ids)
            ms, times = bt.cuda_time_ms(torch, run, 1, args.repeats)
            peak = gib(torch.cuda.max_memory_allocated())
            kf = kiln_flops(kiln[1].get(n)) if kiln else None
            own = kiln_prefill_flops(cfgd, n)
            flops = kf if kf else own
            row.update(status="ok", median_ms=ms, times_ms=times, tokens_per_s=n / ms * 1e3,
                       flops=flops, flops_from="kiln full-depth-bench.json" if kf else
                       "this script (cost.rs formula)", tflops=flops / ms / 1e9,
                       peak_gib=peak, logits_mode=keep)
            if kf and abs(kf - own) > 1e-3 * own:
                row["flops_note"] = f"kiln's count {kf:.4e} differs from this script's {own:.4e}"
                log(f"  note: {row['flops_note']}")
            log(f"{n:>6} {ms:>10.1f} {n / ms * 1e3:>10,.0f} {flops / ms / 1e9:>8.0f} "
                f"{peak:>9.1f}  {'kiln' if kf else 'here'}")
            if args.census:
                try:
                    c = experts_reached(torch, model, ids, cfgd["num_experts"],
                                        cfgd["num_experts_per_tok"])
                    row["experts_reached"] = c
                    log(f"       experts reached per MoE layer: mean {sum(c) / len(c):.1f} "
                        f"(min {min(c)}, max {max(c)}; of {cfgd['num_experts']})")
                except Exception as ex:  # the timing above stands without it
                    row["census_error"] = f"{type(ex).__name__}: {str(ex)[:300]}"
                    log(f"       census failed: {row['census_error']}")
            prev = (n, ms / 1e3)
        except Exception as ex:
            status = "oom" if is_oom(torch, ex) else "error"
            row.update(status=status, reason=f"{type(ex).__name__}: {str(ex)[:400]}")
            log(f"{n:>6} {status}: {row['reason']}")
        finally:
            del ids
            torch.cuda.empty_cache()
        write_json(args.json, doc)
    doc["complete"] = True
    doc["total_seconds"] = time.time() - start
    write_json(args.json, doc)
    log(f"wrote {args.json} ({doc['total_seconds']:.0f} s)")
    log_side_by_side(log, kiln, doc, args.kiln_json, side_by_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The transformers peer of bench-decode (benches/decode.rs): greedy `generate` at batch 1 on
Qwen3-30B-A3B's dims, random bf16 weights made on the GPU (full_depth_torch.py's builder: meta
device, to_empty, seeded in-place fill, RoPE buffers recomputed), at 2 and 48 layers, after
prompts of 512 and 4096 random ids.

Per (layers, prompt): one warm-up generate of 2 tokens, then model.generate(ids,
do_sample=False, max_new_tokens=steps+1, min_new_tokens=steps+1) under inference_mode, SDPA
attention, the default (dynamic) KV cache, the first working experts backend of
--experts-impls. Timing, per token, by a streamer: generate hands the streamer each new token
as a CPU tensor (`tokens.cpu()`, so the device has finished that step), and the streamer
stamps the host clock. The first new token comes from the prefill: time to first token = its
stamp minus the start of generate; the `steps` intervals between consecutive new tokens are
the decode steps (the model forward, logits processing, argmax): median ms/token and
tokens/s, as kiln's bench counts them (first token + `steps` decode steps). Also reported: the
mean from the total, (generate time - time to first token) / steps.

  decode_torch.py --json decode-torch.json --kiln-json decode-bench.json
  decode_torch.py --layers 2 --prompts 512 --steps 16        (a quick look)

With --kiln-json: the side by side (kiln and torch ms/token, tokens/s, ratio = torch ms /
kiln ms, both against kiln's bytes-read roofline of the same row).
"""

import argparse
import gc
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
for d in (HERE, os.path.dirname(HERE)):  # full_depth_torch.py; bench_torch.py
    if d not in sys.path:
        sys.path.insert(0, d)


from bench_torch import median  # noqa: E402 (needs the path above)
from full_depth_torch import load_kiln, log_side_by_side, parse_list, write_json  # noqa: E402


class StampStreamer:
    """Records the host time of every put (the prompt first, then each new token)."""

    def __init__(self):
        self.stamps = []  # (seconds, number of tokens in the put)

    def put(self, value):
        self.stamps.append((time.perf_counter(), int(getattr(value, "numel", lambda: 1)())))

    def end(self):
        pass


def generate_run(torch, model, ids, new, streamer=None):
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
              max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    if streamer is not None:
        kw["streamer"] = streamer
    with torch.inference_mode():
        out = model.generate(**kw)
    torch.cuda.synchronize()
    return out


def measure(torch, model, ids, steps):
    """One (layers, prompt) row: warm-up, then the streamed, timed generate."""
    n = ids.shape[1]
    generate_run(torch, model, ids, 2)
    streamer = StampStreamer()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate_run(torch, model, ids, steps + 1, streamer)
    total = time.perf_counter() - t0
    new_tokens = out.shape[1] - n
    if new_tokens != steps + 1:
        raise RuntimeError(f"generate returned {new_tokens} new tokens, asked for {steps + 1}")
    # generate puts the prompt first (n ids), then each new token (1 id at batch 1).
    token_stamps = [t for t, k in streamer.stamps if k == 1]
    row = {"prompt": n, "steps": steps, "total_ms": total * 1e3,
           "first_tokens": out[0, n:n + 8].tolist()}
    if len(token_stamps) == steps + 1:
        ttft = token_stamps[0] - t0
        steps_s = [b - a for a, b in zip(token_stamps, token_stamps[1:])]
        row.update(timing="streamer: host clock at each new token (after tokens.cpu())",
                   time_to_first_token_ms=ttft * 1e3,
                   step_ms=[s * 1e3 for s in steps_s],
                   median_ms_per_token=median(steps_s) * 1e3,
                   mean_ms_per_token=(total - ttft) / steps * 1e3)
    else:  # the streamer did not see one put per token: the total over a timed prefill
        pre = []
        for _ in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            generate_run(torch, model, ids, 1)
            pre.append(time.perf_counter() - t)
        ttft = min(pre)
        row.update(timing=f"total minus a separately timed 1-token generate (the streamer saw "
                          f"{len(token_stamps)} token puts, not {steps + 1})",
                   time_to_first_token_ms=ttft * 1e3,
                   median_ms_per_token=(total - ttft) / steps * 1e3,
                   mean_ms_per_token=(total - ttft) / steps * 1e3)
    row["tokens_per_s"] = 1e3 / row["median_ms_per_token"]
    return row


def load_kiln_decode(path):
    """decode-bench.json's timed rows by (layers, prompt)."""
    return load_kiln(path, key=lambda r: (int(r["layers"]), int(r["prompt"])),
                     timed="median_ms_per_token")


def side_by_side(kiln, doc):
    kdoc, krows = kiln
    bw = kdoc.get("copy_bandwidth_bytes_per_s")
    lines = [f"decode at batch 1, kiln vs transformers generate (greedy, {doc.get('steps')} "
             f"steps; device copy {bw / 1e12:.2f} TB/s)" if bw else
             f"decode at batch 1, kiln vs transformers generate ({doc.get('steps')} steps)",
             "ratio = torch ms / kiln ms (> 1: kiln faster); %roof = kiln's bytes-read "
             "roofline ms / ms",
             f"{'layers':>6} {'prompt':>6} {'kiln ms':>9} {'kiln tok/s':>10} {'%roof':>6} "
             f"{'torch ms':>9} {'torch tok/s':>11} {'%roof':>6} {'ratio':>6} "
             f"{'kiln TTFT':>9} {'torch TTFT':>10}"]
    trows = {(r["layers"], r["prompt"]): r for r in doc.get("results", [])}

    def f(v, w, spec):
        return f"{v:>{w}{spec}}" if v is not None else f"{'-':>{w}}"

    def pct(v):
        return f"{v:>5.1f}%" if v is not None else f"{'-':>6}"

    for key in sorted(set(krows) | set(trows)):
        k, t = krows.get(key), trows.get(key, {})
        kms = k["median_ms_per_token"] if k else None
        tms = t.get("median_ms_per_token")
        roof = k.get("roofline_ms_per_token") if k else None
        line = (f"{key[0]:>6} {key[1]:>6} {f(kms, 9, '.3f')} "
                f"{f(1e3 / kms if kms else None, 10, '.1f')} "
                f"{pct(100 * roof / kms if roof and kms else None)} "
                f"{f(tms, 9, '.3f')} {f(1e3 / tms if tms else None, 11, '.1f')} "
                f"{pct(100 * roof / tms if roof and tms else None)} "
                f"{f(tms / kms if tms and kms else None, 6, '.2f')} "
                f"{f(k.get('time_to_first_token_ms') if k else None, 9, '.1f')} "
                f"{f(t.get('time_to_first_token_ms'), 10, '.1f')}")
        if t.get("error"):
            line += f"  torch: {t['error'][:80]}"
        lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,48", help="model depths (comma list)")
    ap.add_argument("--prompts", default="512,4096", help="prompt lengths (comma list)")
    ap.add_argument("--steps", type=int, default=64, help="decode steps after the first token")
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="start nothing new past this many seconds (0: no limit)")
    ap.add_argument("--min-build-s", type=float, default=60.0,
                    help="build a model of more than 8 layers only with this long left")
    ap.add_argument("--experts-impls", default="grouped_mm,eager",
                    help="experts backends to try in order; the first that works is used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="decode-torch.json", help="where to write the results")
    ap.add_argument("--kiln-json", help="bench-decode's decode-bench.json: the side by side")
    args = ap.parse_args()
    layer_list = parse_list(args.layers, "--layers")
    prompts = parse_list(args.prompts, "--prompts")
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    start = time.time()
    deadline = start + args.deadline_s if args.deadline_s > 0 else float("inf")

    def log(s):
        print(s, flush=True)

    doc = {"tool": "decode_torch.py", "steps": args.steps, "layers": layer_list,
           "prompts": prompts, "sampling": "greedy (do_sample=False)",
           "weights": "random normal(0, 0.02) bf16 made on the GPU, RMSNorm weights 1",
           "models": [], "results": [], "complete": False}
    from full_depth_torch import (build_synthetic_model, import_torch_stack, pick_experts_impl,
                                  qwen3_30b_config)
    stack = import_torch_stack(doc, log)
    if stack is None:
        write_json(args.json, doc)
        return 1
    torch, transformers = stack
    max_len = max(prompts) + args.steps + 1
    for layers in layer_list:
        left = deadline - time.time()
        if left <= 0 or (layers > 8 and left < args.min_build_s):
            for n in prompts:
                doc["results"].append({"layers": layers, "prompt": n,
                                       "error": f"skipped: {left:.0f} s left"})
            log(f"{layers} layers: skipped, {left:.0f} s left")
            continue
        model = None
        try:
            cfgd = qwen3_30b_config(layers, max_len)
            log(f"building Qwen3MoeForCausalLM, {layers} layers at Qwen3-30B-A3B dims")
            model, build = build_synthetic_model(torch, transformers, cfgd, log, args.seed)
            impl, errors = pick_experts_impl(
                torch, model, [s for s in args.experts_impls.split(",") if s],
                cfgd["vocab_size"], log)
            doc["models"].append({"layers": layers, "build": build, "experts_impl": impl,
                                  "experts_errors": errors})
            log(f"  {build['method']}, {build['weights_gib']:.1f} GiB in {build['seconds']:.1f} s;"
                f" experts {impl}")
        except Exception as ex:
            err = f"{type(ex).__name__}: {ex}"
            log(f"{layers} layers: model failed: {err}\n{traceback.format_exc(limit=6)}")
            doc["models"].append({"layers": layers, "error": err})
            for n in prompts:
                doc["results"].append({"layers": layers, "prompt": n, "error": f"model: {err}"})
            model = None
            gc.collect()
            torch.cuda.empty_cache()
            write_json(args.json, doc)
            continue
        gen = torch.Generator(device="cuda")
        for n in prompts:
            row = {"layers": layers, "prompt": n, "experts_impl": impl}
            if time.time() > deadline:
                row["error"] = "skipped: deadline"
                doc["results"].append(row)
                continue
            try:
                gen.manual_seed(args.seed * 1000003 + n)
                ids = torch.randint(0, cfgd["vocab_size"], (1, n), device="cuda", generator=gen)
                row.update(measure(torch, model, ids, args.steps))
                log(f"{layers:>3} layers, prompt {n:>5}: {row['median_ms_per_token']:.3f} ms/token "
                    f"({row['tokens_per_s']:.1f} tokens/s), first token "
                    f"{row['time_to_first_token_ms']:.1f} ms [{row['timing'][:40]}]")
            except Exception as ex:
                row["error"] = f"{type(ex).__name__}: {str(ex)[:400]}"
                log(f"{layers:>3} layers, prompt {n:>5}: {row['error']}")
                torch.cuda.empty_cache()
            doc["results"].append(row)
            write_json(args.json, doc)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    doc["complete"] = True
    doc["total_seconds"] = time.time() - start
    write_json(args.json, doc)
    log(f"wrote {args.json} ({doc['total_seconds']:.0f} s)")
    kiln = load_kiln_decode(args.kiln_json)
    log_side_by_side(log, kiln, doc, args.kiln_json, side_by_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())

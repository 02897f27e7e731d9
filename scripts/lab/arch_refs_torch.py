#!/usr/bin/env python3
"""HF transformers reference logits for kiln's llama and qwen2 fixtures (issue 10):
tests/data/{llama,qwen2}-{legacy,kquant}.gguf of scripts/make_arch_fixtures.py.

For each fixture: builds LlamaForCausalLM / Qwen2ForCausalLM from the exported HF config
(scripts/export_arch_hf.py: config.json, float32 weights in HF layout under HF names, the
dequantized GGUF blocks that the float64 NumPy reference used), attn_implementation="eager",
in float32 and in float64; loads the weights strictly (every parameter set from the npz, no
array left over, shapes equal, tied LM head shared); checks that transformers' RoPE inv_freq
is the fixture's (llama3 scaling for llama); runs the 33-token prompt once (no cache) and
keeps the logits of every position.

Writes into --out (6 files, under the device tool's 8):
  NAME.hf.p33.npy   float32 [33][vocab]: the float32 model's logits (what tests/arch_refs.rs
                    compares kiln with, once copied into tests/data)
  hf64.p33.npz      the float64 model's logits, one array per fixture name
  arch_refs.json    versions, device, and per fixture and dtype: worst-row and whole rel L2
                    against the NumPy reference NAME.p33.npy, rows whose argmax agrees, the
                    inv_freq check; and float32 vs float64
Exit: 0 when every fixture agrees (worst-row rel L2 <= --tol, argmax equal on every row, for
both dtypes); 1 on a disagreement (all files still written); 2 when the model cannot be built
as the export says (parameter names/shapes, RoPE, config), with the reason.

The export: --export DIR reads one made beforehand (python3 scripts/export_arch_hf.py DIR);
without it the export is made first, into a temporary folder, from --data (the fixtures:
default the bundle's test-data/ beside lab/, else the repository's tests/data). That step
needs gguf-py: pip's, else the copy gpu-bundle.sh puts in lab/pylib/ (pure Python; numpy and
pyyaml, which transformers brings).

Precision notes: TF32 is switched off (float32 matmuls in full float32). transformers keeps
RoPE (inv_freq, cos/sin) and RMSNorm's statistics in float32 even in a float64 model, so the
float64 run differs from the NumPy float64 reference by ~1e-7..1e-6, not 1e-15.

On the GPU machine (bundle built by scripts/gpu-bundle.sh):
    python3 gpu-bundle/lab/arch_refs_torch.py --out "$OUT/arch-refs"
Here (no torch needed for the export):
    python3 scripts/export_arch_hf.py /tmp/arch-export
    python3 scripts/lab/arch_refs_torch.py --export /tmp/arch-export --out /tmp/arch-refs
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["llama-legacy", "llama-kquant", "qwen2-legacy", "qwen2-kquant"]
DEFAULT_TOL = 2e-5  # as tests/arch_refs.rs: float32 forward error measured ~1e-6


def default_data():
    for d in (HERE.parent / "test-data", HERE.parent.parent / "tests/data"):
        if (d / "arch_fixtures.json").is_file():
            return d
    return HERE.parent / "test-data"


def import_exporter():
    """export_arch_hf (beside this script in the bundle, in scripts/ in the repository), with
    gguf-py from pip or else the bundle's copy in lab/pylib/."""
    for d in (HERE, HERE.parent):
        if (d / "export_arch_hf.py").is_file() and str(d) not in sys.path:
            sys.path.insert(0, str(d))
    try:
        import gguf  # noqa: F401
    except ImportError:
        sys.path.append(str(HERE / "pylib"))
    try:
        import export_arch_hf
    except ImportError as ex:
        raise SystemExit(f"arch_refs_torch.py: cannot import the exporter ({ex}); pass --export DIR "
                         "made by `python3 scripts/export_arch_hf.py DIR` where gguf is installed")
    return export_arch_hf


def rel_l2_rows(got, want):
    import numpy as np
    g, w = got.astype(np.float64), want.astype(np.float64)
    return np.linalg.norm(g - w, axis=1) / np.linalg.norm(w, axis=1)


def rel_l2(got, want):
    import numpy as np
    g, w = got.astype(np.float64), want.astype(np.float64)
    return float(np.linalg.norm(g - w) / np.linalg.norm(w))


class BuildError(Exception):
    pass


def build(name, exp, dtype, device):
    """The HF model of fixture `name` from export dir `exp`, weights loaded strictly."""
    import numpy as np
    import torch
    import transformers

    d = json.loads((exp / f"{name}.config.json").read_text())
    arch = d["architectures"][0]
    cfg_cls = {"LlamaForCausalLM": "LlamaConfig", "Qwen2ForCausalLM": "Qwen2Config"}.get(arch)
    if cfg_cls is None:
        raise BuildError(f"{name}: unexpected architecture {arch}")
    kw = {k: v for k, v in d.items() if k not in ("model_type", "architectures")}
    config = getattr(transformers, cfg_cls)(**kw, attn_implementation="eager")
    config.architectures = [arch]
    for key, want in [("vocab_size", d["vocab_size"]), ("hidden_size", d["hidden_size"]),
                      ("intermediate_size", d["intermediate_size"]),
                      ("num_hidden_layers", d["num_hidden_layers"]),
                      ("num_attention_heads", d["num_attention_heads"]),
                      ("num_key_value_heads", d["num_key_value_heads"]),
                      ("head_dim", d["head_dim"]), ("rms_norm_eps", d["rms_norm_eps"]),
                      ("tie_word_embeddings", d["tie_word_embeddings"])]:
        if getattr(config, key, None) != want:
            raise BuildError(f"{name}: config.{key} is {getattr(config, key, None)!r}, the export says {want!r}")
    torch.manual_seed(0)
    with torch.no_grad():
        model = getattr(transformers, arch)(config)
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise BuildError(f"{name}: attention implementation {model.config._attn_implementation}, not eager")
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        model.tie_weights()
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            raise BuildError(f"{name}: tie_word_embeddings but lm_head.weight is not embed_tokens.weight")
    model = model.to(device=device, dtype=dtype).eval()

    params = dict(model.named_parameters())  # a tied LM head appears once, as embed_tokens
    arrays = np.load(exp / f"{name}.npz")
    missing = sorted(set(params) - set(arrays.files))
    unused = sorted(set(arrays.files) - set(params))
    shapes = [f"{k}: model {tuple(params[k].shape)}, npz {arrays[k].shape}"
              for k in sorted(set(params) & set(arrays.files)) if tuple(params[k].shape) != arrays[k].shape]
    if missing or unused or shapes:
        raise BuildError(f"{name}: the npz does not match {arch}'s parameters:\n"
                         f"  parameters with no array: {missing}\n  arrays with no parameter: {unused}\n"
                         f"  shape mismatches: {shapes}")
    with torch.no_grad():
        for k, p in params.items():
            a = arrays[k]
            if a.dtype != np.float32:
                raise BuildError(f"{name}: {k} is {a.dtype}, not float32")
            p.copy_(torch.from_numpy(a).to(device=device, dtype=dtype))
        for k, p in params.items():  # the copy took (float32 -> float64 is exact)
            if not np.array_equal(p.detach().float().cpu().numpy(), arrays[k]):
                raise BuildError(f"{name}: {k} did not load exactly")
    return model, config


def check_rope(name, model, exp_cfg):
    """Max relative error of transformers' inv_freq against the fixture's float64 one."""
    import numpy as np
    rs = exp_cfg.get("rope_scaling")
    dim, base = exp_cfg["head_dim"], exp_cfg["rope_theta"]
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if rs:  # HF's _compute_llama3_parameters in float64 (as make_arch_fixtures.llama3_inv_freq)
        import math
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        inv_l = np.where(wl > old / lo, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        medium = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(medium, (1 - smooth) * inv_l / factor + smooth * inv_l, inv_l)
    got = model.model.rotary_emb.inv_freq.detach().double().cpu().numpy()
    if got.shape != inv.shape:
        raise BuildError(f"{name}: inv_freq has shape {got.shape}, want {inv.shape}")
    err = float(np.max(np.abs(got - inv) / inv))
    if err > 1e-6:
        raise BuildError(f"{name}: transformers' RoPE inv_freq differs from the fixture's by {err:.3e} "
                         f"(rope_scaling {rs}): the config was not read as meant")
    return err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--export", type=Path, help="an export made by scripts/export_arch_hf.py "
                    "(default: made now from --data into a temporary folder)")
    ap.add_argument("--data", type=Path, default=None,
                    help=f"the fixtures, for the export (default: {default_data()})")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda")
    ap.add_argument("--dtypes", default="float32,float64", help="model dtypes; float32 writes NAME.hf.p33.npy")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL,
                    help="worst-row rel L2 against the NumPy reference that still agrees (default %(default)g)")
    a = ap.parse_args()

    tmp = None
    if a.export is None:
        exporter = import_exporter()
        tmp = tempfile.TemporaryDirectory(prefix="arch-export-")
        a.export = Path(tmp.name)
        data = a.data or default_data()
        print(f"exporting {data} -> {a.export}", flush=True)
        exporter.export(data, a.export)
    exp = a.export
    for name in NAMES:
        for suffix in (".config.json", ".npz"):
            if not (exp / f"{name}{suffix}").is_file():
                raise SystemExit(f"arch_refs_torch.py: {exp / (name + suffix)} is missing (make the export "
                                 "with `python3 scripts/export_arch_hf.py DIR`)")
    prompt = json.loads((exp / "prompt.json").read_text())["prompt"]

    try:
        import numpy as np
        import torch
        import transformers
    except ImportError as ex:
        raise SystemExit(f"arch_refs_torch.py: needs torch, transformers and numpy ({ex})")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    # Full float32 matmuls: no TF32 (it would move logits by ~1e-3).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    a.out.mkdir(parents=True, exist_ok=True)

    doc = {
        "method": "scripts/lab/arch_refs_torch.py (see its header)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "device": device if device == "cpu" else f"{device}: {torch.cuda.get_device_name()}",
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "tol_worst_row_rel_l2": a.tol,
        "prompt_len": len(prompt),
        "export": str(exp),
        "fixtures": {},
    }
    export_meta = exp / "export.json"
    if export_meta.is_file():
        doc["export_versions"] = json.loads(export_meta.read_text()).get("versions")
    failures, built_ok = [], True
    logits64 = {}
    ids = torch.tensor([prompt], dtype=torch.long)
    for name in NAMES:
        exp_cfg = json.loads((exp / f"{name}.config.json").read_text())
        ref_path = exp / f"{name}.p33.npy"
        ref = np.load(ref_path) if ref_path.is_file() else None
        entry = doc["fixtures"][name] = {"reference": str(ref_path) if ref is not None else None}
        got = {}
        for dt_name in dtypes:
            dt = getattr(torch, dt_name)
            t0 = time.time()
            try:
                model, _ = build(name, exp, dt, device)
                rope_err = check_rope(name, model, exp_cfg)
            except BuildError as ex:
                print(f"BUILD ERROR: {ex}", file=sys.stderr, flush=True)
                entry[dt_name] = {"error": str(ex)}
                built_ok = False
                continue
            with torch.no_grad():
                out = model(input_ids=ids.to(device), use_cache=False)
            lg = out.logits[0].detach().to("cpu", torch.float64).numpy()
            if lg.shape != (len(prompt), exp_cfg["vocab_size"]):
                raise SystemExit(f"{name} {dt_name}: logits of shape {lg.shape}")
            got[dt_name] = lg
            e = entry[dt_name] = {"rope_inv_freq_max_rel_err": rope_err, "seconds": round(time.time() - t0, 3)}
            if ref is not None:
                rows = rel_l2_rows(lg.astype(np.float32), ref)
                agree = int(np.sum(lg.argmax(1) == ref.argmax(1)))
                e.update(worst_row_rel_l2=float(rows.max()), rel_l2=rel_l2(lg.astype(np.float32), ref),
                         argmax_rows_agree=f"{agree}/{len(prompt)}")
                ok = rows.max() <= a.tol and agree == len(prompt)
                e["agrees"] = bool(ok)
                if not ok:
                    failures.append(f"{name} {dt_name}: worst-row rel L2 {rows.max():.3e} (tol {a.tol:g}), "
                                    f"argmax {agree}/{len(prompt)} rows")
            print(f"{name} {dt_name}: " + ", ".join(f"{k} {v:.3e}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in e.items()), flush=True)
            del model
        if "float32" in got:
            np.save(a.out / f"{name}.hf.p33.npy", got["float32"].astype(np.float32))
        if "float64" in got:
            logits64[name] = got["float64"].astype(np.float32)
        if "float32" in got and "float64" in got:
            entry["float32_vs_float64_rel_l2"] = rel_l2(got["float32"], got["float64"])
    if logits64:
        np.savez(a.out / "hf64.p33.npz", **logits64)
    doc["failures"] = failures
    doc["ok"] = built_ok and not failures
    (a.out / "arch_refs.json").write_text(json.dumps(doc, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    print(f"wrote {a.out}: " + ", ".join(sorted(p.name for p in a.out.iterdir())))
    if not built_ok:
        print("FAILED: a model could not be built as the export says (see BUILD ERROR above)", file=sys.stderr)
        sys.exit(2)
    if failures:
        print("MISMATCH:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)
    print("ALL FIXTURES AGREE" + ("" if all(doc["fixtures"][n]["reference"] for n in NAMES)
                                  else " (some had no NumPy reference to compare with)"))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Builds kiln and its test executables here (no GPU needed) and gathers everything a GPU machine
# without Rust needs to run them into gpu-bundle/ (git-ignored):
#
#   gpu-bundle/kiln                 the release binary
#   gpu-bundle/tests/<name>         every test executable, under stable names:
#                                   <integration-test-name>, lib-kiln, bin-kiln
#   gpu-bundle/ptx/kernels.ptx      the PTX the binaries embed, and ptxas-report.txt
#   gpu-bundle/fixtures/            the test fixtures (models/, refs/, the small top-level files)
#   gpu-bundle/test-data/           the repository's tests/data (llama/qwen2 fixtures, vectors)
#   gpu-bundle/run.sh               the runner (a copy of scripts/gpu-bundle-run.sh)
#   gpu-bundle/bench.sh             the benchmark (scripts/gpu-bench.sh; run.sh bench OUTDIR)
#   gpu-bundle/bench_torch.py       its PyTorch peer (scripts/bench_torch.py)
#   gpu-bundle/bench-kernels, bench-full-depth, bench-decode   the cargo benches (benches/*.rs)
#   gpu-bundle/lab/                 scripts/lab/*.py: kernel lab, full-depth and decode peers,
#                                   arch_refs_torch.py (transformers references of the llama/qwen2
#                                   fixtures, issue 10) with its exporter (export_arch_hf.py,
#                                   make_arch_fixtures.py) and lab/pylib/gguf, a copy of this
#                                   machine's gguf-py (the GPU machine has none; ~0.6 MB)
#   gpu-bundle/MANIFEST.txt         what was built, from which commit, and the sizes
#   (gpu-bundle/bin.tar.xz          kiln and tests/, packed, when the bundle is over budget)
#
# Then, on the GPU machine:  gpu-bundle/run.sh OUTDIR     (see that script's header)
#                      or:  gpu-bundle/run.sh bench OUTDIR   (the benchmark, docs/bench.md)
#                      or:  python3 gpu-bundle/lab/arch_refs_torch.py --out OUTDIR/arch-refs
#                           (transformers logits of tests/data's llama/qwen2 fixtures: copy its
#                           *.hf.p33.npy into tests/data, read by tests/arch_fixtures.rs)
#
# Environment:
#   KILN_BUNDLE_STRIP=auto|1|0   strip debug info from the binaries: auto (default) strips only
#                                when the bundle would exceed KILN_BUNDLE_MAX_MIB
#   KILN_BUNDLE_PACK=auto|1|0    pack kiln and tests/ into bin.tar.xz (run.sh unpacks it): auto
#                                packs only when, stripped, the bundle still exceeds the budget
#   KILN_BUNDLE_MAX_MIB=56       size budget (the device tool carries 64 MiB with the working tree)
#   KILN_FIXTURES=DIR            where to copy fixtures from (default ../shared/fixtures)
#   KILN_BUNDLE_FIXTURES="..."   which entries of the fixtures folder to copy
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/gpu-bundle"
fixtures_src="${KILN_FIXTURES:-$root/../shared/fixtures}"
fixture_entries="${KILN_BUNDLE_FIXTURES:-models refs prompts.json MANIFEST.md SHA256SUMS agreement.json hf_configs}"
max_mib="${KILN_BUNDLE_MAX_MIB:-56}"
strip_mode="${KILN_BUNDLE_STRIP:-auto}"
pack_mode="${KILN_BUNDLE_PACK:-auto}"

say() { printf '\n== %s\n' "$*" >&2; }

say "cargo build --release"
cargo build --release

say "cargo test --release --no-run (finding the test executables)"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --no-run --message-format=json-render-diagnostics >"$json"

# One "NAME<TAB>PATH" line per test executable: integration tests by their target name, the
# library's and binary's unit tests as lib-<name> / bin-<name>.
list="$(python3 - "$json" <<'PY'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    kind = t["kind"][0]
    name = t["name"] if kind == "test" else f"{kind}-{t['name']}"
    seen[name] = m["executable"]
for name in sorted(seen):
    print(f"{name}\t{seen[name]}")
PY
)"
if [[ -z "$list" ]]; then
    echo "error: cargo reported no test executables" >&2
    exit 1
fi

say "gathering into $bundle"
rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/ptx" "$bundle/fixtures" "$bundle/test-data"
cp target/release/kiln "$bundle/kiln"
while IFS=$'\t' read -r name path; do
    cp "$path" "$bundle/tests/$name"
    echo "  tests/$name  <-  ${path#"$root"/}" >&2
done <<<"$list"

for f in kernels.ptx ptxas-report.txt; do
    if [[ -f "target/ptx/$f" ]]; then
        cp "target/ptx/$f" "$bundle/ptx/$f"
    else
        echo "warning: target/ptx/$f is missing (KILN_SKIP_PTX set, or ptxas unavailable?)" >&2
    fi
done

if [[ -d "$fixtures_src" ]]; then
    for entry in $fixture_entries; do
        if [[ -e "$fixtures_src/$entry" ]]; then
            cp -r "$fixtures_src/$entry" "$bundle/fixtures/"
        else
            echo "warning: fixture $entry not found in $fixtures_src" >&2
        fi
    done
else
    echo "warning: no fixtures at $fixtures_src: tests that need them will fail there" >&2
fi

cp tests/data/* "$bundle/test-data/"

# Tests that run the binary find it at the path cargo baked in (CARGO_BIN_EXE_kiln); run.sh
# links the bundled kiln there when that path does not exist on the GPU machine.
echo "$root/target/release/kiln" >"$bundle/kiln.path"

# The benchmarks (benches/kernels.rs, full_depth.rs, decode.rs) and the lab (PyTorch peers in
# the same call: scripts/lab/*.py into lab/), as bench-kernels, bench-full-depth, bench-decode.
bench_exes=()
while IFS=$'\t' read -r name exe; do
    [[ -n "$exe" ]] || continue
    cp "$exe" "$bundle/bench-${name//_/-}"
    bench_exes+=("$bundle/bench-${name//_/-}")
done < <(cargo bench --no-run --bench kernels --bench full_depth --bench decode \
    --message-format=json-render-diagnostics 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"] + "\t" + m["executable"])')
if [[ ${#bench_exes[@]} -lt 3 ]]; then
    echo "warning: could not build all three benches (benches/kernels.rs, full_depth.rs," \
        "decode.rs): ${#bench_exes[@]} built" >&2
fi
mkdir -p "$bundle/lab"
cp scripts/lab/*.py "$bundle/lab/"
# lab/arch_refs_torch.py exports the fixtures of test-data/ for transformers first: its exporter
# and gguf-py (pure Python: numpy and pyyaml, which transformers brings) go beside it.
cp scripts/export_arch_hf.py scripts/make_arch_fixtures.py "$bundle/lab/"
if gguf_dir="$(python3 -c 'import gguf, os; print(os.path.dirname(gguf.__file__))' 2>/dev/null)"; then
    mkdir -p "$bundle/lab/pylib"
    cp -r "$gguf_dir" "$bundle/lab/pylib/gguf"
    rm -rf "$bundle/lab/pylib/gguf/scripts"
    find "$bundle/lab/pylib" -name __pycache__ -type d -prune -exec rm -rf {} +
else
    echo "warning: python3 has no gguf package (pip install gguf==0.19.0): lab/arch_refs_torch.py" \
        "will need --export DIR made elsewhere by scripts/export_arch_hf.py" >&2
fi

cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh"
# The benchmark (run.sh bench): its runner and the PyTorch peer.
cp scripts/gpu-bench.sh "$bundle/bench.sh"
cp scripts/bench_torch.py "$bundle/bench_torch.py"
chmod +x "$bundle/bench.sh" "$bundle/bench_torch.py"

bundle_bytes() { du -sb "$bundle" | cut -f1; }
budget=$((max_mib * 1024 * 1024))
if [[ "$strip_mode" == 1 || ("$strip_mode" == auto && $(bundle_bytes) -gt $budget) ]]; then
    say "stripping debug info (bundle was $(($(bundle_bytes) / 1048576)) MiB; budget $max_mib MiB)"
    strip --strip-debug "$bundle/kiln" "$bundle"/tests/* "${bench_exes[@]}"
fi
# The executables share most of their code and compress about 7:1 with xz; run.sh unpacks them.
if [[ "$pack_mode" == 1 || ("$pack_mode" == auto && $(bundle_bytes) -gt $budget) ]]; then
    say "packing kiln and tests/ into bin.tar.xz (bundle was $(($(bundle_bytes) / 1048576)) MiB)"
    packed=(kiln tests)
    for exe in "${bench_exes[@]}"; do packed+=("$(basename "$exe")"); done
    tar -C "$bundle" -cf - "${packed[@]}" | xz -T0 -6 >"$bundle/bin.tar.xz"
    rm -rf "$bundle/kiln" "$bundle/tests" "${bench_exes[@]}"
fi

{
    echo "kiln GPU bundle"
    echo "built:   $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "commit:  $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "rustc:   $(rustc --version)"
    echo
    (cd "$bundle" && du -ab -- * | sort -k2)
    if [[ -f "$bundle/bin.tar.xz" ]]; then
        echo
        echo "bin.tar.xz holds:"
        tar -tvJf "$bundle/bin.tar.xz"
    fi
} >"$bundle/MANIFEST.txt"

total=$(bundle_bytes)
say "bundle: $((total / 1048576)) MiB in $bundle"
ls -la "$bundle" >&2
if [[ $total -gt $budget ]]; then
    echo "warning: the bundle is over the $max_mib MiB budget; the device tool carries at most" \
        "64 MiB (working tree included)" >&2
fi
echo "next: run   gpu-bundle/run.sh \"\$OUT\"   on the GPU machine (carry gpu-bundle)" >&2

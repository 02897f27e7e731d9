//! Shared test helpers: which devices to run on, fresh random inputs, poisoned outputs, and
//! comparisons against float64 references; locating the fixtures, prompts and reference logits.
#![allow(dead_code)]

use kiln::gpu::{Buffer, Device, Element};
use kiln::rng::Rng;
use std::sync::OnceLock;

/// The devices kernel tests run on, chosen by `KILN_TEST_DEVICE`:
/// unset or `emulator` → the CPU emulator (what CI runs); `cuda` → the GPU only; `all` → both.
/// Asking for `cuda` where no GPU works fails the test loudly rather than skipping it.
pub fn devices() -> Vec<Device> {
    let choice = std::env::var("KILN_TEST_DEVICE").unwrap_or_else(|_| "emulator".into());
    let cuda = || match Device::cuda() {
        Ok(d) => d,
        Err(e) => panic!("KILN_TEST_DEVICE={choice} asks for the GPU, but it is unusable: {e}"),
    };
    match choice.as_str() {
        "emulator" => vec![Device::emulator()],
        "cuda" => vec![cuda()],
        "all" => vec![Device::emulator(), cuda()],
        other => panic!("KILN_TEST_DEVICE={other}: expected emulator, cuda or all"),
    }
}

/// A fresh seed per test run (printed, and overridable with `KILN_TEST_SEED` to reproduce).
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("KILN_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("test seed: KILN_TEST_SEED={s}");
        s
    })
}

/// An RNG for one test case, distinct per `salt`.
pub fn rng(salt: u64) -> Rng {
    Rng::new(seed() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A device buffer of `len` elements filled with `poison` (so unwritten outputs show).
pub fn poisoned<T: Element>(dev: &Device, len: usize, poison: T) -> Buffer<T> {
    dev.upload(&vec![poison; len], "poisoned output")
        .expect("allocating a test buffer")
}

pub fn upload<T: Element>(dev: &Device, data: &[T]) -> Buffer<T> {
    dev.upload(data, "test input")
        .expect("uploading a test input")
}

/// ‖got − want‖ / ‖want‖ in f64; panics if any element is not finite (NaN poison left behind
/// or an overflow) or the lengths differ.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("element {i} is {} (unwritten or overflowed)", got[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w) * (*g as f64 - w);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Asserts `rel_l2(got, want) <= tol`, naming the case and device.
pub fn assert_close(case: &str, dev: &Device, got: &[f32], want: &[f64], tol: f64) {
    let err = rel_l2(got, want);
    assert!(
        err <= tol,
        "{case} on {}: rel L2 error {err:.3e} > {tol:.1e} (seed {})",
        dev.name(),
        seed()
    );
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The shared test fixtures (tiny GGUF models, reference logits): `KILN_FIXTURES` when set (the
/// GPU bundle points it inside itself), else `shared/fixtures` beside the repository.
pub fn fixtures_dir() -> std::path::PathBuf {
    match std::env::var_os("KILN_FIXTURES") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

use std::path::PathBuf;

use kiln::gguf::{GgufFile, GgufWriter};
use kiln::model::{ModelConfig, Weights};
use kiln::npy;

/// The fixtures directory (see `fixtures_dir`). Missing fixtures fail the test loudly: a
/// reference test that silently passes without its references proves nothing.
pub fn fixtures() -> PathBuf {
    let dir = fixtures_dir();
    assert!(
        dir.join("MANIFEST.md").is_file(),
        "fixtures not found at {} (expected ../shared/fixtures next to the repo root)",
        dir.display()
    );
    dir
}

pub fn model_path(name: &str) -> PathBuf {
    let p = fixtures().join("models").join(format!("{name}.gguf"));
    assert!(p.is_file(), "fixture model {} is missing", p.display());
    p
}

pub fn open(name: &str) -> GgufFile {
    GgufFile::open(model_path(name)).unwrap_or_else(|e| panic!("opening {name}: {e}"))
}

pub fn load(name: &str) -> (GgufFile, ModelConfig, Weights) {
    let f = open(name);
    let cfg = ModelConfig::from_gguf(&f).unwrap_or_else(|e| panic!("config of {name}: {e}"));
    let w = Weights::load(&f, &cfg).unwrap_or_else(|e| panic!("weights of {name}: {e}"));
    (f, cfg, w)
}

/// Token ids of prompt `key` ("p1", "p5", "p33", "p257") from prompts.json (a flat format:
/// `"pN": [ids]`, parsed by hand to avoid a JSON dependency for one file).
pub fn prompt(key: &str) -> Vec<u32> {
    let path = fixtures().join("prompts.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = text
        .find(&format!("\"{key}\""))
        .unwrap_or_else(|| panic!("prompt {key} not in prompts.json"));
    let open = start + text[start..].find('[').expect("prompt list");
    let close = open + text[open..].find(']').expect("prompt list end");
    text[open + 1..close]
        .split(',')
        .map(|s| s.trim().parse().expect("token id"))
        .collect()
}

/// `refs/<model>-<prompt>.<source>.npy` (prompt like "p33" or "p33-all").
pub fn reference(model: &str, prompt: &str, source: &str) -> npy::NpyArray {
    let p = fixtures()
        .join("refs")
        .join(format!("{model}-{prompt}.{source}.npy"));
    npy::read_f32(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// ||a - b||_2 / ||b||_2 in f64.
pub fn rel_l2_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den).sqrt()
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Re-encodes `file` after `edit` changes its writer (metadata / tensor table); tensor data is
/// copied by name, zero-filled where the edit changed a tensor's size.
pub fn rewrite(file: &GgufFile, edit: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let mut w = GgufWriter::copy_of(file);
    edit(&mut w);
    w.to_bytes(|_, d| {
        let n = d.n_bytes() as usize;
        Ok(match file.tensor(&d.name) {
            Ok(t) if t.data.len() == n => t.data.to_vec(),
            _ => vec![0u8; n],
        })
    })
    .expect("rewriting")
}

/// A unique path in the temp dir for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()))
}

/// `v` rounded to bf16 (nearest even): the bits to upload and their exact values.
pub fn bf16_bits_and_values(v: &[f32]) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = v
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect();
    let values = bits
        .iter()
        .map(|b| half::bf16::from_bits(*b).to_f64())
        .collect();
    (bits, values)
}

/// `v` rounded to bf16, as the tensor-core GEMMs stage their activations.
pub fn bf16_rounded(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect()
}

/// The f64 values of bf16 bit patterns (exact).
pub fn bf16_values(bits: &[u16]) -> Vec<f64> {
    bits.iter()
        .map(|b| half::bf16::from_bits(*b).to_f64())
        .collect()
}

/// bf16 bits as f32 (exact), e.g. to compare with `rel_l2`.
pub fn bf16_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter()
        .map(|b| half::bf16::from_bits(*b).to_f32())
        .collect()
}

/// `v` rounded to bf16 (nearest even): the bits a kernel's bf16 store of `v` must give.
pub fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|x| half::bf16::from_f32(*x).to_bits())
        .collect()
}

/// The bf16 poison of outputs and caches: all bits set, a NaN (so an unwritten element fails
/// every comparison) that no kernel store of a finite value produces.
pub const BF16_POISON: u16 = 0xFFFF;

/// A `rows × cols` bf16 matrix with its tensor map, every element [`BF16_POISON`].
pub fn poisoned_tma(dev: &Device, rows: usize, cols: usize) -> kiln::gpu::TmaMatrix {
    tma_upload(dev, &vec![BF16_POISON; rows * cols], rows, cols)
}

/// `bits` (row-major bf16, `rows × cols`) uploaded with its tensor map.
pub fn tma_upload(dev: &Device, bits: &[u16], rows: usize, cols: usize) -> kiln::gpu::TmaMatrix {
    assert_eq!(bits.len(), rows * cols, "tma_upload: not rows × cols");
    dev.tma_matrix(upload(dev, bits), rows, cols)
        .expect("making a test tensor map")
}

/// Root mean square of `v`.
pub fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Checks bf16 outputs `got` (bits) that are ONE rounding of an f32 result against the exact
/// values `want`: every element finite (the [`BF16_POISON`] NaN fails) and within
/// `(2^-8 + slack)·|want| + slack·rms(want)`. One round-to-nearest bf16 rounding (8 significant
/// bits) is off by at most half a unit in the last place, 2^-8 relative at worst; `slack`
/// covers the f32 arithmetic before it, both relative to the element (a few f32 ulps of a
/// product) and relative to the output's scale (sums and differences: tiny elements produced by
/// cancellation need not be exact in f32). Implies a rel L2 error ≤ 2^-8 + 2·slack; any
/// indexing or formula error moves elements by far more than half a bf16 unit.
pub fn assert_bf16_close(case: &str, dev: &Device, got: &[u16], want: &[f64], slack: f64) {
    assert_eq!(got.len(), want.len(), "{case}: length mismatch");
    let abs = slack * rms(want);
    let got = bf16_values(got);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = w.abs() * (1.0 / 256.0 + slack) + abs;
        assert!(
            g.is_finite() && (g - w).abs() <= bound,
            "{case} on {}: element {i} is {g}, expected {w} ± {bound:.3e} (seed {})",
            dev.name(),
            seed()
        );
    }
}

/// Asserts `got == want` element for element (bit patterns: use [`bits`] for f32), naming the
/// first difference and how many there are instead of printing both slices.
pub fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = diff.first() {
        panic!(
            "{what}: {} of {} elements differ; first at {i}: {:?} != {:?} (seed {})",
            diff.len(),
            got.len(),
            got[i],
            want[i],
            seed()
        );
    }
}

/// A file of `tests/data/` (committed with the repository; `scripts/make_*.py` write it):
/// `KILN_TEST_DATA` when set (the GPU bundle points it inside itself), else `tests/data`.
pub fn test_data(name: &str) -> PathBuf {
    let dir = match std::env::var_os("KILN_TEST_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
    };
    dir.join(name)
}

/// The llama/qwen2 fixtures of `scripts/make_arch_fixtures.py`: `name` is e.g.
/// "llama-kquant". Returns the model and the float64 reference logits of every position of
/// the 33-token prompt (`[33][vocab]`, float32), and that prompt.
pub struct ArchFixture {
    pub file: GgufFile,
    pub cfg: ModelConfig,
    pub weights: Weights,
    pub prompt: Vec<u32>,
    pub want: npy::NpyArray,
}

pub fn arch_fixture(name: &str) -> ArchFixture {
    let path = test_data(&format!("{name}.gguf"));
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cfg = ModelConfig::from_gguf(&file).unwrap_or_else(|e| panic!("config of {name}: {e}"));
    let weights = Weights::load(&file, &cfg).unwrap_or_else(|e| panic!("weights of {name}: {e}"));
    let meta =
        std::fs::read_to_string(test_data("arch_fixtures.json")).expect("arch_fixtures.json");
    let meta: serde_json::Value = serde_json::from_str(&meta).expect("arch_fixtures.json");
    let prompt = meta["prompt"]
        .as_array()
        .expect("prompt")
        .iter()
        .map(|t| t.as_u64().expect("token id") as u32)
        .collect();
    let want =
        npy::read_f32(test_data(&format!("{name}.p33.npy"))).unwrap_or_else(|e| panic!("{e}"));
    ArchFixture {
        file,
        cfg,
        weights,
        prompt,
        want,
    }
}

// ---- the `kiln` binary (CLI tests) -------------------------------------------------------

/// Runs the built `kiln` with `args`, capturing its output.
pub fn kiln(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("running kiln")
}

/// Fails unless `kiln args` exits non-zero with exactly one stderr line "error: ..." that
/// contains `needle`.
pub fn assert_one_line_error(args: &[&str], needle: &str) {
    let o = kiln(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: stderr {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

/// Token ids as a `--tokens` argument.
pub fn tokens_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// `kiln args` with stdout a pipe whose reader has already gone (as `| head -1` leaves it):
/// kiln must end quietly, not panic with "failed printing to stdout" (exit 101).
pub fn assert_quiet_on_closed_stdout(args: &[&str]) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kiln");
    // Closing the read end before kiln writes makes its first write fail with EPIPE.
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("waiting for kiln");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_ne!(o.status.code(), Some(101), "{args:?}: {err}");
    assert!(o.status.code().is_some(), "{args:?}: killed by a signal");
    assert!(o.status.success(), "{args:?}: {:?} {err}", o.status);
}

/// The grouping is exact: stable by (expert, pair id), offsets are prefix counts, the tile
/// table covers each expert's rows in `GROUP_TILE_ROWS`-row tiles; `ids` are the pairs'
/// experts (`k` per token). Shared by the router tests (`kernels_moe`, `kernels_moe_router`).
pub fn check_grouping(
    routing: &kiln::gpu::ops::moe::Routing,
    ids: &[u32],
    ne: usize,
    k: usize,
    what: &str,
) {
    let pairs_len = ids.len();
    let mut pairs: Vec<(u32, u32)> = (0..pairs_len).map(|p| (ids[p], p as u32)).collect();
    pairs.sort();
    let want_sorted: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    assert_eq!(
        routing.sorted.to_vec().unwrap(),
        want_sorted,
        "grouped order, {what}"
    );
    let row_of_pair = routing.row_of_pair.to_vec().unwrap();
    for (row, &p) in want_sorted.iter().enumerate() {
        assert_eq!(
            row_of_pair[p as usize] as usize, row,
            "row of pair {p}, {what}"
        );
    }
    let mut offsets = vec![0u32; ne + 1];
    for &id in ids {
        offsets[id as usize + 1] += 1;
    }
    for e in 0..ne {
        offsets[e + 1] += offsets[e];
    }
    assert_eq!(
        routing.offsets.to_vec().unwrap(),
        offsets,
        "offsets, {what}"
    );
    let mut tiles = Vec::new();
    for e in 0..ne {
        tiles.extend(
            (offsets[e]..offsets[e + 1])
                .step_by(gpu_kernels::moe::GROUP_TILE_ROWS)
                .flat_map(|f| [e as u32, f]),
        );
    }
    let num = routing.num_tiles.to_vec().unwrap()[0] as usize;
    assert_eq!(num * 2, tiles.len(), "tile count, {what}");
    assert_eq!(
        routing.tiles.to_vec().unwrap()[..tiles.len()],
        tiles[..],
        "tile table, {what}"
    );
    assert!(
        k > 0 && pairs_len.is_multiple_of(k),
        "{what}: pairs are whole tokens"
    );
}

/// A Q or K head vector after QK-norm (with `norm = Some(weight, eps)`) and NEOX RoPE at
/// position `pos`, in f64, with the kernels' angle: f32 position times f32 frequency, rounded
/// in f32 (`attention_input` and the fused `gemm_wgmma_qkv_rope` alike).
pub fn qk_norm_rope_reference(
    head: &[f32],
    norm: Option<(&[f32], f32)>,
    pos: usize,
    rope_base: f64,
) -> Vec<f64> {
    use kiln::reference::ops;
    let mut x = ops::widen(head);
    if let Some((w, eps)) = norm {
        x = ops::rms_norm(&x, w, f64::from(eps));
    }
    let pos = pos as f32;
    let angles: Vec<f64> = ops::rope_inv_freq(rope_base, head.len())
        .iter()
        .map(|f| f64::from(pos * *f as f32))
        .collect();
    ops::rope_neox(&mut x, &angles);
    x
}

/// Each token's `k` expert ids (`ids` in token order) are distinct and below `n_expert`: what
/// the grouping relies on to stay inside its buffers, whatever the router's inputs were.
pub fn assert_valid_distinct_ids(ids: &[u32], k: usize, n_expert: usize, what: &str) {
    for (t, chosen) in ids.chunks(k).enumerate() {
        let mut seen = chosen.to_vec();
        seen.sort();
        seen.dedup();
        assert!(
            seen.len() == k && chosen.iter().all(|&e| (e as usize) < n_expert),
            "token {t}: ids {chosen:?}, {what}"
        );
    }
}

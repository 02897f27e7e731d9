//! Shared test helpers: locating the fixtures, prompts, reference logits, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use kiln::gguf::{GgufFile, GgufWriter};
use kiln::model::{ModelConfig, Weights};
use kiln::npy;

/// `../shared/fixtures` next to the repository. Missing fixtures fail the test loudly: a
/// reference test that silently passes without its references proves nothing.
pub fn fixtures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
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
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
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

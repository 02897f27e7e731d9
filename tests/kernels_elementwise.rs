//! Norms, RoPE, SwiGLU, embedding gather and bf16 conversion against float64 references, on
//! the emulator (default) or the GPU (`KILN_TEST_DEVICE=cuda|all`).
//!
//! Tolerances: these kernels compute in f32 (with `ex2.approx`/`sin.approx` after range
//! reduction), so results sit within a few f32 ulps of exact: rel L2 ≤ 2e-6 leaves headroom
//! over the ~3e-7 observed while still catching any real indexing or formula error (≥ 1e-3).

mod common;
use common::*;
use kiln::gpu::ops::{activation, convert, embedding, norm, rope};

const ROWS: [usize; 4] = [1, 5, 33, 257];
const TOL: f64 = 2e-6;

fn rms_norm_ref(x: &[f32], w: &[f32], cols: usize, eps: f32) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / cols as f64;
            let scale = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, w)| *v as f64 * scale * *w as f64)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm_rows_matches_f64_and_is_batch_invariant() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            for cols in [64, 256, 1000] {
                let mut r = rng(case as u64 * 10 + cols as u64);
                let x = r.normal_vec(rows * cols, 2.0);
                let w: Vec<f32> = r.normal_vec(cols, 0.1).iter().map(|v| 1.0 + v).collect();
                let (xb, wb) = (upload(&dev, &x), upload(&dev, &w));
                let y = poisoned(&dev, rows * cols, f32::NAN);
                norm::rms_norm_rows(&dev, &xb, &wb, &y, rows, cols, 1e-6).unwrap();
                let got = y.to_vec().unwrap();
                assert_close(
                    &format!("rms_norm_rows {rows}x{cols}"),
                    &dev,
                    &got,
                    &rms_norm_ref(&x, &w, cols, 1e-6),
                    TOL,
                );
                // The last row alone must give the same bits as inside the batch.
                let last = upload(&dev, &x[(rows - 1) * cols..]);
                let y1 = poisoned(&dev, cols, f32::NAN);
                norm::rms_norm_rows(&dev, &last, &wb, &y1, 1, cols, 1e-6).unwrap();
                assert_eq!(bits(&y1.to_vec().unwrap()), bits(&got[(rows - 1) * cols..]));
            }
        }
    }
}

#[test]
fn rms_norm_heads_matches_f64() {
    for dev in devices() {
        for (case, &rows) in ROWS.iter().enumerate() {
            for head_dim in [64, 128] {
                let heads = 4;
                let mut r = rng(100 + case as u64 * 10 + head_dim as u64);
                let x = r.normal_vec(rows * heads * head_dim, 1.5);
                let w: Vec<f32> = r
                    .normal_vec(head_dim, 0.1)
                    .iter()
                    .map(|v| 1.0 + v)
                    .collect();
                let (xb, wb) = (upload(&dev, &x), upload(&dev, &w));
                let y = poisoned(&dev, x.len(), f32::NAN);
                norm::rms_norm_heads(&dev, &xb, &wb, &y, rows * heads, head_dim, 1e-6).unwrap();
                let want = rms_norm_ref(&x, &w, head_dim, 1e-6);
                assert_close(
                    &format!("rms_norm_heads {rows}x{heads}x{head_dim}"),
                    &dev,
                    &y.to_vec().unwrap(),
                    &want,
                    TOL,
                );
                // In place (y = x) gives the same result.
                norm::rms_norm_heads(&dev, &xb, &wb, &xb, rows * heads, head_dim, 1e-6).unwrap();
                assert_eq!(bits(&xb.to_vec().unwrap()), bits(&y.to_vec().unwrap()));
            }
        }
    }
}

/// The reference keeps the kernel's precision policy for the angle (f32 `pos · inv_freq`,
/// as transformers does) and evaluates sin/cos and the rotation in f64.
fn rope_ref(
    x: &[f32],
    pos: &[u32],
    inv_freq: &[f32],
    heads: usize,
    hd: usize,
    rot: usize,
) -> Vec<f64> {
    let mut y: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    let half = rot / 2;
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            for i in 0..half {
                let angle = (p as f32 * inv_freq[i]) as f64;
                let (s, c) = angle.sin_cos();
                let (x0, x1) = (x[base + i] as f64, x[base + i + half] as f64);
                y[base + i] = x0 * c - x1 * s;
                y[base + i + half] = x0 * s + x1 * c;
            }
        }
    }
    y
}

#[test]
fn rope_neox_matches_f64_including_large_positions() {
    for dev in devices() {
        for (case, &tokens) in ROWS.iter().enumerate() {
            for (head_dim, rot) in [(64, 64), (128, 128), (128, 64)] {
                let heads = 3;
                let mut r = rng(200 + case as u64 * 10 + rot as u64 + head_dim as u64);
                let x = r.normal_vec(tokens * heads * head_dim, 1.0);
                // Positions up to 120 000 exercise the sin/cos range reduction.
                let pos: Vec<u32> = (0..tokens).map(|_| r.below(120_000) as u32).collect();
                let inv_freq = rope::rope_inv_freq(1e6, rot);
                let xb = upload(&dev, &x);
                let (pb, fb) = (upload(&dev, &pos), upload(&dev, &inv_freq));
                rope::rope_neox(&dev, &xb, &pb, &fb, tokens, heads, head_dim, rot).unwrap();
                let want = rope_ref(&x, &pos, &inv_freq, heads, head_dim, rot);
                assert_close(
                    &format!("rope {tokens}x{heads}x{head_dim} rot {rot}"),
                    &dev,
                    &xb.to_vec().unwrap(),
                    &want,
                    TOL,
                );
            }
        }
    }
}

#[test]
fn swiglu_matches_f64() {
    for dev in devices() {
        for n in [1, 5, 33, 257 * 512] {
            let mut r = rng(300 + n as u64);
            let (g, u) = (r.normal_vec(n, 4.0), r.normal_vec(n, 1.0));
            let y = poisoned(&dev, n, f32::NAN);
            activation::swiglu(&dev, &upload(&dev, &g), &upload(&dev, &u), &y, n).unwrap();
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64)
                .collect();
            assert_close(
                &format!("swiglu {n}"),
                &dev,
                &y.to_vec().unwrap(),
                &want,
                TOL,
            );
        }
    }
}

#[test]
fn embedding_gather_is_exact_for_every_table_type() {
    for dev in devices() {
        let (vocab, hidden) = (97, 136);
        for (case, &tokens) in ROWS.iter().enumerate() {
            let mut r = rng(400 + case as u64);
            let table = r.normal_vec(vocab * hidden, 1.0);
            let ids: Vec<u32> = (0..tokens).map(|_| r.below(vocab as u64) as u32).collect();
            let f16: Vec<u16> = table
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect();
            let bf16: Vec<u16> = table
                .iter()
                .map(|v| half::bf16::from_f32(*v).to_bits())
                .collect();
            // Independent widening (the `half` crate) is the reference: gathers must be exact.
            let tables = [
                (
                    embedding::EmbeddingTable::F32(upload(&dev, &table)),
                    table.clone(),
                ),
                (
                    embedding::EmbeddingTable::F16(upload(&dev, &f16)),
                    f16.iter()
                        .map(|b| half::f16::from_bits(*b).to_f32())
                        .collect(),
                ),
                (
                    embedding::EmbeddingTable::Bf16(upload(&dev, &bf16)),
                    bf16.iter()
                        .map(|b| half::bf16::from_bits(*b).to_f32())
                        .collect(),
                ),
            ];
            for (t, widened) in &tables {
                let mut tok = dev.alloc::<u32>(tokens, "tokens").unwrap();
                let y = poisoned(&dev, tokens * hidden, f32::NAN);
                embedding::embed_tokens(&dev, t, vocab, hidden, &ids, &mut tok, &y).unwrap();
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| widened[i as usize * hidden..][..hidden].to_vec())
                    .collect();
                assert_eq!(
                    bits(&y.to_vec().unwrap()),
                    bits(&want),
                    "gather, {tokens} tokens"
                );
            }
            // A token outside the vocabulary is an error, not a read out of bounds.
            let mut tok = dev.alloc::<u32>(1, "tokens").unwrap();
            let y = poisoned(&dev, hidden, f32::NAN);
            let err = embedding::embed_tokens(
                &dev,
                &tables[0].0,
                vocab,
                hidden,
                &[vocab as u32],
                &mut tok,
                &y,
            );
            assert!(err.is_err());
        }
    }
}

#[test]
fn bf16_conversions_round_to_nearest_even_bit_exactly() {
    for dev in devices() {
        let mut r = rng(500);
        let mut x = r.normal_vec(4099, 10.0);
        // Edge cases: ties, subnormals, infinities, NaN, the largest finite values.
        x.extend([
            0.0,
            -0.0,
            1.0 + f32::EPSILON * 64.0,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
        ]);
        let n = x.len();
        let xb = upload(&dev, &x);
        let y = poisoned(&dev, n, 0xffffu16);
        convert::f32_to_bf16(&dev, &xb, &y, n).unwrap();
        let got = y.to_vec().unwrap();
        let want: Vec<u16> = x
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        assert_eq!(got, want, "f32 → bf16 on {}", dev.name());
        let nan = upload(&dev, &[f32::NAN]);
        let nb = poisoned(&dev, 1, 0u16);
        convert::f32_to_bf16(&dev, &nan, &nb, 1).unwrap();
        assert!(half::bf16::from_bits(nb.to_vec().unwrap()[0]).is_nan());

        let back = poisoned(&dev, n, f32::NAN);
        convert::bf16_to_f32(&dev, &y, &back, n).unwrap();
        let want: Vec<f32> = got
            .iter()
            .map(|b| half::bf16::from_bits(*b).to_f32())
            .collect();
        assert_eq!(
            bits(&back.to_vec().unwrap()),
            bits(&want),
            "bf16 → f32 on {}",
            dev.name()
        );
    }
}

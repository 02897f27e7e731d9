//! Embedding gather from f32, f16 and bf16 tables: exact (bit for bit) against an independent
//! widening (the `half` crate), for every table type; tokens outside the vocabulary are errors.

mod common;
use common::*;
use kiln::gpu::ops::embedding::{EmbeddingTable, TableData, embed_tokens};

const TOKENS: [usize; 4] = [1, 5, 33, 257];

#[test]
fn embedding_gather_is_exact_for_every_table_type() {
    for dev in devices() {
        let (vocab, hidden) = (97, 136);
        for (case, &tokens) in TOKENS.iter().enumerate() {
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
            let tables = [
                (TableData::F32(upload(&dev, &table)), table.clone()),
                (
                    TableData::F16(upload(&dev, &f16)),
                    f16.iter()
                        .map(|b| half::f16::from_bits(*b).to_f32())
                        .collect(),
                ),
                (
                    TableData::Bf16(upload(&dev, &bf16)),
                    bf16.iter()
                        .map(|b| half::bf16::from_bits(*b).to_f32())
                        .collect::<Vec<f32>>(),
                ),
            ];
            for (data, widened) in tables {
                let t = EmbeddingTable::new(data, vocab, hidden).unwrap();
                let mut tok = dev.alloc::<u32>(tokens, "tokens").unwrap();
                let y = poisoned(&dev, tokens * hidden, f32::NAN);
                embed_tokens(&dev, &t, &ids, &mut tok, &y).unwrap();
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| widened[i as usize * hidden..][..hidden].to_vec())
                    .collect();
                assert_eq!(
                    bits(&y.to_vec().unwrap()),
                    bits(&want),
                    "gather, {tokens} tokens"
                );
                // A token outside the vocabulary is an error, not a read out of bounds.
                let launched = dev.launch_count();
                let mut tok = dev.alloc::<u32>(1, "tokens").unwrap();
                let y = poisoned(&dev, hidden, f32::NAN);
                let err = embed_tokens(&dev, &t, &[vocab as u32], &mut tok, &y).unwrap_err();
                assert!(err.to_string().contains("outside the vocabulary"), "{err}");
                assert_eq!(dev.launch_count(), launched);
            }
        }
    }
}

#[test]
fn a_table_smaller_than_its_shape_is_rejected() {
    let dev = kiln::gpu::Device::emulator();
    let data = TableData::F32(upload(&dev, &rng(904).normal_vec(10 * 4 - 1, 1.0)));
    let err = EmbeddingTable::new(data, 10, 4).err().expect("short table");
    assert!(err.to_string().contains("needs 10×4"), "{err}");
}

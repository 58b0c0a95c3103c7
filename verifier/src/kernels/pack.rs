//! Weights re-laid for the kernels: tiles of 16 outputs, one output per 32-bit lane.
//!
//! llama.cpp stores each output's weights contiguously, so a SIMD register holds consecutive inputs
//! of one output and every (token row, output) pair ends in a horizontal sum. Here a register holds
//! four consecutive inputs of each of 16 outputs: a VNNI dot product with four broadcast activation
//! bytes adds one step of 16 dot products at once, and the one weight load serves every token row of
//! the batch. The nibbles stay packed (a load of 64 bytes holds two groups of four inputs, low and
//! high nibble), the fifth bit of Q5_0 weights becomes byte masks (one bit a byte of the register), the
//! top two bits of Q6_K weights groups of 2-bit fields that shifts bring into place, and the scales
//! become one byte a lane. Every layout has the same size as llama.cpp's
//! blocks, except Q4_K (+2.8%: its 6-bit scales and mins unpacked to bytes) and Q6_K (+1.0%: padding
//! that keeps its groups on cache lines).
//!
//! Each layout below is a block of one tile: the bytes for one llama.cpp block of each of the 16
//! outputs. "Lane byte (o, b)" is byte `4·o + b` of a 64-byte group: output `o`, input `b` of four.

use super::blocks::{Q4K, Q5_0, Q6K, Q8_0, WeightType};

/// Outputs per tile.
pub const TILE: usize = 16;

/// Q4_K: `d` ×16 f16 | `dmin` ×16 f16 | `sc[j][o]` 8×16 | `m` as two groups of lane bytes
/// (o, b) = `m[o][4q + b]` | 32 nibble groups, group `4j + i`: low nibble of (o, b) = input
/// `32j + 4i + b`, high nibble = input `32j + 16 + 4i + b`.
pub const Q4K_BYTES: usize = 64 + 128 + 128 + 2048;
/// Q6_K: `d` ×16 f16, 32 bytes of padding | four quarters of 4 sub-blocks of 16 inputs, each
/// quarter the scales `sc[s][o]` of its 4 sub-blocks (4×16 i8), then per sub-block `s` 192 bytes:
/// two nibble groups, group `i`: low = input `16s + 4i + b`, high = input `16s + 8 + 4i + b`; then one
/// group of the top two bits: bits 1:0 of (o, b) for input `16s + b`, bits 3:2 for `16s + 8 + b`, bits
/// 5:4 for `16s + 4 + b`, bits 7:6 for `16s + 12 + b` (so that shifts by 4, 2, 0 and −2 bring each pair
/// to bits 5:4). [`q6k_scales`] and [`q6k_sub`] give the offsets. The kernel reads the block in
/// order, one cache line after the other: with the scales and the top bits in planes of their own it
/// read from three places at once and ran at half the memory bandwidth.
pub const Q6K_BYTES: usize = 64 + 4 * Q6K_QUARTER;
/// Bytes of a quarter of a packed Q6_K block: 4 sub-blocks' scales, then their weight groups.
const Q6K_QUARTER: usize = 64 + 4 * 192;

/// Offset of the 16 scales of Q6_K sub-block `s` in a packed block.
pub const fn q6k_scales(s: usize) -> usize {
    64 + Q6K_QUARTER * (s / 4) + 16 * (s % 4)
}

/// Offset of the weight groups of Q6_K sub-block `s` in a packed block.
pub const fn q6k_sub(s: usize) -> usize {
    64 + Q6K_QUARTER * (s / 4) + 64 + 192 * (s % 4)
}

/// Q8_0: `d` ×16 | 8 groups, group `g`: (o, b) = `q[o][4g + b] + 128` as an unsigned byte.
pub const Q8_0_BYTES: usize = 32 + 512;
/// Q5_0: `d` ×16 | 4 nibble groups, group `i`: low = input `4i + b`, high = input `16 + 4i + b` |
/// per group two u64 masks (low, high) of bit 4.
pub const Q5_0_BYTES: usize = 32 + 256 + 64;

/// Bytes of one packed block of a tile.
pub const fn packed_bytes(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4K => Q4K_BYTES,
        WeightType::Q6K => Q6K_BYTES,
        WeightType::Q8_0 => Q8_0_BYTES,
        WeightType::Q5_0 => Q5_0_BYTES,
    }
}

fn put_halves(out: &mut [u8], at: usize, o: usize, raw: &[u8]) {
    out[at + 2 * o] = raw[0];
    out[at + 2 * o + 1] = raw[1];
}

fn put_mask(out: &mut [u8], at: usize, mask: u64) {
    out[at..at + 8].copy_from_slice(&mask.to_le_bytes());
}

/// Packs block `b` of up to 16 output rows (llama.cpp's bytes, one slice a row) into `out`
/// (`packed_bytes(ty)` long). Missing outputs of a last, partial tile are zero.
pub fn pack_block(ty: WeightType, rows: &[&[u8]], b: usize, out: &mut [u8]) {
    debug_assert!(rows.len() <= TILE && out.len() == packed_bytes(ty));
    out.fill(0);
    let bb = ty.block_bytes();
    let blocks = rows.iter().map(|r| &r[b * bb..(b + 1) * bb]);
    match ty {
        WeightType::Q4K => {
            for (o, raw) in blocks.enumerate() {
                let w = Q4K::decode(raw);
                put_halves(out, 0, o, &raw[0..2]);
                put_halves(out, 32, o, &raw[2..4]);
                for j in 0..8 {
                    out[64 + 16 * j + o] = w.sc[j];
                    out[192 + 64 * (j / 4) + 4 * o + j % 4] = w.m[j];
                }
                for j in 0..8 {
                    for i in 0..4 {
                        let group = 320 + 64 * (4 * j + i);
                        for bi in 0..4 {
                            let lo = w.q[32 * j + 4 * i + bi];
                            let hi = w.q[32 * j + 16 + 4 * i + bi];
                            out[group + 4 * o + bi] = lo | (hi << 4);
                        }
                    }
                }
            }
        }
        WeightType::Q6K => {
            for (o, raw) in blocks.enumerate() {
                let w = Q6K::decode(raw);
                put_halves(out, 0, o, &raw[208..210]);
                for s in 0..16 {
                    out[q6k_scales(s) + o] = w.sc[s] as u8;
                }
                for s in 0..16 {
                    for i in 0..2 {
                        for bi in 0..4 {
                            let lo = w.q[16 * s + 4 * i + bi];
                            let hi = w.q[16 * s + 8 + 4 * i + bi];
                            out[q6k_sub(s) + 64 * i + 4 * o + bi] = (lo & 0xF) | ((hi & 0xF) << 4);
                        }
                    }
                    for bi in 0..4 {
                        let top = |k: usize| w.q[16 * s + k + bi] >> 4;
                        out[q6k_sub(s) + 128 + 4 * o + bi] = top(0) | (top(8) << 2) | (top(4) << 4) | (top(12) << 6);
                    }
                }
            }
        }
        WeightType::Q8_0 => {
            for (o, raw) in blocks.enumerate() {
                let w = Q8_0::decode(raw);
                put_halves(out, 0, o, &raw[0..2]);
                for g in 0..8 {
                    for bi in 0..4 {
                        out[32 + 64 * g + 4 * o + bi] = (w.q[4 * g + bi] as u8) ^ 0x80;
                    }
                }
            }
            // Lanes of missing outputs hold 128 (a weight of 0), like real zeros.
            for o in rows.len()..TILE {
                for g in 0..8 {
                    out[32 + 64 * g + 4 * o..32 + 64 * g + 4 * o + 4].fill(0x80);
                }
            }
        }
        WeightType::Q5_0 => {
            let mut masks = [[0u64; 2]; 4];
            for (o, raw) in blocks.enumerate() {
                let w = Q5_0::decode(raw);
                put_halves(out, 0, o, &raw[0..2]);
                for i in 0..4 {
                    for bi in 0..4 {
                        let lo = w.q[4 * i + bi];
                        let hi = w.q[16 + 4 * i + bi];
                        out[32 + 64 * i + 4 * o + bi] = (lo & 0xF) | ((hi & 0xF) << 4);
                        let bit = 4 * o + bi;
                        masks[i][0] |= (((lo >> 4) & 1) as u64) << bit;
                        masks[i][1] |= (((hi >> 4) & 1) as u64) << bit;
                    }
                }
            }
            for (i, m) in masks.iter().enumerate() {
                put_mask(out, 288 + 16 * i, m[0]);
                put_mask(out, 288 + 16 * i + 8, m[1]);
            }
        }
    }
}

//! The scalar reference: one output of one token row, from llama.cpp's own weight blocks, by the
//! definition of each format. Its integers are what every kernel must reproduce exactly, and its
//! float steps (one fused multiply-add per scale, block after block) are the sequence every kernel
//! follows, so kernel and reference agree bit for bit (the kernels' tests check it).

use super::activation::{Act0, ActK};
use super::blocks::{Q4K, Q5_0, Q6K, Q8_0, WeightType};

/// The activation row, quantised for the weight type.
#[derive(Clone, Copy)]
pub enum ActRow<'a> {
    K(&'a [ActK]),
    Zero(&'a [Act0]),
}

/// The dot product of one weight row (llama.cpp's blocks) with one activation row.
pub fn dot(ty: WeightType, row: &[u8], act: ActRow<'_>) -> f32 {
    let blocks = row.chunks_exact(ty.block_bytes());
    let mut acc = 0.0f32;
    match (ty, act) {
        (WeightType::Q4K, ActRow::K(y)) => {
            for (b, y) in blocks.zip(y) {
                let w = Q4K::decode(b);
                let (mut isum, mut summs) = (0i32, 0i32);
                for j in 0..8 {
                    let dot: i32 = (32 * j..32 * j + 32).map(|k| w.q[k] as i32 * y.qs[k] as i32).sum();
                    isum += w.sc[j] as i32 * dot;
                    summs += w.m[j] as i32 * y.sum32(j);
                }
                acc = (y.d * w.d).mul_add(isum as f32, acc);
                acc = (-(y.d * w.dmin)).mul_add(summs as f32, acc);
            }
        }
        (WeightType::Q6K, ActRow::K(y)) => {
            for (b, y) in blocks.zip(y) {
                let w = Q6K::decode(b);
                let mut isum = 0i32;
                for s in 0..16 {
                    let dot: i32 = (16 * s..16 * s + 16).map(|k| (w.q[k] as i32 - 32) * y.qs[k] as i32).sum();
                    isum += w.sc[s] as i32 * dot;
                }
                acc = (y.d * w.d).mul_add(isum as f32, acc);
            }
        }
        (WeightType::Q8_0, ActRow::Zero(y)) => {
            for (b, y) in blocks.zip(y) {
                let w = Q8_0::decode(b);
                let isum: i32 = (0..32).map(|k| w.q[k] as i32 * y.qs[k] as i32).sum();
                acc = (y.d * w.d).mul_add(isum as f32, acc);
            }
        }
        (WeightType::Q5_0, ActRow::Zero(y)) => {
            for (b, y) in blocks.zip(y) {
                let w = Q5_0::decode(b);
                let isum: i32 = (0..32).map(|k| (w.q[k] as i32 - 16) * y.qs[k] as i32).sum();
                acc = (y.d * w.d).mul_add(isum as f32, acc);
            }
        }
        _ => unreachable!("the activation row is quantised for the weight type"),
    }
    acc
}

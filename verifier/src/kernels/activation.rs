//! The activations (the token rows of a product) quantised to 8 bits, one scale per block: per 256
//! for the K-quant weights, per 32 for Q8_0 and Q5_0, as llama.cpp's `Q8_K` and `Q8_0` do.
//!
//! A row is quantised on its own, by scalar code that every kernel path shares, so its integers and
//! scale do not depend on the batch around it or on the instruction set. Beside the integers each
//! block carries the sums that the kernels' offset tricks subtract (see the kernels).

use super::blocks::{QK_K, QK0};

/// One 256-wide block of an activation row, for Q4_K and Q6_K weights.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct ActK {
    /// −127..=127.
    pub qs: [i8; QK_K],
    /// −32 · (sum of `qs` over each 16), the Q6_K offset (weights are stored as `q`, valued `q − 32`).
    pub neg32_sum16: [i32; 16],
    /// The sum of `qs` over each 32 (a Q4_K sub-block) as `64·min_a + min_b` with `min_b` in 0..=63, so
    /// that both halves are bytes a VNNI dot product takes.
    pub min_a: [i8; 8],
    pub min_b: [i8; 8],
    /// The scale: the value of `qs[k]` is `d·qs[k]`.
    pub d: f32,
}

impl ActK {
    pub const ZERO: Self = Self { qs: [0; QK_K], neg32_sum16: [0; 16], min_a: [0; 8], min_b: [0; 8], d: 0.0 };

    /// The sum of `qs` over sub-block `j` (0..8) of 32.
    pub fn sum32(&self, j: usize) -> i32 {
        64 * self.min_a[j] as i32 + self.min_b[j] as i32
    }
}

/// One 32-wide block of an activation row, for Q8_0 and Q5_0 weights.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct Act0 {
    pub qs: [i8; QK0],
    pub d: f32,
    /// −128 · sum of `qs`: Q8_0 weights are stored as `q + 128`.
    pub neg128_sum: i32,
    /// −16 · sum of `qs`: Q5_0 weights are stored as `q`, valued `q − 16`.
    pub neg16_sum: i32,
}

impl Act0 {
    pub const ZERO: Self = Self { qs: [0; QK0], d: 0.0, neg128_sum: 0, neg16_sum: 0 };
}

/// Quantises one block (a multiple of 16 values) to −127..=127 with the scale `max|x| / 127`;
/// returns the scale.
///
/// Written in 16 lanes without calls so that the compiler turns it into SIMD: a maximum is exact in
/// any order and every other step is one IEEE operation per value, so the bits are those of the
/// plain loop whatever instructions it compiles to. A NaN activation quantises to 0, as `as i8` does.
fn quantize_block(x: &[f32], qs: &mut [i8]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in x.chunks_exact(16) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.into_iter().fold(0.0f32, f32::max);
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let iscale = 127.0 / amax;
    for (q, v) in qs.iter_mut().zip(x) {
        let r = (v * iscale).round_ties_even().clamp(-127.0, 127.0);
        // SAFETY: a non-NaN `r` is an integer in −127..=127.
        *q = if r.is_nan() { 0 } else { (unsafe { r.to_int_unchecked::<i32>() }) as i8 };
    }
    amax / 127.0
}

/// Quantises a row of `k` floats (`k` a multiple of 256) into `out` (`k / 256` blocks).
pub fn quantize_row_k(x: &[f32], out: &mut [ActK]) {
    debug_assert_eq!(out.len() * QK_K, x.len());
    for (block, x) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        block.d = quantize_block(x, &mut block.qs);
        let mut sum16 = [0i32; 16];
        for (s, sum) in sum16.iter_mut().enumerate() {
            *sum = block.qs[16 * s..16 * s + 16].iter().map(|&q| q as i32).sum();
            block.neg32_sum16[s] = -32 * *sum;
        }
        for j in 0..8 {
            let sum = sum16[2 * j] + sum16[2 * j + 1];
            block.min_a[j] = sum.div_euclid(64) as i8;
            block.min_b[j] = sum.rem_euclid(64) as i8;
        }
    }
}

/// Quantises a row of `k` floats (`k` a multiple of 32) into `out` (`k / 32` blocks).
pub fn quantize_row_0(x: &[f32], out: &mut [Act0]) {
    debug_assert_eq!(out.len() * QK0, x.len());
    for (block, x) in out.iter_mut().zip(x.chunks_exact(QK0)) {
        block.d = quantize_block(x, &mut block.qs);
        let sum: i32 = block.qs.iter().map(|&q| q as i32).sum();
        block.neg128_sum = -128 * sum;
        block.neg16_sum = -16 * sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_block_sum_splits_into_two_bytes_and_back() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * if i < 256 { 1.0 } else { -3.0 }).collect();
        let mut out = vec![ActK::ZERO; 2];
        quantize_row_k(&x, &mut out);
        for block in &out {
            for j in 0..8 {
                let sum: i32 = block.qs[32 * j..32 * j + 32].iter().map(|&q| q as i32).sum();
                assert_eq!(block.sum32(j), sum);
                assert!((0..64).contains(&block.min_b[j]));
            }
        }
    }

    /// The plain scalar loop that [`quantize_block`] is written in lanes from.
    fn quantize_block_plainly(x: &[f32], qs: &mut [i8]) -> f32 {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 {
            qs.fill(0);
            return 0.0;
        }
        let iscale = 127.0 / amax;
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * iscale).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        amax / 127.0
    }

    #[test]
    fn a_block_quantises_to_the_bits_of_the_plain_scalar_loop() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        for case in 0..2000 {
            let mut x: Vec<f32> = (0..256)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    // Halves and exact ties of the scaled values, large and tiny magnitudes.
                    let v = ((s >> 40) as i32 - (1 << 23)) as f32 / (1 << (s % 24)) as f32;
                    if case % 3 == 0 { v.round() / 2.0 } else { v }
                })
                .collect();
            match case % 7 {
                1 => x[(s % 256) as usize] = f32::NAN,
                2 => x[(s % 256) as usize] = f32::INFINITY,
                3 => x.iter_mut().for_each(|v| *v = 0.0),
                _ => {}
            }
            let (mut got, mut want) = ([0i8; 256], [0i8; 256]);
            let (d, e) = (quantize_block(&x, &mut got), quantize_block_plainly(&x, &mut want));
            assert_eq!((d.to_bits(), got), (e.to_bits(), want), "case {case}");
        }
    }

    #[test]
    fn the_largest_value_of_a_block_maps_to_127() {
        let mut x = vec![0.5f32; 32];
        x[7] = -2.0;
        let mut out = vec![Act0::ZERO; 1];
        quantize_row_0(&x, &mut out);
        assert_eq!(out[0].qs[7], -127);
        assert_eq!(out[0].d, 2.0 / 127.0);
        assert_eq!(out[0].qs[0], 32); // 0.5 · 63.5 = 31.75
    }
}

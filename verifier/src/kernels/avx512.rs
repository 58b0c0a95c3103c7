//! The kernels on AVX-512 with VNNI: one 512-bit register is one 32-bit lane per output of a tile,
//! `vpdpbusd` adds four products a lane (unsigned weight bytes times four broadcast activation bytes).
//!
//! Every function computes `R` token rows (1..=6) of one tile over all its blocks. The integer sums
//! are exact, so their order is free; the float steps are the reference's, lane by lane, block after
//! block: `acc = fma(d_w·d_y, isum, acc)` (and, for Q4_K, `acc = fma(−dmin_w·d_y, summs, acc)`).
//! Nothing in a lane depends on `R`, on the other rows or on the other lanes.

use core::arch::x86_64::*;

use super::activation::{Act0, ActK};
use super::pack::{Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, q6k_scales, q6k_sub};

/// Four activation bytes, broadcast to every lane.
macro_rules! bcast {
    ($p:expr) => {
        _mm512_set1_epi32(($p).cast::<i32>().read_unaligned())
    };
}

macro_rules! mask64 {
    ($p:expr) => {
        _cvtu64_mask64(($p).cast::<u64>().read_unaligned())
    };
}

/// Q4_K × Q8_K for `R` rows of one tile: `acts[r]` points at row `r`'s `nblocks` activation blocks,
/// `out[r]` receives its 16 outputs.
///
/// # Safety
/// The CPU has AVX-512 F/BW and VNNI; `tile` holds `nblocks` packed Q4_K blocks; every `acts[r]`
/// holds `nblocks` blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q4k<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const ActK; R], out: &mut [[f32; 16]; R]) {
    let low = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut facc = [_mm512_setzero_ps(); R];
    for b in 0..nblocks {
        // SAFETY (the whole body): offsets stay inside the packed block and the activation blocks, as
        // the layout in pack.rs and the caller's contract say.
        unsafe {
            let p = tile.add(b * Q4K_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32).cast()));
            let mut isum = [zero; R];
            for j in 0..8 {
                let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(64 + 16 * j).cast()));
                let mut w = [zero; 8];
                for i in 0..4 {
                    let v = _mm512_loadu_si512(p.add(320 + 64 * (4 * j + i)).cast());
                    w[2 * i] = _mm512_and_si512(v, low);
                    w[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
                for r in 0..R {
                    let y = (*acts[r].add(b)).qs.as_ptr().add(32 * j);
                    let mut acc = zero;
                    for i in 0..4 {
                        acc = _mm512_dpbusd_epi32(acc, w[2 * i], bcast!(y.add(4 * i)));
                        acc = _mm512_dpbusd_epi32(acc, w[2 * i + 1], bcast!(y.add(16 + 4 * i)));
                    }
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(acc, sc));
                }
            }
            let mq0 = _mm512_loadu_si512(p.add(192).cast());
            let mq1 = _mm512_loadu_si512(p.add(256).cast());
            for r in 0..R {
                let a = &*acts[r].add(b);
                let t = _mm512_dpbusd_epi32(zero, mq0, bcast!(a.min_a.as_ptr()));
                let t = _mm512_dpbusd_epi32(t, mq1, bcast!(a.min_a.as_ptr().add(4)));
                let u = _mm512_dpbusd_epi32(zero, mq0, bcast!(a.min_b.as_ptr()));
                let u = _mm512_dpbusd_epi32(u, mq1, bcast!(a.min_b.as_ptr().add(4)));
                let summs = _mm512_add_epi32(_mm512_slli_epi32(t, 6), u);
                let dy = _mm512_set1_ps(a.d);
                facc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum[r]), facc[r]);
                facc[r] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, dy), _mm512_cvtepi32_ps(summs), facc[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
    }
}

/// Q6_K × Q8_K; as [`q4k`].
///
/// # Safety
/// As [`q4k`], with packed Q6_K blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q6k<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const ActK; R], out: &mut [[f32; 16]; R]) {
    let low = _mm512_set1_epi8(0x0F);
    let bits54 = _mm512_set1_epi8(0x30);
    let zero = _mm512_setzero_si512();
    let mut facc = [_mm512_setzero_ps(); R];
    for b in 0..nblocks {
        // SAFETY: as in q4k.
        unsafe {
            let p = tile.add(b * Q6K_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            let mut isum = [zero; R];
            for s in 0..16 {
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(q6k_scales(s)).cast()));
                // The sub-block's two nibble groups (low and high nibbles), then the top two bits of
                // all four brought to bits 5:4 and merged in (`a | (b & c)` is ternary-logic table 0xF8).
                let g = p.add(q6k_sub(s));
                let v0 = _mm512_loadu_si512(g.cast());
                let v1 = _mm512_loadu_si512(g.add(64).cast());
                let top = _mm512_loadu_si512(g.add(128).cast());
                let merge = |nib: __m512i, t: __m512i| _mm512_ternarylogic_epi32::<0xF8>(nib, t, bits54);
                let w = [
                    merge(_mm512_and_si512(v0, low), _mm512_slli_epi16(top, 4)),
                    merge(_mm512_and_si512(_mm512_srli_epi16(v0, 4), low), _mm512_slli_epi16(top, 2)),
                    merge(_mm512_and_si512(v1, low), top),
                    merge(_mm512_and_si512(_mm512_srli_epi16(v1, 4), low), _mm512_srli_epi16(top, 2)),
                ];
                for r in 0..R {
                    let a = &*acts[r].add(b);
                    let y = a.qs.as_ptr().add(16 * s);
                    let acc = _mm512_set1_epi32(a.neg32_sum16[s]);
                    let acc = _mm512_dpbusd_epi32(acc, w[0], bcast!(y));
                    let acc = _mm512_dpbusd_epi32(acc, w[1], bcast!(y.add(8)));
                    let acc = _mm512_dpbusd_epi32(acc, w[2], bcast!(y.add(4)));
                    let acc = _mm512_dpbusd_epi32(acc, w[3], bcast!(y.add(12)));
                    isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(acc, sc));
                }
            }
            for r in 0..R {
                let dy = _mm512_set1_ps((*acts[r].add(b)).d);
                facc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum[r]), facc[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
    }
}

/// Q8_0 × Q8_0; as [`q4k`], with 32-wide blocks.
///
/// # Safety
/// As [`q4k`], with packed Q8_0 blocks and Q8_0 activation blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q8_0<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const Act0; R], out: &mut [[f32; 16]; R]) {
    let mut facc = [_mm512_setzero_ps(); R];
    for b in 0..nblocks {
        // SAFETY: as in q4k.
        unsafe {
            let p = tile.add(b * Q8_0_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            let mut w = [_mm512_setzero_si512(); 8];
            for (g, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(p.add(32 + 64 * g).cast());
            }
            for r in 0..R {
                let a = &*acts[r].add(b);
                // The weights are stored plus 128: start from −128 · the activations' sum.
                let mut acc = _mm512_set1_epi32(a.neg128_sum);
                for (g, &w) in w.iter().enumerate() {
                    acc = _mm512_dpbusd_epi32(acc, w, bcast!(a.qs.as_ptr().add(4 * g)));
                }
                let dy = _mm512_set1_ps(a.d);
                facc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(acc), facc[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
    }
}

/// Q5_0 × Q8_0; as [`q8_0`].
///
/// # Safety
/// As [`q8_0`], with packed Q5_0 blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q5_0<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const Act0; R], out: &mut [[f32; 16]; R]) {
    let low = _mm512_set1_epi8(0x0F);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut facc = [_mm512_setzero_ps(); R];
    for b in 0..nblocks {
        // SAFETY: as in q4k.
        unsafe {
            let p = tile.add(b * Q5_0_BYTES);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            let mut w = [_mm512_setzero_si512(); 8];
            for i in 0..4 {
                let v = _mm512_loadu_si512(p.add(32 + 64 * i).cast());
                let m = p.add(288 + 16 * i);
                let lo = _mm512_and_si512(v, low);
                w[2 * i] = _mm512_mask_add_epi8(lo, mask64!(m), lo, bit4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                w[2 * i + 1] = _mm512_mask_add_epi8(hi, mask64!(m.add(8)), hi, bit4);
            }
            for r in 0..R {
                let a = &*acts[r].add(b);
                // The weights are stored as q, valued q − 16: start from −16 · the activations' sum.
                let mut acc = _mm512_set1_epi32(a.neg16_sum);
                for i in 0..4 {
                    acc = _mm512_dpbusd_epi32(acc, w[2 * i], bcast!(a.qs.as_ptr().add(4 * i)));
                    acc = _mm512_dpbusd_epi32(acc, w[2 * i + 1], bcast!(a.qs.as_ptr().add(16 + 4 * i)));
                }
                let dy = _mm512_set1_ps(a.d);
                facc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(acc), facc[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
    }
}

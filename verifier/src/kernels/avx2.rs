//! The kernels on AVX2 (machines without AVX-512 VNNI): the same packed layout, taken as two halves
//! of eight lanes, with `vpmaddubsw` + `vpmaddwd` for the missing VNNI dot product and the bit masks
//! expanded to bytes. The integers are the same exact sums as on AVX-512 and the float steps the
//! same, so both paths give the same bits (tested).

use core::arch::x86_64::*;

use super::activation::{Act0, ActK};
use super::pack::{Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, q6k_scales, q6k_sub};

macro_rules! bcast {
    ($p:expr) => {
        _mm256_set1_epi32(($p).cast::<i32>().read_unaligned())
    };
}

/// `acc + Σ₄ w·y` a lane, `w` unsigned and `y` signed bytes; exact while no pair of products leaves
/// i16 (every caller's weights are at most 63, activations at most 127 in size).
macro_rules! dot4 {
    ($acc:expr, $w:expr, $y:expr) => {
        _mm256_add_epi32($acc, _mm256_madd_epi16(_mm256_maddubs_epi16($w, $y), _mm256_set1_epi16(1)))
    };
}

/// The 32 bits of half `h` of a u64 mask at `p`, one bit a byte, as `value` in the bytes whose bit is
/// set and 0 elsewhere.
macro_rules! mask_bytes {
    ($p:expr, $h:expr, $value:expr) => {{
        let bits = (($p).cast::<u64>().read_unaligned() >> (32 * $h)) as u32 as i32;
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits),
            _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select), _mm256_set1_epi8($value))
    }};
}

/// Q4_K × Q8_K for `R` rows of one tile, as `avx512::q4k`.
///
/// # Safety
/// The CPU has AVX2 and F16C; the pointers as for `avx512::q4k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const ActK; R], out: &mut [[f32; 16]; R]) {
    let low = _mm256_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    for h in 0..2 {
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nblocks {
            // SAFETY (the whole body): offsets stay inside the packed block and the activations.
            unsafe {
                let p = tile.add(b * Q4K_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * h).cast()));
                let mut isum = [zero; R];
                for j in 0..8 {
                    let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(64 + 16 * j + 8 * h).cast()));
                    let mut w = [zero; 8];
                    for i in 0..4 {
                        let v = _mm256_loadu_si256(p.add(320 + 64 * (4 * j + i) + 32 * h).cast());
                        w[2 * i] = _mm256_and_si256(v, low);
                        w[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    }
                    for r in 0..R {
                        let y = (*acts[r].add(b)).qs.as_ptr().add(32 * j);
                        let mut acc = zero;
                        for i in 0..4 {
                            acc = dot4!(acc, w[2 * i], bcast!(y.add(4 * i)));
                            acc = dot4!(acc, w[2 * i + 1], bcast!(y.add(16 + 4 * i)));
                        }
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(acc, sc));
                    }
                }
                let mq0 = _mm256_loadu_si256(p.add(192 + 32 * h).cast());
                let mq1 = _mm256_loadu_si256(p.add(256 + 32 * h).cast());
                for r in 0..R {
                    let a = &*acts[r].add(b);
                    let t = dot4!(dot4!(zero, mq0, bcast!(a.min_a.as_ptr())), mq1, bcast!(a.min_a.as_ptr().add(4)));
                    let u = dot4!(dot4!(zero, mq0, bcast!(a.min_b.as_ptr())), mq1, bcast!(a.min_b.as_ptr().add(4)));
                    let summs = _mm256_add_epi32(_mm256_slli_epi32(t, 6), u);
                    let dy = _mm256_set1_ps(a.d);
                    facc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum[r]), facc[r]);
                    facc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dy), _mm256_cvtepi32_ps(summs), facc[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), facc[r]) };
        }
    }
}

/// Q6_K × Q8_K, as `avx512::q6k`.
///
/// # Safety
/// As [`q4k`], with packed Q6_K blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const ActK; R], out: &mut [[f32; 16]; R]) {
    let low = _mm256_set1_epi8(0x0F);
    let bits54 = _mm256_set1_epi8(0x30);
    let zero = _mm256_setzero_si256();
    for h in 0..2 {
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nblocks {
            // SAFETY: as in q4k.
            unsafe {
                let p = tile.add(b * Q6K_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
                let mut isum = [zero; R];
                for s in 0..16 {
                    let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(q6k_scales(s) + 8 * h).cast()));
                    let g = p.add(q6k_sub(s));
                    let v0 = _mm256_loadu_si256(g.add(32 * h).cast());
                    let v1 = _mm256_loadu_si256(g.add(64 + 32 * h).cast());
                    let top = _mm256_loadu_si256(g.add(128 + 32 * h).cast());
                    let merge = |nib: __m256i, t: __m256i| _mm256_or_si256(nib, _mm256_and_si256(t, bits54));
                    let w = [
                        merge(_mm256_and_si256(v0, low), _mm256_slli_epi16(top, 4)),
                        merge(_mm256_and_si256(_mm256_srli_epi16(v0, 4), low), _mm256_slli_epi16(top, 2)),
                        merge(_mm256_and_si256(v1, low), top),
                        merge(_mm256_and_si256(_mm256_srli_epi16(v1, 4), low), _mm256_srli_epi16(top, 2)),
                    ];
                    for r in 0..R {
                        let a = &*acts[r].add(b);
                        let y = a.qs.as_ptr().add(16 * s);
                        let acc = _mm256_set1_epi32(a.neg32_sum16[s]);
                        let acc = dot4!(acc, w[0], bcast!(y));
                        let acc = dot4!(acc, w[1], bcast!(y.add(8)));
                        let acc = dot4!(acc, w[2], bcast!(y.add(4)));
                        let acc = dot4!(acc, w[3], bcast!(y.add(12)));
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(acc, sc));
                    }
                }
                for r in 0..R {
                    let dy = _mm256_set1_ps((*acts[r].add(b)).d);
                    facc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum[r]), facc[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), facc[r]) };
        }
    }
}

/// Q8_0 × Q8_0, as `avx512::q8_0`. The stored `q + 128` would overflow `vpmaddubsw`, so the
/// weights are turned back to signed bytes and multiplied by sign: `|q| · (y·sign q)`.
///
/// # Safety
/// As [`q4k`], with packed Q8_0 blocks and Q8_0 activation blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const Act0; R], out: &mut [[f32; 16]; R]) {
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    for h in 0..2 {
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nblocks {
            // SAFETY: as in q4k.
            unsafe {
                let p = tile.add(b * Q8_0_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
                let mut w = [_mm256_setzero_si256(); 8];
                for (g, w) in w.iter_mut().enumerate() {
                    *w = _mm256_xor_si256(_mm256_loadu_si256(p.add(32 + 64 * g + 32 * h).cast()), flip);
                }
                for r in 0..R {
                    let a = &*acts[r].add(b);
                    let mut acc = _mm256_setzero_si256();
                    for (g, &w) in w.iter().enumerate() {
                        let y = bcast!(a.qs.as_ptr().add(4 * g));
                        acc = dot4!(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(y, w));
                    }
                    let dy = _mm256_set1_ps(a.d);
                    facc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(acc), facc[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), facc[r]) };
        }
    }
}

/// Q5_0 × Q8_0, as `avx512::q5_0`.
///
/// # Safety
/// As [`q8_0`], with packed Q5_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0<const R: usize>(tile: *const u8, nblocks: usize, acts: &[*const Act0; R], out: &mut [[f32; 16]; R]) {
    let low = _mm256_set1_epi8(0x0F);
    for h in 0..2 {
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nblocks {
            // SAFETY: as in q4k.
            unsafe {
                let p = tile.add(b * Q5_0_BYTES);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
                let mut w = [_mm256_setzero_si256(); 8];
                for i in 0..4 {
                    let v = _mm256_loadu_si256(p.add(32 + 64 * i + 32 * h).cast());
                    let m = p.add(288 + 16 * i);
                    w[2 * i] = _mm256_or_si256(_mm256_and_si256(v, low), mask_bytes!(m, h, 0x10));
                    w[2 * i + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), mask_bytes!(m.add(8), h, 0x10));
                }
                for r in 0..R {
                    let a = &*acts[r].add(b);
                    let mut acc = _mm256_set1_epi32(a.neg16_sum);
                    for i in 0..4 {
                        acc = dot4!(acc, w[2 * i], bcast!(a.qs.as_ptr().add(4 * i)));
                        acc = dot4!(acc, w[2 * i + 1], bcast!(a.qs.as_ptr().add(16 + 4 * i)));
                    }
                    let dy = _mm256_set1_ps(a.d);
                    facc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(acc), facc[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), facc[r]) };
        }
    }
}

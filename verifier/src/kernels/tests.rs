//! Each kernel against the scalar reference, bit for bit, and the invariances the verifier relies on:
//! a row's outputs do not depend on the rows beside it, its position, the thread split or the path.

use half::f16;

use super::activation::{Act0, ActK, quantize_row_0, quantize_row_k};
use super::blocks::WeightType;
use super::packed::Packed;
use super::reference::{ActRow, dot};
use super::{Path, Rows, mul_mat};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// `n` rows of `k` weights in llama.cpp's layout: random bytes, with scales of a sane size.
fn weights(ty: WeightType, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut w: Vec<u8> = (0..n * k / ty.block_len() * bb).map(|_| rng.byte()).collect();
    for block in w.chunks_exact_mut(bb) {
        let mut scale = || f16::from_f32(0.001 + 0.01 * rng.unit().abs()).to_le_bytes();
        match ty {
            WeightType::Q4K => {
                block[0..2].copy_from_slice(&scale());
                block[2..4].copy_from_slice(&scale());
            }
            WeightType::Q6K => block[208..210].copy_from_slice(&scale()),
            WeightType::Q8_0 | WeightType::Q5_0 => block[0..2].copy_from_slice(&scale()),
        }
    }
    w
}

fn activations(m: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..m * k).map(|i| rng.unit() * if i % 97 == 0 { 8.0 } else { 1.0 }).collect()
}

fn reference(ty: WeightType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let rb = k / ty.block_len() * ty.block_bytes();
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        let (mut ak, mut a0) = (vec![ActK::ZERO; k / 256], vec![Act0::ZERO; k / 32]);
        let act = if ty.is_k_quant() {
            quantize_row_k(xr, &mut ak);
            ActRow::K(&ak)
        } else {
            quantize_row_0(xr, &mut a0);
            ActRow::Zero(&a0)
        };
        for o in 0..n {
            out[r * n + o] = dot(ty, &w[o * rb..(o + 1) * rb], act);
        }
    }
    out
}

/// The product of `w` with the rows of `x` through the kernels, split over `nth` threads run one
/// after another.
fn kernels(path: Path, ty: WeightType, w: &[u8], n: usize, k: usize, x: &[f32], nth: usize) -> Vec<f32> {
    let m = x.len() / k;
    let rb = k / ty.block_len() * ty.block_bytes();
    let packed = Packed::uncached(ty, k, n, rb);
    let mut out = vec![f32::NAN; m * n];
    let rows = Rows { x: x.as_ptr(), x_stride: k, m, out: out.as_mut_ptr(), out_stride: n };
    for ith in 0..nth {
        // SAFETY: the buffers have the sizes `rows` gives; the path was checked by the caller.
        unsafe { mul_mat(path, &packed, w.as_ptr(), rows, ith, nth) };
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

const TYPES: [WeightType; 4] = [WeightType::Q4K, WeightType::Q6K, WeightType::Q8_0, WeightType::Q5_0];

fn paths() -> Vec<Path> {
    [Path::Avx512Vnni, Path::Avx2].into_iter().filter(|p| p.available()).collect()
}

#[test]
fn every_kernel_equals_the_scalar_reference_bit_for_bit() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for ty in TYPES {
        // 40 outputs: two full tiles and a partial one; 13 rows: one group of 8 and one of 5.
        let (n, k, m) = (40, 2 * 256, 13);
        let w = weights(ty, n, k, &mut rng);
        let x = activations(m, k, &mut rng);
        let want = reference(ty, &w, n, k, &x, m);
        assert!(want.iter().all(|v| v.is_finite() && *v != 0.0), "{ty:?}: the test data gives plain values");
        for path in paths() {
            let got = kernels(path, ty, &w, n, k, &x, 1);
            assert_eq!(bits(&got), bits(&want), "{ty:?} on {path:?}");
        }
    }
}

#[test]
fn a_row_gives_the_same_bits_alone_at_any_position_of_any_batch_and_any_thread_split() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for ty in TYPES {
        let (n, k) = (48, 256);
        let w = weights(ty, n, k, &mut rng);
        let x = activations(24, k, &mut rng);
        for path in paths() {
            let alone: Vec<Vec<u32>> = (0..24).map(|r| bits(&kernels(path, ty, &w, n, k, &x[r * k..(r + 1) * k], 1))).collect();
            for m in [2, 3, 7, 8, 9, 16, 17, 24] {
                for (first, nth) in [(0, 1), (24 - m, 2), ((24 - m) / 2, 3)] {
                    let batch = bits(&kernels(path, ty, &w, n, k, &x[first * k..(first + m) * k], nth));
                    for r in 0..m {
                        assert_eq!(&batch[r * n..(r + 1) * n], &alone[first + r][..], "{ty:?} {path:?}: row {r} of {m}, {nth} threads");
                    }
                }
            }
        }
    }
}

#[test]
fn the_avx2_path_gives_the_avx512_bits() {
    if !(Path::Avx512Vnni.available() && Path::Avx2.available()) {
        return;
    }
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for ty in TYPES {
        let (n, k, m) = (64, 1536, 5);
        let w = weights(ty, n, k, &mut rng);
        let x = activations(m, k, &mut rng);
        let a = kernels(Path::Avx512Vnni, ty, &w, n, k, &x, 2);
        let b = kernels(Path::Avx2, ty, &w, n, k, &x, 2);
        assert_eq!(bits(&a), bits(&b), "{ty:?}");
    }
}

#[test]
fn extreme_weights_and_activations_stay_exact() {
    // The integer sums at their limits: every Q8_0 weight −128, Q6_K scales −128, activations ±127.
    let mut rng = Rng(7);
    for ty in TYPES {
        let (n, k, m) = (16, 256, 2);
        let mut w = weights(ty, n, k, &mut rng);
        let bb = ty.block_bytes();
        for block in w.chunks_exact_mut(bb) {
            match ty {
                WeightType::Q8_0 => block[2..].fill(0x80),
                WeightType::Q6K => {
                    block[..192].fill(0xFF);
                    block[192..208].fill(0x80);
                }
                WeightType::Q4K => block[4..].fill(0xFF),
                WeightType::Q5_0 => block[2..].fill(0xFF),
            }
        }
        let x: Vec<f32> = (0..m * k).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let want = reference(ty, &w, n, k, &x, m);
        for path in paths() {
            assert_eq!(bits(&kernels(path, ty, &w, n, k, &x, 1)), bits(&want), "{ty:?} on {path:?}");
        }
    }
}

fn ggml_type(ty: WeightType) -> u32 {
    match ty {
        WeightType::Q4K => llama_cpp_sys_2::GGML_TYPE_Q4_K,
        WeightType::Q6K => llama_cpp_sys_2::GGML_TYPE_Q6_K,
        WeightType::Q8_0 => llama_cpp_sys_2::GGML_TYPE_Q8_0,
        WeightType::Q5_0 => llama_cpp_sys_2::GGML_TYPE_Q5_0,
    }
}

#[test]
fn the_reference_reads_blocks_as_llama_cpp_dequantises_them() {
    // The reference's decoding of each block against llama.cpp's own `to_float`: the product of the
    // dequantised weights with the dequantised activations, in f64, must match to float rounding.
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    for ty in TYPES {
        assert_eq!(WeightType::from_ggml(ggml_type(ty)), Some(ty));
        let (n, k) = (8, 512);
        let w = weights(ty, n, k, &mut rng);
        let x = activations(1, k, &mut rng);
        let got = reference(ty, &w, n, k, &x, 1);
        // SAFETY: llama.cpp's type traits are static; `to_float` reads `n · k` weights' blocks.
        let deq = unsafe {
            let traits = &*llama_cpp_sys_2::ggml_get_type_traits(ggml_type(ty));
            let to_float = traits.to_float.expect("a quantised type dequantises");
            let mut f = vec![0f32; n * k];
            to_float(w.as_ptr().cast(), f.as_mut_ptr(), (n * k) as i64);
            f
        };
        let (mut ak, mut a0) = (vec![ActK::ZERO; k / 256], vec![Act0::ZERO; k / 32]);
        quantize_row_k(&x, &mut ak);
        quantize_row_0(&x, &mut a0);
        let xq: Vec<f64> = (0..k)
            .map(|i| if ty.is_k_quant() { ak[i / 256].d as f64 * ak[i / 256].qs[i % 256] as f64 } else { a0[i / 32].d as f64 * a0[i / 32].qs[i % 32] as f64 })
            .collect();
        for o in 0..n {
            let want: f64 = (0..k).map(|i| deq[o * k + i] as f64 * xq[i]).sum();
            let scale: f64 = (0..k).map(|i| (deq[o * k + i] as f64 * xq[i]).abs()).sum();
            assert!((got[o] as f64 - want).abs() <= 1e-5 * scale, "{ty:?} output {o}: {} against llama.cpp's {want}", got[o]);
        }
    }
}

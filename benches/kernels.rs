//! Throughput of the batch-invariant kernels (`duet_verifier::kernels`) per weight type and row
//! count, on random weights: bytes of llama.cpp weights read per second. Two sizes: 8 MB on one
//! thread, in the caches (compute-bound: the cost of unpacking and multiplying), and 256 MB on every
//! thread (memory-bound, as a decode step of the 1.5B is), so that a kernel change shows which of the
//! two it moved.
//!
//! Run: `cargo bench -p duet-verifier --bench kernels` (`-- q6k` for one type). Threads: `DUET_THREADS`,
//! else all cores.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duet_verifier::kernels::packed::Packed;
use duet_verifier::kernels::{Path, Rows, WeightType, mul_mat};

const TYPES: [(WeightType, &str); 4] =
    [(WeightType::Q4K, "q4k"), (WeightType::Q6K, "q6k"), (WeightType::Q8_0, "q8_0"), (WeightType::Q5_0, "q5_0")];

/// Random llama.cpp blocks with small f16 scales (random scale bytes could be infinities).
fn weights(ty: WeightType, bytes: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut w: Vec<u8> = (0..bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in w.chunks_exact_mut(ty.block_bytes()) {
        let at = if ty == WeightType::Q6K { 208 } else { 0 };
        block[at..at + 2].copy_from_slice(&scale);
        if ty == WeightType::Q4K {
            block[2..4].copy_from_slice(&scale);
        }
    }
    w
}

/// The product's rows, handed to the threads that split its outputs.
#[derive(Clone, Copy)]
struct Shared(Rows);
// SAFETY: the threads read the same activations and write disjoint outputs.
unsafe impl Send for Shared {}

fn kernels(c: &mut Criterion) {
    let Some(path) = Path::detect() else {
        eprintln!("kernels: this CPU has neither AVX-512 VNNI nor AVX2; nothing measured");
        return;
    };
    let threads = std::env::var("DUET_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let k = 1536;
    for (ty, name) in TYPES {
        let row_bytes = k / ty.block_len() * ty.block_bytes();
        // In the caches on one thread (the cost of unpacking and multiplying), and from memory on
        // every thread (as a decode step reads its weights).
        for (size, mb, nth) in [("8MB-1thread", 8, 1), ("256MB", 256, threads)] {
            let n = (mb << 20) / row_bytes / 16 * 16;
            let w = weights(ty, n * row_bytes);
            let packed = Packed::uncached(ty, k, n, row_bytes);
            let mut group = c.benchmark_group(format!("kernels/{name}/{size}"));
            group.throughput(Throughput::Bytes(w.len() as u64));
            group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(10);
            for m in [1, 2, 4, 8] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 2003) as f32 / 1001.0 - 1.0).collect();
                let mut out = vec![0f32; m * n];
                let rows = Rows { x: x.as_ptr(), x_stride: k, m, out: out.as_mut_ptr(), out_stride: n };
                let (src, packed) = (w.as_ptr() as usize, &packed);
                let run = || {
                    if nth == 1 {
                        // SAFETY: as below, on this thread.
                        return unsafe { mul_mat(path, packed, src as *const u8, rows, 0, 1) };
                    }
                    std::thread::scope(|scope| {
                        for ith in 0..nth {
                            let rows = Shared(rows);
                            scope.spawn(move || {
                                let rows = rows;
                                // SAFETY: the path was detected; `w` is the tensor `packed` is for;
                                // each thread writes its own outputs of `out`, which `rows` describes.
                                unsafe { mul_mat(path, packed, src as *const u8, rows.0, ith, nth) }
                            });
                        }
                    })
                };
                run(); // packs the weights
                group.bench_function(BenchmarkId::from_parameter(format!("rows{m}")), |b| b.iter(run));
            }
            group.finish();
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);

//! Packed copies of the weight tensors, made on first use and kept for the life of the process.
//!
//! A tensor is packed in chunks of tiles, each on its first use, by the thread that needs it (the
//! other threads of the same product need other tiles), so the first decode call packs the model in
//! parallel instead of one thread holding up the rest. The copy is keyed by the tensor's address,
//! type and shape and checked against the first and last bytes of the source, so a tensor freed and
//! another loaded at the same address is never served a stale copy. A verifier thread holds an
//! [`Owner`] for its model: llama.cpp's thread 0 of each product is the thread that called decode, so
//! it tags the copies it uses with that owner, and dropping the owner (after the model) frees them.

use std::collections::HashMap;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::blocks::WeightType;
use super::pack::{TILE, pack_block, packed_bytes};

/// Tiles packed together.
const CHUNK_TILES: usize = 16;
/// Source bytes compared from each end.
const PRINT: usize = 32;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// One tensor in the packed layout.
pub struct Packed {
    pub ty: WeightType,
    /// Inputs per output (ggml's `ne00`).
    pub k: usize,
    /// Outputs (ggml's `ne01`).
    pub n: usize,
    /// Bytes between output rows of the source (ggml's `nb01`).
    row_bytes: usize,
    print: [u8; 2 * PRINT],
    owner: AtomicU64,
    chunks: Box<[OnceLock<Box<[Line]>>]>,
}

impl Packed {
    fn new(ty: WeightType, k: usize, n: usize, row_bytes: usize, print: [u8; 2 * PRINT]) -> Self {
        let tiles = n.div_ceil(TILE);
        let chunks = (0..tiles.div_ceil(CHUNK_TILES)).map(|_| OnceLock::new()).collect();
        Self { ty, k, n, row_bytes, print, owner: AtomicU64::new(0), chunks }
    }

    /// A copy outside the cache (for tests and benches).
    pub fn uncached(ty: WeightType, k: usize, n: usize, row_bytes: usize) -> Self {
        Self::new(ty, k, n, row_bytes, [0; 2 * PRINT])
    }

    /// Blocks per output row.
    pub fn nblocks(&self) -> usize {
        self.k / self.ty.block_len()
    }

    /// Tiles of 16 outputs.
    pub fn tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    fn tile_bytes(&self) -> usize {
        self.nblocks() * packed_bytes(self.ty)
    }

    /// Tile `t`, packed from `src` if this is its chunk's first use.
    ///
    /// # Safety
    /// `src` is the tensor this copy was made for: `n` rows of `row_bytes`, valid for reading.
    pub unsafe fn tile(&self, t: usize, src: *const u8) -> *const u8 {
        let c = t / CHUNK_TILES;
        let chunk = self.chunks[c].get_or_init(|| {
            let first = c * CHUNK_TILES;
            let tiles = CHUNK_TILES.min(self.tiles() - first);
            let tb = self.tile_bytes();
            let mut lines = vec![Line([0; 64]); (tiles * tb).div_ceil(64)].into_boxed_slice();
            // SAFETY: `lines` is plain bytes, `tiles · tb` of them used.
            let bytes = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), tiles * tb) };
            let pb = packed_bytes(self.ty);
            let rb = self.nblocks() * self.ty.block_bytes();
            for tile in 0..tiles {
                let o0 = (first + tile) * TILE;
                let rows: Vec<&[u8]> = (o0..self.n.min(o0 + TILE))
                    // SAFETY: the caller's contract: row `o` of the source is `rb` readable bytes.
                    .map(|o| unsafe { std::slice::from_raw_parts(src.add(o * self.row_bytes), rb) })
                    .collect();
                for b in 0..self.nblocks() {
                    let at = tile * tb + b * pb;
                    pack_block(self.ty, &rows, b, &mut bytes[at..at + pb]);
                }
            }
            lines
        });
        // SAFETY: the tile lies inside its chunk.
        unsafe { chunk.as_ptr().cast::<u8>().add((t % CHUNK_TILES) * self.tile_bytes()) }
    }
}

type Key = (usize, WeightType, usize, usize);

static CACHE: Mutex<Option<HashMap<Key, Arc<Packed>>>> = Mutex::new(None);

/// The packed copy of the tensor at `src` (`n` rows of `row_bytes`, `k` weights each), made (empty,
/// to be packed tile by tile) if there is none or the one there was made from other bytes.
///
/// # Safety
/// `src` is `n · row_bytes` readable bytes.
pub unsafe fn lookup(ty: WeightType, src: *const u8, k: usize, n: usize, row_bytes: usize, tag: bool) -> Arc<Packed> {
    let len = n * row_bytes;
    let mut print = [0u8; 2 * PRINT];
    // SAFETY: the caller's contract; a tensor has at least one block (≥ 22 bytes) a row and the two
    // ends are read only as far as the tensor goes.
    unsafe {
        let head = PRINT.min(len);
        std::ptr::copy_nonoverlapping(src, print.as_mut_ptr(), head);
        std::ptr::copy_nonoverlapping(src.add(len - head), print.as_mut_ptr().add(PRINT), head);
    }
    let key = (src as usize, ty, k, n);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    let packed = match map.get(&key) {
        Some(p) if p.print == print && p.row_bytes == row_bytes => p.clone(),
        _ => {
            let p = Arc::new(Packed::new(ty, k, n, row_bytes, print));
            map.insert(key, p.clone());
            p
        }
    };
    let owner = OWNER.get();
    if tag && owner != 0 {
        packed.owner.store(owner, Ordering::Relaxed);
    }
    packed
}

thread_local! {
    static OWNER: Cell<u64> = const { Cell::new(0) };
}

/// The packed copies of one model's tensors, held by the thread that decodes with it; dropping it
/// frees them. Create it before the model, so that it drops after.
#[derive(Debug)]
pub struct Owner(u64);

impl Owner {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        OWNER.set(id);
        Self(id)
    }
}

impl Default for Owner {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if OWNER.get() == self.0 {
            OWNER.set(0);
        }
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = cache.as_mut() {
            map.retain(|_, p| p.owner.load(Ordering::Relaxed) != self.0);
        }
    }
}

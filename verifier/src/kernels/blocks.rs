//! The weight blocks of the GGUF types the kernels take, as llama.cpp stores them (`ggml-common.h`),
//! decoded into their integer parts. Packing and the scalar reference both start from here, so the two
//! cannot disagree about what a block means.

use half::f16;

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;
/// Weights per Q8_0 / Q5_0 block.
pub const QK0: usize = 32;

/// The weight types the kernels know (every quantised type of the two shipped Qwen GGUFs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 4-bit K-quant: 8 sub-blocks of 32 with 6-bit scales and mins.
    Q4K,
    /// 6-bit K-quant: 16 sub-blocks of 16 with 8-bit scales.
    Q6K,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 5-bit blocks of 32.
    Q5_0,
}

impl WeightType {
    /// The type for a ggml type id, if the kernels take it.
    pub fn from_ggml(ty: u32) -> Option<Self> {
        match ty {
            llama_cpp_sys_2::GGML_TYPE_Q4_K => Some(Self::Q4K),
            llama_cpp_sys_2::GGML_TYPE_Q6_K => Some(Self::Q6K),
            llama_cpp_sys_2::GGML_TYPE_Q8_0 => Some(Self::Q8_0),
            llama_cpp_sys_2::GGML_TYPE_Q5_0 => Some(Self::Q5_0),
            _ => None,
        }
    }

    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::Q4K | Self::Q6K => QK_K,
            Self::Q8_0 | Self::Q5_0 => QK0,
        }
    }

    /// Bytes per block in llama.cpp's layout.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q6K => 210,
            Self::Q8_0 => 34,
            Self::Q5_0 => 22,
        }
    }

    /// Whether the activations are quantised per 256 (K-quants) rather than per 32.
    pub const fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4K | Self::Q6K)
    }
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// A Q4_K block: weight `k` of sub-block `j` (`k / 32`) is `d·sc[j]·q[k] − dmin·m[j]`.
pub struct Q4K {
    pub d: f32,
    pub dmin: f32,
    pub sc: [u8; 8],
    pub m: [u8; 8],
    /// 0..=15.
    pub q: [u8; QK_K],
}

impl Q4K {
    pub fn decode(b: &[u8]) -> Self {
        let scales = &b[4..16];
        let mut sc = [0u8; 8];
        let mut m = [0u8; 8];
        for j in 0..8 {
            // get_scale_min_k4 in ggml-quants.c: 6-bit scales and mins packed into 12 bytes.
            if j < 4 {
                sc[j] = scales[j] & 63;
                m[j] = scales[j + 4] & 63;
            } else {
                sc[j] = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
                m[j] = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
            }
        }
        let qs = &b[16..144];
        let mut q = [0u8; QK_K];
        for c in 0..4 {
            for l in 0..32 {
                let byte = qs[32 * c + l];
                q[64 * c + l] = byte & 0xF;
                q[64 * c + 32 + l] = byte >> 4;
            }
        }
        Self { d: half(&b[0..2]), dmin: half(&b[2..4]), sc, m, q }
    }
}

/// A Q6_K block: weight `k` of sub-block `j` (`k / 16`) is `d·sc[j]·(q[k] − 32)`.
pub struct Q6K {
    pub d: f32,
    pub sc: [i8; 16],
    /// 0..=63.
    pub q: [u8; QK_K],
}

impl Q6K {
    pub fn decode(b: &[u8]) -> Self {
        let (ql, qh) = (&b[0..128], &b[128..192]);
        let mut q = [0u8; QK_K];
        for n in 0..2 {
            let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
            for l in 0..32 {
                let y = 128 * n + l;
                q[y] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                q[y + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                q[y + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                q[y + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        let mut sc = [0i8; 16];
        for (s, &v) in sc.iter_mut().zip(&b[192..208]) {
            *s = v as i8;
        }
        Self { d: half(&b[208..210]), sc, q }
    }
}

/// A Q8_0 block: weight `k` is `d·q[k]`.
pub struct Q8_0 {
    pub d: f32,
    pub q: [i8; QK0],
}

impl Q8_0 {
    pub fn decode(b: &[u8]) -> Self {
        let mut q = [0i8; QK0];
        for (v, &x) in q.iter_mut().zip(&b[2..34]) {
            *v = x as i8;
        }
        Self { d: half(&b[0..2]), q }
    }
}

/// A Q5_0 block: weight `k` is `d·(q[k] − 16)`.
pub struct Q5_0 {
    pub d: f32,
    /// 0..=31.
    pub q: [u8; QK0],
}

impl Q5_0 {
    pub fn decode(b: &[u8]) -> Self {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let mut q = [0u8; QK0];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = (qs[j] & 0xF) | h0;
            q[j + 16] = (qs[j] >> 4) | h1;
        }
        Self { d: half(&b[0..2]), q }
    }
}

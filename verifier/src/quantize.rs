//! Re-quantising a GGUF model with llama.cpp's own quantizer (`llama_model_quantize`, what the
//! `llama-quantize` tool runs), to try weight formats whose batched CPU kernels make verification
//! cheaper (Q8_0, Q4_0, ...). Starting from an already quantised model (the shipped Q4_K_M) costs some
//! accuracy on top of the original quantisation; measure the output as well as the speed.

use std::ffi::CString;
use std::path::Path;

use crate::VerifierError;

/// Weight formats Duet knows how to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 8-bit blocks of 32 with one scale (llamafile's tinyBLAS handles its batches).
    Q8_0,
    /// 5-bit blocks of 32 with one scale.
    Q5_0,
    /// 4-bit blocks of 32 with one scale.
    Q4_0,
    /// K-quant mix, mostly 4-bit (the shipped 1.5B's format).
    Q4KM,
    /// K-quant, 6-bit.
    Q6K,
    /// Half precision.
    F16,
}

impl WeightFormat {
    /// Every format, for listings.
    pub const ALL: [WeightFormat; 6] = [Self::Q8_0, Self::Q5_0, Self::Q4_0, Self::Q4KM, Self::Q6K, Self::F16];

    /// The name llama.cpp's tools use (`q8_0`, `q4_k_m`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q5_0 => "q5_0",
            Self::Q4_0 => "q4_0",
            Self::Q4KM => "q4_k_m",
            Self::Q6K => "q6_k",
            Self::F16 => "f16",
        }
    }

    /// Parses a name as [`WeightFormat::name`] gives it (case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            Self::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            Self::Q5_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q5_0,
            Self::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            Self::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Self::Q6K => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K,
            Self::F16 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16,
        }
    }
}

/// Writes `output`, the model `input` re-quantised to `format` with `threads` threads. The output
/// and token-embedding tensors get the same format (llama.cpp's default choice for them).
pub fn quantize(input: &Path, output: &Path, format: WeightFormat, threads: u32) -> Result<(), VerifierError> {
    if !input.is_file() {
        return Err(VerifierError::ModelMissing(input.to_path_buf()));
    }
    let c_path = |p: &Path, what: &str| {
        CString::new(p.to_string_lossy().as_bytes())
            .map_err(|_| VerifierError::InvalidRequest(format!("{what} path {} contains a NUL byte", p.display())))
    };
    let (inp, out) = (c_path(input, "input")?, c_path(output, "output")?);
    crate::worker::init_backend()?;
    // SAFETY: plain-data defaults from llama.cpp; the pointers inside stay null.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.nthread = threads as i32;
    params.ftype = format.ftype();
    // The shipped models are already quantised: going from one format to another is the point.
    params.allow_requantize = true;
    // SAFETY: both strings are NUL-terminated and outlive the call; `params` is a valid struct.
    let rc = unsafe { llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
    if rc != 0 {
        return Err(VerifierError::Backend { op: "quantize", reason: format!("llama_model_quantize returned {rc}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in WeightFormat::ALL {
            assert_eq!(WeightFormat::parse(f.name()), Some(f));
        }
        assert_eq!(WeightFormat::parse("Q8_0"), Some(WeightFormat::Q8_0));
        assert_eq!(WeightFormat::parse("q3"), None);
    }
}

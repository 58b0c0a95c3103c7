//! The verifier's cost curve c(k), measured at start-up and cached on disk.
//!
//! Verifying k drafts costs c(k) plain decoding steps, a curve that depends on the model file, the
//! thread count and (through attention) the context length, and that takes a second or more to
//! measure. So it is measured once per model file (name and size), thread count and context bucket
//! (the prompt length rounded up to a power of two, at least 256) and kept in a small JSON file:
//! `$DUET_COST_CACHE`, else `$XDG_CACHE_HOME/duet/verify-costs.json`, else
//! `~/.cache/duet/verify-costs.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use duet_verifier::{KvCacheKind, TokenId, Verifier};

use crate::engine::CostCurve;

/// Timed repetitions per block size (the best one counts: noise only ever adds time).
pub const REPEATS: usize = 2;

/// The cache file: `$DUET_COST_CACHE`, else under `$XDG_CACHE_HOME` or `~/.cache`; `None` without
/// any of them.
pub fn default_cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DUET_COST_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("duet").join("verify-costs.json"))
}

/// The context bucket of a prompt: its length rounded up to a power of two, at least 256.
pub fn context_bucket(prompt_len: usize) -> usize {
    prompt_len.max(256).next_power_of_two()
}

/// Block sizes measured for drafts of up to `max_len` tokens: every size up to 4, then about
/// every 1.5×, and `max_len` itself; the rest is interpolated.
pub fn measured_sizes(max_len: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (0..=max_len.min(4)).collect();
    let mut k = 4usize;
    while k < max_len {
        k = (k * 3 / 2).max(k + 1);
        sizes.push(k.min(max_len));
    }
    sizes.dedup();
    sizes
}

/// Text whose tokens stand for a typical context when a server (`duet serve`, `duet orchestrator
/// serve`) measures its cost curve at start-up.
pub const SERVE_CONTEXT: &str = "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n";

/// The context a server measures its curve at: the tokens of [`SERVE_CONTEXT`] repeated to 256
/// tokens (at most half the verifier's context), so every request drafts by one curve whatever
/// its length.
pub fn serve_context(tokens: &[TokenId], ctx_size: usize) -> Vec<TokenId> {
    tokens.iter().copied().cycle().take(256.min(ctx_size / 2)).collect()
}

/// The longest draft a server's curve covers: its default block size, within the engine's limit
/// and a quarter of the context.
pub fn serve_max_len(block_size: usize, ctx_size: usize) -> usize {
    block_size.min(crate::engine::MAX_BLOCK_SIZE).min(ctx_size / 4).max(1)
}

/// The cache key of a verifier setting. The KV cache type is part of it because attention over a
/// quantized cache costs differently.
pub fn cache_key(model: &Path, kv_cache: Option<KvCacheKind>, threads: u32, prompt_len: usize) -> String {
    let name = model.file_name().map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned());
    let size = std::fs::metadata(model).map_or(0, |m| m.len());
    let kv = kv_cache.map(|k| format!(":kv={k}")).unwrap_or_default();
    format!("{name}:{size}{kv}:threads={threads}:ctx={}", context_bucket(prompt_len))
}

/// A cost curve covering drafts of up to `max_len` tokens for `prompt` on `verifier`: from the cache
/// when it has one, else measured on a scratch session (the verifier needs a free session) and
/// stored. Returns the curve and whether it was measured now. A curve measured while other work
/// loaded the machine is wrong and stays cached: measure again on a quiet machine.
/// With `remeasure`, the cache is not read (only updated).
pub fn cost_curve(
    verifier: &Verifier,
    prompt: &[TokenId],
    max_len: usize,
    threads: u32,
    cache: Option<&Path>,
    remeasure: bool,
) -> anyhow::Result<(CostCurve, bool)> {
    let info = verifier.info();
    let key = cache_key(&info.path, info.kv_cache, threads, prompt.len());
    let mut entries = cache.map(read_cache).unwrap_or_default();
    if let Some(curve) = entries.get(&key)
        && curve.max_len() >= max_len
        && !remeasure
    {
        return Ok((curve.clone(), false));
    }
    let curve = measure(verifier, prompt, max_len)?;
    if let Some(path) = cache {
        entries.insert(key, curve.clone());
        if let Err(e) = write_cache(path, &entries) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the cost-curve cache");
        }
    }
    Ok((curve, true))
}

/// Measures the curve at the context of `prompt` on a scratch session.
pub fn measure(verifier: &Verifier, prompt: &[TokenId], max_len: usize) -> anyhow::Result<CostCurve> {
    let mut session = verifier.open_session().context("opening a scratch session to measure verify costs")?;
    session.prefill(prompt).context("evaluating the prompt to measure verify costs")?;
    let sizes = measured_sizes(max_len);
    let times = session.measure_verify_times(&sizes, REPEATS).context("measuring verify costs")?;
    CostCurve::from_times(&sizes, &times).map_err(|e| anyhow::anyhow!("measuring verify costs: {e}"))
}

fn read_cache(path: &Path) -> BTreeMap<String, CostCurve> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeMap::new() };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable cost-curve cache");
        BTreeMap::new()
    })
}

fn write_cache(path: &Path, entries: &BTreeMap<String, CostCurve>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(entries)?)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_sizes_cover_small_blocks_densely_and_end_at_the_maximum() {
        assert_eq!(measured_sizes(8), vec![0, 1, 2, 3, 4, 6, 8]);
        assert_eq!(measured_sizes(2), vec![0, 1, 2]);
        assert_eq!(measured_sizes(16), vec![0, 1, 2, 3, 4, 6, 9, 13, 16]);
        assert_eq!(*measured_sizes(256).last().expect("sizes"), 256);
    }

    #[test]
    fn context_buckets_are_powers_of_two_from_256() {
        assert_eq!(context_bucket(10), 256);
        assert_eq!(context_bucket(256), 256);
        assert_eq!(context_bucket(257), 512);
    }

    #[test]
    fn curves_of_different_kv_cache_types_are_cached_apart() {
        let m = Path::new("no-such-model.gguf");
        let f16 = cache_key(m, Some(KvCacheKind::F16), 2, 300);
        let q8 = cache_key(m, Some(KvCacheKind::Q8_0), 2, 300);
        assert_ne!(f16, q8);
        assert_eq!(q8, "no-such-model.gguf:0:kv=q8_0:threads=2:ctx=512");
        assert_eq!(cache_key(m, None, 2, 300), "no-such-model.gguf:0:threads=2:ctx=512");
    }

    #[test]
    fn the_cache_round_trips_and_ignores_garbage() {
        let dir = std::env::temp_dir().join(format!("duet-costs-test-{}", std::process::id()));
        let path = dir.join("sub").join("costs.json");
        let mut entries = BTreeMap::new();
        entries.insert("m:1:threads=2:ctx=256".to_string(), CostCurve { step_s: 0.03, costs: vec![1.0, 1.3, 1.6] });
        write_cache(&path, &entries).expect("write");
        assert_eq!(read_cache(&path), entries);
        std::fs::write(&path, "not json").expect("write garbage");
        assert!(read_cache(&path).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}

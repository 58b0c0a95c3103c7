//! The training corpus: source code already on the machine. CPython's standard library (tests
//! left out) and the Rust sources of this project's dependencies in Cargo's registry — never the
//! evaluation sets (HumanEval, HumanEval-Rust), which are not on the machine as source files.

use std::path::{Path, PathBuf};

/// One source file of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Which collection it comes from (`cpython-stdlib`, `cargo-registry`).
    pub source: &'static str,
    /// The file.
    pub path: PathBuf,
}

/// Files smaller than this carry little but boilerplate.
const MIN_BYTES: u64 = 1_000;
/// Files larger than this are mostly generated tables.
const MAX_BYTES: u64 = 200_000;

/// CPython's standard library directory, asked of `python3` itself.
pub fn cpython_stdlib() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_dir().then_some(p)
}

/// Cargo's registry sources (`$CARGO_HOME/registry/src`).
pub fn cargo_registry() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = home.join("registry").join("src");
    p.is_dir().then_some(p)
}

/// Every corpus file under the known roots, sorted by path for reproducibility.
pub fn collect() -> Vec<SourceFile> {
    collect_files(false)
}

/// [`collect`] plus CPython's own test suite: more Python for a drafter that only needs tokens.
pub fn collect_with_tests() -> Vec<SourceFile> {
    collect_files(true)
}

fn collect_files(python_tests: bool) -> Vec<SourceFile> {
    let mut files = Vec::new();
    if let Some(root) = cpython_stdlib() {
        walk(&root, &mut |p| {
            let s = p.to_string_lossy();
            let test = s.contains("/test/") || s.contains("/tests/") || s.contains("/idle_test/") || s.contains("/lib2to3/tests");
            let skip = (test && !python_tests) || s.contains("site-packages");
            if !skip && p.extension().is_some_and(|e| e == "py") {
                files.push(SourceFile { source: "cpython-stdlib", path: p.to_path_buf() });
            }
        });
    }
    if let Some(root) = cargo_registry() {
        walk(&root, &mut |p| {
            let s = p.to_string_lossy();
            // llama.cpp's vendored C++ and generated bindings are not Rust written by people.
            let skip = s.contains("llama-cpp-sys") || s.contains("/target/") || s.contains("bindings");
            if !skip && p.extension().is_some_and(|e| e == "rs") {
                files.push(SourceFile { source: "cargo-registry", path: p.to_path_buf() });
            }
        });
    }
    files.retain(|f| std::fs::metadata(&f.path).is_ok_and(|m| (MIN_BYTES..=MAX_BYTES).contains(&m.len())));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

/// Whether a file belongs to the held-out split: a stable hash of its path, about `percent`% of
/// files, so held-out text is never trained on whichever run built the data.
pub fn is_held_out(path: &Path, percent: u64) -> bool {
    // FNV-1a: stable across Rust versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100 < percent
}

/// A deterministic shuffle (xorshift), so a run with the same seed visits files in the same order.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_split_is_stable_and_about_the_asked_size() {
        let n = (0..2000).filter(|i| is_held_out(Path::new(&format!("/x/file{i}.py")), 5)).count();
        assert!((60..=140).contains(&n), "{n}");
        assert_eq!(is_held_out(Path::new("/a/b.rs"), 5), is_held_out(Path::new("/a/b.rs"), 5));
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 3);
        shuffle(&mut b, 3);
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }
}

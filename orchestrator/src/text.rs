//! Turning a token stream into text as it arrives: tokens can end inside a UTF-8 character, so bytes
//! are held back until they form whole characters.

/// Incremental UTF-8 decoder for streamed token bytes.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    held: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.held) {
            Ok(_) => self.held.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence that no later byte can complete: emit it replaced, keep nothing.
            Err(_) => self.held.len(),
        };
        let rest = self.held.split_off(valid);
        let done = std::mem::replace(&mut self.held, rest);
        String::from_utf8_lossy(&done).into_owned()
    }

    /// Whatever is still held at the end, with incomplete characters replaced.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.held)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_split_character_until_it_is_complete() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(b"caf"), "caf");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn replaces_invalid_bytes_instead_of_stalling() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
    }

    #[test]
    fn finish_flushes_an_incomplete_tail() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&"€".as_bytes()[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}

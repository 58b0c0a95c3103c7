//! Turning a token stream into text as it arrives: tokens can end inside a UTF-8 character, so bytes
//! are held back until they form whole characters.

/// Incremental UTF-8 decoder for streamed token bytes.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    held: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete. Invalid sequences are replaced one
    /// U+FFFD each, exactly as `String::from_utf8_lossy` of all the bytes would, whatever the splits:
    /// only an incomplete character at the very end is held back.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.held[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.held.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.held[start..valid]));
                    match e.error_len() {
                        // A character that later bytes may complete: hold it.
                        None => {
                            start = valid;
                            break;
                        }
                        // A sequence no later byte can complete: replace it, go on after it.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + n;
                        }
                    }
                }
            }
        }
        self.held.drain(..start);
        out
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
    fn an_invalid_byte_before_a_split_character_does_not_swallow_it() {
        // Found by the property test: the incomplete "€" after 0xff used to be replaced too.
        let mut s = Utf8Stream::default();
        let e = "€".as_bytes();
        let mut out = s.push(&[0xff, e[0], e[1]]);
        out += &s.push(&e[2..]);
        out += &s.finish();
        assert_eq!(out, "\u{fffd}€");
    }

    #[test]
    fn finish_flushes_an_incomplete_tail() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&"€".as_bytes()[..2]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }
}

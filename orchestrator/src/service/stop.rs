//! Stop strings: text is released only once no stop string can still begin inside it, so a stop
//! string that spans several tokens is found and the output ends right before it.

/// What pushing text gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Text that can no longer be part of a stop string.
    More(String),
    /// A stop string was found; this is the text before it, and the output ends here.
    Stopped(String),
}

/// Finds the first stop string in a growing text.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not yet released: a stop string may begin in it.
    held: String,
    /// Longest stop string, in bytes.
    longest: usize,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops, held: String::new(), longest }
    }

    /// Adds text and releases what is final.
    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            return Released::Stopped(std::mem::take(&mut self.held));
        }
        // Keep the last `longest - 1` bytes: a stop string may begin there and end in later text.
        let mut keep_from = self.held.len().saturating_sub(self.longest.saturating_sub(1));
        while !self.held.is_char_boundary(keep_from) {
            keep_from -= 1;
        }
        let rest = self.held.split_off(keep_from);
        Released::More(std::mem::replace(&mut self.held, rest))
    }

    /// The text still held once the output has ended without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn without_stop_strings_everything_is_released_at_once() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("abc"), Released::More("abc".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_stop_string_spanning_pushes_cuts_the_output_before_it() {
        let mut m = matcher(&["\n\n"]);
        assert_eq!(m.push("def f():\n"), Released::More("def f():".into()));
        assert_eq!(m.push("\n    pass"), Released::Stopped(String::new()));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut m = matcher(&["END", "x"]);
        assert_eq!(m.push("abENxEND"), Released::Stopped("abEN".into()));
    }

    #[test]
    fn a_partial_match_is_released_when_it_does_not_complete() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("aST"), Released::More("".into()));
        assert_eq!(m.push("x"), Released::More("a".into()));
        assert_eq!(m.finish(), "STx");
    }

    #[test]
    fn held_text_never_splits_a_character() {
        let mut m = matcher(&["ab"]);
        assert_eq!(m.push("é"), Released::More("".into()));
        assert_eq!(m.push("z"), Released::More("é".into()));
    }
}

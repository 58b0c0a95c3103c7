//! The stop-string matcher and the UTF-8 streamer over arbitrary text and byte splits.

use proptest::prelude::*;

use crate::service::{Released, StopMatcher};
use crate::text::Utf8Stream;

/// Splits `len` items at sorted cut points.
fn pieces<T>(items: &[T], mut cuts: Vec<prop::sample::Index>) -> Vec<&[T]> {
    let mut at: Vec<usize> = cuts.drain(..).map(|c| c.index(items.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([items.len()]) {
        out.push(&items[start..end]);
        start = end;
    }
    out
}

/// Text over a small alphabet, so stop strings occur often; with multi-byte characters.
fn small_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!['a', 'b', '\n', 'é', '€', '😀']), 0..max)
        .prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn utf8_stream_output_is_the_lossy_decoding_of_all_bytes(
        bytes in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select("aé€😀".as_bytes().to_vec()),
        ], 0..48),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for piece in pieces(&bytes, cuts) {
            out += &s.push(piece);
        }
        out += &s.finish();
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn stop_matcher_releases_the_text_up_to_the_first_stop_and_never_a_stop(
        chars in small_text(40),
        stops in prop::collection::vec(small_text(4), 0..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let chars: Vec<char> = chars.chars().collect();
        let mut m = StopMatcher::new(&stops);
        let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
        let mut pushed = String::new();
        let mut released = String::new();
        let mut stopped = false;
        for piece in pieces(&chars, cuts) {
            let piece: String = piece.iter().collect();
            pushed += &piece;
            match m.push(&piece) {
                Released::More(t) => released += &t,
                Released::Stopped(t) => {
                    released += &t;
                    stopped = true;
                    break;
                }
            }
            // What is out can never be taken back, so it holds no stop string.
            prop_assert!(stops.iter().all(|s| !released.contains(s.as_str())), "{released:?} holds a stop of {stops:?}");
        }
        prop_assert!(stops.iter().all(|s| !released.contains(s.as_str())), "{released:?} holds a stop of {stops:?}");
        if stopped {
            // The output ends right before a stop string in what was pushed.
            let rest = &pushed[released.len()..];
            prop_assert!(pushed.starts_with(&released));
            prop_assert!(stops.iter().any(|s| rest.starts_with(s.as_str())), "{rest:?} starts with none of {stops:?}");
        } else {
            // Nothing is lost: released plus held is everything pushed, and it holds no stop string.
            released += &m.finish();
            prop_assert_eq!(&released, &pushed);
            prop_assert!(stops.iter().all(|s| !pushed.contains(s.as_str())));
        }
    }
}

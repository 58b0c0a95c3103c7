//! Property tests (proptest) of everything that takes input from outside: the HTTP request parsers,
//! the service's request checks, the gRPC request conversion, and the text streamers that see model
//! output. Each property holds for every input proptest generates: no panic, and either a valid
//! request or a 4xx / INVALID_ARGUMENT naming the field at fault.

mod grpc;
pub(crate) mod requests;
mod streams;

use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// Any JSON value: deep, with huge and odd numbers and any Unicode text.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(0.0), Just(-0.0), Just(f64::MAX), Just(f64::MIN_POSITIVE), any::<f64>()]
            .prop_filter_map("JSON numbers are finite", |f| Number::from_f64(f).map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("\u{0}\u{fffd}\u{10ffff}é€😀".into())),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object from `fields` (the first is the required one): usually the required field and a
/// few others, each of any value or (more often) a plausible one for it, sometimes an unknown field.
pub fn body_of(fields: &'static [&'static str], plausible: fn(&str) -> BoxedStrategy<Value>) -> impl Strategy<Value = Map<String, Value>> {
    let value = move |f: &'static str| prop_oneof![1 => any_json(), 4 => plausible(f)].prop_map(move |v| (f.to_owned(), v));
    let required = prop::option::weighted(0.9, value(fields[0]));
    let others = prop::sample::subsequence(fields[1..].to_vec(), 0..=4)
        .prop_flat_map(move |chosen| chosen.into_iter().map(value).collect::<Vec<_>>());
    (required, others, prop::option::weighted(0.05, (".{0,10}", any_json())))
        .prop_map(|(required, others, extra)| required.into_iter().chain(others).chain(extra).collect())
}

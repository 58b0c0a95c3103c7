//! Property tests (proptest) of everything that takes input from outside: the HTTP request parsers,
//! the service's request checks, the gRPC request conversion, and the text streamers that see model
//! output. Each property holds for every input proptest generates: no panic, and either a valid
//! request or a 4xx / INVALID_ARGUMENT naming the field at fault.

mod grpc;
mod requests;
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

/// A JSON object from `fields`: each field absent, any value, or a plausible one for it.
pub fn body_of(fields: &'static [&'static str], plausible: fn(&str) -> BoxedStrategy<Value>) -> impl Strategy<Value = Map<String, Value>> {
    let per_field: Vec<_> = fields
        .iter()
        .map(|&f| {
            prop_oneof![
                3 => Just(None),
                1 => any_json().prop_map(Some),
                3 => plausible(f).prop_map(Some),
            ]
            .prop_map(move |v| v.map(|v| (f.to_owned(), v)))
        })
        .collect();
    (per_field, prop::option::weighted(0.1, (".{0,10}", any_json())))
        .prop_map(|(fields, extra)| fields.into_iter().flatten().chain(extra).collect())
}

//! Behaviour tests of the whole drafter on tiny random models built in the test.

mod cache;
mod checkpoint;
mod conditioning;
mod import;
mod sampler;
mod training;

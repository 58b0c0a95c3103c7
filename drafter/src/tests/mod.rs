//! Behaviour tests of the whole drafter on tiny random models built in the test.

mod cache;
mod checkpoint;
mod conditioning;
mod deferred;
mod import;
mod sampler;
mod training;

#[test]
fn models_and_caches_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<crate::DiffusionModel>();
    send_sync::<crate::DraftCache>();
}

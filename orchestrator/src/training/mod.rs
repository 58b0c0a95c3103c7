//! Everything `duet train-drafter` and `duet eval-drafter` need around the drafter's own training
//! step: a code corpus from what is on the machine, teacher-forced verifier passes that record the
//! verifier's hidden states and greedy choices at every position (the DFlash conditioning features
//! and the distillation targets), stored on disk so training can resume across runs.

pub mod build;
pub mod corpus;
pub mod dataset;
pub mod train;
pub mod standalone;
pub mod standalone_train;

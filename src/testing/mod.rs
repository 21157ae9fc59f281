//! Helpers the tests share (the unit tests and `tests/it` alike): not used by the daemon.
//! Public so that integration tests reach them without a copy.

pub mod pg;

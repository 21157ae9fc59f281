//! `jma-poller verify`.

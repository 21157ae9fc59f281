//! Integration tests: the real daemon (in-process tasks or the real binary) against the
//! project's simulator over real HTTP on 127.0.0.1, with a real SQLite file in a temp dir.

mod archive;
mod budget;
mod cli;
mod cluster;
mod common;
mod contract;
mod crash;
mod faults;
mod hostile;
mod monitor;
mod ops;
mod polite;
mod postgres;
mod process;
mod prometheus;
mod prop;
mod pull;
mod robust;
mod sim;
mod state_copy;
mod streams;
mod tls;
mod verify;

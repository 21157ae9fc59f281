//! jma-poller mirrors Japan Meteorological Agency data from the dmdata.jp API to local disk,
//! and never loses an item.
//!
//! The parts, one module each:
//! * [`catalog`] — the provider's catalog of jmafile products (identifiers, file names).
//! * [`config`] — layered settings (defaults → TOML → `JMA_POLLER__*` env), validation.
//! * [`api`] — the dmdata.jp client: auth, trusted hosts, request budgets, typed errors.
//! * [`state`] — the SQLite store (cursor, items, request log): the only SQL in the crate.
//! * [`poll`] — scheduler tasks: JmaFile PuLL, daily archives.
//! * [`download`] — the worker pool: streaming fetch, decompress/split, verify, place.
//! * [`storage`] — on-disk layout, safe names, atomic placement, temp sweep, data-dir lock;
//!   [`retention`] — removal of old items; [`hooks`] — the post-download hook.
//! * [`telemetry`] — logging and the metrics recorder; [`health`] — readiness, the systemd
//!   watchdog and status; [`server`] — `/healthz`, `/readyz`, `/metrics`.
//! * [`app`] — wiring and shutdown; [`backfill`] — the archive backfill command;
//!   [`cli`] — the command line.
//! * [`freshness`] — per-classification freshness and lateness; [`verify`] — the mirror on
//!   disk against what was recorded; [`status_page`] — `GET /`; [`digest`] — SHA-256 while
//!   streaming.
//! * [`sim`] — a simulator of the API for `demo` and the tests.

pub mod api;
pub mod app;
pub mod backfill;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod digest;
pub mod download;
pub mod freshness;
pub mod health;
pub mod hooks;
pub mod poll;
pub mod retention;
pub mod server;
pub mod sim;
pub mod state;
pub mod status_page;
pub mod storage;
pub mod telemetry;
pub mod verify;

//! jma-poller mirrors Japan Meteorological Agency data from the dmdata.jp API to local disk,
//! and never loses an item.
//!
//! The parts, one module each. Arrows point at what a part may use; nothing points back.
//! * [`model`] — the domain: item ids, sources, item states, holds, cursors, claims and leases,
//!   plans and layout keys, times. Depends on nothing else in the crate.
//! * [`state`] — the state store behind traits (cursors, queue and claims, fetch log, hooks,
//!   reports) and its contract suite; [`state::sqlite`] (the default) and [`state::postgres`]
//!   are the backends, the only SQL; [`state::Store`] is the one `storage.database` names.
//! * [`catalog`] — the provider's catalog of jmafile products (identifiers, file names).
//! * [`config`] — layered settings (defaults → TOML → `JMA_POLLER__*` env), validation.
//! * [`api`] — the dmdata.jp client: auth, trusted hosts, request budgets, typed errors.
//! * [`poll`] — the list sources behind one trait, [`poll::runner::Source`], driven by one
//!   loop, [`poll::runner::run`] (schedule, cancellation, backoff with `Retry-After`, throttled
//!   failure logs, health, poll metrics, jitter): JmaFile PuLL (one runner per stream), daily
//!   archives. A new source is one file there plus its config section.
//! * [`download`] — the worker pool: claim (with a renewed lease), streaming fetch,
//!   decompress/split/unpack ([`download::decode`], [`download::unpack`], their shared
//!   [`download::error`]), verify, commit through the sink; what to do with an item
//!   ([`download::plan`]).
//! * [`sink`] — where finished items go: the [`sink::Sink`] trait (staging, atomic commit,
//!   adopt-after-crash, remove, locate) and the layout of keys ([`sink::layout`]);
//!   [`storage`] — the local file system sink: safe names, durable placement, temp sweep,
//!   data-dir lock, free space; [`retention`] — removal of old items and [`hooks`] — the
//!   post-download hook, both asking the sink for paths.
//! * [`worker`] — what background tasks share (throttled failure logs).
//! * [`telemetry`] — logging and the metrics recorder; [`metric`] — every metric name;
//!   [`health`] — readiness, the systemd watchdog and status; [`server`] — `/healthz`,
//!   `/readyz`, `/metrics`.
//! * [`app`] — wiring and shutdown; [`backfill`] — the archive backfill command;
//!   [`cli`] — the command line, one module per command.
//! * [`freshness`] — per-classification freshness and lateness; [`verify`] — the mirror on
//!   disk against what was recorded; [`status_page`] — `GET /`; [`digest`] — SHA-256 while
//!   streaming.
//! * [`testing`] — what the tests share (a throwaway PostgreSQL server).
//! * [`sim`] — a simulator of the API for `demo` and the tests, with its own statement of the
//!   on-disk layout (the oracle the tests compare the mirror against).

pub mod api;
pub mod app;
pub mod backfill;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod digest;
pub mod download;
pub mod freshness;
pub mod health;
pub mod hooks;
pub mod metric;
pub mod model;
pub mod poll;
pub mod retention;
pub mod server;
pub mod sim;
pub mod sink;
pub mod state;
pub mod status_page;
pub mod storage;
pub mod telemetry;
pub mod testing;
pub mod verify;
pub mod worker;

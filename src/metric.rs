//! Every metric name the daemon exports, in one place (README "Metrics" describes each; the
//! Prometheus rules and the dashboard under `deploy/` refer to them). A name here is an
//! interface: renaming one breaks operators' alerts.

/// Items landed, by source and classification (counter).
pub const ITEMS_DOWNLOADED: &str = "jma_poller_items_downloaded_total";
/// Items failed for good, by source and classification (counter).
pub const ITEMS_FAILED: &str = "jma_poller_items_failed_total";
/// Items listed by the pollers, by source (counter).
pub const ITEMS_LISTED: &str = "jma_poller_items_listed_total";
/// Bytes landed on disk, by source (counter).
pub const BYTES: &str = "jma_poller_bytes_total";
/// Bytes received before decompression, by source (counter).
pub const RAW_BYTES: &str = "jma_poller_raw_bytes_total";
/// Download attempts that will be retried, by source and reason (counter).
pub const RETRIES: &str = "jma_poller_retries_total";
/// Body request → file in place, by source (histogram, seconds).
pub const DOWNLOAD_SECONDS: &str = "jma_poller_download_seconds";
/// receivedTime → file in place, jmafile items (histogram, seconds).
pub const END_TO_END_SECONDS: &str = "jma_poller_end_to_end_seconds";
/// Archives whose size differs from the announced one (counter).
pub const ARCHIVE_SIZE_MISMATCH: &str = "jma_poller_archive_size_mismatch_total";
/// List requests, by source and outcome (counter).
pub const POLLS: &str = "jma_poller_polls_total";
/// Post-download hook runs, by outcome (counter).
pub const HOOK_RUNS: &str = "jma_poller_hook_runs_total";
/// Items removed by retention (counter).
pub const RETENTION_REMOVED: &str = "jma_poller_retention_removed_total";
/// Items on disk (gauge).
pub const FILES: &str = "jma_poller_files";
/// Items waiting or in flight, by source (gauge).
pub const QUEUE_DEPTH: &str = "jma_poller_queue_depth";
/// Requests left in each budget window (gauge).
pub const BUDGET_REMAINING: &str = "jma_poller_budget_remaining";
/// 1 while downloads are paused (gauge).
pub const DOWNLOADS_PAUSED: &str = "jma_poller_downloads_paused";
/// When the last poll or download succeeded (gauge, unix seconds).
pub const LAST_SUCCESS: &str = "jma_poller_last_success_timestamp_seconds";
/// Ids held back before their next request, by reason (gauge).
pub const ITEMS_WAITING: &str = "jma_poller_items_waiting";
/// When the first held id is due (gauge, unix seconds).
pub const ITEMS_WAITING_NEXT_DUE: &str = "jma_poller_items_waiting_next_due_timestamp_seconds";
/// 429 answers, by request budget (counter).
pub const HTTP_429: &str = "jma_poller_http_429_total";
/// Free bytes on the data dir's filesystem (gauge).
pub const FREE_BYTES: &str = "jma_poller_free_bytes";
/// `storage.min_free` (gauge, bytes).
pub const MIN_FREE_BYTES: &str = "jma_poller_min_free_bytes";
/// When the newest item of a classification landed, by source and classification (gauge,
/// unix seconds).
pub const LAST_LANDED: &str = "jma_poller_last_landed_timestamp_seconds";
/// receivedTime of that item (gauge, unix seconds).
pub const LAST_RECEIVED: &str = "jma_poller_last_received_timestamp_seconds";
/// The usual gap between a classification's items (gauge, seconds).
pub const EXPECTED_INTERVAL: &str = "jma_poller_expected_interval_seconds";
/// 1 while a classification is late (gauge).
pub const CLASSIFICATION_LATE: &str = "jma_poller_classification_late";
/// 1 while this node leads the source's role, 0 on a standby (gauge, by source).
pub const LEADER: &str = "jma_poller_leader";
/// Roles this node took over from another node whose lease ran out (counter, by source).
pub const FAILOVERS: &str = "jma_poller_failovers_total";
/// Always 1, labelled with this node's id and version (gauge).
pub const NODE_INFO: &str = "jma_poller_node_info";

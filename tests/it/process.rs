//! The process as systemd and Docker see it: the line a fatal error leaves in the journal, and
//! the permissions of what the daemon creates whatever umask it inherits.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// An empty log file, and the `JOURNAL_STREAM` value that makes the daemon take it for the
/// journal (systemd sets `dev:inode` of the stream it connected to stdout/stderr).
fn journal_log(dir: &Path) -> (PathBuf, (String, String)) {
    let log = dir.join("journal.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    (log, ("JOURNAL_STREAM".into(), stream))
}

/// Runs the binary to its exit (within 20 s) with output to `log`; returns the exit code and
/// the log's text.
async fn run_to_exit(args: &[&str], envs: &[(String, String)], log: &Path) -> (i32, String) {
    let mut child = spawn_bin(args, envs, log);
    let status = child
        .exit_within(Duration::from_secs(20), "start (it should fail)")
        .await;
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(log).unwrap(),
    )
}

fn without_json_logs(mut envs: Vec<(String, String)>) -> Vec<(String, String)> {
    envs.retain(|(k, _)| k != "JMA_POLLER__LOG__FORMAT");
    envs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_a_fatal_error_is_the_last_line_at_error_priority_and_said_once() {
    let sim = sim(200).await;

    // Exit 2: a bad setting stops the process before logging starts.
    let env = Env::new();
    let (log, stream) = journal_log(env.root.path());
    let mut envs = without_json_logs(env.binary_env(&sim));
    envs.push(("JMA_POLLER__JMAFILE__LIMIT".into(), "500".into()));
    envs.push(stream);
    let (code, text) = run_to_exit(&["run"], &envs, &log).await;
    assert_eq!(code, 2, "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("<3>") && last.contains("jmafile.limit"),
        "the last line names the setting at error priority: {text}"
    );

    // Exit 3: the key refused on the first request, after logging has started.
    sim.faults().reject_key = true;
    let env = Env::new();
    let (log, stream) = journal_log(env.root.path());
    let mut envs = without_json_logs(env.binary_env(&sim));
    envs.push(stream);
    let (code, text) = run_to_exit(&["run"], &envs, &log).await;
    assert_eq!(code, 3, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with('<')),
        "every line has a priority: {text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("<3>") && last.contains("refused the key") && last.contains("api.key"),
        "the last line gives the reason at error priority: {text}"
    );
    assert_eq!(
        text.matches("refused the key").count(),
        1,
        "the reason is printed once: {text}"
    );
    assert!(!text.contains(&sim.key()), "never the key itself");
}

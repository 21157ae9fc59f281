//! The process as systemd and Docker see it: the line a fatal error leaves in the journal, and
//! the permissions of what the daemon creates whatever umask it inherits.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jma_poller::sim::ItemSpec;

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

/// The daemon with `umask {mask}` inherited (set by a shell that then execs it), output to
/// `log`.
fn spawn_with_umask(mask: &str, envs: &[(String, String)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new("sh")
        .args(["-c", &format!("umask {mask} && exec \"$0\" run")])
        .arg(bin())
        .env_remove("RUST_LOG")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("sh starts");
    Proc::new(child, log)
}

/// Path (relative to `dir`) and permission bits of everything under `dir`, folders included.
fn modes_under(dir: &Path) -> Vec<(String, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u32)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.push((rel, meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs the daemon under `umask {mask}` until an item has landed, stops it, and returns the
/// modes of everything in its data dir.
async fn modes_after_a_run(mask: &str) -> Vec<(String, u32)> {
    let sim = sim(200).await;
    let env = Env::new();
    let items = vec![sim.add(ItemSpec::default())];
    let log = env.root.path().join("out.log");
    let mut child = spawn_with_umask(mask, &env.binary_env(&sim), &log);
    wait_until(Duration::from_secs(20), "the item lands", || async {
        all_landed(&env.data_dir, &items)
    })
    .await;
    let status = child.stop("-TERM", STOP_LIMIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let modes = modes_under(&env.data_dir);
    for name in ["state.sqlite", ".lock", "jmafile"] {
        assert!(modes.iter().any(|(p, _)| p == name), "{name} in {modes:?}");
    }
    modes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_data_are_not_world_readable_even_under_umask_000() {
    // A container starts with umask 0022 and has no shell to change it: the daemon restricts
    // its own. Under 000 everything would be world-writable without that.
    let modes = modes_after_a_run("000").await;
    let open: Vec<_> = modes.iter().filter(|(_, m)| m & 0o027 != 0).collect();
    assert!(
        open.is_empty(),
        "nothing writable by the group or open to others: {open:?}"
    );
    let db = modes.iter().find(|(p, _)| p == "state.sqlite").unwrap().1;
    assert_eq!(db, 0o640, "state.sqlite is 0640");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_inherited_umask_is_kept() {
    // systemd's UMask=0077: the daemon only ever adds restrictions.
    let modes = modes_after_a_run("077").await;
    let open: Vec<_> = modes.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "owner only, as the unit asks: {open:?}");
}

# shellcheck shell=bash
# Shared by .ci/systemd-smoke and .ci/docker-smoke (sourced, not run): the pass/fail tally,
# "cannot run here", package installs, timing. Each check prints one line with its figure and
# the smoke ends with "N passed, N failed".

SMOKE=${0##*/}
passed=0
failed=0
smoke_started_ms=$(date +%s%3N)

say() { printf '%s: %s\n' "$SMOKE" "$*"; }
now_ms() { date +%s%3N; }
# seconds between two now_ms values, e.g. "1.23 s"
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f s", (b - a) / 1000 }'; }

# wait_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds (true) or SECONDS
# have passed (false).
wait_for() {
    local deadline=$(($(now_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

pass() {
    passed=$((passed + 1))
    printf 'ok    %-46s %s\n' "$1" "$2"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL  %-46s %s\n' "$1" "$2"
}
# check NAME FIGURE COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1 figure=$2
    shift 2
    if "$@"; then pass "$name" "$figure"; else fail "$name" "$figure"; fi
}

summary() {
    say "took $(elapsed "$smoke_started_ms" "$(now_ms)")"
    printf '%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
}

# A set-up step failed: count it, stop here (the EXIT trap cleans up).
abort() {
    fail "$1" "$2"
    summary
    exit 1
}

# The machine cannot run this smoke at all (no root, no capabilities, no package mirror).
# Under CI (CI=true) that is a failure: CI must run it. By hand it says why and exits 0.
cannot_run() {
    if [ "${CI:-}" = true ]; then
        abort "can run here" "cannot run: $*"
    fi
    say "cannot run on this machine: $*"
    say "skipped (under CI=true this is a failure)"
    printf '0 passed, 0 failed (skipped)\n'
    exit 0
}

require_root() {
    [ "$(id -u)" -eq 0 ] || cannot_run "needs root (run it with sudo)"
}

apt_updated=
# apt_install PACKAGE...: installs the missing ones; a machine with no package mirror cannot
# run the smoke.
apt_install() {
    command -v apt-get >/dev/null || cannot_run "needs Debian packages $*, and apt-get is missing"
    if [ -z "$apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
            || cannot_run "apt-get update failed (no package mirror reachable?)"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null 2>&1 || cannot_run "apt-get install $* failed (no package mirror reachable?)"
}

# Sets $bin to the release binary: JMA_POLLER_BIN (.ci/run builds it once for both smokes),
# else built here.
release_binary() {
    bin=${JMA_POLLER_BIN:-target/release/jma-poller}
    if [ -z "${JMA_POLLER_BIN:-}" ]; then
        say "building the release binary (set JMA_POLLER_BIN to reuse one)"
        cargo build --release --locked --bin jma-poller >&2 || abort "release build" "cargo build failed"
    fi
    [ -x "$bin" ] || abort "release binary" "$bin is missing"
    bin=$(realpath "$bin")
}

# Where smokes keep what is slow to make (a Debian rootfs, downloaded packages), outside the
# clone so a fresh clone reuses it.
# shellcheck disable=SC2034 # used by the smokes that source this
SMOKE_CACHE=${JMA_CI_CACHE:-/var/cache/jma-poller-ci}

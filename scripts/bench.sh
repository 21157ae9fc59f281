#!/usr/bin/env bash
# The benchmark suite (issue 5) in one command: builds the release binary and the harness
# (benches/perf.rs), runs the scenarios and prints one table, also written to
# target/bench/report.md.
#
#   scripts/bench.sh                      # all scenarios (about 10-15 minutes)
#   scripts/bench.sh pipeline memory      # some: pipeline memory idle small scale budget latency verify
#   PERF_BIN=/path/to/jma-poller scripts/bench.sh small   # measure another build of the daemon
#
# Needs curl and gzip (the baselines); large bodies and the 1M-row database are cached under
# target/bench/cache/ after the first run. Runs on 127.0.0.1 only; data dirs live under
# target/bench/tmp/ (the project's disk) and are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in curl gzip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "bench.sh: installing $tool" >&2
            apt-get install -y -q "$tool" >&2
        else
            echo "bench.sh: $tool is needed for the baselines; install it first" >&2
            exit 2
        fi
    fi
done

cargo build --release --locked >&2
cargo bench --locked --bench perf --no-run >&2
# Progress goes to stderr; the table (and only the table) to stdout.
cargo bench --locked --bench perf -- "$@"

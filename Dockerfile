# jma-poller container image.
#   docker build -t jma-poller .
#   docker run -d --name jma-poller -v jma-poller-data:/var/lib/jma-poller \
#     -v "$PWD/secrets/api_key:/run/secrets/api_key:ro" \
#     -e JMA_POLLER__API__KEY_FILE=/run/secrets/api_key -p 127.0.0.1:9464:9464 jma-poller
# See docs/operations.md. Lint: .ci/ops-lint (hadolint).
#
# Builder and runtime are both Debian 12 (bookworm): the binary links against the glibc of
# the builder, and distroless cc-debian12 ships the same glibc (a newer builder, e.g. the
# trixie-based rust:1, gives "GLIBC_x.y not found" at start).
#
# Dependency caching: cargo-chef. The planner stage turns Cargo.toml/Cargo.lock into
# recipe.json (a skeleton of the manifests); the builder "cooks" it, i.e. builds every
# dependency, in a layer that Docker keeps until Cargo.toml/Cargo.lock change. Editing
# src/ only re-runs the last `cargo build` (the crate itself). cook and build must run in
# the same WORKDIR with the same profile and flags, or the cooked layer is not reused.

FROM rust:1.95-bookworm AS chef
# rust:*-bookworm already has gcc/make (needed by ring and the bundled SQLite); no OpenSSL.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin jma-poller
COPY . .
# The runtime image has no shell, so the data directory is made here and copied with its
# owner (65532 = distroless "nonroot"); a named volume mounted there inherits it.
RUN cargo build --release --locked --bin jma-poller \
    && install -d -m 0750 /out/var/lib/jma-poller

FROM gcr.io/distroless/cc-debian12:nonroot
# glibc + libgcc + CA certificates + tzdata; no shell, no package manager.
COPY --from=builder /app/target/release/jma-poller /usr/local/bin/jma-poller
COPY --from=builder --chown=65532:65532 /out/var/lib/ /var/lib/

ENV JMA_POLLER__STORAGE__DATA_DIR=/var/lib/jma-poller \
    JMA_POLLER__LOG__FORMAT=json \
    JMA_POLLER__SERVER__LISTEN=0.0.0.0:9464
# The API key: mount a file (Docker/Compose secret) and set
# JMA_POLLER__API__KEY_FILE=/run/secrets/api_key. A config file: mount it read-only and set
# JMA_POLLER_CONFIG=/etc/jma-poller/config.toml. JMA_POLLER__SECTION__KEY variables override it.

VOLUME ["/var/lib/jma-poller"]
# /healthz, /readyz and /metrics (Prometheus).
EXPOSE 9464

# 65532:65532 is distroless's "nonroot"; numeric so Kubernetes' runAsNonRoot can check it.
USER 65532:65532

# The daemon handles SIGTERM itself (clean stop within 10 s; docker stop waits 10 s by
# default, so give it more: `docker stop -t 20`, or stop_grace_period in Compose).
STOPSIGNAL SIGTERM
# Exit 0 healthy, 1 not: asks the daemon's /readyz (server.listen is set above).
# start-period covers start-up, which includes the first API call.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/jma-poller", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/jma-poller"]
CMD ["run"]

# Build: the toolchain and librdkafka's build tools, then the release binary.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libssl-dev zlib1g-dev python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The manifest names the tests, the benches and the workspace's crates (crates/), so the whole tree
# (minus .dockerignore) is copied.
COPY . .
# The bridge without database drivers; tim-group-directory, the reference consumer, with its feature.
RUN cargo build --release --locked --bin tim-kafka-bridge \
    && cargo build --release --locked --features directory --bin tim-group-directory

# Run: a slim image, an unprivileged user, the spool on a volume.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tim-kafka-bridge bridge \
    && mkdir -p /var/lib/tim-kafka-bridge/spool /var/lib/tim-group-directory \
    && chown -R bridge /var/lib/tim-kafka-bridge /var/lib/tim-group-directory
COPY --from=build /src/target/release/tim-kafka-bridge /usr/local/bin/tim-kafka-bridge
# The same image runs the directory: --entrypoint /usr/local/bin/tim-group-directory (docker-compose.yml).
COPY --from=build /src/target/release/tim-group-directory /usr/local/bin/tim-group-directory
USER bridge
ENV BRIDGE_LISTEN=0.0.0.0:8080 BRIDGE_ADMIN_LISTEN=0.0.0.0:9464 BRIDGE_SPOOL_DIR=/var/lib/tim-kafka-bridge/spool
# 8080: the webhook (internet-facing); 9464: the admin listener (metrics, health, status page; keep it internal).
EXPOSE 8080 9464
VOLUME /var/lib/tim-kafka-bridge/spool
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tim-kafka-bridge"]

# syntax=docker/dockerfile:1
# Build stage: the same cargo commands CI runs (.ci/run builds and tests with cargo).
# Every path the build reads must be copied: tests/api/deploy.rs checks this list against the
# include_str!/include_bytes! targets, sqlx::migrate! folder, build.rs and Cargo.toml targets.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY migrations ./migrations
COPY benches ./benches
COPY tests ./tests
COPY examples ./examples
RUN cargo build --release --locked --bin modelpress

# Runtime stage: slim, non-root, data on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl=7.88.* ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin modelpress \
    && mkdir -p /data && chown modelpress /data
COPY --from=build /src/target/release/modelpress /usr/local/bin/modelpress
USER 10001
ENV MODELPRESS_BIND=0.0.0.0:8080 \
    MODELPRESS_DATA_DIR=/data \
    MODELPRESS_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/modelpress"]
CMD ["serve"]

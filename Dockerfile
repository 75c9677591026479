# pg2lake container image: a static-ish Rust binary on distroless, running as non-root.
#
#   docker build -t pg2lake:0.1.0 .
#   docker run --rm -v $PWD/pg2lake.yaml:/etc/pg2lake/pg2lake.yaml:ro \
#     -e PG2LAKE__SOURCE__PASSWORD=... -p 9187:9187 pg2lake:0.1.0
#
# The runtime image has no shell and no package manager; the binary needs only glibc
# and libgcc (rustls, no OpenSSL), which distroless/cc provides.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Manifests first, so the dependency build is cached until Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin pg2lake \
    && rm -rf src
COPY src ./src
# touch: the placeholder build above left newer timestamps than the copied sources.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin pg2lake \
    && install -D -m 0755 target/release/pg2lake /out/pg2lake

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pg2lake" \
      org.opencontainers.image.description="Change data capture from PostgreSQL logical replication into a Delta Lake of Parquet files" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pg2lake/pg2lake"
COPY --from=builder /out/pg2lake /pg2lake
# 65532 is distroless's nonroot user; numeric so runAsNonRoot can verify it.
USER 65532:65532
# /metrics, /healthz, /readyz (metrics.listen).
EXPOSE 9187
ENTRYPOINT ["/pg2lake"]
CMD ["run", "--config", "/etc/pg2lake/pg2lake.yaml", "--log-format", "json"]

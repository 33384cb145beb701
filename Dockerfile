# paysync: multi-stage build. The builder compiles librdkafka (bundled) and the
# binary; the runtime image carries only the binary and its shared libraries.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schemas ./schemas
COPY config ./config
COPY README.md ./
RUN cargo build --release --locked --bin paysync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 paysync
COPY --from=build /src/target/release/paysync /usr/local/bin/paysync
USER paysync
EXPOSE 9464 8080
ENTRYPOINT ["/usr/local/bin/paysync"]
CMD ["--help"]

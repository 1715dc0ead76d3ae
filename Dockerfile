# Multi-stage build: compile with the Rust toolchain (+cmake for Pingora's zlib-ng), run on a
# small Debian image as a non-root user.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin pag0 \
 && strip target/release/pag0

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pag0 \
 && mkdir -p /var/lib/pag0 && chown pag0 /var/lib/pag0
COPY --from=build /src/target/release/pag0 /usr/local/bin/pag0
COPY conf /etc/pag0
VOLUME /var/lib/pag0
USER pag0
EXPOSE 8402 9402
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["pag0", "healthcheck", "-c", "/etc/pag0/examples/docker.yaml"]
ENTRYPOINT ["pag0"]
CMD ["-c", "/etc/pag0/examples/docker.yaml"]

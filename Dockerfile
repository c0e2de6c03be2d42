# Multi-stage build of the release binaries.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY web ./web
COPY config.toml ./
COPY benches ./benches
RUN cargo build --release --locked --bin warren

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/warren warren && mkdir -p /var/lib/warren /etc/warren \
    && chown warren /var/lib/warren
COPY --from=build /src/target/release/warren /usr/local/bin/warren
COPY config.toml /etc/warren/config.toml
USER warren
WORKDIR /var/lib/warren
EXPOSE 5672 15672 15692
ENTRYPOINT ["warren", "--config", "/etc/warren/config.toml", "--data-dir", "/var/lib/warren"]

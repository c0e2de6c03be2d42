# Multi-stage build of the release binaries (warren and warrenctl).
#   docker build -t warren .
#   docker run -p 5672:5672 -p 15672:15672 -p 15692:15692 -v warren-data:/var/lib/warren warren
# As in RabbitMQ's official image, guest/guest may connect from outside the container, and
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS set the user created on first start.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src/bin tests/it \
    && touch src/lib.rs src/bin/warrenctl.rs tests/it/main.rs \
    && echo 'fn main() {}' > src/main.rs \
    && cargo fetch --locked
COPY src ./src
COPY web ./web
COPY config.toml ./
# Without the debug info the release profile keeps for profiling: a smaller image.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked --bin warren --bin warrenctl

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/warren warren \
    && mkdir -p /var/lib/warren /etc/warren \
    && chown warren /var/lib/warren
COPY --from=build /src/target/release/warren /src/target/release/warrenctl /usr/local/bin/
COPY config.toml /etc/warren/config.toml
# The guest user is allowed from any address here (the shipped config.toml keeps it to loopback):
# connections reach a container from outside its loopback.
RUN sed -i 's/^loopback_users = \["guest"\]$/loopback_users = []/' /etc/warren/config.toml \
    && grep -q '^loopback_users = \[\]$' /etc/warren/config.toml
USER warren
WORKDIR /var/lib/warren
VOLUME /var/lib/warren
EXPOSE 5672 15672 15692
ENTRYPOINT ["warren", "--config", "/etc/warren/config.toml", "--data-dir", "/var/lib/warren"]

# keybroker image (used by docker-compose.vault.yml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keybroker

FROM debian:bookworm-slim
RUN useradd --system --no-create-home keybroker
COPY --from=build /src/target/release/keybroker /usr/local/bin/keybroker
USER keybroker
ENTRYPOINT ["keybroker"]

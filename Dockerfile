# keybroker image (used by docker-compose.vault.yml).
#   docker build -t keybroker .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer that changes only with Cargo.toml and Cargo.lock: a stub of
# every target the manifest names, built once (tests/compose.rs checks the stubs cover them).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches bench && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && for b in expand pem broker policy api; do echo 'fn main() {}' > "benches/$b.rs"; done && for e in loadgen baseline ccp_double rss; do echo 'fn main() {}' > "bench/$e.rs"; done
# No debug info and no symbols in the image's binary (the release profile keeps line tables for
# profiling on the build machine).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin keybroker && rm -rf src benches bench
COPY . .
# The commit `keybroker version` names (.git is not in the build context):
#   docker build --build-arg KEYBROKER_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG KEYBROKER_COMMIT=unknown
ENV KEYBROKER_COMMIT=$KEYBROKER_COMMIT
# COPY keeps the build context's modification times, which may be older than the stub build:
# touch the crate roots so cargo rebuilds keybroker itself.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin keybroker

FROM debian:bookworm-slim
# ca-certificates: Vault and CCP behind a public CA, without a ca_cert setting.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home keybroker
COPY --from=build /src/target/release/keybroker /usr/local/bin/keybroker
USER keybroker
# 8443: the API ([server] listen); 9090: probes and metrics ([server] ops_listen).
EXPOSE 8443 9090
# `keybroker health` asks /readyz on the configuration's ops_listen (else on a plain main
# listener) — the configuration named by KEYBROKER_CONFIG, as `serve` reads it. No curl needed.
ENV KEYBROKER_CONFIG=/etc/keybroker/keybroker.toml
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s --retries=3 \
    CMD ["keybroker", "health"]
ENTRYPOINT ["keybroker"]

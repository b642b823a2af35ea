# Multi-stage build of the API, the worker and the `provisioner` command line.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p provisioner-api -p provisioner-worker -p provisioner-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 provisioner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home provisioner
COPY --from=build /src/target/release/provisioner-api /src/target/release/provisioner-worker \
    /src/target/release/provisioner /usr/local/bin/
# The example templates and tenants, so that the command line in the image can run the quick
# start without a Rust toolchain on the host (README, "With Docker Compose").
COPY --from=build /src/examples /usr/share/provisioner/examples
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
ENV PROVISIONER_LISTEN=0.0.0.0:8080 PROVISIONER_LOG_FORMAT=json
# The API; a worker's health listener when PROVISIONER_WORKER_HEALTH_LISTEN is set.
EXPOSE 8080 9090
CMD ["provisioner-api"]

# Multi-stage build of the API, the worker and the `provisioner` command line.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p provisioner-api -p provisioner-worker -p provisioner-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 provisioner
COPY --from=build /src/target/release/provisioner-api /src/target/release/provisioner-worker \
    /src/target/release/provisioner /usr/local/bin/
USER provisioner
ENV PROVISIONER_LISTEN=0.0.0.0:8080 PROVISIONER_LOG_FORMAT=json
EXPOSE 8080
CMD ["provisioner-api"]

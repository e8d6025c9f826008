# Builds the `ota` binary; used by docker-compose.yml for the PostgreSQL deployment.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin ota

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ota /usr/local/bin/ota
WORKDIR /var/lib/ota
ENV OTA_DATA_DIR=/var/lib/ota
EXPOSE 8080
ENTRYPOINT ["ota"]
CMD ["up"]

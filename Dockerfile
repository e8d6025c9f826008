# Builds the `ota` binary; used by docker-compose.yml for the PostgreSQL deployment.
# .dockerignore keeps target/, data/ (database, JWT secret) and .git out of the context.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin ota

FROM debian:bookworm-slim
# curl for the health checks of docker-compose.yml.
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ota /usr/local/bin/ota
WORKDIR /var/lib/ota
ENV OTA_DATA_DIR=/var/lib/ota
# Management API; device HTTP and MQTT edge where docker-compose.yml binds them.
EXPOSE 8080 80 1883
ENTRYPOINT ["ota"]
CMD ["up"]

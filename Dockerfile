# Build: docker build -t retaind .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
# The web console, compiled into the binary (src/api/console.rs).
COPY console ./console
RUN cargo build --release --locked --bin retaind

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/retaind --create-home retaind \
    && install -d -o retaind -g retaind /var/lib/retaind/data
COPY --from=build /src/target/release/retaind /usr/local/bin/retaind
USER retaind
WORKDIR /var/lib/retaind
# The SQLite database of the default store: a volume, so that it outlives the container. Mount a
# named one to keep it across upgrades (docker run -v retaind-data:/var/lib/retaind/data); a new
# named volume takes this directory's owner, the retaind user.
VOLUME /var/lib/retaind/data
# Inside a container the API and MQTT must listen on all interfaces to be reachable through a
# port mapping.
# retaind refuses that without principals: mount a principals file and point RETAIND_PRINCIPALS at
# it (docker run -v ./auth.toml:/etc/retaind/auth.toml:ro -e RETAIND_PRINCIPALS=/etc/retaind/auth.toml;
# see docs/examples/auth.toml and docker-compose.yml). No credentials are baked into the image.
ENV RETAIND_HTTP_ADDR=0.0.0.0:8080 \
    RETAIND_MQTT_ADDR=0.0.0.0:1883 \
    DATABASE_URL=sqlite:///var/lib/retaind/data/retaind.db
EXPOSE 8080 1883
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["retaind"]

# pgfanout container image.
#
#   docker build -t pgfanout .
#   docker run -v ./pgfanout.toml:/etc/pgfanout/pgfanout.toml:ro \
#       -e PGFANOUT_SOURCE__PASSWORD=... -p 9187:9187 pgfanout
#
# The config is read from /etc/pgfanout/pgfanout.toml: mount yours there (the
# image ships none, so a forgotten mount stops with a clear message);
# keys of [source], [http] and [pipeline] can be overridden from the
# environment as PGFANOUT_<SECTION>__<KEY>,
# and passwords come only from the environment or a mounted secret file.
# State (spill files, file dead letters) goes to the /var/lib/pgfanout volume.

# ---- build -----------------------------------------------------------------
# The toolchain CI tests with (some dependencies need more than the
# workspace's rust-version).
FROM rust:1.95-slim-bookworm AS build
# The Cassandra/ScyllaDB driver's TLS builds against the system's OpenSSL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config=1.8.* libssl-dev=3.0.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgfanout \
    && install -m 0755 target/release/pgfanout /usr/local/bin/pgfanout

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL and the stores verifies against the system roots;
# libssl3: the Cassandra/ScyllaDB driver's TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* libssl3=3.0.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgfanout \
    && useradd --system --uid 10001 --gid pgfanout --home-dir /var/lib/pgfanout \
        --shell /usr/sbin/nologin pgfanout \
    && install -d -o pgfanout -g pgfanout -m 0750 /var/lib/pgfanout /var/lib/pgfanout/spill \
    && install -d -m 0755 /etc/pgfanout
COPY --from=build /usr/local/bin/pgfanout /usr/local/bin/pgfanout

ENV PGFANOUT_CONFIG=/etc/pgfanout/pgfanout.toml \
    PGFANOUT_HTTP__LISTEN=0.0.0.0:9187 \
    PGFANOUT_PIPELINE__SPILL_DIR=/var/lib/pgfanout/spill
USER 10001:10001
WORKDIR /var/lib/pgfanout
VOLUME ["/var/lib/pgfanout"]
# Prometheus metrics, /healthz and /readyz.
EXPOSE 9187
# The slim image has no curl: bash's /dev/tcp asks /healthz for a 200.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9187 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop) makes pgfanout finish its batches and confirm what it applied.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgfanout"]
CMD ["run", "--config", "/etc/pgfanout/pgfanout.toml"]

# syntax=docker/dockerfile:1
#
# Bulwark on Debian 12: a build stage, an `agent` stage for the docker-compose example,
# and the runtime image (the default target: the last stage).
#
#   docker build -t bulwark .
#   docker run --rm -p 6432:6432 -p 127.0.0.1:9632:9632 \
#       -v "$PWD/etc:/etc/bulwark:ro" -v bulwark-audit:/var/lib/bulwark bulwark
#
# /etc/bulwark holds bulwark.json and the files it names (certificates, keys, secrets,
# policies); the audit store belongs in the /var/lib/bulwark volume
# ("audit": {"path": "/var/lib/bulwark/audit"}). docs/install.md has the details.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- build ---------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc make libc6-dev pkg-config \
      libev-dev libpg-query-dev libjwt-dev libcjson-dev liblmdb-dev libssl-dev \
      libcurl4-openssl-dev libvectorscan-dev libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads, so that editing docs or tests does not rebuild.
COPY Makefile ./
COPY src ./src
COPY docs/cli.txt ./docs/cli.txt
COPY scripts/txt2c.awk scripts/txt2man.awk ./scripts/
COPY contrib ./contrib
RUN make -j"$(nproc)" all \
 && make install DESTDIR=/out PREFIX=/usr \
 && /out/usr/bin/bulwark help >/dev/null

# ---- runtime base: the libraries the binary links, nothing to build with ---------------
FROM ${DEBIAN_IMAGE} AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libev4 libssl3 libcjson1 libpg-query1504.0 libjwt0 liblmdb0 libcurl4 libvectorscan5 libpq5 \
      ca-certificates openssl lmdb-utils curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/bulwark \
      --shell /usr/sbin/nologin bulwark \
 && install -d -o bulwark -g bulwark -m 0700 /var/lib/bulwark \
 && install -d -m 0755 /etc/bulwark
COPY --from=build /out/usr/bin/bulwark /usr/bin/bulwark
COPY --from=build /out/usr/share/man/man1/bulwark.1 /usr/share/man/man1/bulwark.1
COPY --from=build /out/usr/share/doc/bulwark /usr/share/doc/bulwark

# ---- agent: the docker-compose example's client (psql and a token minted per run) ------
FROM base AS agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/*
COPY examples/compose/agent.sh /usr/local/bin/bulwark-example-agent
USER bulwark
ENTRYPOINT ["/bin/sh", "/usr/local/bin/bulwark-example-agent"]

# ---- runtime (default) ------------------------------------------------------------------
FROM base AS runtime
USER bulwark
WORKDIR /var/lib/bulwark
VOLUME ["/var/lib/bulwark"]
EXPOSE 6432 9632
STOPSIGNAL SIGTERM
# Ready when every target answers and the audit store writes (needs metrics_listen on
# port 9632; see docs/metrics.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9632/healthz >/dev/null || exit 1
ENTRYPOINT ["/usr/bin/bulwark"]
CMD ["serve", "-c", "/etc/bulwark/bulwark.json"]

# authgate's container image: `docker build -t authgate .` (deploy/README.md
# explains running it and the Kubernetes manifests built on it).

# ---------------------------------------------------------------------------
# Builder. The slim Rust image carries gcc, which is all the native code
# needs: SQLite (sqlx's sqlite-bundled) and ring (rustls, for server TLS) are
# compiled from source by cc. Nothing links OpenSSL, and build.rs compiles the
# protos with protox, so neither libssl-dev, pkg-config nor protoc is
# installed. Bookworm matches the runtime image's glibc.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src

# Dependency layer, rebuilt only when Cargo.toml or Cargo.lock change. It
# builds every dependency against stand-in sources, by hand rather than with
# cargo-chef: this crate's layout is fixed and small, and cargo-chef would add
# a tool to install and pin for what three stub files do. The stub build.rs
# still makes cargo compile the build-dependencies (protox,
# tonic-prost-build), so neither it nor the dependency layer needs proto/,
# and editing a .proto does not throw the layer away.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > build.rs \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/authgate-bench.rs \
    && echo 'fn main() {}' > src/bin/authgate-bare.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin authgate \
    && rm -rf build.rs src

# The real sources. COPY keeps each file's modification time from the build
# context, which is older than the stub build above: cargo compares mtimes, so
# without the touch it would find the crate up to date and ship the stub
# binary.
COPY build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
RUN touch build.rs src/main.rs src/lib.rs \
    && cargo build --release --locked --bin authgate

# ---------------------------------------------------------------------------
# Runtime. Debian slim over distroless so that the fixed UID/GID 1001 gets a
# real passwd entry with the usual tools; no package is installed. Rust links
# glibc and libgcc_s, both in the base. No ca-certificates: the one outbound
# TLS connection (Postgres with sslmode=require/verify-full) checks against
# the Mozilla roots compiled into the binary, or a mounted sslrootcert.
FROM debian:bookworm-slim

# 1001 rather than a name so that Kubernetes' runAsNonRoot can verify the
# user without reading /etc/passwd. The data directory is the one path
# authgate writes, so it is the only one the user owns; the root filesystem
# can be mounted read-only.
RUN groupadd --system --gid 1001 authgate \
    && useradd --system --uid 1001 --gid authgate --no-create-home \
        --home-dir /var/lib/authgate --shell /usr/sbin/nologin authgate \
    && install -d -o authgate -g authgate -m 0750 /var/lib/authgate

COPY --from=builder /src/target/release/authgate /usr/local/bin/authgate

# The version is Cargo.toml's (a test keeps them equal); the licence is
# the repository's.
LABEL org.opencontainers.image.title="authgate" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# Defaults for a container: reachable from outside it, logging JSON, the
# SQLite file in the data volume. Environment variables override the config
# file (AUTHGATE_CONFIG) key by key, so these win over the same keys in a
# mounted authgate.toml; set the variable itself to change one.
#
# Listening beyond loopback, authgate refuses to start until it has API keys
# (auth.keys or auth.keys_file) or AUTHGATE_AUTH__ALLOW_ANONYMOUS=true. That
# is deliberately not set here: an image should not open an authorization
# service to anyone who can reach the port.
#
# SQLite writes the rare temporary file (a large sort, a VACUUM) to
# SQLITE_TMPDIR, else /var/tmp or /tmp, which are read-only under
# --read-only / readOnlyRootFilesystem; the data volume is writable.
ENV AUTHGATE_SERVER__LISTEN=0.0.0.0:50051 \
    AUTHGATE_METRICS__LISTEN=0.0.0.0:9464 \
    AUTHGATE_DATABASE__URL=sqlite:///var/lib/authgate/authgate.db \
    AUTHGATE_LOG__FORMAT=json \
    SQLITE_TMPDIR=/var/lib/authgate

USER 1001:1001
WORKDIR /var/lib/authgate
# Without -v, Docker still gives the data directory an anonymous volume, so
# the container works with --read-only; Kubernetes ignores this and mounts
# whatever the pod names (deploy/overlays/single: a PersistentVolumeClaim).
VOLUME ["/var/lib/authgate"]

# gRPC (health and reflection included), Prometheus metrics.
EXPOSE 50051 9464

# No init process: authgate, as PID 1, handles SIGTERM itself (it drains
# in-flight calls for server.shutdown_grace) and starts no children to reap.
# No HEALTHCHECK: it would need a gRPC client in the image; Kubernetes probes
# the gRPC health service natively.
ENTRYPOINT ["authgate"]
CMD ["serve"]

# syntax=docker/dockerfile:1
# UNTESTED: no container runtime was available when this file was written; it has never
# been built. See docs/deploy-kubernetes.md.
#
#   docker build -t ghcr.io/example/sessiongate:0.1.0 .

# ── build ──────────────────────────────────────────────────────────────────────
FROM rust:1-bookworm AS builder
WORKDIR /src
# Protobuf code generation uses protox (pure Rust): no protoc needed. The whole workspace is
# copied (cargo reads every member's manifest), but only the product package is built.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sessiongate --bin sessiongate \
 && install -D -m 0755 target/release/sessiongate /out/sessiongate

# ── runtime ────────────────────────────────────────────────────────────────────
# distroless/cc: glibc + libgcc + CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/sessiongate /usr/local/bin/sessiongate
# 9191: gRPC ext_authz + grpc.health.v1   9192: JWKS, /health/*, /metrics, /check
EXPOSE 9191 9192
# uid/gid 65532
USER nonroot
ENTRYPOINT ["/usr/local/bin/sessiongate", "serve"]
CMD ["--config", "/etc/sessiongate/config.yaml"]

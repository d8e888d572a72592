# tenant-proxy and the mock LLM upstream (tenant-proxy-loadtest mock) in one small image.
FROM rust:1.95-bookworm AS build
# pingora builds zlib-ng with cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The production profile: fat LTO, one codegen unit (Cargo.toml).
RUN cargo build --profile production --locked -p tenant-proxy -p tenant-proxy-loadtest

FROM debian:bookworm-slim
# System roots: upstream TLS is always verified. nftables and iptables: `tenant-proxy
# sidecar-init --apply` installs the sidecar's capture rules with them (the Kubernetes
# capture-rules init container, deploy/kubernetes); without NET_ADMIN they can do nothing.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates nftables iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/production/tenant-proxy /src/target/production/tenant-proxy-loadtest /usr/local/bin/
# The audit directory: a volume mounted here starts with these permissions, so the proxy can
# write it under whatever (non-root) user compose or the orchestrator gives it.
RUN mkdir -p /var/lib/tenant-proxy/audit && chmod 1777 /var/lib/tenant-proxy/audit
# Never needs root.
USER 65532:65532
ENTRYPOINT ["tenant-proxy"]
CMD ["--help"]

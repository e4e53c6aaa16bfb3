# pgsplice container image: Debian 12, the kernel path included, running as a non-root
# user with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (docs/deploy.md).
#
#   docker build -t pgsplice .
#   docker run --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON \
#     -v $PWD/pgsplice.yaml:/etc/pgsplice/pgsplice.yaml:ro -p 6432:6432 -p 9127:9127 pgsplice

# Build stage: the eBPF object (clang, bpftool for the generated ABI module), the TypeScript
# and the addon (node-gyp, libbpf-dev), packed by `npm pack` exactly as the published
# tarball is (its prepack runs scripts/build).
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own install script is for installed copies, not the build.
RUN npm ci --no-audit --no-fund --loglevel=error --ignore-scripts
COPY tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
COPY ebpf ./ebpf
COPY addon ./addon
COPY docs ./docs
COPY examples ./examples
COPY packaging ./packaging
COPY README.md ./
RUN mkdir /out && npm pack --pack-destination /out --loglevel=error

# Runtime stage: Node, libbpf's shared library and the package installed from the tarball.
FROM node:20-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /tmp/pgsplice-pkg/
RUN npm install -g --no-audit --no-fund --loglevel=error /tmp/pgsplice-pkg/pgsplice-*.tgz \
 && rm -rf /tmp/pgsplice-pkg /root/.npm
# A non-root process gets capabilities only from its executable's file capabilities
# (Docker and Kubernetes have no ambient capabilities). A copy of node carries exactly the
# three the kernel path needs, so no other program in the image has them. The container
# must be granted them (cap_add) or exec fails with EPERM; no_new_privs
# (allowPrivilegeEscalation: false) would make the kernel ignore them.
RUN cp /usr/local/bin/node /usr/local/bin/pgsplice-node \
 && setcap cap_bpf,cap_net_admin,cap_perfmon+ep /usr/local/bin/pgsplice-node \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pgsplice \
 && mkdir -p /etc/pgsplice /run/pgsplice && chown pgsplice /run/pgsplice
COPY examples/container.yaml /etc/pgsplice/pgsplice.yaml
USER 10001
EXPOSE 6432 9127
ENTRYPOINT ["/usr/local/bin/pgsplice-node", "/usr/local/lib/node_modules/pgsplice/dist/src/cli.js"]
CMD ["--config", "/etc/pgsplice/pgsplice.yaml"]

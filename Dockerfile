# tunecluster: one image for every role (chief, worker, CLI, Ray head/worker).
# Tag every build with the project's version (pyproject.toml), never a moving tag:
#
#   V=0.1.0
#   docker build -t tunecluster:$V .                                      # CPU (tensorflow-cpu), online
#   docker build --build-arg TF_EXTRA=gpu -t tunecluster:$V-gpu .         # GPU: tensorflow[and-cuda]
#   docker build --build-arg EXTRAS=ray -t tunecluster:$V-ray .           # + Ray, for k8s/ray
#   docker build --build-arg EXTRAS=s3 -t tunecluster:$V-s3 .             # + s3fs, for k8s/overlays/s3
#
# Air-gapped / offline build: put every wheel the install needs in ./wheelhouse
# (see docs/deploy.md, "Air-gapped build"), then
#   docker build --network none --build-arg WHEELHOUSE=1 -t tunecluster:$V .
# When ./wheelhouse holds wheels, pip installs from it alone (--no-index); WHEELHOUSE=1
# makes a missing or empty wheelhouse an error instead of a silent online install.
#
# No "# syntax=" line on purpose: it makes BuildKit pull its frontend from a registry.
# The file works with BuildKit and with the legacy builder.

# A pinned base (patch release and Debian suite). Pin the digest too where your registry
# can resolve it: --build-arg BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:...
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

# --- build stage: a virtualenv with tunecluster and its dependencies ------------------
FROM ${BASE_IMAGE} AS build
ARG TF_EXTRA=cpu
ARG EXTRAS=
ARG WHEELHOUSE=
# The init process (PID 1): forwards SIGTERM to tunecluster at once and reaps zombies,
# like `docker run --init`. A static binary in a wheel, so offline builds get it too.
ARG DUMB_INIT_VERSION=1.2.5.post1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_CONFIG_FILE=/opt/pip.conf \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The optional wheelhouse: "wheelhous[e]" matches ./wheelhouse when it exists and
# nothing when it does not (pyproject.toml keeps the COPY from being empty). A directory
# matched by a wildcard is copied by content, so the wheels land in /wheels/.
COPY pyproject.toml wheelhous[e] /wheels/

# Offline when the wheelhouse has wheels: pip reads this file (PIP_CONFIG_FILE) in
# every later RUN of this stage, so build isolation (setuptools, wheel) is offline too.
RUN set -- /wheels/*.whl; \
    if [ -e "$1" ]; then \
        printf '[global]\nno-index = true\nfind-links = /wheels\n' > /opt/pip.conf; \
        echo "installing from the wheelhouse ($# wheels), offline"; \
    elif [ -n "$WHEELHOUSE" ]; then \
        echo "WHEELHOUSE=$WHEELHOUSE but ./wheelhouse has no wheels" >&2; exit 1; \
    else \
        : > /opt/pip.conf; echo "installing from the package index"; \
    fi \
    && python3 -m venv /opt/venv

WORKDIR /src
# Dependencies first, from pyproject.toml alone (an empty package and an empty README
# stand in for src/ and README.md, and are removed again): /opt/venv then holds only the
# dependencies, and its layers (here and in the final stage) stay cached until
# pyproject.toml changes; a README edit does not reinstall TensorFlow.
COPY pyproject.toml ./
# DL3013 (pin versions): this installs the project's dependencies; their ranges live in
# pyproject.toml, and a wheelhouse pins exact versions for reproducible builds.
# What the runtime never loads goes in the same step: TensorFlow's C++ headers
# (tensorflow/include, ~255 MB), libclang (a build-time dependency of TensorFlow, ~80 MB),
# the packages' own test suites, and pip's caches.
# hadolint ignore=DL3013
RUN mkdir -p src/tunecluster \
    && touch src/tunecluster/__init__.py README.md \
    && pip install ".[${TF_EXTRA}${EXTRAS:+,${EXTRAS}}]" "dumb-init==${DUMB_INIT_VERSION}" \
    && pip uninstall -y tunecluster libclang \
    && rm -rf src build README.md \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site"/tensorflow/include \
    && find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
    && du -sh /opt/venv

# The project itself, as a wheel (pure Python, a few hundred kB).
COPY README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /dist .

# --- final stage: the runtime, no compilers, no source, non-root ------------------------
FROM ${BASE_IMAGE}
ARG TF_EXTRA=cpu
LABEL org.opencontainers.image.title="tunecluster" \
      org.opencontainers.image.description="Distributed hyperparameter tuning for Keras: chief, workers, CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tunecluster.tf-extra="${TF_EXTRA}"

# A fixed, non-root uid/gid (matches runAsUser/fsGroup in k8s/). /artifacts is created
# owned by it, so a fresh named volume mounted there starts writable by the user.
# The profile.d entry keeps the venv on PATH for login shells (KubeRay runs
# "bash -lc ray start ...", and Debian's /etc/profile resets PATH).
RUN groupadd --system --gid 10001 tunecluster \
    && useradd --system --uid 10001 --gid 10001 --create-home \
       --home-dir /home/tunecluster --shell /bin/bash tunecluster \
    && mkdir -p /artifacts \
    && chown 10001:10001 /artifacts \
    && echo "export PATH=\"/opt/venv/bin:\$PATH\"" > /etc/profile.d/tunecluster.sh

COPY --from=build /opt/venv /opt/venv
# Installing the pure-Python wheel built above needs no compiler and no network.
COPY --from=build /dist/ /tmp/dist/
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && /opt/venv/bin/tunecluster --version

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/tunecluster \
    TUNECLUSTER_ARTIFACTS=/artifacts

USER 10001:10001
WORKDIR /home/tunecluster

# No health check in the image, on purpose: the one image runs every role (chief, worker,
# dashboard, Ray head and workers, one-off CLI commands), each healthy in its own way, and
# a check built in would report one-off commands as unhealthy. The orchestrators probe
# each role instead: docker-compose.yml's healthcheck per service (`tunecluster health
# --role chief|worker`, the dashboard's /healthz) and the probes in k8s/ (Kubernetes
# ignores HEALTHCHECK). `docker run` users: --health-cmd "tunecluster health --role worker".
HEALTHCHECK NONE

# docker run IMAGE chief | worker | submit - | health --role worker | ...
# dumb-init is PID 1: SIGTERM reaches tunecluster before it has installed its handlers.
ENTRYPOINT ["/opt/venv/bin/dumb-init", "--", "tunecluster"]
CMD ["--help"]

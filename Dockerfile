# One image for every component; the command picks it:
#   flowmill operator | worker | api | run | render | validate
#
#   docker build -t flowmill .
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim -t flowmill .
#   docker build --secret id=ca,src=/path/to/proxy-ca.pem -t flowmill .
#
# BASE_IMAGE: any Debian-like image with python3.11 (venv module included) and useradd.
# The `ca` secret: extra CA certificates (PEM) that pip trusts while building, for networks
# whose proxy intercepts TLS; a secret mount, so it never lands in a layer.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# Dependencies come from pyproject.toml alone, so this layer stays cached while the source
# changes, and a source-only rebuild takes seconds and needs no package index. The build
# backend gets a venv of its own: it is needed to build the wheel, not to run flowmill.
FROM python AS deps
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then \
      cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca > /tmp/ca.pem; \
      export PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb")); \
open("/tmp/run.txt", "w").write("\n".join(p["project"]["dependencies"])); \
open("/tmp/build.txt", "w").write("\n".join(p["build-system"]["requires"]))'; \
    python3 -m venv /opt/flowmill; \
    /opt/flowmill/bin/pip install -q -r /tmp/run.txt; \
    python3 -m venv /opt/build; \
    /opt/build/bin/pip install -q -r /tmp/build.txt; \
    rm -f /tmp/pyproject.toml /tmp/run.txt /tmp/build.txt /tmp/ca.pem

FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowmill flowmill
COPY operator/flowmill_operator operator/flowmill_operator
COPY workers/flowmill_workers workers/flowmill_workers
COPY api/flowmill_api api/flowmill_api
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python
RUN groupadd --gid 10001 flowmill \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin flowmill
COPY --from=deps /opt/flowmill /opt/flowmill
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/flowmill/bin/pip install -q --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
# Bytecode was compiled at install time; the root filesystem may be read-only at run time.
ENV PATH=/opt/flowmill/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/flowmill
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="flowmill" \
      org.opencontainers.image.description="Kubernetes-native streaming pipelines from one YAML manifest" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["flowmill"]
CMD ["--help"]

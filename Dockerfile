# syntax=docker/dockerfile:1
# The server-hardening operator image.
#
#   docker build -t server-hardening:0.1.0 .
#
# Two stages: the builder makes a virtualenv with the pinned runtime requirements
# (requirements/runtime.txt, see tests/packaging/runtime_lock.py) and the project wheel; the final
# stage copies that venv only: no compiler, no pip, no build tools, no source tree.
# tests/packaging/test_dockerfile.py checks these rules and replays the install steps.

ARG PYTHON_VERSION=3.11.14

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# The venv has no pip of its own: the builder's pip installs into it (--python).
RUN python -m venv --without-pip /opt/venv

WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN python -m pip --python /opt/venv/bin/python install --no-deps --only-binary=:all: \
        -r requirements/runtime.txt

COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && python -m pip --python /opt/venv/bin/python install --no-deps /tmp/wheels/*.whl \
    && python -m pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/hardening --help >/dev/null

FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="server-hardening" \
      org.opencontainers.image.description="Kubernetes operator that keeps a CircleCI Server installation hardened: NetworkPolicies, AWS security groups and GCP firewall rules, with drift detection." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/circleci/server-hardening" \
      org.opencontainers.image.documentation="https://github.com/circleci/server-hardening/blob/main/docs/operations.md" \
      org.opencontainers.image.vendor="CircleCI" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm"

# The base image's own pip/setuptools/wheel are not needed at run time.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so Kubernetes can verify runAsNonRoot without an /etc/passwd lookup.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080

ENTRYPOINT ["hardening", "run"]

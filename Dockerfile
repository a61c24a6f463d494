# The one image the deploy manifests name: ghcr.io/example/ood-audit:0.1.0 (see cluster/README.md).
#
#   docker build -t ghcr.io/example/ood-audit:0.1.0 .
#   docker build --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu -t ghcr.io/example/ood-audit:0.1.0-cpu .
#
# Head and workers run the same image, so the default base is the CUDA one: the head does not need CUDA,
# but one image means one version of everything on every node. The -cpu base is for CPU-only clusters.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="ood-audit" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Audit very large image datasets for out-of-distribution samples, on Ray."

# The Ray images run as `ray` (uid 1000, group users = gid 100) with Python in the user's own prefix, so pip
# installs as that user; root is needed only to create /app.
USER root
RUN mkdir -p /app /tmp/ood-audit-src && chown 1000:100 /app /tmp/ood-audit-src
USER 1000:100

# Build from a scratch copy so that /app holds only the entrypoints: /app is what `working_dir` uploads,
# and a second copy of the package there would shadow the installed one on every worker.
COPY --chown=1000:100 pyproject.toml README.md /tmp/ood-audit-src/
COPY --chown=1000:100 ood_audit/ /tmp/ood-audit-src/ood_audit/

# Ray itself stays the base image's build: the constraint pins it to the installed version, so pip never
# swaps it for another release (or adds extras) while resolving `ray[data,train]`. No dev or demo extras.
RUN python -c "import ray; print('ray==' + ray.__version__)" > /tmp/ray-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/ray-constraint.txt /tmp/ood-audit-src \
    && rm -rf /tmp/ood-audit-src /tmp/ray-constraint.txt \
    && ood-audit --help > /dev/null

WORKDIR /app
COPY --chown=1000:100 jobs/ /app/jobs/

ENV RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1

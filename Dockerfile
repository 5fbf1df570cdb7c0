# Handai: one CPU image that serves (the Serve graph) and trains (Ray Train), run alone
# (`docker run -p 8081:8081 -v handai-data:/data handai:1.0.0`) or as the Ray head and workers
# of deploy/kuberay/*.yaml.
FROM python:3.11-slim

# CPU wheels of torch: the default index's Linux wheels pull in ~3 GB of CUDA libraries.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# KubeRay's default probes call wget; Ray's own images ship it, python:slim does not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --create-home --shell /bin/bash ray

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_HAPROXY_MAXCONN=1024
WORKDIR /app

RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY handai ./handai
COPY deployments ./deployments
COPY train ./train
# Editable: the code stays in /app (one copy), which is also Ray's working directory.
RUN pip install --no-cache-dir -e .
COPY serve_config.yaml ./
COPY config ./config
COPY seed ./seed

# The data and the storage (registry, artifacts, checkpoints) live under /data: a volume, and
# on a cluster one that every node mounts. The dashboard and Jobs API are never published.
ENV HANDAI_HOME=/app APP__DATA_ROOT=/data STORAGE__ROOT=/data
RUN mkdir -p /data && chown ray:ray /data
USER 1000
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz')"
# Alone: a one-node cluster exactly as `make serve` starts it (auth off, loopback dashboard).
CMD ["python", "-m", "deployments.cluster", "serve"]

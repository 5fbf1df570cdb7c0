# Handai: the Serve graph with the shipped model. CPU image; torch comes from the index the
# build machine's pip is configured with.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
    RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1
WORKDIR /app

RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY handai ./handai
COPY deployments ./deployments
COPY train ./train
RUN pip install --no-cache-dir .
COPY serve_config.yaml ./
COPY config ./config
COPY seed ./seed

# Inside the image the data and the storage (registry, artifacts) live under /data (mount a
# volume there). The dashboard and Jobs API stay on the container's loopback: not exposed.
ENV HANDAI_HOME=/app APP__DATA_ROOT=/data STORAGE__ROOT=/data
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz')"
CMD ["python", "-m", "deployments.cluster", "serve"]

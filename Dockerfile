# vastserver: VAST 4.x / VMAP 1.0 ad decision server.
# Configured by environment (README, Settings): the entrypoint passes no flag that would
# override a VASTSERVER_* variable, and the health check reads VASTSERVER_PORT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VASTSERVER_HOME=/app \
    VASTSERVER_HOST=0.0.0.0 \
    VASTSERVER_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vastserver ./vastserver
COPY templates ./templates
COPY fixtures ./fixtures
RUN pip install --no-compile . \
    && useradd --system --uid 10001 --home-dir /app vastserver \
    && chown -R vastserver /app

USER vastserver
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=10s --retries=3 \
    CMD python -c "import os,sys,urllib.request; u='http://127.0.0.1:%s/healthz' % os.environ.get('VASTSERVER_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(u, timeout=2).status == 200 else 1)"
ENTRYPOINT ["vastserver", "serve"]

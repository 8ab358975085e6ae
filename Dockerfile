# timebatch image for docker-compose.yml: one image for web, worker, beat, flower and migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 timebatch \
    && useradd --system --uid 10001 --gid timebatch --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin timebatch \
    && mkdir -p /app /data /metrics \
    && chown timebatch:timebatch /data /metrics

# Install from a throwaway source dir, so the installed package is the only copy.
COPY pyproject.toml README.md /src/
COPY api /src/api
COPY worker /src/worker
COPY shared /src/shared
COPY migrations /src/migrations
RUN pip install /src && rm -rf /src

WORKDIR /app
# `timebatch run` reads the process commands from the working directory's Procfile.
COPY Procfile /app/Procfile
USER timebatch
ENV TIMEBATCH_DATA_DIR=/data \
    TIMEBATCH_DEMO=0
EXPOSE 8000 5555

CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "gthread", "--threads", "8", "--timeout", "120", "--config", "python:api.gunicorn_config", "api.wsgi:app"]

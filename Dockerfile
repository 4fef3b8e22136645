# Production image for the gateway daemon.
#   docker build -t smsgw .
#   docker run -e SMSGW_DATABASE__URL=... -e SMSGW_SMSC__CARRIER_A__PASSWORD=... \
#              -v $PWD/config/gateway.toml:/etc/smsgw/gateway.toml:ro smsgw
# The HTTP server (/metrics, /healthz, /readyz, status page) listens on 127.0.0.1 inside the container, which the
# HEALTHCHECK reaches but nothing outside does. To publish it, opt in explicitly:
#   docker run -e SMSGW_METRICS__HOST=0.0.0.0 -p 127.0.0.1:9464:9464 ... smsgw
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY keywords ./keywords
COPY throughput ./throughput
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin smsgw
COPY config/gateway.example.toml /etc/smsgw/gateway.toml
USER smsgw
EXPOSE 9464
# /healthz answers 200 while the process is up and its event loop is not stalled (gateway/http_server.py);
# urlopen raises on a 503 or a timeout, so the exit status is the verdict. /readyz (database, migrations, binds)
# is for orchestrators that route or roll deploys, not for restarting: a carrier outage must not restart us.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"
ENTRYPOINT ["smsgw"]
CMD ["run", "--config", "/etc/smsgw/gateway.toml"]

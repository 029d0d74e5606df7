# Willi in a container: the one-file build (make dist) on a slim Python.
#   make dist && docker build -t willi .
#   docker run -d --name willi -p 25:2525 -e WILLI_LISTEN=0.0.0.0:2525 \
#     -e WILLI_HOSTNAME=mx.example.org -e WILLI_MAPPING_1=csv:/etc/willi/upstreams.csv \
#     -v /srv/willi:/etc/willi:ro willi
# Configuration: /etc/willi/willi.env when mounted (the working directory's
# willi.env is read by default), and/or WILLI_* environment variables, which
# override the file. Logs go to stdout. SIGHUP (docker kill -s HUP) reloads,
# SIGTERM (docker stop) drains for up to WILLI_SHUTDOWN_TIMEOUT: give
# `docker stop -t` more than that.
ARG BASE=python:3.11-slim
FROM ${BASE}

RUN useradd --system --uid 10025 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin willi \
    && mkdir -p /etc/willi /usr/local/lib/willi
COPY dist/willi.pyz contrib/docker/healthcheck.py /usr/local/lib/willi/

# A non-root user cannot bind port 25 unless the runtime lets it (Docker does
# by default: net.ipv4.ip_unprivileged_port_start=0); 2525 always works.
EXPOSE 25 2525
USER willi
WORKDIR /etc/willi
# A real SMTP probe on the first WILLI_LISTEN address: greeting 220, then QUIT.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["python3", "-I", "/usr/local/lib/willi/healthcheck.py"]
ENTRYPOINT ["python3", "-I", "/usr/local/lib/willi/willi.pyz"]

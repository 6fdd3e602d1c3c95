# qmpjobd in a container: one daemon, its QMP socket in the volume /run/qmpjobd.
#
#   docker build -t qmpjobd .
#   docker run -d --name qmpjobd -v qmpjobd-run:/run/qmpjobd qmpjobd
#   docker run --rm -i --user 10001 -v qmpjobd-run:/run/qmpjobd alpine/socat \
#       - UNIX-CONNECT:/run/qmpjobd/qmpjobd.sock          # a QMP session from another container
#
# Socket permissions: the daemon creates its socket with mode 0600, owned by the uid it runs
# as (10001 here). A client on the host or in another container must run with uid 10001 (or
# be root); or open it to a group (`docker run ... qmpjobd --socket
# /run/qmpjobd/qmpjobd.sock --socket-mode 0660 --socket-group 10001`), or start this image
# with `--user <your uid>` so the socket belongs to you; a bind-mounted host directory at
# /run/qmpjobd must be writable by that uid.
# A COLO primary/secondary pair: examples/compose-colo.yml.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Fixed ids, so host users and other containers can match them.
RUN groupadd --system --gid 10001 qmpjobd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin qmpjobd \
 && install -d -m 0755 -o 10001 -g 10001 /run/qmpjobd

# Where pip finds packages, and extra CA certificates (PEM text, one or more) that pip must
# trust while building, for a proxy that re-signs TLS:
#   docker build --build-arg EXTRA_CA_CERT="$(cat proxy-ca.pem)" -t qmpjobd .
# The certificates serve this build's pip only: they are not left in the image.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG EXTRA_CA_CERT=

# orjson, uvloop and crc32c come from pyproject.toml's dependencies (binary wheels on PyPI).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qmpjobd ./qmpjobd
RUN if [ -n "$EXTRA_CA_CERT" ]; then \
        cat /etc/ssl/certs/ca-certificates.crt > /tmp/build-ca.pem \
     && printf '%s\n' "$EXTRA_CA_CERT" >> /tmp/build-ca.pem \
     && export PIP_CERT=/tmp/build-ca.pem; \
    fi \
 && pip install --no-cache-dir . \
 && rm -rf /src/build /src/*.egg-info /tmp/build-ca.pem \
 && python3 -c "import orjson, uvloop, crc32c, qmpjobd.health"
WORKDIR /

# Created (and owned by qmpjobd) above, so a fresh named volume starts out writable for it.
VOLUME /run/qmpjobd

USER qmpjobd

# The daemon handles SIGTERM itself (SHUTDOWN event to every client, live jobs cancelled,
# socket removed, exit 0), also as PID 1.
STOPSIGNAL SIGTERM

# A real QMP handshake (greeting, qmp_capabilities, query-status); prints "ok: <status>" or
# "unhealthy: <reason>". Its own deadline (3 s) is shorter than --timeout, so Docker records
# the reason rather than killing it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-m", "qmpjobd.health", "/run/qmpjobd/qmpjobd.sock"]

ENTRYPOINT ["qmpjobd"]
CMD ["--socket", "/run/qmpjobd/qmpjobd.sock"]

# syntax=docker/dockerfile:1
# omniprofile worker image: `docker build -t omniprofile .`, then `docker run omniprofile worker`
# (or any other command: `docker run omniprofile profile ID`). See docker-compose.yml for the stack.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged user; /data (the Faust table state) belongs to it, so a fresh volume
# mounted there does too.
RUN groupadd --system --gid 10001 omniprofile \
 && useradd --system --uid 10001 --gid omniprofile --create-home --home-dir /home/omniprofile omniprofile \
 && mkdir -p /data \
 && chown omniprofile:omniprofile /data

# Only what the package needs (see .dockerignore); installed, not run from the source tree.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY models/ models/
RUN pip install --no-cache-dir . \
 && cd / \
 && rm -rf /src

# Production defaults; every OMNIPROFILE_* variable can still be set at run time.
ENV OMNIPROFILE_TABLE_STORE=rocksdict:// \
    OMNIPROFILE_DATA_DIR=/data

USER omniprofile
WORKDIR /home/omniprofile
VOLUME /data

# SIGTERM (docker stop) lets the worker flush and commit before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["omniprofile"]
CMD ["worker"]

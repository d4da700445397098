# RecallWatch: one image for every role (worker, api, simulate); the compose file picks the subcommand.
# Every dependency ships a manylinux wheel for CPython 3.11, so the slim image needs no compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (no .venv, tests or caches in the layer). README.m[d] is optional:
# pyproject names it as the long description, and the wildcard copies it when it exists.
COPY pyproject.toml README.m[d] ./
COPY api ./api
COPY cases ./cases
COPY config ./config
COPY core ./core
COPY models ./models
COPY recallwatch ./recallwatch
COPY registry ./registry
COPY sinks ./sinks
COPY streams ./streams
RUN pip install . \
    && rm -rf /src

# Relative data dirs in config/defaults.toml (.recallwatch/...) land in the user's home.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin recallwatch
USER recallwatch
WORKDIR /home/recallwatch

ENTRYPOINT ["recallwatch"]
CMD ["--help"]

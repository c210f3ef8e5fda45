# actserve: OpenAI-compatible LLM server.
#   CPU (default):  docker build -t actserve .
#   CUDA:           docker build -t actserve:cuda --build-arg DEVICE=cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#   Run:            docker run -p 8000:8000 -v /path/to/model:/models/m actserve --model /models/m
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---- build: a virtual environment with the pinned requirements (the same file `make` installs) ----
FROM ${BASE_IMAGE} AS build
ARG DEVICE=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./
RUN if [ "$DEVICE" = "cuda" ]; then \
        pip install -r requirements.txt; \
    else \
        pip install --extra-index-url "$TORCH_INDEX_URL" -r requirements.txt; \
    fi
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY api ./api
RUN if [ "$DEVICE" = "cuda" ]; then pip install ".[gpu]" torch==2.13.0; else pip install --no-deps .; fi

# ---- runtime: the venv and nothing else, as a non-root user ----
FROM ${BASE_IMAGE} AS runtime
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*; \
    fi && \
    useradd --create-home --uid 10001 actserve && mkdir -p /models && chown actserve /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/.cache \
    ACTSERVE_HOST=0.0.0.0 \
    ACTSERVE_PORT=8000
VOLUME /models
USER actserve
WORKDIR /home/actserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["actserve", "serve"]
CMD []

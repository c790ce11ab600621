# The cycada client commands (translate-dir, segment-video, monitor-style scripts) on a CPU,
# for the indexed translation Job (deploy/kubernetes/translate-job.yaml) or any batch work
# against a served repository. The server image is deploy/Dockerfile.
#
#   docker build -f deploy/client.Dockerfile -t cycada-client .
#   docker run --rm --network host -v $PWD/data:/data cycada-client \
#       translate-dir /data/synth /data/synth-as-real --url 127.0.0.1:8001
FROM python:3.11-slim-bookworm

WORKDIR /opt/cycada
COPY pyproject.toml constraints.txt README.md ./
COPY cycada cycada
COPY training training
COPY export export
COPY serving serving
COPY clients clients
COPY benchmarks benchmarks

# the CPU build of PyTorch first (a bare requirement would pull the CUDA build), then cycada
# with the versions its tests passed with
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir -c constraints.txt ".[cpu]"

USER 1000:1000
ENTRYPOINT ["cycada"]
CMD ["--help"]

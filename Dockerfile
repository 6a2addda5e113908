FROM python:3.11-slim
WORKDIR /app
# Dependencies first, read from pyproject.toml into their own layer: a change to the code reuses
# this layer instead of reinstalling torch.
COPY pyproject.toml ./
# mnist-jobs-client is this repository's own (clients/python): installed from the checkout below.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('mnist-jobs-client')))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY service ./service
COPY api ./api
COPY workers ./workers
COPY cli ./cli
COPY migrations ./migrations
COPY clients/python ./clients/python
# One pip call, so pip takes the client from the checkout rather than looking it up elsewhere.
RUN pip install --no-cache-dir --no-deps ./clients/python .
ENV MNIST_JOBS_DATABASE_URL=sqlite:////var/lib/mnist-jobs/mnist-jobs.db \
    MNIST_JOBS_DATA_DIR=/var/lib/mnist-jobs/data \
    MNIST_JOBS_ARTIFACTS_DIR=/var/lib/mnist-jobs/artifacts \
    MNIST_JOBS_API_TOKENS_FILE=/var/lib/mnist-jobs/tokens
VOLUME /var/lib/mnist-jobs
EXPOSE 8000
CMD ["mnist-jobs", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]

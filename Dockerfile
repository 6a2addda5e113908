FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir .
ENV MNIST_JOBS_DATABASE_URL=sqlite:////var/lib/mnist-jobs/mnist-jobs.db \
    MNIST_JOBS_DATA_DIR=/var/lib/mnist-jobs/data \
    MNIST_JOBS_ARTIFACTS_DIR=/var/lib/mnist-jobs/artifacts
VOLUME /var/lib/mnist-jobs
EXPOSE 8000
CMD ["mnist-jobs", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]

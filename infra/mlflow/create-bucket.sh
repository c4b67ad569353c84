#!/bin/sh
# Create the MLflow artifact bucket in MinIO; idempotent, so restarts of the stack are harmless.
set -eu
mc alias set minio http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "minio/$MLFLOW_BUCKET"

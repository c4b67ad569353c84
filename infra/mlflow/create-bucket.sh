#!/bin/sh
# Create the MLflow artifact bucket in MinIO and the MLflow server's own MinIO user, allowed on that bucket only.
# Idempotent, so restarts of the stack are harmless. The root login comes from MC_HOST_minio and the server's
# secret key goes to mc on standard input: no credential is ever an argument (process lists show arguments).
set -eu
mc mb --ignore-existing "minio/$MLFLOW_BUCKET"
printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["arn:aws:s3:::%s","arn:aws:s3:::%s/*"]}]}' \
  "$MLFLOW_BUCKET" "$MLFLOW_BUCKET" > /tmp/mlflow-artifacts.json
mc admin policy create minio mlflow-artifacts /tmp/mlflow-artifacts.json
printf '%s\n' "$MLFLOW_S3_SECRET_KEY" | mc admin user add minio "$MLFLOW_S3_ACCESS_KEY"
mc admin user info minio "$MLFLOW_S3_ACCESS_KEY" | grep -q mlflow-artifacts \
  || mc admin policy attach minio mlflow-artifacts --user "$MLFLOW_S3_ACCESS_KEY"

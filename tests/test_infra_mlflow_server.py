"""infra/: the MLflow tracking server. The docker compose and Kubernetes setups agree (Postgres, MinIO, the server),
run the clients' MLflow version, accept the clients' host names, and keep passwords in secrets.

Text-level checks (no docker, Kubernetes or network), with MLflow's own host check."""

from __future__ import annotations

import re
import shlex

import mlflow
from infra_files import INFRA, compose, k8s_objects, secrets, the
from mlflow.server.security_utils import is_allowed_host_header


def services() -> dict[str, set[int]]:
    return {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in k8s_objects() if d["kind"] == "Service"
    }


def interpolate(text: str) -> str:
    """Docker compose variable substitution with the values of infra/mlflow/.env.example."""
    env = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))  # fmt: skip
    return re.sub(r"\$\{(\w+)(?:(?::-|:\?)[^}]*)?\}", lambda m: env[m.group(1)], text).replace("$$", "$")


def test_compose_runs_postgres_minio_bucket_init_and_a_proxying_mlflow_server():
    services_ = compose()["services"]
    assert {"postgres", "minio", "minio-init", "mlflow"} <= set(services_)
    server = services_["mlflow"]
    argv = shlex.split(interpolate(server["command"]))
    backend, artifacts = argv[argv.index("--backend-store-uri") + 1], argv[argv.index("--artifacts-destination") + 1]
    assert argv[:2] == ["mlflow", "server"] and "--no-serve-artifacts" not in argv
    # +psycopg2: the driver the server image installs (SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3).
    assert re.fullmatch(r"postgresql\+psycopg2://mlflow@postgres:5432/mlflow", backend), f"no password: {backend}"
    bucket_script = (INFRA / "mlflow" / "create-bucket.sh").read_text()
    assert artifacts == "s3://mlflow" and "mc mb --ignore-existing" in bucket_script
    assert services_["minio-init"]["environment"]["MLFLOW_BUCKET"] == "${MLFLOW_BUCKET:-mlflow}"
    assert server["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert server["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "minio-init": {"condition": "service_completed_successfully"}}  # fmt: skip
    for name in ("postgres", "minio", "mlflow"):
        assert services_[name]["healthcheck"]["test"], name
    assert set(compose()["volumes"]) == {"postgres-data", "minio-data"}


def test_k8s_mlflow_server_points_at_the_postgres_and_minio_services():
    (server,) = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = dict(a.lstrip("-").split("=", 1) for a in server["args"])
    uri = args["backend-store-uri"]
    backend = re.fullmatch(r"postgresql\+psycopg2://\$\(POSTGRES_USER\)@(\w+):(\d+)/\$\(POSTGRES_DB\)", uri)
    assert backend and int(backend[2]) in services()[backend[1]]
    env = {e["name"]: e.get("value") for e in server["env"]}
    endpoint = re.fullmatch(r"http://(\w+):(\d+)", env["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint and int(endpoint[2]) in services()[endpoint[1]]
    bucket_job = the("Job", "minio-create-bucket")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert args["artifacts-destination"] == "s3://mlflow" and "mc mb --ignore-existing minio/mlflow" in bucket_job
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "AWS_ACCESS_KEY_ID"} <= set(secrets()["mlflow-server"])
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"


def test_mlflow_server_accepts_the_host_names_clients_use():
    k8s_env = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["env"]
    k8s_hosts = next(e["value"] for e in k8s_env if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")
    for hosts in (k8s_hosts, compose()["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]):
        allowed = hosts.split(",")
        for host in ("mlflow:5000", "mlflow.lma3d.svc.cluster.local:5000", "localhost:5000", "10.0.3.7:5000"):
            assert is_allowed_host_header(allowed, host), host
        assert not is_allowed_host_header(allowed, "attacker.example.com")


def test_mlflow_server_image_runs_the_clients_mlflow_version():
    pinned = re.search(r"^ARG MLFLOW_VERSION=(\S+)", (INFRA / "mlflow" / "Dockerfile").read_text(), re.M).group(1)
    assert pinned == mlflow.__version__
    server = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    for image in (compose()["services"]["mlflow"]["image"], server["image"]):
        assert image.endswith(f"/lma3d-mlflow:{pinned}"), image


def k8s_containers() -> list[tuple[str, dict]]:
    """(owner name, container) for every Deployment, StatefulSet and Job in infra/k8s."""
    kinds = ("Deployment", "StatefulSet", "Job")
    return [(d["metadata"]["name"], c) for d in k8s_objects() if d["kind"] in kinds
            for c in d["spec"]["template"]["spec"]["containers"]]  # fmt: skip


SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN")


def test_server_passwords_come_from_secrets_through_the_environment():
    values = {v for data in secrets().values() for k, v in data.items() if SECRET_NAMES.search(k)}
    for owner, container in k8s_containers():
        argv = " ".join(container.get("command", []) + container.get("args", []))
        assert not SECRET_NAMES.search(re.sub(r"\$(\w+)", "", argv)), f"{owner}: a secret expanded into its command"
        assert not any(v in argv for v in values), f"{owner}: a secret value on its command line"
        for e in container.get("env", []):
            if SECRET_NAMES.search(e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{owner}: {e['name']} must come from a Secret"
        assert not container.get("envFrom"), f"{owner}: take single keys (secretKeyRef), not the whole Secret"
    for name, service in compose()["services"].items():
        command = service.get("command", "")
        assert "PASSWORD" not in command and "SECRET" not in command, f"compose {name}: a secret in its command"
        for key, value in service.get("environment", {}).items():
            if SECRET_NAMES.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), f"compose {name}: {key} must come from .env"


def test_mlflow_server_has_its_own_s3_keys_not_minio_root():
    server_secret = secrets()["mlflow-server"]
    assert server_secret["AWS_ACCESS_KEY_ID"] != server_secret["MINIO_ROOT_USER"]
    assert server_secret["AWS_SECRET_ACCESS_KEY"] != server_secret["MINIO_ROOT_PASSWORD"]
    (server,) = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in server["env"] if "valueFrom" in e}
    assert keys["AWS_ACCESS_KEY_ID"] == "AWS_ACCESS_KEY_ID" and not any("MINIO_ROOT" in k for k in keys.values())
    (init,) = the("Job", "minio-create-bucket")["spec"]["template"]["spec"]["containers"]
    init_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in init["env"] if "valueFrom" in e}
    assert {"MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= init_keys
    script = init["args"][0]
    assert 'mc admin user add minio "$MLFLOW_S3_ACCESS_KEY"' in script
    assert "mc admin policy attach minio mlflow-artifacts" in script
    env = compose()["services"]["mlflow"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("${MLFLOW_S3_ACCESS_KEY")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MLFLOW_S3_SECRET_KEY")
    bucket_script = (INFRA / "mlflow" / "create-bucket.sh").read_text()
    assert 'mc admin user add minio "$MLFLOW_S3_ACCESS_KEY"' in bucket_script
    assert "mc alias set" not in bucket_script + script, "the root password would be an argument of mc"

"""Readers of infra/ for the tests/test_infra_*.py files: YAML documents, Kubernetes objects, Ray pods, Dockerfiles."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA, K8S = ROOT / "infra", ROOT / "infra" / "k8s"
RAY_FILES = ["raycluster.yaml", "rayjob-shard.yaml", "rayjob-train.yaml", "rayjob-eval.yaml"]
RAYJOBS = RAY_FILES[1:]
STORAGE = "/mnt/cluster_storage"
IMAGE_TAG = re.compile(r"/lma3d:(?P<ray>\d+\.\d+\.\d+)-(?P<suffix>py\d+-(?:cu\d+|cpu))$")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict]:
    return [d for p in sorted(K8S.rglob("*.yaml")) for d in docs(p)]


def the(kind: str, name: str) -> dict:
    return next(d for d in k8s_objects() if d["kind"] == kind and d["metadata"].get("name") == name)


def cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def ray_pods(name: str) -> list[tuple[str, dict]]:
    """(group, pod spec) for the head and every worker group of a RayCluster or a RayJob's cluster."""
    spec = cluster_spec(docs(K8S / name)[0])
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(group, g["template"]["spec"]) for group, g in groups]


def dockerfile(name: str) -> str:
    return (INFRA / "docker" / name).read_text().replace("\\\n", " ")


def secrets() -> dict[str, dict]:
    """The example Secrets (mlflow/secret.example.yaml, ray-auth.example.yaml) by name."""
    return {d["metadata"]["name"]: d["stringData"] for d in k8s_objects() if d["kind"] == "Secret"}


def compose() -> dict:
    return yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())

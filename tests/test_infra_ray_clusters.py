"""infra/: the Ray clusters. The KubeRay manifests (RayCluster, the RayJobs, the RayService) parse, pass KubeRay's
CRD schema and rules, agree with each other, the images and the installed Ray, and call the real CLI; the `ray up`
launcher config passes Ray's schema.

Text-level checks (no docker, Kubernetes or network), with Ray's own schema and packaging code where they exist."""

from __future__ import annotations

import importlib
import json
import re
import shlex

import pytest
import ray
import yaml
from cli_calls import check_cli_call, verb_namespace
from infra_files import (
    IMAGE_TAG,
    INFRA,
    K8S,
    RAY_FILES,
    RAYJOBS,
    ROOT,
    STORAGE,
    cluster_spec,
    dockerfile,
    docs,
    k8s_objects,
    ray_pods,
    secrets,
    the,
)
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

API_VERSIONS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1",
                "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1", "Service": "v1",
                "PersistentVolumeClaim": "v1", "Secret": "v1"}  # fmt: skip


MANIFESTS = sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_manifest_parses_and_k8s_objects_have_the_right_api_version(path):
    assert docs(path) and all(isinstance(d, dict) for d in docs(path))
    for obj in docs(path) if K8S in path.parents else []:
        assert obj["apiVersion"] == API_VERSIONS[obj["kind"]], obj["kind"]
        assert obj["metadata"].get("name") or obj["metadata"].get("generateName")


def test_raycluster_has_a_head_a_cpu_group_and_an_autoscaling_gpu_group():
    spec = cluster_spec(docs(K8S / "raycluster.yaml")[0])
    assert spec["enableInTreeAutoscaling"] is True and spec["headGroupSpec"]["rayStartParams"]["dashboard-host"]
    gpu = {p["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for _, p in ray_pods("raycluster.yaml")}
    assert None in gpu and gpu - {None}, "need a CPU-only and a GPU worker group"
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]


@pytest.mark.parametrize("name", RAY_FILES)
def test_ray_pods_mount_shm_and_shared_storage_and_read_mlflow_secret(name):
    claim = the("PersistentVolumeClaim", "lma3d-cluster-storage")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "many pods on many nodes mount it"
    for group, pod in ray_pods(name):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert mounts["/dev/shm"]["emptyDir"] == {"medium": "Memory"}, group
        assert mounts[STORAGE]["persistentVolumeClaim"]["claimName"] == "lma3d-cluster-storage", group
        (source,) = container["envFrom"]
        assert "MLFLOW_TRACKING_URI" in secrets()[source["secretRef"]["name"]], group
        resources = container["resources"]
        assert resources["limits"] == resources["requests"], f"{group}: requests must equal limits"
        if "nvidia.com/gpu" in resources["limits"]:
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    head = ray_pods(name)[0][1]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001}


def test_ray_version_is_one_across_manifests_images_dockerfiles_and_installed_ray():
    images = [c["image"] for name in RAY_FILES for _, pod in ray_pods(name) for c in pod["containers"]]
    launcher = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())
    cpu_node = launcher["available_node_types"]["ray.worker.cpu"]
    images += [launcher["docker"]["image"], cpu_node["docker"]["worker_image"]]
    tags = [IMAGE_TAG.search(image) for image in images]
    assert all(tags), f"lma3d images must be tagged <ray>-py<ver>-<cuXXX|cpu>: {images}"
    versions = {t["ray"] for t in tags} | {cluster_spec(docs(K8S / n)[0])["rayVersion"] for n in RAY_FILES}
    for name, suffix in (("Dockerfile", "py311-cu128"), ("Dockerfile.cpu", "py311-cpu")):
        text = dockerfile(name)
        versions |= set(re.findall(r"^ARG RAY_VERSION=(\S+)", text, re.M))
        # The base image is a build arg so that it can be pinned by digest (docs/cluster.md section 1).
        assert re.search(rf"^ARG BASE_IMAGE=rayproject/ray:\$\{{RAY_VERSION\}}-{suffix}$", text, re.M), name
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M), name
        assert suffix in {t["suffix"] for t in tags}, f"no manifest uses the {name} image ({suffix})"
    assert versions == {ray.__version__}


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_passes_kuberay_validation_rules(name):
    spec = docs(K8S / name)[0]["spec"]
    selector = spec.get("clusterSelector")
    assert bool(spec.get("rayClusterSpec")) != bool(selector), "exactly one of rayClusterSpec / clusterSelector"
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    if selector:
        assert "ray.io/cluster" in selector and not spec.get("backoffLimit"), "a selector forbids backoffLimit"
    else:
        assert spec["shutdownAfterJobFinishes"] is True, "a job-scoped cluster must be deleted afterwards"
    assert spec.get("shutdownAfterJobFinishes") or not spec.get("ttlSecondsAfterFinished")
    assert not (spec.get("shutdownAfterJobFinishes") and spec.get("deletionStrategy", {}).get("deletionRules"))


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_runtime_env_is_valid_and_ships_the_images_repo_copy(name):
    env = yaml.safe_load(docs(K8S / name)[0]["spec"]["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile("Dockerfile"), re.M).group(1)
    assert env.pop("working_dir") == workdir, "the submitter pod (head image) zips this folder"
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    RuntimeEnv(**env)  # Ray's own validation: env_vars must be str -> str, etc.


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_entrypoint_is_a_real_cli_call_on_shared_storage(name, monkeypatch):
    entrypoint = docs(K8S / name)[0]["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"] and argv[2] in {f"jobs.verbs.{v}" for v in ("shard", "train", "eval", "export")}
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--source", "--out", "--shards")]
    paths += [a.split("=", 1)[1] for a in argv if a.split("=")[0] in ("train.storage_path", "data.shards", "workdir")]
    assert paths and all(p.startswith(STORAGE + "/") for p in paths), f"node-local paths break multi-node: {paths}"
    writes = {"shard": ["--out"], "train": ["train.storage_path", "workdir"], "eval": ["--out", "workdir"]}
    for key in writes.get(argv[2].removeprefix("jobs.verbs."), []):
        assert any(a == key or a.startswith(key + "=") for a in argv), f"{name}: set {key} (on {STORAGE})"
    check_cli_call(entrypoint, monkeypatch)


def test_eval_rayjob_evaluates_on_the_gpus_with_an_auto_sized_pool(monkeypatch):
    from jobs.experiment_config import resolve_config

    entrypoint = docs(K8S / "rayjob-eval.yaml")[0]["spec"]["entrypoint"]
    ns = verb_namespace("eval", shlex.split(entrypoint)[3:], monkeypatch)
    monkeypatch.chdir(ROOT)
    cfg = resolve_config(ns)
    assert cfg.eval.use_gpu is True and cfg.eval.num_actors == "auto"
    gpu_groups = [p for g, p in ray_pods("rayjob-eval.yaml") if g != "head"]
    assert all(p["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") for p in gpu_groups)


def test_every_secret_and_volume_claim_a_k8s_manifest_uses_exists():
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    for name, key in re.findall(r"secretKeyRef: \{name: ([\w-]+), key: (\w+)\}", text):
        assert key in secrets()[name], f"{name}/{key}"
    for name in re.findall(r"secretRef: \{name: ([\w-]+)\}", text) + re.findall(r"secretRef:\s+name: ([\w-]+)", text):
        assert name in secrets(), name
    claims = {d["metadata"]["name"] for d in k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    assert set(re.findall(r"claimName: ([\w-]+)", text)) <= claims


def test_launcher_config_passes_rays_schema_and_uses_the_modern_layout():
    config = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())
    validate_config(json.loads(json.dumps(config)))  # Ray's JSON schema: no pre-1.0 keys (min_workers, head_node ...)
    validate_config(prepare_config(json.loads(json.dumps(config))))
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    assert all(f in head for f in ("--head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml"))
    assert "--dashboard-host=0.0.0.0" in head and "--address=$RAY_HEAD_IP:6379" in worker
    assert "redis" not in head + worker, "--redis-port / --redis-address are the pre-1.0 flags"
    assert config["provider"]["type"] == "aws" and config["head_node_type"] == "ray.head.default"
    assert config["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] > 0
    assert f"-v {STORAGE}:{STORAGE}" in config["docker"]["run_options"]
    assert any(STORAGE in c for c in config["initialization_commands"]), "mount shared storage on the host"
    assert config["file_mounts"] and "setup_commands" in config


RAYSERVICE = "rayservice-serve.yaml"


def serve_config() -> dict:
    return yaml.safe_load(docs(K8S / RAYSERVICE)[0]["spec"]["serveConfigV2"])


def test_rayservice_serve_config_passes_serves_schema_and_builds_lma3d_serves_application():
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    config = serve_config()
    ServeDeploySchema.model_validate(config)  # Ray Serve's own config-file schema
    (app,) = config["applications"]
    assert app["route_prefix"] == "/" and config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    RuntimeEnv(**app["runtime_env"])
    module, _, attr = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), attr)(app["args"])  # unknown args raise here
    assert isinstance(built, Application)
    assert re.fullmatch(r"models:/[\w.-]+@\w+", app["args"]["model"]), "serve the registered model by its alias"
    deployment = built._bound_deployment
    autoscaling = deployment._deployment_config.autoscaling_config
    args = app["args"]
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (args["replicas"], args["max_replicas"])
    (worker,) = ray_pods(RAYSERVICE)[1:]
    limits = worker[1]["containers"][0]["resources"]["limits"]
    assert deployment.ray_actor_options["num_gpus"] == 1 and int(limits["nvidia.com/gpu"]) >= 1
    assert deployment.ray_actor_options["num_cpus"] <= int(limits["cpu"])
    cluster = docs(K8S / RAYSERVICE)[0]["spec"]["rayClusterSpec"]
    assert autoscaling.max_replicas <= cluster["workerGroupSpecs"][0]["maxReplicas"] * int(limits["nvidia.com/gpu"])


def test_rayservice_pods_read_the_mlflow_secret_expose_serve_and_run_the_installed_ray():
    cluster = docs(K8S / RAYSERVICE)[0]["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    for group, pod in ray_pods(RAYSERVICE):
        (container,) = pod["containers"]
        tag = IMAGE_TAG.search(container["image"])
        assert tag and tag["ray"] == ray.__version__, group
        (source,) = container["envFrom"]
        assert "MLFLOW_TRACKING_URI" in secrets()[source["secretRef"]["name"]], group
        assert container["resources"]["limits"] == container["resources"]["requests"], group
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {v["name"]: v for v in pod["volumes"]}[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}
    head = ray_pods(RAYSERVICE)[0][1]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001, 8000}


def strict(schema):
    """KubeRay's CRD schema as kubectl's default strict field validation applies it: an object with declared
    properties rejects any other key (a misspelt `authOption` is an error, not silently pruned)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        open_ = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_:
            out["additionalProperties"] = False
        return out
    return [strict(v) for v in schema] if isinstance(schema, list) else schema


def kuberay_schema(root: str) -> dict:
    """The strict schema of a RayCluster (`rayClusterSpec`) or RayJob (`rayJobSpec`) spec in KubeRay v1.7.0
    (tests/fixtures/kuberay/make_schema.py builds the file from KubeRay's CRDs)."""
    schema = json.loads((ROOT / "tests" / "fixtures" / "kuberay" / "kuberay-v1.7.0.schema.json").read_text())
    return {**strict(schema), "$ref": f"#/$defs/{root}"}


@pytest.mark.parametrize("name", RAY_FILES)
def test_kuberay_manifest_passes_the_crd_schema(name):
    import jsonschema

    doc = docs(K8S / name)[0]
    validator = jsonschema.Draft202012Validator(kuberay_schema(f"{doc['kind'][0].lower()}{doc['kind'][1:]}Spec"))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc["spec"])]
    assert not errors, "\n".join(errors)


def test_the_crd_schema_check_rejects_a_misspelt_field():
    import jsonschema

    spec = cluster_spec(docs(K8S / "raycluster.yaml")[0])
    spec["authOption"] = spec.pop("authOptions")
    with pytest.raises(jsonschema.ValidationError, match="authOption"):
        jsonschema.validate(spec, kuberay_schema("rayClusterSpec"))


@pytest.mark.parametrize("name", [*RAY_FILES, "rayservice-serve.yaml"])
def test_ray_cluster_requires_the_token_from_the_auth_secret(name):
    doc = docs(K8S / name)[0]
    spec = cluster_spec(doc)
    assert spec["authOptions"] == {"mode": "token", "secretName": "lma3d-ray-auth"}
    assert "auth_token" in secrets()["lma3d-ray-auth"], "KubeRay reads the token from the key auth_token"
    major, minor, _ = map(int, spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "Ray token authentication needs Ray 2.52 or newer"
    for group, pod in ray_pods(name):
        env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & env, f"{group}: KubeRay sets these from authOptions"


def test_the_object_storage_cluster_mounts_no_shared_volume_and_gives_every_pod_the_bucket_secret():
    assert secrets()["lma3d-s3"].keys() >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LMA3D_CACHE_DIR"}
    cache = secrets()["lma3d-s3"]["LMA3D_CACHE_DIR"]
    for group, pod in ray_pods("raycluster-s3.yaml"):
        assert not [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v], group
        for container in pod["containers"]:
            refs = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
            assert "lma3d-s3" in refs, group
        if group != "head":  # the pods that run loaders keep the bank cache on a volume of their own
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert cache in mounts, group

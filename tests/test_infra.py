"""infra/: manifests parse and agree with each other, the installed Ray and MLflow, and the CLI they call.

Text-level checks (no docker, Kubernetes or network), with Ray's own schema and packaging code where they exist."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

import mlflow
import pytest
import ray
import yaml
from mlflow.server.security_utils import is_allowed_host_header
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

import jobs.entry
from jobs.cli import VERBS
from jobs.verbs.submit import split_argv

ROOT = Path(__file__).resolve().parents[1]
INFRA, K8S = ROOT / "infra", ROOT / "infra" / "k8s"
RAY_FILES = ["raycluster.yaml", "rayjob-shard.yaml", "rayjob-train.yaml", "rayjob-eval.yaml"]
RAYJOBS = RAY_FILES[1:]
STORAGE = "/mnt/cluster_storage"
IMAGE_TAG = re.compile(r"/lma3d:(?P<ray>\d+\.\d+\.\d+)-(?P<suffix>py\d+-(?:cu\d+|cpu))$")
API_VERSIONS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1",
                "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Job": "batch/v1", "Service": "v1",
                "PersistentVolumeClaim": "v1", "Secret": "v1"}  # fmt: skip


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


def services() -> dict[str, set[int]]:
    return {
        d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in k8s_objects() if d["kind"] == "Service"
    }


def compose() -> dict:
    return yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())


def interpolate(text: str) -> str:
    """Docker compose variable substitution with the values of infra/mlflow/.env.example."""
    env = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))  # fmt: skip
    return re.sub(r"\$\{(\w+)(?:(?::-|:\?)[^}]*)?\}", lambda m: env[m.group(1)], text).replace("$$", "$")


class _Parsed(Exception):
    pass


def verb_namespace(verb: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """Run the verb's real main() up to its argument parsing; fail if its parser rejects `args`."""
    real, seen = argparse.ArgumentParser.parse_known_args, {}

    def parse_and_stop(self, args=None, namespace=None):
        seen["ns"], seen["extra"] = real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stop)
    monkeypatch.setattr(jobs.entry, "setup_logging", lambda *a, **k: None)
    try:
        importlib.import_module(f"jobs.verbs.{verb}").main(list(args))
    except _Parsed:
        pass
    except SystemExit as e:
        pytest.fail(f"`lma3d {verb}` rejects {args} (exit {e.code}); see the usage message above")
    assert "ns" in seen, f"jobs.verbs.{verb}.main() returned without parsing its arguments"
    assert not seen["extra"], f"`lma3d {verb}` does not know {seen['extra']}"
    return seen["ns"]


def check_cli_call(command: str, monkeypatch) -> None:
    """`python -m jobs.verbs.<verb> ...` or `lma3d [submit] <verb> ...` names a real verb, flags, configs and keys."""
    argv = shlex.split(command, comments=True)
    if argv[:2] == ["python", "-m"]:
        assert argv[2].startswith("jobs.verbs."), command
        verb, args = argv[2].removeprefix("jobs.verbs."), argv[3:]
    else:
        assert argv[0] == "lma3d", command
        verb, args = argv[1], argv[2:]
        if verb == "submit":
            _, rest = split_argv(args)
            if rest[0] in ("--status", "--logs", "--stop"):
                assert len(rest) == 2, command
                return
            verb, args = rest[0], rest[1:]
    assert verb in VERBS, f"{command}: no verb {verb!r} in jobs/cli.py"
    if "--help" in args:
        return
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    concrete = [c for c in configs if "$" not in c and "<" not in c]
    if not list(ROOT.glob("configs/agpil/*.yaml")):
        pytest.skip("configs/agpil/*.yaml are not written yet: cannot check config paths")
    for config in concrete:
        assert (ROOT / config).is_file(), f"{command}: {config} does not exist"
    if importlib.util.find_spec(f"jobs.verbs.{verb}") is None:
        pytest.skip(f"jobs/verbs/{verb}.py does not exist yet: its flags cannot be checked")
    ns = verb_namespace(verb, args, monkeypatch)
    if hasattr(ns, "override_args") and configs == concrete and not any("$" in a or "<" in a for a in args):
        from jobs.experiment_config import resolve_config

        monkeypatch.chdir(ROOT)
        resolve_config(ns)  # unknown or mistyped override keys raise ConfigError naming them


def doc_commands() -> dict[str, str]:
    """`lma3d ...` / `python -m jobs....` lines inside the code blocks of the docs, by file and command number."""
    found = {}
    for path in (ROOT / "docs" / "cluster.md", INFRA / "README.md"):
        text, in_code = path.read_text().replace("\\\n", " ") if path.exists() else "", False
        for line in text.splitlines():
            in_code ^= line.lstrip().startswith("```")
            line = line.strip().rstrip(";")
            if in_code and (line.startswith("lma3d ") or line.startswith("python -m jobs.")):
                found[f"{path.name}#{sum(k.startswith(path.name) for k in found) + 1}"] = line
    return found


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


@pytest.mark.parametrize("where", sorted(doc_commands()))
def test_docs_commands_are_real_cli_calls(where, monkeypatch):
    check_cli_call(doc_commands()[where], monkeypatch)


def test_dockerfiles_install_the_project_and_run_the_cli(capsys):
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = dockerfile(name)
        assert not re.search(r"^ENTRYPOINT", text, re.M), f"{name}: KubeRay/`ray up` replace the command, no ENTRYPOINT"
        assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", text), name
        assert re.search(r"^COPY --chown=ray:users \. /home/ray/lma3d$", text, re.M), f"{name}: copy the repo"
        assert re.search(r"pip install [^\n]*/home/ray/lma3d\s", text), f"{name}: must pip install the copied project"
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
        assert cmd == ["lma3d", "--help"] and importlib.import_module("jobs.cli").main(cmd[1:]) == 0
        ignored = (INFRA / "docker" / f"{name}.dockerignore").read_text().split()
        assert {".git", "**/.venv", "work", "**/*.tar"} <= set(ignored)
        assert not {"jobs", "model", "pipeline", "configs", "pyproject.toml", "README.md"} & set(ignored)
    assert "DS_ACCELERATOR=cuda DS_BUILD_CPU_ADAM=1" in dockerfile("Dockerfile")
    assert re.search(r"^ENV [^\n]*DS_ACCELERATOR=cpu", dockerfile("Dockerfile.cpu"), re.M)
    assert re.search(r"ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", dockerfile("Dockerfile.cpu"), re.M)
    capsys.readouterr()


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


def test_every_secret_and_volume_claim_a_k8s_manifest_uses_exists():
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    for name, key in re.findall(r"secretKeyRef: \{name: ([\w-]+), key: (\w+)\}", text):
        assert key in secrets()[name], f"{name}/{key}"
    for name in re.findall(r"secretRef: \{name: ([\w-]+)\}", text) + re.findall(r"secretRef:\s+name: ([\w-]+)", text):
        assert name in secrets(), name
    claims = {d["metadata"]["name"] for d in k8s_objects() if d["kind"] == "PersistentVolumeClaim"}
    assert set(re.findall(r"claimName: ([\w-]+)", text)) <= claims


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
    (worker,) = ray_pods_of(RAYSERVICE)[1:]
    limits = worker[1]["containers"][0]["resources"]["limits"]
    assert deployment.ray_actor_options["num_gpus"] == 1 and int(limits["nvidia.com/gpu"]) >= 1
    assert deployment.ray_actor_options["num_cpus"] <= int(limits["cpu"])
    cluster = docs(K8S / RAYSERVICE)[0]["spec"]["rayClusterSpec"]
    assert autoscaling.max_replicas <= cluster["workerGroupSpecs"][0]["maxReplicas"] * int(limits["nvidia.com/gpu"])


def ray_pods_of(name: str) -> list[tuple[str, dict]]:
    spec = docs(K8S / name)[0]["spec"]["rayClusterSpec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(group, g["template"]["spec"]) for group, g in groups]


def test_rayservice_pods_read_the_mlflow_secret_expose_serve_and_run_the_installed_ray():
    cluster = docs(K8S / RAYSERVICE)[0]["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    for group, pod in ray_pods_of(RAYSERVICE):
        (container,) = pod["containers"]
        tag = IMAGE_TAG.search(container["image"])
        assert tag and tag["ray"] == ray.__version__, group
        (source,) = container["envFrom"]
        assert "MLFLOW_TRACKING_URI" in secrets()[source["secretRef"]["name"]], group
        assert container["resources"]["limits"] == container["resources"]["requests"], group
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {v["name"]: v for v in pod["volumes"]}[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}
    head = ray_pods_of(RAYSERVICE)[0][1]["containers"][0]
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

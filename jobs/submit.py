"""lma3d submit: run any verb on a Ray cluster as a Ray job, and watch it.

    lma3d submit shard --source /mnt/cluster_storage/raw/Full_view/Seen --out /mnt/cluster_storage/shards/full_seen \\
        --address http://HEAD:8265
    lma3d submit train --config configs/agpil/full_seen.yaml train.num_workers=8 --address http://HEAD:8265 --no-wait
    lma3d submit serve --model models:/lma3d@champion --host 0.0.0.0 --address http://HEAD:8265 --no-wait
    lma3d submit --status JOB_ID --address http://HEAD:8265      (also --logs JOB_ID, --stop JOB_ID)

The project folder ships as the job's working_dir (infra/runtime_env.yaml: .git, work/, data and checkpoints
excluded); MLFLOW_TRACKING_URI and friends are passed from your environment. Paths in the verb's arguments must
exist on the cluster.
"""

from __future__ import annotations

import asyncio
import sys
import time

from jobs.entry import UserError, entry
from jobs.submission import entrypoint, job_client, runtime_env, split_argv

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ACTIONS = ("--status", "--logs", "--stop")


@entry("submit")
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        own, rest = split_argv(argv)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        client = job_client(own.get("address"))
    except ValueError as e:
        raise UserError(str(e)) from None
    if rest[0] in ACTIONS:
        if len(rest) != 2:
            raise UserError(f"{rest[0]} takes one JOB_ID")
        return _act(client, rest[0], rest[1])
    verb, verb_args = rest[0], rest[1:]
    if verb in ("submit", "demo") or verb.startswith("-"):
        raise UserError(f"cannot submit {verb!r}: give a verb such as shard, train, eval or export")
    try:
        env = runtime_env(own.get("runtime_env"), own.get("working_dir"))
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    kwargs = {"entrypoint": entrypoint(verb, verb_args), "runtime_env": env}
    if own.get("submission_id"):
        kwargs["submission_id"] = own["submission_id"]
    if own.get("entrypoint_num_cpus"):
        kwargs["entrypoint_num_cpus"] = float(own["entrypoint_num_cpus"])
    job_id = _submit(client, kwargs)
    print(f"submitted {job_id}: {kwargs['entrypoint']}")
    if own.get("no_wait"):
        print(f"follow it with: lma3d submit --logs {job_id} --address {client.get_address()}")
        return 0
    return _follow(client, job_id)


def _submit(client, kwargs: dict, wait_s: float = 90.0) -> str:
    """submit_job, waiting for a freshly started head whose job agent is not up yet (HTTP 500 "No available
    agent to submit job") instead of failing the user's command."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            print("the cluster's job agent is not ready yet; retrying in 2 s", file=sys.stderr)
            time.sleep(2)


def _act(client, action: str, job_id: str) -> int:
    if action == "--status":
        print(client.get_job_status(job_id).value)
    elif action == "--logs":
        print(client.get_job_logs(job_id), end="")
    else:
        print("stopped" if client.stop_job(job_id) else "not running")
    return 0


def _follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends; exit 0 only if it SUCCEEDED."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\ndetached; the job keeps running. Stop it with: lma3d submit --stop {job_id}", file=sys.stderr)
        return 130
    status = client.get_job_status(job_id).value
    while status not in TERMINAL:  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = client.get_job_status(job_id).value
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main())

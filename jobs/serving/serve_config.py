"""ServeConfig: the Ray Serve application of `lma3d serve` (the `serve:` section of an experiment YAML)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds; 0.0.0.0 only when the endpoint must be reachable from other machines."""
    port: int = 8000
    """Port of the HTTP endpoint."""
    replicas: int = 1
    """Replicas of the model (each loads it once); the minimum when autoscaling."""
    max_replicas: int = 0
    """Above `replicas`: Ray Serve autoscales between the two on ongoing requests per replica."""
    target_ongoing_requests: float = 8.0
    """Autoscaling target: requests in flight per replica."""
    max_ongoing_requests: int = 256
    """Requests one replica accepts at once (the rest queue in the proxy); must allow a full batch. A client still
    sending its body holds one of them (up to body_timeout_s): well above the slow clients a replica should outlast."""
    max_batch_size: int = 8
    """Requests of concurrent clients run as one forward of up to this many samples."""
    batch_wait_ms: float = 10.0
    """How long a batch waits for more requests before it runs."""
    alias_poll_s: float = 30.0
    """For `models:/name@alias`: how often each replica asks the registry where the alias points (0: never)."""
    max_body_mb: float = 16.0
    """Larger request bodies are refused with 400."""
    body_timeout_s: float = 10.0
    """A request whose body has not fully arrived this long after the replica began reading it gets 400 and its
    connection is closed (a client holding its body would otherwise hold a replica's slot for as long as it likes)."""
    max_buffered_mb: float = 256.0
    """Request bodies one replica holds at once (being received or parsed); a request that would go over gets 503."""
    replica_cpus: float = 1.0
    """Ray CPUs reserved per replica."""
    threads_per_replica: int = 0
    """torch intra-op threads per replica (0: max(1, replica_cpus))."""
    prepare_threads: int = 1
    """Threads per replica that parse and prepare requests (decode, resize, tokenize) beside the forward. They
    hold the GIL, and the forward waits for it: one keeps it free (5 % more requests/s than Python's pool of 6
    at 8 clients on 2 cores). Raise it when a forward costs less than preparing (~12 ms a request), e.g. on a GPU."""
    use_gpu: bool = False
    """One GPU per replica, the model on it."""

    def __post_init__(self) -> None:
        if min(self.replicas, self.max_batch_size, self.prepare_threads) < 1:
            raise ValueError("serve.replicas, serve.max_batch_size and serve.prepare_threads must be >= 1")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError("serve.max_ongoing_requests must be >= serve.max_batch_size (a full batch)")
        if self.batch_wait_ms < 0 or self.alias_poll_s < 0 or self.max_body_mb <= 0 or self.replica_cpus < 0:
            raise ValueError("serve.batch_wait_ms and serve.alias_poll_s must be >= 0, serve.max_body_mb > 0")
        if not self.body_timeout_s > 0 or not self.max_buffered_mb >= self.max_body_mb:
            raise ValueError("serve.body_timeout_s must be > 0 and serve.max_buffered_mb >= serve.max_body_mb")
        if not 0 < self.port < 65536:
            raise ValueError(f"serve.port must be 1..65535, got {self.port}")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.replicas

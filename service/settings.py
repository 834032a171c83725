"""Service settings: pydantic-settings with the prefix BNFOLD_ (every CLI flag of `bnfold serve` has one)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bnfold.contract.npz_limits import CalibrationLimits

EquivalencePolicy = Literal["off", "sample", "always"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
HttpProtocol = Literal["auto", "h11", "httptools"]
GrpcTransport = Literal["http2", "grpcio"]


class Settings(BaseSettings):
    """Everything the service reads from its environment (BNFOLD_<FIELD>) or from `bnfold serve` flags."""

    model_config = SettingsConfigDict(env_prefix="BNFOLD_", extra="forbid")

    repository: Path = Field(description="Model repository directory (format bnfold-repository/1) to serve.")
    host: str = Field("127.0.0.1", description="Interface uvicorn listens on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on (0: any free port).")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="TCP port of the V2 gRPC server, beside HTTP (0: no gRPC server)."
    )
    grpc_transport: GrpcTransport = Field(
        "http2",
        description="What serves the gRPC port: http2 (bnfold's own HTTP/2 server on the event loop, on zttp; "
        "about a fifth of grpcio's CPU per call) or grpcio (grpc's asyncio server, with its own poller thread).",
    )
    grpc_stream_in_flight: int = Field(
        64,
        ge=1,
        le=4096,
        description="Requests of one gRPC ModelStreamInfer stream run at once; its next request is read once one "
        "is answered.",
    )
    grpc_max_concurrent_rpcs: int = Field(
        1000,
        ge=1,
        description="gRPC calls and streams served at once; one more is refused with RESOURCE_EXHAUSTED.",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token; when set, every endpoint except health and /metrics requires it."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest request body accepted (413).")
    max_batch_size: int = Field(
        1024, gt=0, description="Largest batch (axis 0) accepted per request (413) and per merged run."
    )
    dynamic_batching: bool = Field(
        True, description="Merge concurrent requests for the same model and variant into one onnxruntime run."
    )
    max_batch_delay_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="How long a run may wait for more requests to merge (0: merge only what is already waiting).",
    )
    equivalence_policy: EquivalencePolicy = Field(
        "sample", description="When a default (unversioned) request also runs the unfolded variant."
    )
    equivalence_sample_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Fraction of default requests checked under the 'sample' policy."
    )
    failover_on_mismatch: bool = Field(
        True, description="After a failed check, mark folded degraded and serve default requests unfolded."
    )
    max_calibration_samples: int = Field(
        1024, gt=0, description="Largest calibration batch (axis 0) an entry may declare; larger entries are refused."
    )
    max_calibration_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest decoded size of an entry's calibration arrays, read from their headers before "
        "decompression; larger entries are refused.",
    )
    equivalence_referee: bool = Field(
        True,
        description="Refer a failed check to the rounding referee: a disagreement explained by float32 rounding "
        "is counted but never fails over (false: every failed check counts as a defect).",
    )
    allow_non_finite: bool = Field(False, description="Accept NaN/Inf in input tensors (rejected by default).")
    inline_run_budget_ms: float = Field(
        2.0,
        ge=0.0,
        le=100.0,
        description="Runs estimated (from the load-time speed) to take at most this long execute on the event "
        "loop's thread instead of a worker thread (0: always a worker thread).",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session; 0 = CPU cores / number of sessions."
    )
    inter_op_threads: int = Field(1, ge=1, description="onnxruntime inter-op threads per session.")
    graph_optimization: GraphOptimization = Field(
        "all", description="onnxruntime graph optimisation of the folded variant (unfolded always 'disable')."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    access_log: bool = Field(
        True, description="One line per HTTP request on standard output, as uvicorn writes it, written in batches "
        "(at most 0.1 s late); only at log level info or debug."
    )  # fmt: skip
    http_protocol: HttpProtocol = Field(
        "auto", description="uvicorn's HTTP/1.1 implementation (auto: httptools when installed, else h11)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Longest time a request head (request line and headers) may take to arrive, "
        "from the connection's start or the first byte of a next request; then 408 and close."
    )  # fmt: skip
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest time a request body may take to arrive after its head; then 408 and close."
    )
    keep_alive_timeout_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(
        1000, ge=1, description="Most open connections; past it the one waiting longest for its request head "
        "(or idle), else for its body, is closed with 503 (or the new one is). Lowered to fit the open-file limit."
    )  # fmt: skip
    graceful_shutdown_s: int = Field(
        10,
        ge=0,
        description="On SIGTERM, HTTP requests and gRPC calls in progress get this long to finish (both ports stop "
        "at once; with --workers N a worker's gRPC port stops after its HTTP); the rest are cancelled.",
    )
    log_burst: int = Field(20, ge=1, description="Log lines of one kind allowed per log interval (rest counted).")
    log_interval_s: float = Field(10.0, gt=0, description="The interval of --log-burst.")
    repository_poll_seconds: float = Field(
        0.0,
        ge=0.0,
        description="Every this many seconds, load new or changed repository entries and unload removed ones "
        "(0: off; POST /v2/repository/models/{m}/load and …/unload still work).",
    )
    load_timeout_seconds: float = Field(
        120.0, gt=0.0, description="A model whose load takes longer is refused with that reason; others go on."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Serving processes sharing the HTTP and gRPC ports, each with its own onnxruntime sessions; "
        "the CPU cores are divided between them, metrics are summed over all of them (service/workers.py).",
    )

    @field_validator("repository")
    @classmethod
    def _repository_is_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"repository {str(value)!r} is not a directory; build one with bnfold build-default")
        return value

    @field_validator("http_protocol")
    @classmethod
    def _protocol_is_installed(cls, value: str) -> str:
        if value == "httptools" and importlib.util.find_spec("httptools") is None:
            raise ValueError("httptools is not installed; pip install httptools, or use h11 or auto")
        return value

    @field_validator("api_key")
    @classmethod
    def _empty_key_means_no_auth(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty BNFOLD_API_KEY (as compose files write for an unset variable) turns auth off, never on
        with an empty token."""
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    def calibration_limits(self) -> CalibrationLimits:
        return CalibrationLimits(self.max_calibration_samples, self.max_calibration_bytes)

    def cores_per_worker(self) -> int:
        """This process's share of the CPU cores: max(1, cores // workers)."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    def threads_per_session(self, session_count: int) -> int:
        """Intra-op threads per session: the setting, or the worker's cores shared out so sessions don't
        oversubscribe: max(1, cores // workers // sessions)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, self.cores_per_worker() // max(1, session_count))

    def concurrent_runs(self, session_count: int) -> int:
        """onnxruntime runs allowed at once in the whole process: the worker's cores // intra-op threads (at
        least 1), so runs of all sessions of all workers together never oversubscribe the cores."""
        return max(1, self.cores_per_worker() // self.threads_per_session(session_count))

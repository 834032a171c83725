"""bnfold against the servers users would pick instead, side by side in one run (`make bench-peers`).

    .venv/bin/python -m bench.peers [--repository model_repository] [--rounds 3] [--seconds 5] [--quick]

Every server serves the same model (digits_resnet's folded.onnx from the repository `bnfold build-default`
builds) with onnxruntime on one intra-op thread (what `bnfold serve` gives each session of that repository), and
gets the same request (the V2 JSON body of one calibration sample; bnfold's binary row sends the same tensor as
V2 binary) from the same load generator (wrk, one thread, keep-alive; bench.wrk_load) at 1 and 32 connections:

    bare ASGI floor    bench.bare_server on uvicorn + uvloop + httptools (reads the body, answers a fixed JSON)
    FastAPI, naive     bench.peer_servers.fastapi_v2: pydantic body, numpy, session.run, uvicorn[standard]
    KServe             kserve's Python ModelServer with bench.peer_servers.kserve_onnx (own virtualenv)
    MLServer           mlserver with bench.peer_servers.mlserver_onnx, default settings and parallel_workers=0
    bnfold             `bnfold serve` on the whole repository: as shipped (log level info, so an access log line
                       per request; equivalence policy sample 1 %), and with log level warning and policy off
                       over V2 JSON, V2 binary and V2 gRPC
                       (gRPC on its default transport, bnfold's HTTP/2 server, and on BNFOLD_GRPC_TRANSPORT=grpcio)
    gRPC floor         bench.http2_grpc_floor: a handler on bnfold's HTTP/2 server (zttp) and uvloop, what
                       bnfold's gRPC port runs on, answering fixed bytes as long as bnfold's answer; the same as
                       an ASGI app on uvicorn's HTTP/2 (bench.asgi_grpc_floor), on grpcio's asyncio server on
                       uvloop (bench.grpc_floor) and on grpclib, the other Python gRPC server (pure-Python HTTP/2;
                       bench.peer_servers.grpclib_floor, own virtualenv)

The gRPC rows get the same tensor as raw_input_contents from h2load (Debian package nghttp2-client; a C client
like wrk, one HTTP/2 connection per request in flight; bench.h2load_grpc), which checks every answer's length.
The ModelStreamInfer rows send c requests together on one stream (c in flight), then open the next stream;
their latency columns are the whole stream's.

KServe, MLServer and grpclib run in virtualenvs of their own, created on first use (bench.peer_envs). Rounds are
interleaved: each round starts every server in turn (rotated order), alone on the machine while measured,
checks its answer against onnxruntime in process, warms it up, measures 1 then 32 connections, and stops it.
Reported per server and concurrency: the median round by throughput, with its p50/p99 and the server's CPU per
request (/proc utime+stime of its process tree over the window). Prints the machine, the load average and a
markdown table; saves bench/results/peers.json.

A new server is one more `Peer` in PEERS: a name, how to start it, and how to check and load it (wrk with an
HTTP body; GrpcPeer: h2load with a gRPC frame, bench.h2load_grpc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from bench.common import machine_description, markdown_table, package_version, save_results
from bench.grpc_load import infer_once, stream_once
from bench.h2load_grpc import h2load_binary, run_h2load_grpc
from bench.http_load import send_once
from bench.peer_envs import GRPCLIB, KSERVE, MLSERVER, python_of
from bench.processes import ROOT, Server, bare_server, bnfold_serve, free_port, grpc_floor, running
from bench.serving import build_zoo
from bench.serving_inputs import ModelRequests, first_output, folded_session, model_requests
from bench.wrk_load import HttpBody, WrkRun, run_wrk, wrk_binary

MODEL = "digits_resnet"
CONCURRENCIES = (1, 32)
PEER_SERVERS = ROOT / "bench" / "peer_servers"


@dataclass(frozen=True)
class Setup:
    """What every peer is given: the repository, the model's folded.onnx and its requests."""

    repository: Path
    requests: ModelRequests

    @property
    def onnx(self) -> Path:
        return self.repository / MODEL / "folded.onnx"


@dataclass(frozen=True)
class Peer:
    """One row of the comparison: how to start the server, what it is sent ("json" or "binary"), and whether it
    answers with the model's output (all but the floor, whose fixed answer is only checked for status 200)."""

    name: str
    start: Callable[[Setup], AbstractContextManager[Server]]
    kind: str = "json"
    infers: bool = True

    def post(self, setup: Setup) -> HttpBody:
        return HttpBody.from_request(getattr(setup.requests, self.kind))

    def load(self, setup: Setup, server: Server, concurrency: int, seconds: float) -> WrkRun:
        return run_wrk(server.port, self.post(setup), concurrency, seconds, server.pid)

    def check(self, setup: Setup, server: Server) -> None:
        """RuntimeError unless the answer equals onnxruntime in process (1e-4 relative)."""
        status, body = send_once(server.port, self.post(setup).request())
        if status != 200:
            raise RuntimeError(f"{self.name}: status {status}: {body[:300]!r}")
        if self.infers:
            np.testing.assert_allclose(first_output(body, self.kind), expected_output(setup), rtol=1e-4, atol=1e-5)


@dataclass(frozen=True)
class GrpcPeer(Peer):
    """A V2 gRPC server: the same tensor as raw_input_contents, loaded by h2load (bench.h2load_grpc: a C client,
    one HTTP/2 connection per request in flight) instead of wrk."""

    kind: str = "grpc"

    def load(self, setup: Setup, server: Server, concurrency: int, seconds: float) -> WrkRun:
        port = self._port(server)
        answer_length = len(infer_once(port, setup.requests.grpc).SerializeToString())
        return run_h2load_grpc(port, setup.requests.grpc, answer_length, concurrency, seconds, server.pid)

    def check(self, setup: Setup, server: Server) -> None:
        check_raw_output(infer_once(self._port(server), setup.requests.grpc), setup)

    def _port(self, server: Server) -> int:
        if server.grpc_port is None:
            raise RuntimeError(f"{self.name}: the server has no gRPC port")
        return server.grpc_port


@dataclass(frozen=True)
class GrpcStreamPeer(GrpcPeer):
    """A gRPC server's ModelStreamInfer: at concurrency c, h2load keeps one stream open at a time carrying c
    requests sent together (c in flight), then the next (bench.h2load_grpc); latency is the whole stream's."""

    kind: str = "grpc stream"

    def load(self, setup: Setup, server: Server, concurrency: int, seconds: float) -> WrkRun:
        port = self._port(server)
        answer_length = len(stream_once(port, setup.requests.grpc).SerializeToString())
        request = setup.requests.grpc
        return run_h2load_grpc(port, request, answer_length, 1, seconds, server.pid, stream_messages=concurrency)

    def check(self, setup: Setup, server: Server) -> None:
        answer = stream_once(self._port(server), setup.requests.grpc)
        if answer.error_message:
            raise RuntimeError(f"{self.name}: {answer.error_message}")
        check_raw_output(answer.infer_response, setup)


def check_raw_output(response: service_pb2.ModelInferResponse, setup: Setup) -> None:
    """AssertionError unless the response's raw output equals onnxruntime in process (1e-4 relative)."""
    output = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(response.outputs[0].shape)
    np.testing.assert_allclose(output, expected_output(setup), rtol=1e-4, atol=1e-5)


def expected_output(setup: Setup) -> np.ndarray:
    return folded_session(setup.requests.entry, 1).run(None, setup.requests.inputs)[0]


def _http2_grpc_floor(setup: Setup) -> AbstractContextManager[Server]:
    """bench.http2_grpc_floor (bnfold's HTTP/2 server on zttp) answering what bnfold answers."""
    return grpc_floor(_bnfold_like_answer(setup), (sys.executable, "-m", "bench.http2_grpc_floor"))


def _asgi_grpc_floor(setup: Setup) -> AbstractContextManager[Server]:
    """bench.asgi_grpc_floor (an ASGI app on uvicorn's HTTP/2) answering what bnfold answers."""
    return grpc_floor(_bnfold_like_answer(setup), (sys.executable, "-m", "bench.asgi_grpc_floor"))


def _grpc_floor(setup: Setup) -> AbstractContextManager[Server]:
    """bench.grpc_floor (grpcio) answering what bnfold answers."""
    return grpc_floor(_bnfold_like_answer(setup))


def _grpclib_floor(setup: Setup) -> AbstractContextManager[Server]:
    """bench.peer_servers.grpclib_floor (grpclib, its own virtualenv) answering what bnfold answers."""
    server = (str(python_of("grpclib")), str(PEER_SERVERS / "grpclib_floor.py"))
    return grpc_floor(_bnfold_like_answer(setup), server)


def _bnfold_like_answer(setup: Setup) -> bytes:
    """The serialised ModelInferResponse bnfold gives: the model's output as raw contents, with bnfold's model
    name, version and parameters (so a floor's answer has the same length)."""
    manifest = json.loads((setup.requests.entry / "model.json").read_text())
    output = expected_output(setup)
    response = service_pb2.ModelInferResponse(model_name=MODEL, model_version="folded")
    response.parameters["bnfold_variant"].string_param = "folded"
    response.parameters["bnfold_equivalence_checked"].bool_param = False
    response.parameters["bnfold_failed_over"].bool_param = False
    response.outputs.add(name=manifest["outputs"][0]["name"], datatype="FP32", shape=output.shape)
    response.raw_output_contents.append(output.tobytes())
    return response.SerializeToString()


def _fastapi(setup: Setup) -> AbstractContextManager[Server]:
    port = free_port()
    command = [sys.executable, "-m", "bench.peer_servers.fastapi_v2", "--model", str(setup.onnx)]
    return running([*command, "--name", MODEL, "--port", str(port)], port, "/", dict(os.environ), timeout=60)


def _kserve(setup: Setup) -> AbstractContextManager[Server]:
    port = free_port()
    command = [str(python_of("kserve")), str(PEER_SERVERS / "kserve_onnx.py"), "--model_name", MODEL]
    command += ["--model_path", str(setup.onnx), "--http_port", str(port), "--grpc_port", str(free_port())]
    return running(command, port, f"/v2/models/{MODEL}/ready", _peer_env(), timeout=120)


def _mlserver(parallel_workers: int | None) -> Callable[[Setup], AbstractContextManager[Server]]:
    @contextmanager
    def start(setup: Setup) -> Iterator[Server]:
        port = free_port()
        settings: dict[str, Any] = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
        if parallel_workers is not None:
            settings["parallel_workers"] = parallel_workers
        model = {"name": MODEL, "implementation": "mlserver_onnx.OnnxModel", "parameters": {"uri": str(setup.onnx)}}
        with tempfile.TemporaryDirectory(prefix="bnfold-mlserver-") as folder:
            (Path(folder) / "settings.json").write_text(json.dumps(settings))
            (Path(folder) / "model-settings.json").write_text(json.dumps(model))
            mlserver = python_of("mlserver").parent / "mlserver"
            env = {**_peer_env(), "PYTHONPATH": str(PEER_SERVERS)}
            with running(
                [str(mlserver), "start", folder], port, f"/v2/models/{MODEL}/ready", env, timeout=180
            ) as server:
                yield server

    return start


def _peer_env() -> dict[str, str]:
    """The environment of a peer in its own virtualenv: ours without our PYTHONPATH/VIRTUAL_ENV."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _bnfold(setup: Setup) -> AbstractContextManager[Server]:
    return bnfold_serve(setup.repository, equivalence_policy="off", log_level="warning")


def _bnfold_on_grpcio(setup: Setup) -> AbstractContextManager[Server]:
    return bnfold_serve(setup.repository, equivalence_policy="off", log_level="warning", grpc_transport="grpcio")


def _bnfold_as_shipped(setup: Setup) -> AbstractContextManager[Server]:
    return bnfold_serve(setup.repository, log_level="info")  # defaults: access log on, policy sample 1 %


PEERS: tuple[Peer, ...] = (
    Peer("bare ASGI floor (uvicorn + uvloop + httptools)", lambda setup: bare_server(), infers=False),
    Peer("FastAPI, naive V2 server (uvicorn[standard])", _fastapi),
    Peer(f"KServe {KSERVE} Python server", _kserve),
    Peer(f"MLServer {MLSERVER}, default settings", _mlserver(None)),
    Peer(f"MLServer {MLSERVER}, parallel_workers=0", _mlserver(0)),
    Peer("bnfold serve as shipped (access log, policy sample 1 %), V2 JSON", _bnfold_as_shipped, "json"),
    Peer("bnfold serve, no access log, policy off, V2 JSON", _bnfold, "json"),
    Peer("bnfold serve, no access log, policy off, V2 binary", _bnfold, "binary"),
    GrpcPeer("bare gRPC floor (bnfold's HTTP/2 server on zttp, uvloop, fixed answer), gRPC", _http2_grpc_floor),
    GrpcPeer("bare gRPC floor (ASGI app on uvicorn's HTTP/2 via zttp, uvloop, fixed answer), gRPC", _asgi_grpc_floor),
    GrpcPeer("bare gRPC floor (grpcio asyncio server on uvloop, fixed answer), gRPC", _grpc_floor),
    GrpcPeer(f"bare gRPC floor on grpclib {GRPCLIB} (pure-Python HTTP/2, uvloop, fixed answer), gRPC", _grpclib_floor),
    GrpcPeer("bnfold serve, no access log, policy off, V2 gRPC", _bnfold),
    GrpcPeer("bnfold serve, no access log, policy off, V2 gRPC on grpcio", _bnfold_on_grpcio),
    GrpcStreamPeer("bare gRPC floor (bnfold's HTTP/2 server, as above), gRPC ModelStreamInfer", _http2_grpc_floor),
    GrpcStreamPeer("bare gRPC floor (grpcio, as above), gRPC ModelStreamInfer", _grpc_floor),
    GrpcStreamPeer("bnfold serve, no access log, policy off, V2 gRPC ModelStreamInfer", _bnfold),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_round(peer: Peer, setup: Setup, seconds: float, warmup: float) -> dict[int, dict[str, Any]]:
    """Start the peer, check it, then per concurrency: a warm-up run, then the measured run."""
    found = {}
    with peer.start(setup) as server:
        peer.check(setup, server)
        for concurrency in CONCURRENCIES:
            peer.load(setup, server, concurrency, warmup)
            run = peer.load(setup, server, concurrency, seconds)
            found[concurrency] = {**run.to_json(), "load_average_1m": os.getloadavg()[0]}
            log(
                f"{peer.name} c={concurrency}: {run.throughput_rps:.0f}/s p50 {run.p50_ms:.2f} ms "
                f"p99 {run.p99_ms:.2f} ms server CPU {run.server_cpu_us or 0:.0f} µs/req"
            )
    return found


def compare(peers: tuple[Peer, ...], setup: Setup, rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {p.name: {c: [] for c in CONCURRENCIES} for p in peers}
    for round_index in range(rounds):
        shift = round_index % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            for concurrency, run in measure_round(peer, setup, seconds, warmup).items():
                runs[peer.name][concurrency].append(run)
    return {name: {str(c): _median(found) for c, found in by_c.items()} for name, by_c in runs.items()}


def _median(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput; every round's throughput kept under 'rounds'."""
    ranked = sorted(found, key=lambda row: row["throughput_rps"])
    return {**ranked[len(ranked) // 2], "rounds": [round(row["throughput_rps"], 1) for row in found]}


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    floor = next(iter(results.values()))
    header = ["server"]
    for c in CONCURRENCIES:
        header += [f"c={c} req/s", f"c={c} p50 ms", f"c={c} p99 ms", f"c={c} server CPU µs/req"]
    header.append("c=32 % of floor")
    rows = []
    for name, by_c in results.items():
        row = [name]
        for c in CONCURRENCIES:
            run = by_c[str(c)]
            row += [f"{run['throughput_rps']:,.0f}", f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}"]
            row.append(f"{run['server_cpu_us']:.0f}")
        row.append(f"{100 * by_c['32']['throughput_rps'] / floor['32']['throughput_rps']:.0f}%")
        rows.append(row)
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="repository of `bnfold build-default` (default: build one)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (smoke run; results not saved)")
    parser.add_argument(
        "--only", help="only the servers whose name contains one of these comma-separated words (results not saved)"
    )
    arguments = parser.parse_args()
    rounds, seconds = (1, 2.0) if arguments.quick else (arguments.rounds, arguments.seconds)
    wrk_binary()
    h2load_binary()
    for name in ("kserve", "mlserver", "grpclib"):
        python_of(name)  # build the peers' virtualenvs before anything is timed
    with tempfile.TemporaryDirectory(prefix="bnfold-peers-") as temporary:
        repository = arguments.repository or build_zoo(Path(temporary) / "zoo")
        setup = Setup(repository, model_requests(repository, MODEL))
        load_before = os.getloadavg()
        machine = machine_description(
            load_average_before=[round(x, 2) for x in load_before],
            wrk=wrk_binary(),
            fastapi=package_version("fastapi"),
            uvicorn=package_version("uvicorn"),
            kserve=KSERVE,
            mlserver=MLSERVER,
            grpclib=GRPCLIB,
            rounds=rounds,
            seconds=seconds,
            request_json_body_bytes=len(HttpBody.from_request(setup.requests.json).body),
            request_binary_body_bytes=len(HttpBody.from_request(setup.requests.binary).body),
        )
        log(f"machine: {machine['cpu']}, {machine['logical_cores']} cores, load average {load_before}")
        wanted = arguments.only.split(",") if arguments.only else []
        peers = tuple(p for p in PEERS if not wanted or any(w in p.name for w in wanted) or p is PEERS[0])
        results = compare(peers, setup, rounds, seconds, warmup=1.0)
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    loads = [run["load_average_1m"] for by_c in results.values() for run in by_c.values()]
    machine["load_average_1m_median_during"] = round(statistics.median(loads), 2)
    print(f"\n### Peers: {MODEL}, one V2 request of one sample, wrk 1 thread, median of {rounds} rounds\n")
    print(
        f"machine: {machine['cpu']}, {machine['logical_cores']} logical cores; load average (1 min) "
        f"before {load_before[0]:.2f}, median during the runs {machine['load_average_1m_median_during']:.2f}\n"
    )
    print(table(results))
    if not arguments.quick and not arguments.only:
        print(f"\nsaved {save_results('peers', {'machine': machine, 'model': MODEL, 'results': results})}")


if __name__ == "__main__":
    main()

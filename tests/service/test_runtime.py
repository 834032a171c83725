"""The unfolded variant really executes BatchNormalization: proven with onnxruntime's profiler (the BN kernel
runs) and with the optimised graph onnxruntime writes out (BN still there), under the service's own options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bnfold.service.loader import session_configs
from bnfold.service.runtime import SessionConfig, session_options
from bnfold.service.settings import Settings
from tests.service.builders import write_entry


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory, rng: np.random.Generator) -> Path:
    root = tmp_path_factory.mktemp("runtime")
    write_entry(root, "digits", rng)
    return root / "digits"


def configs(entry: Path) -> dict[str, SessionConfig]:
    return session_configs(Settings(repository=entry.parent), session_count=2)


def executed_ops(path: Path, config: SessionConfig, workdir: Path, runs: int) -> list[str]:
    """Op types of every kernel onnxruntime's profiler saw executing over `runs` runs."""
    options = session_options(config)
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"input": np.ones((3, 1, 8, 8), np.float32)})
    events = json.loads(Path(session.end_profiling()).read_text())
    return [e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def optimised_batchnorm_count(path: Path, config: SessionConfig, workdir: Path) -> int:
    options = session_options(config)
    options.optimized_model_filepath = str(workdir / f"optimised-{config.graph_optimization}.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    return sum(node.op_type == "BatchNormalization" for node in graph.node)


def test_unfolded_variant_runs_batchnorm_kernels(entry: Path, tmp_path: Path) -> None:
    config = configs(entry)["unfolded"]
    assert config.graph_optimization == "disable"
    ops = executed_ops(entry / "unfolded.onnx", config, tmp_path, runs=4)
    assert ops.count("BatchNormalization") == 4  # one BN node, executed on each of the 4 runs
    assert ops.count("Conv") == 4


def test_unfolded_graph_keeps_batchnorm_after_onnxruntime_optimisation(entry: Path, tmp_path: Path) -> None:
    assert optimised_batchnorm_count(entry / "unfolded.onnx", configs(entry)["unfolded"], tmp_path) == 1


def test_the_check_is_sensitive_full_optimisation_would_fuse_batchnorm(entry: Path, tmp_path: Path) -> None:
    """Guards the two tests above: with the folded variant's level ('all') onnxruntime fuses Conv+BN."""
    folded_level = configs(entry)["folded"]
    assert folded_level.graph_optimization == "all"
    assert optimised_batchnorm_count(entry / "unfolded.onnx", folded_level, tmp_path) == 0
    assert "BatchNormalization" not in executed_ops(entry / "unfolded.onnx", folded_level, tmp_path, runs=1)


def test_folded_variant_has_no_batchnorm(entry: Path, tmp_path: Path) -> None:
    ops = executed_ops(entry / "folded.onnx", configs(entry)["folded"], tmp_path, runs=2)
    assert "BatchNormalization" not in ops and ops.count("Conv") + ops.count("FusedConv") == 2


def test_session_options_are_pinned(entry: Path) -> None:
    config = SessionConfig(intra_op_threads=1, inter_op_threads=1, graph_optimization="disable")
    options = session_options(config)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize(("setting", "sessions", "cores", "expected"), [(0, 4, 2, 1), (0, 2, 8, 4), (3, 40, 2, 3)])
def test_threads_per_session_do_not_oversubscribe(
    entry: Path, monkeypatch: pytest.MonkeyPatch, setting: int, sessions: int, cores: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    settings = Settings(repository=entry.parent, intra_op_threads=setting)
    assert settings.threads_per_session(sessions) == expected

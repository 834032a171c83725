"""Benchmark 1, "what folding buys": latency of unfolded, folded and BN-deleted networks.

For every zoo model (trained, its own BN statistics) and the ResNet-18/ResNet-50/MobileNetV2 reference
networks at 224×224 (plus the small DenseNet, whose pre-activation BNs mostly cannot fold; BN statistics
randomised so no BN is an identity), three variants are timed:

- ``unfolded``: the network as built;
- ``folded``: ``folding.fold(unfolded, example)``;
- ``bn_deleted``: every BatchNorm removed, the best folding can possibly do (bench/folding_variants.py),

in PyTorch eager (``torch.inference_mode``) and in onnxruntime at its default optimisation level (models
exported with ``folding.export.export_onnx``: dynamo, optimize=False), batch 1 and 32. Per (model,
runtime, batch) the three variants are interleaved (bench/common.py). Reported per cell: median latency,
unfolded ÷ folded (the speed-up folding gives) and folded ÷ bn_deleted (how far folding is from the
ideal; target ≤ 1.03). Each variant's BN count (modules / ONNX nodes) and the folded-vs-unfolded output
error are recorded too.

Run: ``.venv/bin/python -m bench.folding_speedup`` (100 repetitions at batch 1, 10 at batch 32, 2 warm-up
rounds, and more rounds for cells faster than ``--min-seconds`` 2 s — up to 20,000, so that the tiny zoo
models' sub-millisecond medians are stable to well under 3 %) or ``--quick`` (smoke run, 64×64,
batch 1 and 4, 2 repetitions; saved as folding_speedup_quick.json). Results are saved after every model,
with "complete": false until the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.common import Summary, interleaved_timings, machine_description, markdown_table, save_results
from bench.folding_variants import (
    INPUT_NAME,
    VARIANTS,
    build_variants,
    export_variants,
    ort_optimised_op_count,
    ort_session,
    output_errors,
)
from bnfold.folding.errors import BnfoldError
from bnfold.folding.export import count_op
from tests.nets.reference_nets import REFERENCE_NETS, randomize_batchnorm

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class BenchCase:
    """One network to benchmark: how to build it (eval mode) and its per-sample input shape."""

    name: str
    source: str  # "reference" or "zoo"
    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]


@dataclass(frozen=True)
class Settings:
    """Batches, repetitions per batch, warm-up rounds and the thread count of both runtimes."""

    batches: tuple[int, ...] = (1, 32)
    repetitions: dict[int, int] = field(default_factory=lambda: {1: 100, 32: 10})
    warmup: int = 2
    threads: int = 2
    min_seconds: float = 0.0  # per cell: more rounds than `repetitions` when the variants are that fast


def reference_cases(resolution: int = 224, names: Sequence[str] = tuple(REFERENCE_NETS)) -> list[BenchCase]:
    """The reference nets with randomised BN statistics (seeded), input (3, resolution, resolution)."""
    return [
        BenchCase(name, "reference", _randomised(REFERENCE_NETS[name]), (3, resolution, resolution)) for name in names
    ]


def _randomised(factory: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    return lambda: randomize_batchnorm(factory(seed=0), seed=1)


def zoo_cases() -> tuple[list[BenchCase], str | None]:
    """Every zoo model (trained, from the weights cache when present), or ([], why) when there is no zoo."""
    try:
        from bnfold.models.zoo.catalog import ZOO, trained
        from bnfold.models.zoo.data import load_split
    except ImportError as error:
        return [], f"the model zoo is not importable ({error}); only reference nets were measured"

    def builder(name: str) -> Callable[[], nn.Module]:
        return lambda: trained(name).model.eval()

    cases = [
        BenchCase(name, "zoo", builder(name), tuple(load_split(spec.dataset).x_test.shape[1:]))
        for name, spec in ZOO.items()
    ]
    return cases, None


MAX_REPETITIONS = 20_000


def repetitions_for(runners: dict[str, Callable[[], object]], repetitions: int, min_seconds: float) -> int:
    """`repetitions`, or more rounds (≤ MAX_REPETITIONS) so that the cell lasts about `min_seconds`: a
    sub-millisecond variant's median over 100 calls moves by more than the 3 % being measured.

    The round time is estimated after one untimed round, over rounds adding up to ≥ min_seconds / 20 (a
    single cold round overestimates it several times over)."""
    if min_seconds <= 0:
        return repetitions
    for runner in runners.values():
        runner()
    rounds, start, elapsed = 0, time.perf_counter(), 0.0
    while elapsed < min_seconds / 20 and rounds < MAX_REPETITIONS:
        for runner in runners.values():
            runner()
        rounds += 1
        elapsed = time.perf_counter() - start
    round_seconds = max(elapsed / rounds, 1e-9)
    return max(repetitions, min(MAX_REPETITIONS, int(min_seconds / round_seconds)))


def time_cell(
    runners: dict[str, Callable[[], object]], repetitions: int, warmup: int, min_seconds: float = 0.0
) -> dict[str, Any]:
    """Interleaved timings of the variants of one (model, runtime, batch) cell, and the ratios."""
    rounds = repetitions_for(runners, repetitions, min_seconds)
    summaries = {
        name: Summary.of(samples)
        for name, samples in interleaved_timings(runners, repetitions=rounds, warmup=warmup).items()
    }
    median = {name: summary.median_ms for name, summary in summaries.items()}
    cell: dict[str, Any] = {
        "latency_ms": {name: summary.to_json() for name, summary in summaries.items()},
        "unfolded_over_folded": median["unfolded"] / median["folded"],
        "folded_over_bn_deleted": median["folded"] / median["bn_deleted"],
    }
    return cell


def measure_case(case: BenchCase, settings: Settings) -> dict[str, Any]:
    """Everything for one network: BN counts, output errors, and a timed cell per runtime and batch."""
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *case.sample_shape, generator=generator)
    models, info = build_variants(case.build(), example)
    protos = export_variants(models, example)
    sessions = {name: ort_session(proto, settings.threads) for name, proto in protos.items()}
    reference = ort_session(protos["unfolded"], settings.threads, optimise=False)
    result: dict[str, Any] = {
        "model": case.name,
        "source": case.source,
        "sample_shape": list(case.sample_shape),
        **info,
        "batchnorm_onnx_nodes": {name: count_op(proto) for name, proto in protos.items()},
        "batchnorm_after_ort_optimiser": {
            name: ort_optimised_op_count(proto, settings.threads) for name, proto in protos.items()
        },
        "output_error": output_errors(models, sessions, reference, example),
        "cells": [],
    }
    for batch in settings.batches:
        x = torch.randn(batch, *case.sample_shape, generator=generator)
        repetitions = settings.repetitions[batch]
        result["cells"] += time_batch(models, sessions, x, repetitions, settings.warmup, settings.min_seconds)
    return result


def time_batch(
    models: dict[str, nn.Module],
    sessions: dict[str, ort.InferenceSession],
    x: torch.Tensor,
    repetitions: int,
    warmup: int,
    min_seconds: float = 0.0,
) -> list[dict[str, Any]]:
    """The torch cell (under inference_mode) and the onnxruntime cell of one batch."""
    batch = int(x.shape[0])
    with torch.inference_mode():
        torch_runners = {name: _torch_runner(models[name], x) for name in VARIANTS}
        torch_timing = time_cell(torch_runners, repetitions, warmup, min_seconds)
    feed = {INPUT_NAME: x.numpy()}
    ort_runners = {name: _ort_runner(sessions[name], feed) for name in VARIANTS}
    ort_timing = time_cell(ort_runners, repetitions, warmup, min_seconds)
    return [
        {"runtime": "torch", "batch": batch, **torch_timing},
        {"runtime": "onnxruntime", "batch": batch, **ort_timing},
    ]


def _torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: model(x)


def _ort_runner(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per (model, runtime, batch): the three medians and the two ratios."""
    header = ["model", "runtime", "batch", "unfolded ms", "folded ms", "BN-deleted ms", "unfolded ÷ folded",
              "folded ÷ BN-deleted"]  # fmt: skip
    rows = []
    for result in results:
        for cell in result["cells"]:
            latency = {name: cell["latency_ms"][name]["median_ms"] for name in VARIANTS}
            rows.append([
                result["model"], cell["runtime"], cell["batch"],
                *(format_ms(latency[name]) for name in VARIANTS),
                f"{cell['unfolded_over_folded']:.3f}", f"{cell['folded_over_bn_deleted']:.3f}",
            ])  # fmt: skip
    return markdown_table(header, rows)


def format_ms(milliseconds: float) -> str:
    """Two decimals, or three significant digits below 1 ms (0.0231), so tiny models' ratios can be read."""
    return f"{milliseconds:.2f}" if milliseconds >= 1 else f"{milliseconds:.3g}"


def batchnorm_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per model: the fold summary, BN nodes before/after, and folded-vs-unfolded output error."""
    header = ["model", "fold", "ONNX BN nodes unfolded → folded", "BN left by ORT's optimiser in unfolded",
              "max rel. error torch / ORT"]  # fmt: skip
    rows = []
    for result in results:
        nodes, after_ort, error = (
            result["batchnorm_onnx_nodes"],
            result["batchnorm_after_ort_optimiser"],
            result["output_error"],
        )
        rows.append([
            result["model"], result["fold_summary"], f"{nodes['unfolded']} → {nodes['folded']}",
            after_ort["unfolded"],
            f"{error['torch']['max_rel']:.1e} / {error['onnxruntime']['max_rel']:.1e}",
        ])  # fmt: skip
    return markdown_table(header, rows)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.folding_speedup", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64×64, batch 1 and 4, 2 repetitions")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and ORT intra-op threads")
    parser.add_argument("--models", nargs="*", help="only these model names (default: all)")
    parser.add_argument("--repetitions", type=int, nargs=2, metavar=("BATCH1", "BATCH32"), default=(100, 10))
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (default 2)")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="more rounds for fast cells: each cell lasts ≥ this (default 2)"
    )
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace) -> tuple[Settings, int]:
    """The settings and input resolution of the reference nets: 224 (full run) or 64 (--quick)."""
    if args.quick:
        return Settings(batches=(1, 4), repetitions={1: 2, 4: 2}, warmup=1, threads=args.threads), 64
    batch1, batch32 = args.repetitions
    repetitions = {1: batch1, 32: batch32}
    return Settings(
        repetitions=repetitions, warmup=args.warmup, threads=args.threads, min_seconds=args.min_seconds
    ), 224


def select_cases(names: Sequence[str] | None, resolution: int) -> tuple[list[BenchCase], str | None]:
    """Zoo and reference cases, restricted to `names`; ValueError naming the choices for an unknown name."""
    cases, zoo_note = zoo_cases()
    cases += reference_cases(resolution)
    if names:
        unknown = sorted(set(names) - {case.name for case in cases})
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {[case.name for case in cases]}")
        cases = [case for case in cases if case.name in names]
    return cases, zoo_note


def run_cases(
    cases: Sequence[BenchCase], settings: Settings, save: Callable[[list[dict[str, Any]]], object]
) -> list[dict[str, Any]]:
    """measure_case for each case, calling `save` after each; a case that fails is recorded with its error."""
    results: list[dict[str, Any]] = []
    for case in cases:
        print(f"measuring {case.name} …", file=sys.stderr, flush=True)
        try:
            results.append(measure_case(case, settings))
        except BnfoldError as error:
            print(f"{case.name}: skipped: {error}", file=sys.stderr)
            results.append({"model": case.name, "source": case.source, "error": str(error)})
        save(results)
    return results


def machine_line(machine: dict[str, Any]) -> str:
    versions = machine["versions"]
    return (
        f"machine: {machine['cpu']} ({', '.join(machine['cpu_simd'])}), {machine['usable_cores']} usable cores; "
        f"torch {versions['torch']} ({machine['torch_threads']} threads), onnxruntime {versions['onnxruntime']} "
        f"({machine['ort_intra_op_threads']} intra-op threads, {machine['ort_inter_op_threads']} inter-op, "
        "no spinning, default graph optimisation)"
    )


def tables(results: Sequence[dict[str, Any]]) -> str:
    measured = [result for result in results if "error" not in result]
    return f"{results_table(measured)}\n\n{batchnorm_table(measured)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings, resolution = settings_for(args)
    torch.set_num_threads(settings.threads)
    try:
        cases, zoo_note = select_cases(args.models, resolution)
    except ValueError as error:
        print(f"bench.folding_speedup: {error}", file=sys.stderr)
        return 2
    machine = machine_description(
        torch_threads=torch.get_num_threads(),
        ort_intra_op_threads=settings.threads,
        ort_inter_op_threads=1,
        ort_allow_spinning=False,
    )
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "folding_speedup",
        "quick": args.quick,
        "resolution": resolution,
        "machine": machine,
        "settings": {
            "batches": settings.batches,
            "repetitions": settings.repetitions,
            "warmup": settings.warmup,
            "min_seconds_per_cell": settings.min_seconds,
        },
        "zoo_note": zoo_note,
    }
    name = "folding_speedup_quick" if args.quick else "folding_speedup"

    def save(results: list[dict[str, Any]], complete: bool = False) -> Path:
        extra = {"complete": complete, "wall_seconds": time.perf_counter() - started, "table": tables(results)}
        return save_results(name, {**payload, **extra, "results": results})

    results = run_cases(cases, settings, save)
    path = save(results, complete=True)
    print(f"\n{tables(results)}\n\n{machine_line(machine)}")
    for note in [zoo_note] + [f"{r['model']}: {r['error']}" for r in results if "error" in r]:
        if note:
            print(f"note: {note}")
    print(f"saved {path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

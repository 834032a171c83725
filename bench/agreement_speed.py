"""How long one folded-vs-unfolded agreement check takes in the service (bnfold.service.equivalence.compare,
which applies bnfold.contract.agreement), verdict and JSON summary included, for typical output shapes: the
check runs on the request path, so it must stay small next to an onnxruntime run of a small model.

Each case is timed in batches of calls (time.perf_counter around `--calls` checks, repeated `--repetitions`
times); the table gives µs per check (median, 10th–90th percentiles over the batches). Also times the
non-finite path (a reference that overflows). Saves bench/results/agreement_speed.json.

    .venv/bin/python -m bench.agreement_speed [--calls 5000] [--repetitions 9]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np

from bench.common import Summary, machine_description, markdown_table, save_results
from bnfold.service.equivalence import compare

# On an idle core (other processes inflate it 2-3×): a V2 request on a small model costs ~100 µs or more.
TARGET_US = {"classifier 1×10": 15.0}


def cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """name → (folded, unfolded, classifier); folded = unfolded + float32 rounding-sized noise."""

    def pair(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        unfolded = rng.standard_normal(shape).astype(np.float32)
        return unfolded + np.float32(1e-7) * rng.standard_normal(shape).astype(np.float32), unfolded

    overflow_folded, overflow_unfolded = pair((1, 10))
    overflow_unfolded[0, 3] = np.inf
    return {
        "classifier 1×10": (*pair((1, 10)), True),
        "classifier 64×10": (*pair((64, 10)), True),
        "reconstruction 8×1×8×8": (*pair((8, 1, 8, 8)), False),
        "non-finite reference 1×10": (overflow_folded, overflow_unfolded, True),
    }


def checker(folded: np.ndarray, unfolded: np.ndarray, classifier: bool) -> Callable[[], object]:
    """One service check: compare, then everything the service reads of it."""

    def check() -> object:
        result = compare({"y": folded}, {"y": unfolded}, 1e-6, 1e-5, classifier)
        return result.agree, result.inconclusive, result.mismatch, result.to_json()

    return check


def per_check_seconds(check: Callable[[], object], calls: int, repetitions: int) -> list[float]:
    check()  # warm-up
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter()
        for _ in range(calls):
            check()
        samples.append((time.perf_counter() - start) / calls)
    return samples


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repetitions", type=int, default=9)
    args = parser.parse_args(argv)
    rows, results = [], {}
    for name, (folded, unfolded, classifier) in cases(np.random.default_rng(0)).items():
        summary = Summary.of(per_check_seconds(checker(folded, unfolded, classifier), args.calls, args.repetitions))
        median, p10, p90 = (1000.0 * value for value in (summary.median_ms, summary.p10_ms, summary.p90_ms))
        target = TARGET_US.get(name)
        met = "" if target is None else ("yes" if median <= target else "NO")
        rows.append([name, f"{median:.1f}", f"{p10:.1f}–{p90:.1f}", "" if target is None else f"≤ {target:g}", met])
        results[name] = {"us_per_check": median, "summary_ms": summary.to_json(), "target_us": target}
    print(markdown_table(["case", "µs per check (median)", "p10–p90", "target", "met"], rows))
    save_results("agreement_speed", {"machine": machine_description(calls=args.calls), "cases": results})


if __name__ == "__main__":
    main()

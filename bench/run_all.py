"""Run every benchmark in sequence (`make bench`): each script is a subprocess printing its own tables and
saving its JSON under bench/results/; a summary of what ran, how long and how it ended comes last.

    .venv/bin/python -m bench.run_all [--repository model_repository] [--quick] [--only serving memory_soak]

The serving benchmarks share one zoo repository: the one given, else one built once with
`bnfold build-default` in a temporary directory. Exit status 1 if any script failed (the others still run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_description, markdown_table, save_results
from bench.processes import ROOT
from bench.serving import build_zoo

# (module, takes --repository, takes --quick), in the order they run: folding first, then serving.
SCRIPTS: tuple[tuple[str, bool, bool], ...] = (
    ("zoo_build", False, False),
    ("fold_speed", False, True),
    ("onnx_fold", False, True),
    ("folding_speedup", False, True),
    ("service_baseline", True, False),
    ("serving", True, True),
    ("memory_soak", True, False),
    ("fuzz", True, False),
)


def command(module: str, repository: Path | None, quick: bool) -> list[str]:
    arguments = [sys.executable, "-m", f"bench.{module}"]
    takes_repository, takes_quick = next((r, q) for name, r, q in SCRIPTS if name == module)
    if takes_repository and repository is not None:
        arguments += ["--repository", str(repository)]
    if quick and takes_quick:
        arguments.append("--quick")
    if quick and module == "memory_soak":
        arguments += ["--requests", "4000"]
    if quick and module == "fuzz":
        arguments += ["--examples", "300"]
    return arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="zoo repository for the serving benchmarks")
    parser.add_argument("--quick", action="store_true", help="smoke versions of the scripts that have one")
    parser.add_argument("--only", nargs="+", choices=[name for name, _, _ in SCRIPTS], help="run only these")
    arguments = parser.parse_args()
    selected = [name for name, _, _ in SCRIPTS if not arguments.only or name in arguments.only]
    summary = []
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as temporary:
        repository = arguments.repository
        if repository is None and any(next(r for n, r, _ in SCRIPTS if n == name) for name in selected):
            print("building the zoo repository for the serving benchmarks…", flush=True)
            repository = build_zoo(Path(temporary) / "zoo")
        for module in selected:
            print(f"\n## bench.{module}\n", flush=True)
            start = time.perf_counter()
            code = subprocess.run(command(module, repository, arguments.quick), cwd=ROOT).returncode
            summary.append({"script": module, "seconds": round(time.perf_counter() - start, 1), "exit_code": code})
    print("\n## Summary\n")
    rows = [
        [s["script"], f"{s['seconds']:.0f}", "ok" if s["exit_code"] == 0 else f"FAILED ({s['exit_code']})"]
        for s in summary
    ]
    print(markdown_table(["script", "seconds", "result"], rows))
    save_results("run_all", {"machine": machine_description(quick=arguments.quick), "scripts": summary})
    sys.exit(1 if any(s["exit_code"] for s in summary) else 0)


if __name__ == "__main__":
    main()

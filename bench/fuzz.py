"""The long fuzzing run of the service: schemathesis against `bnfold serve`'s OpenAPI schema, looking for 5xx.

    .venv/bin/python -m bench.fuzz [--repository model_repository] [--examples 3000]

Serves the zoo plus one entry whose model.json is broken (so the "model unavailable" paths are fuzzed too),
with equivalence policy `always`, as a real subprocess on loopback. Every operation of /openapi.json gets
valid and invalid requests, with path parameters pinned to real models and versions as well as random ones
(bench.fuzzing). The only 5xx allowed is the designed 503 of an unavailable model. Prints the statuses and
every finding; saves bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import machine_description, markdown_table, save_results
from bench.fuzzing import fuzz
from bench.processes import bnfold_serve
from bench.serving import ZOO, build_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="zoo repository (default: build one in a temp dir)")
    parser.add_argument("--examples", type=int, default=3000, help="generated requests (default 3000)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bnfold-fuzz-") as temporary:
        repository = Path(temporary) / "repository"
        if arguments.repository:
            shutil.copytree(arguments.repository, repository)
        else:
            build_zoo(repository)
        (repository / "broken").mkdir()
        (repository / "broken" / "model.json").write_text('{"format": ')
        models = [model for model in ZOO if (repository / model).is_dir()] + ["broken"]
        with bnfold_serve(repository, equivalence_policy="always") as server:
            start = time.perf_counter()
            result = fuzz(f"http://127.0.0.1:{server.port}", models, arguments.examples)
            seconds = time.perf_counter() - start
    rows = [[str(status), str(count)] for status, count in sorted(result.by_status.items())]
    print(f"\n### Fuzzing: {result.requests} schemathesis requests in {seconds:.0f} s\n")
    print(markdown_table(["status", "responses"], rows))
    print(f"\nfindings (5xx other than the designed 503): {len(result.server_errors)}")
    for finding in result.server_errors[:20]:
        print(f"- {finding}")
    payload = {
        "machine": machine_description(examples=arguments.examples),
        "requests": result.requests,
        "seconds": seconds,
        "by_status": {str(k): v for k, v in sorted(result.by_status.items())},
        "findings": result.server_errors,
    }
    name = "fuzz" if arguments.examples >= 3000 else "fuzz_quick"  # a smoke run keeps the real one
    print(f"\nsaved {save_results(name, payload)}")


if __name__ == "__main__":
    main()

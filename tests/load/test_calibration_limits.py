"""A calibration archive that declares more than the limits is refused from its .npy headers, before it is
decompressed: a few hundred kB of compressed zeros declaring hundreds of MB never reach the server's memory."""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.load.serve_process import serve_process
from tests.service.builders import write_entry

MiB = 1024 * 1024


def write_declared_zeros(path: Path, shape: tuple[int, ...]) -> int:
    """A .npz whose one float32 array 'input' of `shape` is all zeros, written in 1 MiB blocks (never whole
    in memory); returns the decoded size in bytes."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0,), np.float32)) | {"shape": shape}
    size = int(np.prod(shape)) * 4
    block = bytes(MiB)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("input.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        for start in range(0, size, MiB):
            member.write(block[: min(MiB, size - start)])
    return size


@pytest.fixture(scope="module")
def oversized_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("oversized")
    write_entry(root, "good", rng)
    write_entry(root, "many_samples", rng)
    write_declared_zeros(root / "many_samples" / "calibration.npz", (4_000, 1, 8, 8))
    write_entry(root, "huge", rng)
    decoded = write_declared_zeros(root / "huge" / "calibration.npz", (1024, 1, 8, 8 * 1024))
    assert (root / "huge" / "calibration.npz").stat().st_size < MiB  # compressed: under 1 MiB on disk
    return root, decoded


def reasons(url: str) -> dict[str, tuple[str, str | None]]:
    models = httpx.get(f"{url}/v2/models", timeout=10).json()["models"]
    return {m["name"]: (m["state"], m["reason"]) for m in models}


def test_oversized_calibration_is_refused_before_decompression(oversized_repository: tuple[Path, int]) -> None:
    root, decoded = oversized_repository
    assert decoded == 268_435_456
    with serve_process(root) as server:
        found, peak = reasons(server.url), server.peak_rss_bytes()
    print(f"server peak RSS (VmHWM) {peak / MiB:.0f} MiB")
    assert peak < decoded, f"peak RSS {peak / MiB:.0f} MiB: the declared {decoded / MiB:.0f} MiB were decoded"
    assert found["good"] == ("ready", None)
    assert found["many_samples"] == (
        "unavailable",
        "calibration file calibration.npz: array 'input.npy' declares 4000 samples, over the limit of 1024; "
        "rebuild the entry with a smaller calibration batch or raise BNFOLD_MAX_CALIBRATION_SAMPLES",
    )
    assert found["huge"] == (
        "unavailable",
        "calibration file calibration.npz declares 268435456 bytes of arrays, over the limit of 67108864; "
        "rebuild the entry with a smaller calibration batch or raise BNFOLD_MAX_CALIBRATION_BYTES",
    )


def test_the_limits_are_settings(oversized_repository: tuple[Path, int]) -> None:
    root, _ = oversized_repository
    with serve_process(root, max_calibration_samples="4000") as server:
        found = reasons(server.url)
    assert found["many_samples"] == ("ready", None)
    assert found["huge"][1] is not None and "over the limit of 67108864" in found["huge"][1]

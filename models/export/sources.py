"""Load a PyTorch Spec (zoo:NAME, file or module factory, .pt2 archive) as a LoadedModel; see models/export/spec.py."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import Tensor, nn

from bnfold.contract.hashing import sha256_file
from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export import spec as specs
from bnfold.models.export import user_inputs
from bnfold.models.export.calibration_samples import Samples
from bnfold.models.export.spec import LoadedModel
from bnfold.models.export.spec_forms import Spec, parse_spec
from bnfold.models.export.weights import load_weights
from bnfold.models.pt2.allowlist import checked_archive_bytes
from bnfold.models.zoo.catalog import ZOO, trained


def load_spec(
    spec: Spec | str,
    *,
    weights: Path | None = None,
    input_shape: str | None = None,
    cache_dir: Path | None = None,
    samples: Samples | None = None,
    input_names: list[str] | None = None,
) -> LoadedModel:
    """The model a SPEC names, in eval mode, with its calibration batch (from `samples` when given: the user's
    own, models/export/user_inputs.py); `input_names` (--input-names) decide how many of a factory's forward
    parameters are inputs and key its samples. Every bad input is a BadInputError."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "zoo":
        if samples is not None:
            raise UsageError(f"zoo:{parsed.target} calibrates on its own held-out samples; drop --calibration")
        return _from_zoo(parsed, weights, input_shape, cache_dir)
    if parsed.kind == "pt2":
        return _from_archive(parsed, weights, input_shape, samples)
    if parsed.kind == "onnx":
        raise UsageError(f"--model {parsed.text} is an ONNX graph, not a PyTorch model; give a PyTorch SPEC")
    return _from_factory(parsed, weights, input_shape, samples, input_names)


def _from_zoo(spec: Spec, weights: Path | None, input_shape: str | None, cache_dir: Path | None) -> LoadedModel:
    name = spec.target
    if name not in ZOO:
        raise BadInputError(f"no zoo model {name!r}; choose one of: {', '.join(ZOO)}")
    if input_shape is not None:
        raise UsageError(f"zoo:{name} has a fixed input shape; drop --input-shape")
    model = trained(name, cache_dir=cache_dir)
    loaded = LoadedModel(
        module=model.model,
        calibration=torch.from_numpy(model.calibration_batch()),
        source=spec.text,
        default_name=spec.default_name,
        task=model.spec.task,
        input_name=model.spec.input_name,
        output_names=[model.spec.output_name],
        weights_sha256=sha256_file(model.weights_path),
        metrics=dict(model.metrics),
        train_seconds=None if model.from_cache else model.train_seconds,
    )
    if weights is not None:
        loaded.weights_sha256 = load_weights(loaded.module, weights)
        loaded.metrics = {}  # measured for the zoo's own weights, not these
    return loaded


def _from_factory(
    spec: Spec, weights: Path | None, input_shape: str | None, samples: Samples | None, input_names: list[str] | None
) -> LoadedModel:
    module = specs.build_from_factory(spec)
    weights_sha = load_weights(module, weights) if weights is not None else None
    forward = user_inputs.forward_inputs(module)
    count = user_inputs.input_count(forward, samples, input_names)
    if count > 1:
        names = input_names or forward.names[:count]
        return _several_inputs(module.eval(), spec, weights_sha, samples, names, input_shape)
    if samples is not None:
        batch = user_inputs.single_input(samples, specs.parse_shape(input_shape) if input_shape else None)
        return _finish(module.eval(), batch, spec, weights_sha, f"{tuple(batch.shape)} (--calibration)")
    if input_shape is None:
        raise UsageError(f"{spec.text} needs --input-shape (or --calibration FILE), e.g. --input-shape 1,3,32,32")
    return _finish(module.eval(), specs.random_batch(specs.parse_shape(input_shape)), spec, weights_sha, input_shape)


def _several_inputs(
    module: nn.Module,
    spec: Spec,
    weights_sha: str | None,
    samples: Samples | None,
    names: list[str],
    input_shape: str | None,
) -> LoadedModel:
    """A factory whose forward takes several inputs, calibrated on the user's samples of each."""
    listed = ", ".join(names)
    if samples is None:
        raise UsageError(
            f"{spec.text} takes {len(names)} inputs ({listed}); pass --calibration FILE.npz with one array per "
            f"input, keyed {listed}"
        )
    if input_shape is not None:
        raise UsageError(f"--input-shape gives one input's shape, but {spec.text} takes {len(names)} inputs; drop "
                         "it: --calibration gives their shapes")  # fmt: skip
    batches = user_inputs.several_inputs(samples, names)
    shapes = ", ".join(f"{name} {tuple(batch.shape)}" for name, batch in zip(names, batches, strict=True))
    loaded = _finish(module, batches[0], spec, weights_sha, f"{shapes} (--calibration)", tuple(batches),
                     "save samples of the shapes and dtypes its forward takes")  # fmt: skip
    loaded.input_name = names[0]
    loaded.more_inputs = dict(zip(names[1:], batches[1:], strict=True))
    return loaded


def _from_archive(spec: Spec, weights: Path | None, input_shape: str | None, samples: Samples | None) -> LoadedModel:
    path = Path(spec.target)
    if not path.is_file():
        raise BadInputError(f"torch.export archive {path} not found; check the path in --model")
    data = checked_archive_bytes(path)  # torch.export.load may unpickle arbitrary objects: check first
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as error:
        raise BadInputError(
            f"{path} is not a readable torch.export archive ({type(error).__name__}); re-save it with torch.export.save"
        ) from None
    module = program.module()
    weights_sha = load_weights(module, weights) if weights is not None else hashlib.sha256(data).hexdigest()
    archive_batch = _archive_batch(program, path, input_shape)
    if samples is not None:
        batch = user_inputs.single_input(samples, specs.parse_shape(input_shape) if input_shape else None)
        return _finish(module, batch, spec, weights_sha, f"{tuple(batch.shape)} (--calibration)")
    return _finish(module, archive_batch, spec, weights_sha, input_shape or "of the archive's example inputs")


def _archive_batch(program: torch.export.ExportedProgram, path: Path, input_shape: str | None) -> Tensor:
    """A calibration batch for the archive's single input; its batch axis must have been exported dynamic."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    values = [node.meta.get("val") for node in placeholders]
    if len(values) != 1 or not isinstance(values[0], Tensor) or values[0].dim() == 0:
        raise BadInputError(f"{path} takes {len(values)} inputs; fold-and-export handles one tensor input")
    shape = values[0].shape
    if isinstance(shape[0], int):
        raise BadInputError(
            f"{path} was exported with a fixed batch size {shape[0]}; re-export it with "
            "dynamic_shapes=({0: torch.export.Dim('batch')},)"
        )
    if input_shape is not None:
        return specs.random_batch(specs.parse_shape(input_shape))
    if not all(isinstance(size, int) for size in shape[1:]):
        raise BadInputError(f"{path} has symbolic dimensions besides the batch; pass --input-shape")
    return specs.random_batch((1, *(int(size) for size in shape[1:])))


def _finish(
    module: nn.Module,
    batch: Tensor,
    spec: Spec,
    weights_sha: str | None,
    shape_text: str,
    inputs: tuple[Tensor, ...] | None = None,
    fix: str = "pass the --input-shape it expects",
) -> LoadedModel:
    """The LoadedModel of `module` once it ran on its calibration batch (`inputs`, or `batch` alone)."""
    outputs, names = specs.check_forward(module, inputs or (batch,), shape_text, fix)
    return LoadedModel(
        module=module,
        calibration=batch,
        source=spec.text,
        default_name=spec.default_name,
        output_names=names or specs.output_names_for(len(outputs)),
        weights_sha256=weights_sha,
    )

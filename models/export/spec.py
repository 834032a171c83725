"""Turn a PyTorch SPEC (models/export/spec_forms.py) into a model in eval mode, checked against its input shape.

A zoo net's calibration batch is the first 16 held-out samples; a .pt2 archive's example inputs give its
shape. A factory file or module is imported with its own directory (the file's, or the working directory
for package.module) first on sys.path while it is imported and its factory runs, as `python path/to/net.py`
would: its own packages (even one named like a bnfold folder, say `models`) win.

`--weights FILE` is read by models/export/weights.py (torch.load(weights_only=True), strict).
For factories and archives without example inputs, `--input-shape` gives the shape; its
leading (batch) size is replaced by a calibration batch of 16 seeded standard-normal samples.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnfold.messages import shorten
from bnfold.models.errors import BadInputError, UsageError
from bnfold.models.export.choices import TENSOR_NAME
from bnfold.models.export.spec_forms import Spec

CALIBRATION_BATCH = 16
CALIBRATION_SEED = 0


@dataclass
class LoadedModel:
    """A model ready to fold: eval mode, its calibration batch and what the repository entry needs."""

    module: nn.Module
    calibration: Tensor  # the first input's batch: (16, …) float32, or the user's samples
    source: str
    default_name: str
    task: str = "regression"
    input_name: str = "input"
    output_names: list[str] = field(default_factory=lambda: ["output"])
    weights_sha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    more_inputs: dict[str, Tensor] = field(default_factory=dict)  # a forward's later inputs, name → batch, in order

    @property
    def example(self) -> tuple[Tensor, ...]:
        """The calibration batch of every input, in forward's order."""
        return (self.calibration, *self.more_inputs.values())

    @property
    def input_names(self) -> list[str]:
        return [self.input_name, *self.more_inputs]

    def rename_inputs(self, names: list[str]) -> None:
        """Give the inputs `names` (one per input, in forward's order)."""
        self.input_name = names[0]
        self.more_inputs = dict(zip(names[1:], self.more_inputs.values(), strict=True))


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,32,32' → (1, 3, 32, 32); every size a positive integer."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(size <= 0 for size in shape):
        raise UsageError(f"--input-shape {text!r} is not a list of positive integers; write e.g. 1,3,32,32")
    return shape


def random_batch(shape: tuple[int, ...]) -> Tensor:
    """16 seeded standard-normal samples of `shape` (its leading batch size is replaced by 16)."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    return torch.randn((CALIBRATION_BATCH, *shape[1:]), generator=generator)


@contextlib.contextmanager
def _first_on_path(directory: Path) -> Iterator[None]:
    """`directory` first on sys.path for the duration (the factory's own imports resolve there first)."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _factory_from_file(path_text: str, function: str) -> Callable[..., Any]:
    path = Path(path_text)
    if not path.is_file():
        raise BadInputError(f"model file {path} not found; check the path in --model {path_text}:{function}")
    module_name = f"_bnfold_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BadInputError(f"{path} is not a Python file; give path/to/net.py:FACTORY")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise BadInputError(f"importing {path} raised {_describe(error)}; fix the file") from None
    return _attribute(module, function, str(path))


def _factory_from_module(module_name: str, function: str) -> Callable[..., Any]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise BadInputError(
            f"module {module_name!r} not found; give an importable package.module:FACTORY or path/to/net.py:FACTORY"
        ) from None
    except Exception as error:
        raise BadInputError(f"importing {module_name} raised {_describe(error)}; fix the module") from None
    return _attribute(module, function, module_name)


def _attribute(module: object, function: str, where: str) -> Callable[..., Any]:
    factory = getattr(module, function, None)
    if not callable(factory):
        raise BadInputError(f"{where} has no function {function!r}; name the factory after the colon in --model")
    return factory


def build_from_factory(spec: Spec) -> nn.Module:
    """Call the factory named by 'path/to/net.py:build' or 'package.module:build' and check it is a Module."""
    is_file = spec.kind == "file"
    with _first_on_path(Path(spec.target).resolve().parent if is_file else Path.cwd()):
        if is_file:
            factory = _factory_from_file(spec.target, spec.function)
        else:
            factory = _factory_from_module(spec.target, spec.function)
        try:
            model = factory()
        except Exception as error:
            raise BadInputError(
                f"factory {spec.text} raised {_describe(error)}; fix the factory (it is called with no arguments)"
            ) from None
    if not isinstance(model, nn.Module):
        raise BadInputError(f"factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_forward(
    model: nn.Module, inputs: tuple[Tensor, ...], shape_text: str, fix: str = "pass the --input-shape it expects"
) -> tuple[list[Tensor], list[str] | None]:
    """Run the model once on the calibration batch (one tensor per input): (its outputs, their names when
    forward returns a dict of tensors, one output per key in the dict's order, else None); a model that
    rejects the inputs is a BadInputError ending in `fix`."""
    try:
        with torch.no_grad():
            output = model(*inputs)
    except Exception as error:
        raise BadInputError(f"the model rejects input shape {shape_text} ({_describe(error)}); {fix}") from None
    names = [str(key) for key in output] if isinstance(output, dict) else None
    outputs = output_list(output)
    if not outputs or not all(isinstance(o, Tensor) and o.dim() >= 1 for o in outputs):
        raise BadInputError("forward must return a tensor, a tuple or a dict of tensors with a batch axis")
    if names is not None and not all(TENSOR_NAME.fullmatch(name) for name in names):
        raise BadInputError(f"forward returns a dict with keys {names}, not all valid tensor names; "
                            "pass --output-names")  # fmt: skip
    return outputs, names


def output_list(output: Any) -> list[Any]:
    """The outputs of forward as a list: a tuple/list as is, a dict's values in its order, else one output."""
    if isinstance(output, dict):
        return list(output.values())
    return list(output) if isinstance(output, tuple | list) else [output]


def output_names_for(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _describe(error: BaseException) -> str:
    text = shorten(str(error), 200)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

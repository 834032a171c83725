"""The user's own calibration samples and tensor names for a PyTorch SPEC (`--calibration`, `--input-names`,
`--output-names`).

`--calibration FILE` is read and matched by models/export/calibration_samples.py. A model's inputs are its
forward's positional parameters (inspect.signature): every one without a default, and one with a default
too when the `.npz` holds an array under its name or `--input-names` names it (the inputs are passed by
position, so the parameters before it are inputs as well). With one input, FILE is a `.npy` or a `.npz`
with one array under any key, of float samples (stored as float32), and the input is called `input`. With
several, FILE is a `.npz` with one array per input keyed by the parameter's name (or by the
`--input-names`, given in forward's order), and the inputs are called so; float samples become float32,
integer and bool samples stay as they are. A model with several inputs needs `--calibration`: there is no
inventing token ids or masks.

Tensor names are what the exported graphs and the served metadata call the inputs and outputs: each is
1–64 letters, digits, '_', '.', '-', starting with a letter or '_', and names are unique.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bnfold.models.errors import UsageError
from bnfold.models.export.calibration_samples import InputSlot, Samples, match_samples, read_samples
from bnfold.models.export.choices import UserChoices
from bnfold.models.export.spec import LoadedModel


@dataclass(frozen=True)
class ForwardInputs:
    """The positional parameters of a module's forward, in order, and how many of them have no default."""

    names: list[str]
    required: int

    def span(self) -> str:
        """'2', or '2 to 3' when some parameters have defaults."""
        total = len(self.names)
        return str(total) if self.required == total else f"{self.required} to {total}"


def forward_inputs(module: nn.Module) -> ForwardInputs:
    """forward's positional parameters; a forward without any (say `*args`) is taken as one input, as before."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ForwardInputs(["input"], 1)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [parameter for parameter in parameters if parameter.kind in kinds]
    if not positional:
        return ForwardInputs(["input"], 1)
    required = sum(parameter.default is inspect.Parameter.empty for parameter in positional)
    return ForwardInputs([parameter.name for parameter in positional], max(required, 1))


def input_count(forward: ForwardInputs, samples: Samples | None, input_names: list[str] | None) -> int:
    """How many of forward's parameters are the model's inputs (see the module docstring)."""
    if input_names is not None:
        if not forward.required <= len(input_names) <= len(forward.names):
            raise UsageError(names_count_message(len(input_names), forward))
        return len(input_names)
    if samples is None or samples.npy:
        return forward.required
    named = [position for position, name in enumerate(forward.names) if name in samples.arrays]
    return max(forward.required, named[-1] + 1 if named else 0)


def names_count_message(given: int, forward: ForwardInputs) -> str:
    if len(forward.names) == 1:
        return f"--input-names gives {given} names; the model takes 1 input: give 1"
    return (
        f"--input-names gives {given} name(s); forward takes {forward.span()} inputs ({', '.join(forward.names)}): "
        f"give {forward.span()}"
    )


def single_input(samples: Samples, shape: tuple[int, ...] | None) -> Tensor:
    """The calibration batch of a one-input model (first CALIBRATION_CAP samples) as float32, checked against
    `shape` (--input-shape) when that is given."""
    slot = InputSlot(
        "input",
        np.dtype(np.float32),
        None if shape is None else tuple(shape[1:]),
        subject="the model's input",
        dims_source="--input-shape gives",
    )
    return torch.from_numpy(match_samples(samples, [slot])["input"])


def several_inputs(samples: Samples, names: list[str]) -> list[Tensor]:
    """One calibration batch per input of a several-input model, keyed in `samples` by `names`."""
    arrays = match_samples(samples, [InputSlot(name) for name in names])
    return [torch.from_numpy(array) for array in arrays.values()]


def apply_names(loaded: LoadedModel, input_names: list[str] | None, output_names: list[str] | None) -> None:
    """Rename `loaded`'s inputs and outputs; the counts must match the model's."""
    if input_names is not None:
        if len(input_names) != len(loaded.input_names):
            inputs = ForwardInputs(loaded.input_names, len(loaded.input_names))
            raise UsageError(names_count_message(len(input_names), inputs))
        loaded.rename_inputs(input_names)
    if output_names is not None:
        if len(output_names) != len(loaded.output_names):
            raise UsageError(
                f"--output-names gives {len(output_names)} name(s); the model returns {len(loaded.output_names)} "
                f"output(s) ({', '.join(loaded.output_names)})"
            )
        loaded.output_names = list(output_names)
    for name in loaded.input_names:
        if name in loaded.output_names:
            raise UsageError(f"the input and an output are both called {name!r}; give them different names")


def user_samples(choices: UserChoices) -> Samples | None:
    """The arrays of --calibration FILE (None without one), read before anything slow happens."""
    return None if choices.calibration is None else read_samples(choices.calibration)

"""Find the BatchNorms of a captured graph and decide whether each one computes a fixed affine map.

A BatchNorm is foldable only when at inference it is y_c = s_c · x_c + t_c with constants
s = γ/√(σ²+ε), t = β − μ·s (folding/arithmetic.py). That holds for

- a `call_module` node whose module is a `BatchNorm1d/2d/3d` with the stock forward (a subclass that
  overrides forward is traced through by folding/torch_capture.py, leaving its BN as a functional call),
  in eval mode, tracking running statistics;
- a `call_function` node `torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
  training=False, …)` whose statistics are read from buffers/parameters (`get_attr` nodes) and whose
  `training`, `momentum` and `eps` are constants.

Everything else normalises with batch statistics or may do more than BN; it is described with a refusal
reason and kept.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx
from torch.nn import functional
from torch.nn.modules.batchnorm import _BatchNorm

from bnfold.folding.arithmetic import ScaleShift, batchnorm_scale_shift
from bnfold.folding.errors import FoldingError
from bnfold.folding.torch_capture import overrides_forward
from bnfold.folding.torch_rules import has_hooks
from bnfold.folding.torch_tensors import as_f64, optional_f64

FUNCTIONAL_BATCHNORMS = (functional.batch_norm, torch.batch_norm)
_FUNCTIONAL_SIGNATURE = inspect.signature(functional.batch_norm)
# torch.batch_norm (the ATen op, no Python signature): its positional order differs from F.batch_norm's.
_ATEN_ORDER = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps", "cudnn")
_BATCH_STATISTICS_FIX = "recalibrate it (bnfold recalibrate) and use running statistics to let it fold"


@dataclass(frozen=True)
class BatchNormSite:
    """One BatchNorm call in the graph.

    name: module path for a module BN (`layer1.bn`), the statistics' owner path for a functional one;
    a second call site of the same BN gets `name@node`. affine is None exactly when refusal is set.
    """

    node: fx.Node
    name: str
    input: fx.Node
    affine: ScaleShift | None
    refusal: str | None
    dtype: torch.dtype
    device: torch.device


def is_batchnorm_node(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """True for a call of a `_BatchNorm` module or of functional batch_norm."""
    if node.op == "call_module":
        return isinstance(graph_module.get_submodule(str(node.target)), _BatchNorm)
    return node.op == "call_function" and node.target in FUNCTIONAL_BATCHNORMS


def describe_batchnorm(graph_module: fx.GraphModule, node: fx.Node, taken: set[str]) -> BatchNormSite:
    """Describe a BN node (see is_batchnorm_node); `taken` collects names already used, for uniqueness."""
    source: _ModuleSource | _Statistics | None
    if node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        assert isinstance(module, _BatchNorm)
        base, source, refusal = str(node.target), _ModuleSource(module), _module_refusal(module)
        input_node = node.args[0]
    else:
        arguments = _functional_arguments(node)
        base, input_node = _functional_name(node, arguments), arguments["input"]
        source, refusal = _functional_source(graph_module, arguments)
    name = base if base not in taken else f"{base}@{node.name}"
    taken.add(name)
    if not isinstance(input_node, fx.Node):
        raise FoldingError(f"BatchNorm {name} normalises a constant, not a graph value; remove it")
    affine = None
    if refusal is None and source is not None:
        affine, refusal = _affine_or_refusal(source.statistics())
    like = _reference_tensor(source)
    dtype = torch.get_default_dtype() if like is None else like.dtype
    device = torch.device("cpu") if like is None else like.device
    return BatchNormSite(node, name, input_node, affine, refusal, dtype, device)


class _Statistics:
    """γ, β, μ, σ², ε of a functional batch_norm, read from the graph module's attributes."""

    def __init__(self, gamma: Tensor | None, beta: Tensor | None, mean: Tensor, var: Tensor, eps: float):
        self.values = (gamma, beta, mean, var, eps)

    def statistics(self) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor, float]:
        return self.values


class _ModuleSource:
    """γ, β, μ, σ², ε of a BatchNorm module."""

    def __init__(self, module: _BatchNorm) -> None:
        self.module = module

    def statistics(self) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor, float]:
        m = self.module
        assert m.running_mean is not None and m.running_var is not None
        return m.weight, m.bias, m.running_mean, m.running_var, float(m.eps)


def _functional_arguments(node: fx.Node) -> dict[str, Any]:
    """The arguments of a functional batch_norm call by F.batch_norm's parameter names, defaults applied."""
    if node.target is torch.batch_norm:
        return dict(zip(_ATEN_ORDER, node.args, strict=False)) | dict(node.kwargs)
    bound = _FUNCTIONAL_SIGNATURE.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _module_refusal(module: _BatchNorm) -> str | None:
    """Why a BN module does not compute a fixed affine map at inference (None when it does)."""
    if module.training:
        return "in training mode it normalises with batch statistics; call model.eval() before folding"
    if not module.track_running_stats or module.running_mean is None or module.running_var is None:
        return f"track_running_stats=False: it normalises with batch statistics at inference; {_BATCH_STATISTICS_FIX}"
    if has_hooks(module):
        return "it has forward hooks, which would no longer run if it were folded away; remove them to let it fold"
    if overrides_forward(module):
        base = _plain_base(type(module)).__name__
        return (
            f"{type(module).__name__} subclasses {base} but overrides forward, which torch.fx could not trace, "
            "so its extra behaviour (e.g. an activation) cannot be proven preserved; make that forward "
            "traceable or move the extra behaviour out of the BatchNorm to let it fold"
        )
    return None


def _plain_base(cls: type) -> type:
    """The torch.nn BatchNorm class a (sub)class derives from."""
    for base in cls.__mro__:
        if base.__module__.startswith("torch.nn") and issubclass(base, _BatchNorm) and base is not _BatchNorm:
            return base
    return _BatchNorm


def _functional_source(
    graph_module: fx.GraphModule, arguments: dict[str, Any]
) -> tuple[_Statistics | None, str | None]:
    """Read a functional batch_norm's statistics, or say why it is not a fixed affine map."""
    if arguments["training"] is not False:
        return None, f"batch_norm is called with training={arguments['training']}: batch statistics; pass False"
    if arguments["running_mean"] is None or arguments["running_var"] is None:
        return None, f"batch_norm is called without running statistics: batch statistics; {_BATCH_STATISTICS_FIX}"
    if isinstance(arguments["eps"], fx.Node):
        return None, "batch_norm's eps is computed in forward; pass a constant"
    tensors: dict[str, Tensor | None] = {}
    for key in ("weight", "bias", "running_mean", "running_var"):
        value = arguments[key]
        if value is not None and (not isinstance(value, fx.Node) or value.op != "get_attr"):
            return None, f"batch_norm's {key} is computed in forward, not read from a buffer or parameter"
        tensors[key] = None if value is None else _attribute(graph_module, str(value.target))
    mean, var = tensors["running_mean"], tensors["running_var"]
    assert mean is not None and var is not None
    return _Statistics(tensors["weight"], tensors["bias"], mean, var, float(arguments["eps"])), None


def _attribute(graph_module: fx.GraphModule, target: str) -> Tensor:
    owner, _, attribute = target.rpartition(".")
    value = getattr(graph_module.get_submodule(owner) if owner else graph_module, attribute)
    if not isinstance(value, Tensor):
        raise FoldingError(f"batch_norm reads {target}, which is a {type(value).__name__}, not a tensor")
    return value


def _functional_name(node: fx.Node, arguments: dict[str, Any]) -> str:
    """The owner path of the running_mean buffer (e.g. `block.norm`), else the node's own name."""
    mean = arguments["running_mean"]
    if isinstance(mean, fx.Node) and mean.op == "get_attr" and "." in str(mean.target):
        return str(mean.target).rpartition(".")[0]
    return node.name


def _affine_or_refusal(
    statistics: tuple[Tensor | None, Tensor | None, Tensor, Tensor, float],
) -> tuple[ScaleShift | None, str | None]:
    gamma, beta, mean, var, eps = statistics
    try:
        return batchnorm_scale_shift(optional_f64(gamma), optional_f64(beta), as_f64(mean), as_f64(var), eps), None
    except FoldingError as error:
        return None, str(error)


def _reference_tensor(source: _Statistics | _ModuleSource | None) -> Tensor | None:
    """The tensor whose dtype/device a lowered BN takes: γ when present, else the running mean."""
    if isinstance(source, _ModuleSource):
        return source.module.weight if source.module.weight is not None else source.module.running_mean
    if isinstance(source, _Statistics):
        gamma, _, mean, _, _ = source.values
        return gamma if gamma is not None else mean
    return None

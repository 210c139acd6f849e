"""Building a family's net and holding it to the contract `registry.Family` states, so that a
plugin's fault is one line naming the plugin, never a traceback deep inside training:

- the builder is called with the documented arguments and must return an `nn.Module`;
- the net's size is measured on torch's meta device (no memory allocated) and refused when
  the caller's copies of it would not fit in the memory that is free;
- a plugin generator must map (N, in, S, S) to (N, out, S, S), and a plugin discriminator
  must return `(logits, features)` with a logit row per image when called with
  `features=True`: checked once, on one image, before training or repair starts.

Built-in families are tested in this repository, so only their size is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gan_dist.registry import Family, PluginError

GIB = 2**30


def built(
    family: Family,
    kind: str,
    settings: Any,
    dims: dict[str, int],
    image_size: int,
    copies: int = 1,
) -> nn.Module:
    """`family`'s net for `settings`: the builder is called as
    `build(settings, **dims, image_size=image_size)` (dims: in_channels, and out_channels
    for a generator). `copies`: the caller's copies of the weights (see `nets.build_*`).
    Raises PluginError for a builder that raises (or exits), returns something other than a
    module, needs more memory than is free, or (plugins) returns the wrong shapes."""
    build = family.builder()

    def make() -> Any:
        return family.run("its builder", build, settings, **dims, image_size=image_size)

    measuring = torch.get_default_device().type == "meta"  # the caller's own probe
    if not measuring:
        try:
            with torch.device("meta"):
                probe = make()
        except PluginError:  # a builder that needs real tensors: it fails again below
            probe = None
        if probe is not None:
            _check_module(family, probe)
            _check_memory(family, settings, probe, copies)
    net = _check_module(family, make())
    if family.plugin and not measuring:
        _check_shapes(family, kind, net, dims, image_size)
    return net


def _check_module(family: Family, net: Any) -> nn.Module:
    if not isinstance(net, nn.Module):
        kind = type(net).__name__
        raise PluginError(f"{family.label}: its builder returned {kind}, not a torch.nn.Module")
    return net


def weight_bytes(net: nn.Module) -> int:
    """Bytes of a net's parameters and buffers at their dtypes (works on the meta device)."""
    tensors = [*net.parameters(), *net.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def free_memory() -> int:
    """Bytes of host memory free for new allocations (nets are built on the host)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _check_memory(family: Family, settings: Any, net: nn.Module, copies: int) -> None:
    need, free = copies * weight_bytes(net), free_memory()
    if need > free:
        count = sum(p.numel() for p in net.parameters())
        given = ", ".join(f"{k}={v}" for k, v in settings.model_dump().items())
        held = f"{copies} copies of its weights, " if copies > 1 else ""
        raise PluginError(
            f"{family.label}: with {given or 'its settings'} the net has {count / 1e6:,.0f} M "
            f"parameters ({weight_bytes(net) / GIB:,.1f} GiB); {held}{need / GIB:,.1f} GiB in "
            f"all, is more than the {free / GIB:,.1f} GiB free; choose smaller settings"
        )


def _check_shapes(
    family: Family, kind: str, net: nn.Module, dims: dict[str, int], image_size: int
) -> None:
    """One image through a plugin's net, in eval mode, without gradients and without
    drawing from the random generators (training must start as it would without it)."""
    shape = (1, dims["in_channels"], image_size, image_size)
    was_training = net.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net.eval()
        try:
            call: Callable[..., Any] = net if kind == "generator" else _with_features(net)
            out = family.run(f"its net's forward on {_shape(shape)}", call, torch.zeros(shape))
        finally:
            net.train(was_training)
    if kind == "generator":
        want = (1, dims["out_channels"], image_size, image_size)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            raise PluginError(
                f"{family.label}: its net returned {_described(out)} for {_shape(shape)}; a "
                f"generator must return {_shape(want)}"
            )
        return
    pair = isinstance(out, tuple | list) and len(out) == 2
    logits, features = out if pair else (None, None)
    if not (
        isinstance(logits, torch.Tensor)
        and logits.dim() >= 1
        and logits.shape[0] == 1
        and isinstance(features, list | tuple)
        and all(isinstance(f, torch.Tensor) for f in features)
    ):
        raise PluginError(
            f"{family.label}: called with features=True on {_shape(shape)}, its net returned "
            f"{_described(out)}; a discriminator must return (logits with one row per image, "
            "a list of feature tensors)"
        )


def _with_features(net: nn.Module) -> Callable[[torch.Tensor], Any]:
    return lambda x: net(x, features=True)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(["N", *(str(d) for d in shape[1:])]) + ")"


def _described(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return _shape(tuple(out.shape))
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)}: " + ", ".join(_described(o) for o in out[:3])
    return type(out).__name__

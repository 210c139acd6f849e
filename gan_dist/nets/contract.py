"""Building a family's net and holding it to the contract `registry.Family` states, so that a
plugin's fault is one line naming the plugin, never a traceback deep inside training:

- the builder is called with the documented arguments and must return an `nn.Module`;
- the net's size is measured on torch's meta device (no memory allocated) and refused when
  the caller's copies of it would not fit in the memory that is free;
- a plugin generator must map (N, in, S, S) to (N, out, S, S) of float32 (or the half
  precision autocast computes in), and a plugin discriminator must return logits with a row
  per image, `(logits, features)` when called with `features=True`; both on the input's
  device, keeping their graph where training needs it: checked at every call of the net's
  forward (so faults that show only in training mode, or at the Nth step, are caught as
  they happen), and once on two images before training or repair starts.

Built-in families are tested in this repository, so only their size is checked, and their
forward is not wrapped (no cost).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from torch import nn

from gan_dist.config.family import Family, PluginError

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
    module, needs more memory than is free, or (plugins) a net whose forward raises or
    breaks the contract on two images; a plugin's net keeps raising PluginError for any
    later call that does (see `_hold_to_contract`)."""
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
    if family.plugin:
        _hold_to_contract(family, kind, net, dims)
        if not measuring:
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
    """Two images through a plugin's net (its checked forward, see `_hold_to_contract`;
    two, so that a net that ignores the batch is caught), in eval mode, without gradients
    and without drawing from the random generators (training must start as it would
    without it)."""
    x = torch.zeros(2, dims["in_channels"], image_size, image_size)
    was_training = net.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net.eval()
        try:
            net(x) if kind == "generator" else net(x, features=True)
        finally:
            net.train(was_training)


def _hold_to_contract(family: Family, kind: str, net: nn.Module, dims: dict[str, int]) -> None:
    """Every call of a plugin net's forward, in training, validation and repair alike, is
    held to the contract: what it raises (sys.exit and other BaseExceptions included) is a
    PluginError naming the family (`Family.fault`), and so is a result the rest of gan-dist
    could not use (`_generator_result`, `_discriminator_result`), instead of a traceback
    steps later. Set as the instance's own forward, so the class, the state_dict names and
    the built-in nets are untouched; a bound method, so that a deep copy (the EMA) checks
    its own copy. torch.compile traces the checks into its graph (they are guards on shapes
    and dtypes); what refuses runs outside it."""
    check = _generator_result if kind == "generator" else _discriminator_result

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        try:
            out = type(self).forward(self, *args, **kwargs)
        except BaseException as exc:
            # while torch.compile traces, raised on: it runs the frame as it is instead, and
            # then the exception is named here
            tracing = torch.compiler.is_compiling()
            error = None if tracing else family.fault("its net's forward", exc)
            if error is None:
                raise
            raise error from None
        check(family, dims, self, args, kwargs, out)
        return out

    net.forward = types.MethodType(forward, net)


def _eager(refuse: Callable[..., NoReturn]) -> Callable[..., NoReturn]:
    """`refuse` as torch.compile must run it, outside its graph (torch.compiler.disable);
    wrapped only while compiling, because the wrapper imports torch._dynamo, 0.9 s of every
    command's start that never compiles (a repair's included)."""
    return torch.compiler.disable(refuse) if torch.compiler.is_compiling() else refuse


# what the trainer, the objectives and RepairNet's compositing take without promoting (a
# float64 image made the discriminator fail on its float32 weights)
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _generator_result(
    family: Family, dims: dict[str, int], net: nn.Module, args: tuple, kwargs: dict, out: Any
) -> None:
    x = _input(args, kwargs)
    want = (len(x), dims["out_channels"], *x.shape[2:])
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == want and out.dtype in FLOATS):
        _eager(_refuse_generator)(family, x, want, out)
    if out.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        _eager(_refuse_generator)(family, x, want, out)  # half precision asked for by nobody
    _check_place(family, net, x, out)


def _refuse_generator(family: Family, x: torch.Tensor, want: tuple, out: Any) -> NoReturn:
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got != want:
        n = None if got is not None and got[:1] != want[:1] else len(x)  # N where it fits
        raise PluginError(
            f"{family.label}: its net returned {_described(out, n)} for {_shape(x.shape, n)}; "
            f"a generator must return {_shape(want, n)}"
        )
    raise PluginError(
        f"{family.label}: its net returned {_dtype(out)} for {_dtype(x)} input; a "
        "generator returns its input's dtype (or, under autocast, the bfloat16/float16 it "
        "computes in)"
    )


def _discriminator_result(
    family: Family, dims: dict[str, int], net: nn.Module, args: tuple, kwargs: dict, out: Any
) -> None:
    x = _input(args, kwargs)
    n = len(x)
    features = kwargs.get("features", args[1] if len(args) > 1 else False)
    pair = isinstance(out, (tuple, list)) and len(out) == 2  # a tuple: traced by dynamo
    logits, maps = (out if pair else (None, None)) if features else (out, [])
    fine = (
        isinstance(logits, torch.Tensor)
        and logits.shape[:1] == (n,)
        and (logits.dim() == 1 or (logits.dim() in (2, 4) and logits.shape[1] == 1))
        and logits.is_floating_point()
        and isinstance(maps, (list, tuple))
        and all(isinstance(f, torch.Tensor) and f.shape[:1] == (n,) for f in maps)
    )
    if not fine:
        _eager(_refuse_discriminator)(family, x, bool(features), out, logits)
    _check_place(family, net, x, logits)


def _refuse_discriminator(
    family: Family, x: torch.Tensor, features: bool, out: Any, logits: Any
) -> NoReturn:
    n = len(x)
    called = "called with features=True" if features else "called"
    shown = _described(out, n)
    if isinstance(logits, torch.Tensor) and not logits.is_floating_point():
        shown += f" of {_dtype(logits)}"
    wanted = "(logits, a list of feature tensors with a row per image)" if features else "logits"
    raise PluginError(
        f"{family.label}: {called} on {_shape(x.shape, n)}, its net returned {shown}; a "
        f"discriminator must return {wanted}: floating-point logits shaped (N,1,h,w) for "
        "a patch discriminator, (N,1) or (N) for a global one"
    )


def _check_place(family: Family, net: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    """The result is on the input's device and, where gradients are recorded and the input
    or the net's weights take them, keeps its graph (one made under no_grad or detached
    fails the optimiser's backward step with no word of the plugin)."""
    detached = (  # a leaf: made apart from the weights, even if it asks for a gradient
        torch.is_grad_enabled()
        and (not out.requires_grad or out.is_leaf)
        and (x.requires_grad or any(p.requires_grad for p in net.parameters()))
    )
    if out.device != x.device or detached:
        _eager(_refuse_place)(family, x, out)


def _refuse_place(family: Family, x: torch.Tensor, out: torch.Tensor) -> NoReturn:
    if out.device != x.device:
        raise PluginError(
            f"{family.label}: its net returned a tensor on {out.device} for an input on "
            f"{x.device}; it must return it on the input's device"
        )
    raise PluginError(
        f"{family.label}: in training its net returned a tensor without gradients "
        "(detached, made under torch.no_grad, or a new leaf); training needs the result to "
        "depend on its weights and input"
    )


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The image batch a net was called on: its first argument."""
    return args[0] if args else next(iter(kwargs.values()))


def _shape(shape: tuple[int, ...], n: int | None = None) -> str:
    """`(N,3,32,32)` where the batch is `n`, else the whole shape in numbers."""
    first = ["N"] if shape[:1] == (n,) else [str(d) for d in shape[:1]]
    return "(" + ",".join([*first, *(str(d) for d in shape[1:])]) + ")"


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _described(out: Any, n: int | None = None) -> str:
    if isinstance(out, torch.Tensor):
        return _shape(tuple(out.shape), n)
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)}: " + ", ".join(
            _described(o, n) for o in out[:3]
        )
    return type(out).__name__

"""Mixed precision by device: what a recipe asks for, and what this hardware can run fast.

bf16 autocast pays on GPUs from Ampere on and on CPUs with bf16 instructions (Intel AMX,
AVX-512 BF16 on Cooper Lake, Sapphire Rapids and AMD Zen 4), where oneDNN runs convolutions
in bf16. Elsewhere it is emulated and slower than fp32, and fp16 autocast has no fast path on
a CPU at all: those fall back to fp32 with a note instead of silently running slow.
"""

from __future__ import annotations

import torch


def cpu_bf16() -> str | None:
    """The CPU's bf16 matrix instructions: "amx", "avx512_bf16", or None."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return None


def effective_precision(asked: str, device_type: str) -> tuple[str, str | None]:
    """The mixed precision to run (`no`, `fp16`, `bf16`) for `asked` on `device_type`
    ("cpu", "cuda", ...), and a one-line note when it differs from what was asked."""
    if asked == "no":
        return "no", None
    if device_type == "cuda":
        if asked == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16", "this GPU has no bf16: training in fp16 mixed precision"
        return asked, None
    if device_type == "cpu":
        if asked == "fp16":
            return "no", "fp16 mixed precision needs a GPU: training in fp32 (bf16 is a CPU's)"
        isa = cpu_bf16()
        if isa is None:
            return "no", (
                "this CPU has no bf16 instructions (AMX or AVX-512 BF16), where bf16 is slower "
                "than fp32: training in fp32"
            )
        return "bf16", None
    return asked, None


def inference_precision(asked: str, device_type: str) -> str:
    """`fp32` or `bf16` for repair: `auto` is bf16 where the hardware runs it natively (a
    GPU with bf16, a CPU with bf16 instructions), fp32 elsewhere."""
    if asked != "auto":
        return asked
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device_type == "cpu" and cpu_bf16() else "fp32"

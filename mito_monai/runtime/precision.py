"""The numeric precision a run uses, chosen by the hardware unless the user forces it.

bfloat16 autocast with channels-last memory is 2-4x faster than float32 for the U-Nets here on CPUs that
compute bfloat16 natively (AVX-512 BF16 or AMX), and several times *slower* on CPUs that emulate it (AVX2
only: most laptops and many servers). :func:`resolve_precision` turns the bundle keys ``amp``,
``amp_dtype`` and ``channels_last`` (each ``"auto"`` by default) into one :class:`Precision`:

==============================================  ==========================================================
device (``auto``)                               choice
==============================================  ==========================================================
CPU with AVX-512 BF16 or AMX (detected by torch)  bfloat16 autocast + channels-last
any other CPU                                   float32, contiguous
CUDA with bfloat16 (Ampere and later)           bfloat16 autocast + channels-last
older CUDA                                      float16 autocast + channels-last + a gradient scaler
Apple MPS                                       float32 (MPS autocast depends on the macOS version)
==============================================  ==========================================================

``amp`` true/false forces autocast on or off (``amp_dtype`` ``auto`` then picks bfloat16, or float16 on
CUDA without bfloat16 and on MPS); ``channels_last`` ``auto`` follows ``amp``. The choice is logged once per
process with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AUTO", "Precision", "as_precision", "cpu_native_bf16", "default_device", "resolve_precision"]

AUTO = "auto"
_LOGGED: set[str] = set()
_TRUE = ("true", "1", "yes", "y", "t", "on")
_FALSE = ("false", "0", "no", "n", "f", "off")


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run.

    Attributes:
        device_type: ``cpu``, ``cuda`` or ``mps``.
        amp: whether the network runs under ``torch.autocast``.
        dtype: the autocast dtype (``torch.float32`` when ``amp`` is False).
        channels_last: whether the network and its inputs use channels-last memory.
        grad_scaler: whether training needs a gradient scaler (float16 on CUDA).
        reason: why this was chosen (``"auto: ..."`` or ``"forced: ..."``).
    """

    device_type: str
    amp: bool
    dtype: torch.dtype
    channels_last: bool
    grad_scaler: bool
    reason: str

    @property
    def name(self) -> str:
        """``bfloat16``, ``float16`` or ``float32``."""
        return str(self.dtype).replace("torch.", "")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (``final_metrics.json``, ``summary.json``, MLflow parameters)."""
        return {
            "device": self.device_type, "amp": self.amp, "dtype": self.name, "channels_last": self.channels_last,
            "grad_scaler": self.grad_scaler, "reason": self.reason, "cpu_capability": _capability(),
        }

    def __str__(self) -> str:
        mode = f"{self.name} autocast" if self.amp else "float32"
        extras = (" + channels-last" if self.channels_last else "") + (" + gradient scaler" if self.grad_scaler else "")
        return f"{mode}{extras} on {self.device_type} ({self.reason})"


def _capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return "unknown"


def cpu_native_bf16() -> str | None:
    """The CPU feature that computes bfloat16 natively (``avx512_bf16`` or ``amx_bf16``), or None.

    Read from ``torch.cpu.get_capabilities()`` (torch >= 2.10); on older torch from the flags of
    ``/proc/cpuinfo`` (Linux), else None (float32 is the safe choice when it cannot be told).
    """
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        for feature in ("amx_bf16", "avx512_bf16"):
            if caps.get(feature, False):
                return feature
        return None
    try:  # pragma: no cover - depends on the torch version
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # pragma: no cover
        return None
    return next((feature for feature in ("amx_bf16", "avx512_bf16") if feature in flags), None)  # pragma: no cover


def default_device() -> torch.device:
    """``cuda:0`` when CUDA is available, else Apple ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _switch(value: Any, name: str) -> bool | None:
    """``None`` for auto, else the boolean ``value`` means; a clear error for anything else."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be 'auto', true or false, got {value!r}.")


def _dtype(value: Any) -> torch.dtype | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    if isinstance(value, torch.dtype):
        dtype = value
    else:
        dtype = getattr(torch, str(value).strip(), None)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"amp_dtype must be 'auto', 'bfloat16', 'float16' or 'float32', got {value!r}.")
    return dtype


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # pragma: no cover - no usable CUDA
        return False


def resolve_precision(
    amp: bool | str | None = AUTO,
    amp_dtype: torch.dtype | str | None = AUTO,
    channels_last: bool | str | None = AUTO,
    device: str | torch.device | None = None,
    log: bool = True,
) -> Precision:
    """Resolve the ``amp`` / ``amp_dtype`` / ``channels_last`` settings for ``device`` (see the module docstring).

    Args:
        amp: ``"auto"`` (or None), or true/false (bool or a string such as ``"true"``) to force autocast.
        amp_dtype: ``"auto"``, ``"bfloat16"``, ``"float16"`` (or a ``torch.dtype``); used when autocast is on.
        channels_last: ``"auto"`` (on exactly when autocast is, on CPU and CUDA) or true/false.
        device: where the network runs; default :func:`default_device`.
        log: log the choice (once per process for each distinct choice) on the ``mito_monai`` logger.

    Returns:
        the :class:`Precision`; ``dtype`` is float32 whenever ``amp`` is False.
    """
    device = torch.device(default_device() if device is None else device)
    kind = device.type
    forced_amp, forced_dtype, forced_cl = _switch(amp, "amp"), _dtype(amp_dtype), _switch(channels_last, "channels_last")
    if forced_dtype == torch.float32:
        forced_amp, forced_dtype = False if forced_amp is None else forced_amp, None
    if kind == "cpu":
        native = cpu_native_bf16()
        auto_amp, best = native is not None, torch.bfloat16
        why = f"CPU with native bfloat16 ({native})" if native else f"CPU without native bfloat16 ({_capability()})"
    elif kind == "cuda":
        bf16 = _cuda_bf16(device)
        auto_amp, best = True, torch.bfloat16 if bf16 else torch.float16
        why = "CUDA with bfloat16" if bf16 else "CUDA without bfloat16"
    elif kind == "mps":
        auto_amp, best, why = False, torch.float16, "Apple MPS"
    else:
        auto_amp, best, why = False, torch.bfloat16, f"device {kind}"
    use_amp = auto_amp if forced_amp is None else forced_amp
    dtype = (forced_dtype or best) if use_amp else torch.float32
    use_cl = (use_amp and kind in ("cpu", "cuda")) if forced_cl is None else forced_cl
    forced = [f"amp={use_amp}"] * (forced_amp is not None) + [f"amp_dtype={dtype}"] * (forced_dtype is not None)
    forced += [f"channels_last={use_cl}"] * (forced_cl is not None)
    reason = ("forced " + ", ".join(forced) + "; " if forced else "auto: ") + why
    result = Precision(kind, use_amp, dtype, use_cl, use_amp and dtype == torch.float16 and kind == "cuda", reason)
    if log and str(result) not in _LOGGED:
        _LOGGED.add(str(result))
        logging.getLogger("mito_monai").info(f"precision: {result}")
    return result


def as_precision(
    amp: Precision | bool | str | None = AUTO,
    amp_dtype: torch.dtype | str | None = AUTO,
    channels_last: bool | str | None = AUTO,
    device: str | torch.device | None = None,
) -> Precision:
    """``amp`` itself when it is a :class:`Precision` already resolved (a bundle's ``@precision``), else
    :func:`resolve_precision` of the arguments. Lets every component take either form in its ``amp`` argument."""
    if isinstance(amp, Precision):
        return amp
    return resolve_precision(amp, amp_dtype, channels_last, device)

"""The random state of a training run, as an object with ``state_dict``/``load_state_dict`` for checkpoints."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["TrainingRandomState", "find_random_generators"]

# containers and leaves that never hold a generator: not walked
_LEAVES = (torch.Tensor, np.ndarray, str, bytes, int, float, bool, type(None), torch.nn.Module)


def find_random_generators(objects: Iterable[Any]) -> list[np.random.RandomState | torch.Generator]:
    """Every ``numpy.random.RandomState`` (MONAI ``Randomizable.R``) and ``torch.Generator`` reachable from ``objects``.

    Walks attributes, lists, tuples and dicts (as ``monai.data.utils.set_rnd`` does), in a fixed order, each
    object once: a ``DataLoader`` reaches its dataset's transforms, its sampler's and its own generator.
    Tensors, arrays and ``nn.Module`` s are not entered.
    """
    found: list[np.random.RandomState | torch.Generator] = []
    seen: set[int] = set()
    stack = list(objects)[::-1]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _LEAVES) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.random.RandomState, torch.Generator)):
            found.append(obj)
            continue
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__"):
            children = [v for k, v in vars(obj).items() if not k.startswith("__")]
        else:
            continue
        stack.extend(children[::-1])
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _numpy_tuple(state: dict[str, Any]) -> tuple:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]


class TrainingRandomState:
    """Everything random a training run draws from, saved and restored as one checkpoint entry.

    ``state_dict()`` holds the global torch (CPU and every CUDA device), numpy and Python ``random`` states,
    and the state of every generator reachable from ``objects`` (:func:`find_random_generators`: MONAI
    transforms' ``R``, samplers' and loaders' ``torch.Generator``). All of it is tensors, ints, floats and
    strings, so a checkpoint holding it loads with ``weights_only=True``.

    Restoring it at the same point of a run (an epoch boundary, before the next epoch's loaders are
    iterated) makes the rest of the run draw exactly what the uninterrupted run draws. In a multi-process
    run each process has its own state and only process 0 writes checkpoints, so the other processes'
    draws are not restored.

    Args:
        objects: what to search for generators (typically the trainer's data loaders).
    """

    def __init__(self, objects: Iterable[Any] = ()) -> None:
        self.objects = [o for o in objects if o is not None]

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        generators = []
        for g in find_random_generators(self.objects):
            if isinstance(g, torch.Generator):
                generators.append({"kind": "torch", "state": g.get_state()})
            else:
                generators.append({"kind": "numpy", **_numpy_state(g.get_state())})
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.get_state()),
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "generators": generators,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generators = find_random_generators(self.objects)
        saved = state["generators"]
        kinds = ["torch" if isinstance(g, torch.Generator) else "numpy" for g in generators]
        if kinds != [s["kind"] for s in saved]:
            raise ValueError(
                f"the checkpoint holds {len(saved)} random generators ({[s['kind'] for s in saved]}) but this run "
                f"has {len(generators)} ({kinds}): the data pipeline changed since the checkpoint was written."
            )
        # a checkpoint loaded with map_location="cuda" brings the byte states to the GPU: set_rng_state wants CPU
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["internal"].cpu().tolist()), py["gauss"]))
        for g, s in zip(generators, saved):
            if isinstance(g, torch.Generator):
                g.set_state(s["state"].cpu())
            else:
                g.set_state(_numpy_tuple(s))

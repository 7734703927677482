"""A stand-in for an accelerator, so that CPU tests see the defects only a GPU would show.

Every test here runs on the CPU, where ``tensor.numpy()`` always works. On a GPU it raises for a tensor in device
memory (``TypeError: can't convert cuda:0 device type tensor to numpy``), and that is how a whole GPU training died
at its first full validation while every CPU test passed. Under the stand-in, the tensors a predictor computes on
its device are :class:`OnAccelerator` tensors:

- what enters nnU-Net's per-tile hook (``_internal_maybe_mirror_and_predict``) and the padded volume of its sliding
  window (``_internal_predict_sliding_window_return_logits``) is marked, so every network output, tile record and
  logit volume computed from them is too (torch propagates a tensor subclass through its operations), as is the
  sliding window's result;
- converting a marked tensor to numpy (``.numpy()``, ``np.asarray``) or pickling it (sending it to a worker
  process) raises, as on a GPU;
- ``.cpu()`` is the one way back to the host: it returns a plain tensor and is counted (``host_copies``).
  ``.to(device)`` keeps the mark: under the stand-in, the test's CPU device plays the accelerator.

A training batch as the loader hands it over can be marked too (:func:`on_host`): computing on it before it is
moved to the device raises.

It does not model device mismatches between marked and plain tensors (a plain tensor created on ``self.device``
stands for a device tensor too), nor speed or memory. Use it through the ``accelerator_standin`` fixture.
"""

from __future__ import annotations

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

DEVICE_ERROR = (
    "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
    "memory first. (accelerator stand-in: tests/accelerator.py)"
)
_TO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
_PICKLE = {torch.Tensor.__reduce_ex__}


class OnAccelerator(torch.Tensor):
    """A tensor that stands for one in accelerator memory (see the module docstring)."""

    host_copies = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TO_NUMPY:
            raise TypeError(DEVICE_ERROR)
        if func in _PICKLE:
            raise TypeError(
                "an accelerator tensor is being pickled (sent to a worker process?): copy it to the host "
                "with .cpu() first (accelerator stand-in)"
            )
        if func is torch.Tensor.cpu:
            OnAccelerator.host_copies += 1
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


class OnHost(torch.Tensor):
    """A tensor of a training batch as nnU-Net's loader hands it over, in host memory: moving it to the device
    (``.to``) gives the device copy (:class:`OnAccelerator`); computing on it raises, so a training step that
    computes on the host before moving its batch (single-threaded, while the GPU waits) fails a CPU test."""

    _MOVES = {"to", "cuda", "pin_memory"}
    _READS = {"__get__", "size", "dim", "numel", "is_pinned", "__len__", "__repr__", "__format__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in cls._MOVES:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(OnAccelerator)
        if name in cls._READS:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        raise TypeError(
            f"{name} computed on a training batch still in host memory: move the batch to the device "
            "first (accelerator stand-in: tests/accelerator.py)"
        )


def on_host(batch: dict) -> dict:
    """A loader's batch with its data and target (a tensor or a list of them) marked :class:`OnHost`."""

    def mark(value):
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value.as_subclass(OnHost) if isinstance(value, torch.Tensor) else value

    return {**batch, "data": mark(batch["data"]), "target": mark(batch["target"])}


def on_accelerator(tensor):
    return tensor.as_subclass(OnAccelerator) if isinstance(tensor, torch.Tensor) else tensor


def loaded_onto_accelerator(loaded):
    """What ``torch.load(..., map_location=device)`` returns on a GPU: every tensor of ``loaded`` (a checkpoint's
    nested dicts and lists) marked as on the accelerator."""
    if isinstance(loaded, dict):
        return {key: loaded_onto_accelerator(value) for key, value in loaded.items()}
    if isinstance(loaded, (list, tuple)):
        return type(loaded)(loaded_onto_accelerator(value) for value in loaded)
    return on_accelerator(loaded)


def load_checkpoints_onto_accelerator(monkeypatch) -> None:
    """``torch.load(..., map_location=<a torch.device>)``, as nnU-Net's ``load_checkpoint`` loads onto the training
    device, returns its tensors marked as on the accelerator; a load to ``"cpu"`` (a string) stays on the host."""
    load = torch.load

    def load_onto_device(*args, **kwargs):
        loaded = load(*args, **kwargs)
        return loaded_onto_accelerator(loaded) if isinstance(kwargs.get("map_location"), torch.device) else loaded

    monkeypatch.setattr(torch, "load", load_onto_device)


def install(monkeypatch) -> type[OnAccelerator]:
    """Mark what nnU-Net's predictors compute on their device (every predictor class: they share these hooks)."""
    tile_hook = nnUNetPredictor._internal_maybe_mirror_and_predict
    window_hook = nnUNetPredictor._internal_predict_sliding_window_return_logits

    def tile_on_accelerator(self, x):
        return tile_hook(self, on_accelerator(x))

    def window_on_accelerator(self, data, slicers, do_on_device: bool = True):
        # nnU-Net keeps the logits on a GPU (perform_everything_on_device, its default there) and switches that off
        # on a CPU: under the stand-in they are on the accelerator either way
        return on_accelerator(window_hook(self, on_accelerator(data), slicers, do_on_device))

    monkeypatch.setattr(nnUNetPredictor, "_internal_maybe_mirror_and_predict", tile_on_accelerator)
    monkeypatch.setattr(nnUNetPredictor, "_internal_predict_sliding_window_return_logits", window_on_accelerator)
    OnAccelerator.host_copies = 0
    return OnAccelerator

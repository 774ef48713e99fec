"""submit(model): the last thing train.py does. Exports the model so the evaluator never needs
the agent's Python: a torch.export graph of `model(idx) -> logits` at the profile's eval shape,
written as a PT2 archive to the run's out dir.

Exporting must fit in the profile's export allowance (the seconds after the deadline before the
host kills the run), so the export machinery is imported here, when train.py imports submit at
its start (inside the budget), not on the first call."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch._export.serde.serialize  # noqa: F401  (warm: see the docstring)
import torch.export

from evaluator import layout
from evaluator.context import run_context


class SubmitError(RuntimeError):
    pass


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind torch.compile or DDP wrappers."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module):
            return _unwrap(inner)
    return model


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def submit(model: torch.nn.Module, out_dir: Path | None = None) -> Path:
    """Export `model` (idx (B, T) int64 -> logits (B, T, vocab)) to <out_dir>/model.pt2."""
    context = run_context()
    profile = context.profile
    out_dir = Path(out_dir) if out_dir is not None else context.out_dir
    model = _unwrap(model)
    if not isinstance(model, torch.nn.Module):
        raise SubmitError("submit() takes the trained torch.nn.Module")
    started = time.perf_counter()
    model.eval()
    example = torch.zeros((profile.eval_batch_size, profile.seq_len), dtype=torch.int64, device=_device_of(model))
    with torch.no_grad():
        logits = model(example)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (
            profile.eval_batch_size,
            profile.seq_len,
            profile.vocab_size,
        ):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise SubmitError(
                f"model(idx) must return logits of shape (batch, seq_len, vocab) = "
                f"({profile.eval_batch_size}, {profile.seq_len}, {profile.vocab_size}); got {shape}"
            )
        exported = torch.export.export(model, (example,), strict=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / layout.ARTIFACT_NAME
    staging = out_dir / ".partial"  # the archive's root folder is named after the file, so keep the name
    staging.mkdir(exist_ok=True)
    partial = staging / layout.ARTIFACT_NAME
    torch.export.save(exported, str(partial))
    os.replace(partial, final)
    staging.rmdir()
    size_mb = final.stat().st_size / 1e6
    print(f"submitted: {final} ({size_mb:.1f} MB, exported in {time.perf_counter() - started:.1f}s)", flush=True)
    return final

"""The images' smoke test: what the first minute of every experiment does, on a tiny model.

images/build.py runs this with `python -c` in a fresh evaluator-image container, locked down like a
train container (sandbox/specs.py), at the end of every build, so a broken image fails the build
instead of the night. It trains one step of a tiny causal LM under torch.compile (Inductor's C++
backend on CPU, Triton on CUDA: both need the compiler toolchain), exports it with torch.export as
submit() does, and loads the archive back with the evaluator's own loader (which relies on torch's
private export serde functions, so a torch version it was not tested with shows up here).

    python -c "$(cat images/smoke.py)" cpu|cuda

Prints one JSON line: torch, cuda, device, compile_s, export_s, load_s; or, on failure, the
traceback and then one line `smoke test: <error>` last, for the build to show.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, BATCH, SEQ = 64, 32, 2, 16


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        q, k, v = self.qkv(F.rms_norm(x, (DIM,))).split(DIM, dim=-1)
        x = x + F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)[:, 0]
        return self.head(F.rms_norm(x, (DIM,)))


def main(device_name: str) -> None:
    if device_name == "cuda" and not torch.cuda.is_available():
        sys.exit(f"CUDA is not available in the image (torch {torch.__version__}, built for CUDA "
                 f"{torch.version.cuda}): check the NVIDIA driver and container toolkit, and that "
                 f"the wheelhouse holds a CUDA build of torch")
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = Tiny().to(device)
    idx = torch.randint(0, VOCAB, (BATCH, SEQ), device=device)

    started = time.perf_counter()
    compiled = torch.compile(model)
    loss = F.cross_entropy(compiled(idx).flatten(0, 1), idx.flatten())
    loss.backward()  # compiles the backward graph too, as a training step does
    torch.testing.assert_close(compiled(idx), model(idx), rtol=1e-3, atol=1e-3)
    compiled_at = time.perf_counter()

    model.eval()
    with torch.no_grad():
        expected = model(idx)
        program = torch.export.export(model, (idx,), strict=False)
    torch.export.save(program, "/tmp/model.pt2")
    exported_at = time.perf_counter()

    from evaluator.artifact import load_artifact

    loaded = load_artifact("/tmp/model.pt2", BATCH, SEQ, device=device_name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), expected, rtol=1e-4, atol=1e-4)
    loaded_at = time.perf_counter()

    print(json.dumps({
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compile_s": round(compiled_at - started, 2),
        "export_s": round(exported_at - compiled_at, 2),
        "load_s": round(loaded_at - exported_at, 2),
    }), flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    except Exception as exc:  # the build shows the last line: make it the error, not a hint
        import traceback

        traceback.print_exc()
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        sys.exit(f"smoke test: {type(exc).__name__}: {first}"[:400])

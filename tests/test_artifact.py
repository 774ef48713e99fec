"""The evaluator reads a PT2 archive without running anything a run wrote, and refuses what it must."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluator.allowlist import ALLOWED_OPS, check_allowlist_sane
from evaluator.artifact import DEFAULT_LIMITS, ArtifactLimits, ArtifactRejected, load_artifact

B, T, V, C = 2, 8, 32, 16


class Tiny(nn.Module):
    """Embedding -> RMSNorm -> tied head, with a persistent and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.full((C,), 0.5))
        self.register_buffer("pos", torch.linspace(0, 1, T)[None, :, None], persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(self.emb(idx), (C,)) * self.scale + self.pos
        return self.head(x)


def export_to(model: nn.Module, path: Path, shape: tuple[int, int] = (B, T)) -> Path:
    torch.manual_seed(0)
    example = torch.randint(0, V, shape)
    ep = torch.export.export(model.eval(), (example,), strict=False)
    torch.export.save(ep, str(path))
    return path


def tokens() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tiny, Path]:
    torch.manual_seed(0)
    model = Tiny().eval()
    return model, export_to(model, tmp_path_factory.mktemp("honest") / "model.pt2")


# --- archive surgery ---------------------------------------------------------------------------


def read_members(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = names[0].split("/")[0]
        return root, {n[len(root) + 1 :]: zf.read(n) for n in names}


def write_members(path: Path, root: str, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
    return path


def tampered(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    root, members = read_members(src)
    edit(members)
    return write_members(dst, root, members)


def edit_json(members: dict[str, bytes], name: str, edit: Callable[[dict], None]) -> None:
    doc = json.loads(members[name])
    edit(doc)
    members[name] = json.dumps(doc).encode()


MODEL_JSON = "models/model.json"
WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"


class Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def live_torch_pickle(marker: Path) -> bytes:
    """A torch.save payload that runs code under torch.load(weights_only=False); checked live."""
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    data = buf.getvalue()
    torch.load(io.BytesIO(data), weights_only=False).close()
    assert marker.exists(), "the test payload must really run when unpickled"
    marker.unlink()
    return data


def live_plain_pickle(marker: Path) -> bytes:
    data = pickle.dumps(Payload(marker))
    pickle.loads(data).close()
    assert marker.exists()
    marker.unlink()
    return data


def rejected(path: Path, match: str, limits: ArtifactLimits = DEFAULT_LIMITS) -> ArtifactRejected:
    with pytest.raises(ArtifactRejected, match=match) as info:
        load_artifact(path, B, T, limits=limits)
    assert "\n" not in info.value.reason
    return info.value


# --- the honest path ---------------------------------------------------------------------------


def test_honest_archive_loads_and_reproduces_the_model(honest):
    model, path = honest
    loaded = load_artifact(path, B, T)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert len(loaded.sha256) == 64


def test_tied_weights_stay_tied(honest):
    _, path = honest
    sd = load_artifact(path, B, T).program.state_dict
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()


def test_wrong_input_shape_is_refused(honest):
    _, path = honest
    with pytest.raises(ArtifactRejected, match=r"int64 of shape \(2, 9\)"):
        load_artifact(path, B, 9)


class WithArange(Tiny):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device, dtype=torch.float32)
        return super().forward(idx) + positions.view(1, -1, 1)


def test_archive_exported_on_a_gpu_loads_on_the_cpu_evaluator(tmp_path):
    """Devices named in the graph are pinned to the eval device; a CPU-only torch must never see cuda."""
    model = WithArange().eval()
    path = export_to(model, tmp_path / "cpu.pt2")

    def on_gpu(members: dict[str, bytes]) -> None:
        for name in (MODEL_JSON, WEIGHTS, CONSTANTS):
            members[name] = members[name].replace(b'"type": "cpu"', b'"type": "cuda"')
        assert b'"as_device": {"type": "cuda"' in members[MODEL_JSON]

    loaded = load_artifact(tampered(path, tmp_path / "model.pt2", on_gpu), B, T)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- the file ----------------------------------------------------------------------------------


def test_symlink_artifact_is_refused(honest, tmp_path):
    _, path = honest
    link = tmp_path / "model.pt2"
    link.symlink_to(path)
    rejected(link, "symlink")


def test_non_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "model.pt2"
    os.mkfifo(fifo)
    rejected(fifo, "not a regular file")  # and it does not block on the FIFO


def test_oversized_file_is_refused(honest):
    _, path = honest
    e = rejected(path, "over the", ArtifactLimits(max_file_bytes=1000))
    assert e.sha256 is None or len(e.sha256) == 64


def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"definitely not a zip" * 10)
    rejected(path, "not a zip archive")


# --- the zip -----------------------------------------------------------------------------------


def test_zip_bomb_is_refused(honest, tmp_path):
    _, path = honest
    root, members = read_members(path)
    members["data/weights/weight_0"] = bytes(50_000_000)  # deflates to ~50 KB
    bomb = write_members(tmp_path / "model.pt2", root, members, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1_000_000
    rejected(bomb, "compressed")


def test_oversized_entry_is_refused(honest, tmp_path):
    _, path = honest
    big = tampered(path, tmp_path / "model.pt2", lambda m: m.update({MODEL_JSON: m[MODEL_JSON] + b" " * 300_000}))
    rejected(big, r"models/model.json.*limit", ArtifactLimits(max_json_bytes=200_000))


def test_too_many_entries_are_refused(honest, tmp_path):
    _, path = honest
    many = tampered(
        path, tmp_path / "model.pt2", lambda m: m.update({f"data/weights/weight_{i}": b"" for i in range(50, 90)})
    )
    rejected(many, "entries", ArtifactLimits(max_entries=30))


@pytest.mark.parametrize("bad_name", ["../escape", "/abs", "a\\b", "models/../models/model.json"])
def test_unsafe_entry_names_are_refused(honest, tmp_path, bad_name):
    _, path = honest
    root, members = read_members(path)
    out = tmp_path / "model.pt2"
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
        info = zipfile.ZipInfo(bad_name if bad_name.startswith("/") else f"{root}/{bad_name}")
        zf.writestr(info, b"x")
    rejected(out, "unsafe name")


def test_duplicate_entry_names_are_refused(honest, tmp_path):
    _, path = honest
    root, members = read_members(path)
    out = tmp_path / "model.pt2"
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{root}/{name}", data)
        with pytest.warns(UserWarning):
            zf.writestr(f"{root}/{MODEL_JSON}", b"{}")
    rejected(out, "duplicate")


def test_weight_bytes_shorter_than_the_tensor_are_refused(honest, tmp_path):
    _, path = honest
    short = tampered(
        path, tmp_path / "model.pt2", lambda m: m.update({"data/weights/weight_0": m["data/weights/weight_0"][:64]})
    )
    rejected(short, "past the end")


def test_unknown_dtype_is_refused(honest, tmp_path):
    _, path = honest

    def complex_dtype(doc: dict) -> None:
        next(iter(doc["config"].values()))["tensor_meta"]["dtype"] = 10  # COMPLEXFLOAT

    out = tampered(path, tmp_path / "model.pt2", lambda m: edit_json(m, WEIGHTS, complex_dtype))
    rejected(out, "dtype")


# --- pickles: every slot the format has ----------------------------------------------------------


def test_pickled_weight_is_refused_and_never_runs(honest, tmp_path):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker)

    def edit(m: dict[str, bytes]) -> None:
        m["data/weights/weight_0"] = payload
        edit_json(m, WEIGHTS, lambda d: [v.update(use_pickle=True) for v in d["config"].values()])

    rejected(tampered(path, tmp_path / "model.pt2", edit), "pickle")
    assert not marker.exists()


def test_pickled_constant_is_refused_and_never_runs(honest, tmp_path):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker)

    def edit(m: dict[str, bytes]) -> None:
        m["data/constants/tensor_0"] = payload
        edit_json(m, CONSTANTS, lambda d: [v.update(use_pickle=True) for v in d["config"].values()])

    rejected(tampered(path, tmp_path / "model.pt2", edit), "pickle")
    assert not marker.exists()


@pytest.mark.parametrize("entry,make", [("custom_obj_0", "torch"), ("opaque_obj_0", "plain")])
def test_custom_and_opaque_objects_are_refused_and_never_run(honest, tmp_path, entry, make):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker) if make == "torch" else live_plain_pickle(marker)

    def edit(m: dict[str, bytes]) -> None:
        m[f"data/constants/{entry}"] = payload
        edit_json(
            m,
            CONSTANTS,
            lambda d: d["config"].update(
                {"obj": {"path_name": entry, "is_param": False, "use_pickle": True, "tensor_meta": None}}
            ),
        )

    rejected(tampered(path, tmp_path / "model.pt2", edit), "unexpected archive entry|pickle|custom")
    assert not marker.exists()


def test_custom_object_in_config_without_its_entry_is_refused(honest, tmp_path):
    _, path = honest

    def edit(m: dict[str, bytes]) -> None:
        edit_json(
            m,
            CONSTANTS,
            lambda d: d["config"].update(
                {"obj": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}}
            ),
        )

    rejected(tampered(path, tmp_path / "model.pt2", edit), "custom or opaque")


def test_custom_object_input_in_the_graph_is_refused(honest, tmp_path):
    _, path = honest

    def add_custom_input(doc: dict) -> None:
        specs = doc["graph_module"]["signature"]["input_specs"]
        specs.insert(
            0, {"custom_obj": {"arg": {"name": "obj", "class_fqn": "__torch__.Evil"}, "custom_obj_name": "obj"}}
        )

    rejected(
        tampered(path, tmp_path / "model.pt2", lambda m: edit_json(m, MODEL_JSON, add_custom_input)), "custom object"
    )


def test_pickled_sample_inputs_are_never_read(honest, tmp_path):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker)
    out = tampered(path, tmp_path / "model.pt2", lambda m: m.update({"data/sample_inputs/model.pt": payload}))
    load_artifact(out, B, T)  # the sample inputs are not needed: the archive loads, the pickle never runs
    assert not marker.exists()


def test_pickle_instead_of_model_json_is_refused_and_never_runs(honest, tmp_path):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker)
    rejected(tampered(path, tmp_path / "model.pt2", lambda m: m.update({MODEL_JSON: payload})), "not valid JSON")
    assert not marker.exists()


@pytest.mark.parametrize(
    "entry",
    ["data/weights/model.pt", "data/constants/model.pt", "data/aotinductor/model/model.so", "extra/notes.pt"],
)
def test_legacy_pickles_and_other_payload_files_are_refused(honest, tmp_path, entry):
    _, path = honest
    marker = tmp_path / "PWNED"
    payload = live_torch_pickle(marker)
    rejected(tampered(path, tmp_path / "model.pt2", lambda m: m.update({entry: payload})), "unexpected archive entry")
    assert not marker.exists()


# --- code hidden in the graph JSON ------------------------------------------------------------


def test_code_in_a_tensor_name_is_refused_and_never_runs(honest, tmp_path):
    """torch's deserializer writes names into generated Python source; a crafted name is code."""
    _, path = honest
    marker = tmp_path / "PWNED"
    evil = f"idx=open({str(marker)!r}, 'w')"
    raw_edit = lambda m: m.update({MODEL_JSON: m[MODEL_JSON].replace(b'"idx"', json.dumps(evil).encode())})  # noqa: E731
    rejected(tampered(path, tmp_path / "model.pt2", raw_edit), "invalid")
    assert not marker.exists()


def test_value_named_like_a_global_of_the_generated_code_is_refused(honest, tmp_path):
    _, path = honest
    raw_edit = lambda m: m.update({MODEL_JSON: m[MODEL_JSON].replace(b'"idx"', b'"torch"')})  # noqa: E731
    rejected(tampered(path, tmp_path / "model.pt2", raw_edit), "reserved")


def test_symbolic_expression_is_refused_and_never_runs(honest, tmp_path):
    """Symbolic shapes are parsed with sympy.sympify, which evaluates Python."""
    _, path = honest
    marker = tmp_path / "PWNED"

    def symbolic(doc: dict) -> None:
        meta = doc["graph_module"]["graph"]["tensor_values"]["idx"]
        meta["sizes"][0] = {
            "as_expr": {"expr_str": f"__import__('builtins').open({str(marker)!r}, 'w') and s0", "hint": None}
        }

    rejected(tampered(path, tmp_path / "model.pt2", lambda m: edit_json(m, MODEL_JSON, symbolic)), "symbolic")
    assert not marker.exists()


def test_guards_code_is_refused(honest, tmp_path):
    """ExportedProgram.module() exec()s guards_code."""
    _, path = honest
    out = tampered(
        path,
        tmp_path / "model.pt2",
        lambda m: edit_json(m, MODEL_JSON, lambda d: d.update(guards_code=["__import__('os')"])),
    )
    rejected(out, "guards code")


@pytest.mark.parametrize(
    "arg",
    [
        {"as_graph": {"name": "g", "graph": {}}},
        {"as_custom_obj": {"name": "obj", "class_fqn": "__torch__.Evil"}},
        {"as_operator": "torch.ops.aten.bernoulli.default"},
    ],
)
def test_subgraph_custom_object_and_operator_arguments_are_refused(honest, tmp_path, arg):
    _, path = honest

    def add_arg(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["inputs"].append({"name": "extra", "arg": arg, "kind": 1})

    rejected(tampered(path, tmp_path / "model.pt2", lambda m: edit_json(m, MODEL_JSON, add_arg)), "not allowed")


# --- ops and mutation ----------------------------------------------------------------------------


class Bernoulli(Tiny):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + torch.bernoulli(torch.full((B, T, V), 0.5))


def test_random_op_is_refused_at_load(tmp_path):
    path = export_to(Bernoulli(), tmp_path / "model.pt2")
    rejected(path, "aten.bernoulli.*allowlist")


_lib = torch.library.Library("overnight_test", "DEF")  # noqa: SIM115 (module lifetime)
_lib.define("side_effect(Tensor x) -> Tensor")


@torch.library.impl(_lib, "side_effect", "CompositeExplicitAutograd")
def _side_effect(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@torch.library.register_fake("overnight_test::side_effect")
def _side_effect_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(Tiny):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.ops.overnight_test.side_effect(super().forward(idx))


def test_custom_op_is_refused_at_load(tmp_path):
    path = export_to(CustomOp(), tmp_path / "model.pt2")
    rejected(path, "overnight_test.side_effect.*allowlist")


class MutatesBuffer(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return super().forward(idx) + self.calls


def test_buffer_mutated_in_forward_is_refused(tmp_path):
    path = export_to(MutatesBuffer(), tmp_path / "model.pt2")  # export keeps the in-place add_
    rejected(path, "aten.add_.Tensor mutates a tensor in place")


def test_buffer_mutation_in_a_functional_graph_is_refused(tmp_path):
    """After decomposition the mutation moves into the signature as a buffer write-back."""
    ep = torch.export.export(MutatesBuffer().eval(), (tokens(),), strict=False).run_decompositions()
    assert ep.graph_signature.buffers_to_mutate
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    rejected(tmp_path / "model.pt2", "mutates buffer 'calls'")


class MutatesInput(Tiny):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out = super().forward(idx)
        idx.add_(1)
        return out


def test_input_mutated_in_forward_is_refused(tmp_path):
    path = export_to(MutatesInput(), tmp_path / "model.pt2")
    rejected(path, "mutates a tensor in place")


class TrainingDropout(Tiny):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.dropout(super().forward(idx), 0.1, training=True)


def test_dropout_in_training_mode_is_refused(tmp_path):
    path = export_to(TrainingDropout(), tmp_path / "model.pt2")
    rejected(path, "train=True")


class EvalDropoutAndConstants(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        bias = torch.tensor([0.25])  # a tensor constant made in forward (lift_fresh_copy + detach_)
        return self.drop(super().forward(idx)) + bias


def test_eval_mode_dropout_and_tensor_constants_are_allowed(tmp_path):
    model = EvalDropoutAndConstants().eval()
    loaded = load_artifact(export_to(model, tmp_path / "model.pt2"), B, T)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_allowlist_holds_no_mutating_random_or_foreign_op():
    check_allowlist_sane()
    for name in ("aten.mm.default", "aten.scaled_dot_product_attention.default", "aten.rms_norm.default"):
        assert name in ALLOWED_OPS
    for name in (
        "aten.add_.Tensor",
        "aten.add.out",
        "aten.bernoulli.default",
        "aten.randn.default",
        "aten.empty.memory_format",
        "aten.index_put_.default",
        "aten.copy_.default",
    ):
        assert name not in ALLOWED_OPS

"""Read a run's model artifact (the PT2 archive `torch.export.save` writes) without running its code.

The archive is hostile input. `torch.export.load` is not used: it unpickles entries the archive's
own JSON flags (`use_pickle`, custom/opaque objects, sample inputs) and falls back to pickle on
some errors. Here the zip is read with `zipfile` under caps, only the graph JSON and the raw
tensor bytes are taken, the graph JSON is checked (`evaluator.allowlist.check_program_json`)
before torch's deserializer sees a sanitized copy of it, and the resulting graph is checked again.

What is read, relative to the archive's single root folder:
  models/model.json                              the ExportedProgram JSON
  data/weights/model_weights_config.json         {"config": {fqn: payload meta}}
  data/weights/weight_N                          raw little-endian storage bytes
  data/constants/model_constants_config.json     same for lifted constants
  data/constants/tensor_N
Also allowed but never opened: data/sample_inputs/model.pt (a pickle), and the small format
markers (archive_format, archive_version, byteorder, .data/version, .data/serialization_id).
Any other entry (custom_obj_N, opaque_obj_N, legacy model.pt weights, AOTI files) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch

from evaluator.allowlist import (
    KNOWN_SCALAR_TYPES,
    GraphRejected,
    check_exported_program,
    check_fqn,
    check_program_json,
    check_tensor_meta,
)
from evaluator.hostile import UnsafeFileError, clean_line, open_regular
from evaluator.records import RejectCode

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class ArtifactLimits:
    max_file_bytes: int = 4 * GiB
    max_entries: int = 10_000
    max_json_bytes: int = 256 * MiB
    max_small_entry_bytes: int = 4096  # the format marker files


DEFAULT_LIMITS = ArtifactLimits()


class ArtifactRejected(Exception):
    """The artifact is refused before the model ever runs; `reason` is one line for a person
    (hostile text from the archive cleaned out), `code` "archive" or "graph"."""

    def __init__(self, reason: str, code: RejectCode = "archive") -> None:
        reason = clean_line(reason, 300)
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.sha256: str | None = None  # set once the file could be opened and hashed


class ModelOutputError(Exception):
    """The model ran but returned something that is not one logits tensor (a dynamic failure)."""


MODEL_JSON = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"  # a pickle: allowed to exist, never read
_MARKERS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_KNOWN = {MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS, *_MARKERS}
WEIGHTS_DIR = "data/weights"
CONSTANTS_DIR = "data/constants"
_WEIGHT_NAME = re.compile(r"weight_[0-9]{1,7}")
_CONSTANT_NAME = re.compile(r"tensor_[0-9]{1,7}")
_ROOT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")

_PAYLOAD_META_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}


def _reject(reason: str, code: RejectCode = "archive") -> NoReturn:
    raise ArtifactRejected(reason, code)


# ---------------------------------------------------------------------------------------------
# The file itself.


def open_artifact(path: Path, max_bytes: int) -> BinaryIO:
    """Open a regular file without following a symlink in its last component; cap its size."""
    try:
        fd, _ = open_regular(path, max_bytes)
    except UnsafeFileError as e:
        _reject(f"the artifact was refused: {e} (it must be a regular file, at most {max_bytes} bytes)")
    return os.fdopen(fd, "rb")


def sha256_of(f: BinaryIO) -> str:
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(MiB):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The zip archive.


@dataclass(frozen=True)
class ArchiveIndex:
    zf: zipfile.ZipFile
    root: str
    entries: Mapping[str, zipfile.ZipInfo]  # path relative to the root -> entry


def _check_entry_name(name: str) -> list[str]:
    if not name or len(name) > 512 or "\\" in name or "\x00" in name or name.startswith("/"):
        _reject(f"archive entry with an unsafe name {name[:80]!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        _reject(f"archive entry with an unsafe name {name[:80]!r}")
    return parts


# The zip end records (PKWARE APPNOTE.TXT 4.3.14-4.3.16), found where zipfile looks for them.
_END = struct.Struct("<4s4H2LH")  # end of central directory: signature ... entries total (field 4) ...
_END_SIGNATURE = b"PK\x05\x06"
_END64_LOCATOR = struct.Struct("<4sLQL")  # zip64 locator: signature, disk, record offset, disks
_END64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end record: ... entries this disk, entries total (field 7) ...
_END64_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = 1 << 16


def declared_entry_count(f: BinaryIO) -> int | None:
    """The entry count the archive's end records declare, read before zipfile builds one ZipInfo
    per entry; None when there is no end record (not a zip). The records are found exactly as
    zipfile finds them (the end record last in the file, else the last signature in the final
    64 KiB + 22 bytes; a zip64 locator and record just before it), so this is the count zipfile
    then trusts. An archive spanning several disks raises zipfile.BadZipFile, as zipfile does."""
    try:
        f.seek(-_END.size, os.SEEK_END)
    except OSError:
        return None
    data = f.read()
    if len(data) == _END.size and data[:4] == _END_SIGNATURE and data[-2:] == b"\x00\x00":
        return _zip64_entry_count(f, -_END.size, _END.unpack(data)[4])
    size = f.seek(0, os.SEEK_END)
    search_from = max(size - _MAX_COMMENT - _END.size, 0)
    f.seek(search_from)
    data = f.read()
    start = data.rfind(_END_SIGNATURE)
    if start < 0:
        return None
    record = data[start : start + _END.size]
    if len(record) != _END.size:
        return None
    return _zip64_entry_count(f, search_from + start - size, _END.unpack(record)[4])


def _zip64_entry_count(f: BinaryIO, end_offset: int, count: int) -> int:
    """The zip64 record's count when a zip64 locator sits just before the end record (at
    `end_offset` from the end of the file), else `count`."""
    try:
        f.seek(end_offset - _END64_LOCATOR.size, os.SEEK_END)
    except OSError:
        return count
    data = f.read(_END64_LOCATOR.size)
    if len(data) != _END64_LOCATOR.size:
        return count
    signature, disk, _, disks = _END64_LOCATOR.unpack(data)
    if signature != _END64_LOCATOR_SIGNATURE:
        return count
    if disk != 0 or disks > 1:
        raise zipfile.BadZipFile("zipfiles that span multiple disks are not supported")
    f.seek(end_offset - _END64_LOCATOR.size - _END64.size, os.SEEK_END)  # assumes no extensible data
    data = f.read(_END64.size)
    if len(data) != _END64.size:
        return count
    record = _END64.unpack(data)
    if record[0] != _END64_SIGNATURE:
        return count
    return int(record[7])


def index_archive(f: BinaryIO, file_size: int, limits: ArtifactLimits) -> ArchiveIndex:
    try:
        entry_count = declared_entry_count(f)  # read the entry count before zipfile builds its list
        if entry_count is None:
            _reject("the artifact is not a zip archive (torch.export.save writes one)")
        if entry_count > limits.max_entries:
            _reject(f"the archive has {entry_count} entries (limit {limits.max_entries})")
        f.seek(0)
        zf = zipfile.ZipFile(f)
    except ArtifactRejected:
        raise
    except Exception as e:  # BadZipFile, struct errors, bogus offsets: all mean "not a sane zip"
        _reject(f"the artifact is not a valid zip archive ({type(e).__name__})")
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        _reject(f"the archive has {len(infos)} entries (limit {limits.max_entries})")
    entries: dict[str, zipfile.ZipInfo] = {}
    root: str | None = None
    declared = 0
    for info in infos:
        parts = _check_entry_name(info.filename)
        if len(parts) < 2 or info.is_dir():
            _reject(f"unexpected archive entry {info.filename[:80]!r}")
        if root is None:
            root = parts[0]
            if not _ROOT.fullmatch(root):
                _reject(f"unexpected archive root folder {root[:40]!r}")
        elif parts[0] != root:
            _reject("the archive has more than one root folder")
        rel = "/".join(parts[1:])
        if rel in entries:
            _reject(f"the archive has a duplicate entry {info.filename[:80]!r}")
        if info.flag_bits & 0x1:
            _reject(f"archive entry {rel!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            _reject(f"archive entry {rel[:80]!r} is compressed; torch.export.save stores entries uncompressed")
        declared += info.file_size
        entries[rel] = info
    # Stored entries cannot hold more bytes than the file has, unless they overlap (a zip bomb).
    if declared > file_size:
        _reject("archive entries declare more data than the file holds (overlapping entries)")
    for rel in entries:
        folder, _, name = rel.rpartition("/")
        raw_tensor = (folder == WEIGHTS_DIR and _WEIGHT_NAME.fullmatch(name)) or (
            folder == CONSTANTS_DIR and _CONSTANT_NAME.fullmatch(name)
        )
        if rel not in _KNOWN and not raw_tensor:
            _reject(f"unexpected archive entry {rel[:80]!r} (custom objects, pickles and extra files are not accepted)")
    for required in (MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        if required not in entries:
            _reject(f"the archive has no {required}; write it with torch.export.save")
    assert root is not None
    return ArchiveIndex(zf=zf, root=root, entries=entries)


def read_entry(index: ArchiveIndex, rel: str, cap: int) -> bytes:
    if rel == SAMPLE_INPUTS:
        raise AssertionError("the sample inputs entry is a pickle and is never read")
    info = index.entries.get(rel)
    if info is None:
        _reject(f"the archive has no entry {rel[:80]!r}")
    if info.file_size > cap:
        _reject(f"archive entry {rel[:80]!r} is {info.file_size} bytes (limit {cap})")
    try:
        with index.zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except Exception as e:  # CRC mismatch, truncated data
        _reject(f"archive entry {rel[:80]!r} is corrupt ({type(e).__name__})")
    if len(data) != info.file_size:
        _reject(f"archive entry {rel[:80]!r} does not match its declared size")
    return data


def _read_json(index: ArchiveIndex, rel: str, limits: ArtifactLimits) -> Any:
    raw = read_entry(index, rel, limits.max_json_bytes)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        _reject(f"{rel} is not valid JSON")


def _check_markers(index: ArchiveIndex, limits: ArtifactLimits) -> None:
    if "byteorder" in index.entries:
        if read_entry(index, "byteorder", limits.max_small_entry_bytes).strip() != b"little":
            _reject("the archive's tensors are not little-endian")
    if "archive_format" in index.entries:
        if read_entry(index, "archive_format", limits.max_small_entry_bytes).strip() != b"pt2":
            _reject("the archive is not a PT2 archive")


# ---------------------------------------------------------------------------------------------
# Tensors from raw bytes.


@dataclass(frozen=True)
class TensorSpec:
    path_name: str
    dtype: torch.dtype
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int


def parse_payload_config(doc: Any, what: str, path_name_pattern: re.Pattern[str]) -> dict[str, TensorSpec]:
    """Validate a {weights,constants} config: raw tensors only, never a pickle."""
    if not isinstance(doc, dict) or set(doc) != {"config"} or not isinstance(doc["config"], dict):
        _reject(f"malformed {what} config")
    specs: dict[str, TensorSpec] = {}
    for fqn, meta in doc["config"].items():
        try:
            check_fqn(fqn, what)
        except GraphRejected as e:
            _reject(str(e))
        if not isinstance(meta, dict) or not set(meta) <= _PAYLOAD_META_KEYS or "path_name" not in meta:
            _reject(f"malformed {what} config entry for {fqn!r}")
        if meta.get("use_pickle") is not False:
            _reject(f"{what} {fqn!r} is stored as a pickle; only raw tensors are accepted")
        path_name = meta["path_name"]
        if not isinstance(path_name, str) or not path_name_pattern.fullmatch(path_name):
            _reject(
                f"{what} {fqn!r} points at {str(path_name)[:40]!r}, not a raw tensor entry "
                "(custom or opaque objects are refused)"
            )
        if not isinstance(meta.get("is_param"), bool):
            _reject(f"malformed {what} config entry for {fqn!r}")
        try:
            tm = check_tensor_meta(meta.get("tensor_meta"), f"{what} {fqn}")
        except GraphRejected as e:
            _reject(str(e))
        specs[fqn] = TensorSpec(
            path_name=path_name,
            dtype=KNOWN_SCALAR_TYPES[tm["dtype"]],
            sizes=tuple(s["as_int"] for s in tm["sizes"]),
            strides=tuple(s["as_int"] for s in tm["strides"]),
            offset=tm["storage_offset"]["as_int"],
        )
    return specs


def _flat_storage(data: bytes, dtype: torch.dtype, what: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) % itemsize:
        _reject(f"{what} holds {len(data)} bytes, not a whole number of {dtype} elements")
    if not data:
        return torch.empty(0, dtype=dtype)
    if dtype == torch.bool:  # only 0/1 are valid bools; normalize instead of trusting the bytes
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).ne(0)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def build_tensors(
    index: ArchiveIndex, specs: Mapping[str, TensorSpec], folder: str, limits: ArtifactLimits, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """One storage per entry, each fqn a bounds-checked strided view of it (tied weights stay tied)."""
    storages: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for fqn, spec in specs.items():
        flat = storages.get(spec.path_name)
        if flat is None:
            entry = f"{folder}/{spec.path_name}"
            flat = _flat_storage(read_entry(index, entry, limits.max_file_bytes), spec.dtype, entry).to(device)
            storages[spec.path_name] = flat
        elif flat.dtype != spec.dtype:
            _reject(f"tensors sharing {spec.path_name} disagree on dtype")
        numel = 1
        for s in spec.sizes:
            numel *= s
        if numel == 0:
            tensors[fqn] = torch.empty(spec.sizes, dtype=spec.dtype, device=device)
            continue
        last = spec.offset + sum((size - 1) * stride for size, stride in zip(spec.sizes, spec.strides, strict=True))
        if last >= flat.numel():
            _reject(f"tensor {fqn!r} reaches past the end of {spec.path_name}")
        tensors[fqn] = torch.as_strided(flat, spec.sizes, spec.strides, spec.offset)
    return tensors


# ---------------------------------------------------------------------------------------------
# The model.


class LoadedModel:
    """A checked exported program, run as its fx graph: tokens (B, T) int64 -> logits."""

    def __init__(self, program: torch.export.ExportedProgram, sha256: str, batch_size: int, seq_len: int):
        self.program = program
        self.sha256 = sha256
        self.batch_size = batch_size
        self.seq_len = seq_len
        self._lifted = self._lifted_inputs()

    def _lifted_inputs(self) -> list[torch.Tensor | None]:
        ep = self.program
        out: list[torch.Tensor | None] = []
        for spec in ep.graph_signature.input_specs:
            kind = spec.kind.name
            if kind == "USER_INPUT":
                out.append(None)
            elif kind in ("PARAMETER", "BUFFER") and spec.target in ep.state_dict:
                out.append(ep.state_dict[spec.target])
            elif spec.target in ep.constants:
                out.append(ep.constants[spec.target])
            else:
                raise ArtifactRejected(f"the graph input {spec.target!r} has no tensor in the archive", "graph")
        return out

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        args = [tokens if t is None else t for t in self._lifted]
        out = self.program.graph_module(*args)
        if isinstance(out, (tuple, list)):
            if len(out) != 1:
                raise ModelOutputError("the model returned several outputs")
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ModelOutputError("the model did not return a tensor")
        return out


def _match_signature(lifted: list[tuple[str, str]], weights: Mapping[str, Any], constants: Mapping[str, Any]) -> None:
    want_weights = {fqn for kind, fqn in lifted if kind in ("parameter", "buffer")}
    want_constants = {fqn for kind, fqn in lifted if kind == "constant"}
    if set(weights) != want_weights:
        _reject("the weights in the archive do not match the graph's parameters and buffers")
    if set(constants) != want_constants:
        _reject("the constants in the archive do not match the graph's constants")


def pin_devices(program: dict, device: str) -> None:
    """Put every device the graph names on the eval device, before torch sees the graph.

    An archive exported on a GPU names "cuda" in its tensor metadata and in arguments such as
    arange(device=...); scoring it elsewhere must not touch a device that is not there (on a
    CPU-only torch that aborts the process). The weights are built on `device` directly.
    """
    pinned = {"type": torch.device(device).type, "index": None}
    graph = program["graph_module"]["graph"]
    for meta in graph["tensor_values"].values():
        meta["device"] = dict(pinned)
    for node in graph["nodes"]:
        for named in node["inputs"]:
            if "as_device" in named["arg"]:
                named["arg"] = {"as_device": dict(pinned)}


def _deserialize(
    sanitized: dict, state_dict: dict[str, torch.Tensor], constants: dict[str, torch.Tensor]
) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        ExportedProgramDeserializer,
        _dict_to_dataclass,
    )

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, sanitized)
        return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        _reject(f"the graph does not load: {type(e).__name__}: {first}", "graph")


def load_artifact(
    path: Path,
    batch_size: int,
    seq_len: int,
    device: str = "cpu",
    limits: ArtifactLimits = DEFAULT_LIMITS,
) -> LoadedModel:
    """Load and check a model artifact; raises ArtifactRejected with a one-line reason.

    The rejection carries the artifact's sha256 (`.sha256`) once the file could be opened.
    """
    with open_artifact(Path(path), limits.max_file_bytes) as f:
        digest = sha256_of(f)
        try:
            return _load_open_artifact(f, digest, batch_size, seq_len, device, limits)
        except ArtifactRejected as e:
            e.sha256 = digest
            raise


def _load_open_artifact(
    f: BinaryIO, digest: str, batch_size: int, seq_len: int, device: str, limits: ArtifactLimits
) -> LoadedModel:
    file_size = os.fstat(f.fileno()).st_size
    index = index_archive(f, file_size, limits)
    _check_markers(index, limits)
    program = _read_json(index, MODEL_JSON, limits)
    try:
        sanitized, lifted = check_program_json(program, batch_size, seq_len)
    except GraphRejected as e:
        _reject(str(e), "graph")
    weight_specs = parse_payload_config(_read_json(index, WEIGHTS_CONFIG, limits), "weight", _WEIGHT_NAME)
    constant_specs = parse_payload_config(_read_json(index, CONSTANTS_CONFIG, limits), "constant", _CONSTANT_NAME)
    _match_signature(lifted, weight_specs, constant_specs)
    pin_devices(sanitized, device)
    weights = build_tensors(index, weight_specs, WEIGHTS_DIR, limits, device)
    constants = build_tensors(index, constant_specs, CONSTANTS_DIR, limits, device)
    index.zf.close()

    params = {fqn for kind, fqn in lifted if kind == "parameter"}
    state_dict = {fqn: torch.nn.Parameter(t, requires_grad=False) if fqn in params else t for fqn, t in weights.items()}
    ep = _deserialize(sanitized, state_dict, constants)
    try:
        check_exported_program(ep, batch_size, seq_len)
    except GraphRejected as e:
        _reject(str(e), "graph")
    return LoadedModel(ep, digest, batch_size, seq_len)

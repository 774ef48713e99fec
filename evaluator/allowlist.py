"""The op allowlist and the graph checks an exported model must pass before the evaluator runs it.

Two layers, both needed:

1. `check_program_json` walks the archive's graph JSON *before* torch deserializes it. The
   deserializer is not a safe parser: it turns symbolic shape strings into Python with
   `sympy.sympify` (an `eval`), puts tensor names verbatim into the generated `forward` source
   (a crafted name is code), resolves targets by `getattr` on torch, and `ep.module()` `exec`s
   `guards_code`. So every string that could reach any of that is checked here against a strict
   grammar, and only the parts of the JSON the evaluator needs are passed on.
2. `check_exported_program` re-checks the deserialized fx graph: every call is an allowed
   `OpOverload`, nothing is mutated, one int64 (B, T) input, one output.

The allowlist names ops exactly as `str(OpOverload)` prints them, e.g. "aten.mm.default". It is
built from base names in commented groups below, expanded to each base op's overloads that are
functional: overloads that mutate an argument (in-place `add_`, `out=` variants) or are tagged
`nondeterministic_seeded` (random) are left out automatically. Nothing outside the `aten`
namespace is allowed except `_operator.getitem` (unpacks multi-output ops such as `split`).
To extend: add the base name to the group it belongs to, with the reason if it is not obvious.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import torch

# ---------------------------------------------------------------------------------------------
# Allowed aten base ops, by group.

MATMUL_AND_EMBEDDING = tuple("embedding linear mm addmm bmm baddbmm matmul einsum t".split())

# Views and copies that move data around. Functional `index` (x[idx]) is in; index_put is not.
SHAPE_AND_INDEXING = tuple(
    """view _unsafe_view reshape permute transpose expand expand_as unsqueeze squeeze flatten
    unflatten split split_with_sizes chunk unbind cat stack slice select narrow index index_select
    gather take_along_dim repeat repeat_interleave flip roll constant_pad_nd pad tril triu movedim
    view_as type_as""".split()
)

# Constants made inside forward. `empty*` is left out: uninitialized memory can carry data
# from an earlier call into this one. lift_fresh_copy is torch.tensor(...) written in forward.
CREATION = tuple(
    """arange zeros zeros_like ones ones_like full full_like new_zeros new_ones new_full
    scalar_tensor lift_fresh_copy""".split()
)

COPIES_AND_CASTS = tuple("_to_copy to clone contiguous alias detach".split())

POINTWISE = tuple(
    """add sub rsub mul div neg abs sign sgn pow square sqrt rsqrt reciprocal exp exp2 expm1 log
    log2 log10 log1p sin cos tan atan atan2 tanh sigmoid erf relu leaky_relu elu gelu silu mish
    softplus glu hardtanh clamp clamp_min clamp_max clip minimum maximum fmod remainder
    floor_divide floor ceil round trunc where masked_fill lerp addcmul addcdiv nan_to_num isnan
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or
    bitwise_not bitwise_xor""".split()
)

REDUCTIONS = tuple(
    """sum mean amax amin max min argmax argmin prod var var_mean std linalg_vector_norm norm
    logsumexp cumsum any all""".split()
)

# dropout / native_dropout only with train=False (ARG_RULES): eval-mode nn.Dropout exports so.
NORMS_AND_SOFTMAX = tuple(
    """rms_norm _fused_rms_norm layer_norm native_layer_norm softmax _softmax _safe_softmax
    log_softmax _log_softmax dropout native_dropout""".split()
)

# SDPA and the variants it decomposes to per device; dropout_p must be 0 (ARG_RULES).
ATTENTION = tuple(
    """scaled_dot_product_attention _scaled_dot_product_attention_math
    _scaled_dot_product_flash_attention _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention
    _scaled_dot_product_fused_attention_overrideable""".split()
)

# Pure metadata assertions that export inserts for `.to(dtype)` on plain models. (_assert_scalar
# only appears with symbolic shapes, which are refused anyway.)
CHECKS = ("_assert_tensor_metadata",)

ALLOWED_BASE_OPS: tuple[str, ...] = (
    MATMUL_AND_EMBEDDING
    + SHAPE_AND_INDEXING
    + CREATION
    + COPIES_AND_CASTS
    + POINTWISE
    + REDUCTIONS
    + NORMS_AND_SOFTMAX
    + ATTENTION
    + CHECKS
)

# Exact overloads allowed although their schema says "mutates": torch.tensor(...) written in
# forward exports as lift_fresh_copy followed by detach_, which changes autograd metadata only.
ALLOWED_EXTRA_OVERLOADS: frozenset[str] = frozenset({"aten.detach_.default"})

# Python callables a graph may call besides OpOverloads (serialized target -> fx target).
ALLOWED_PYTHON_TARGETS: Mapping[str, Any] = {"_operator.getitem": operator.getitem}

# Arguments that must have a fixed value for an op to be allowed: randomness only when it is off.
ARG_RULES: Mapping[str, Mapping[str, Any]] = {
    "dropout": {"train": False},
    "native_dropout": {"train": False},
    **{name: {"dropout_p": 0.0} for name in ATTENTION},
}


def _is_functional(op: torch._ops.OpOverload) -> bool:
    """No argument mutated; random only if ARG_RULES pins the randomness off (dropout, SDPA)."""
    schema = op._schema
    if schema.is_mutable or op._overloadname == "out" or op._overloadname.endswith("_out"):
        return False
    return torch.Tag.nondeterministic_seeded not in op.tags or op._opname in ARG_RULES


def _touches_tensors(op: torch._ops.OpOverload) -> bool:
    """Leaves out TorchScript's scalar/list/string overloads (aten.add.str, aten.eq.int_list)."""
    schema = op._schema
    return any("Tensor" in str(a.type) for a in (*schema.arguments, *schema.returns))


def _expand(base_names: Iterable[str]) -> dict[str, torch._ops.OpOverload]:
    allowed: dict[str, torch._ops.OpOverload] = {}
    for base in base_names:
        packet = getattr(torch.ops.aten, base, None)
        if packet is None:  # not in this torch build; the list is shared across versions
            continue
        for overload_name in packet.overloads():
            op = getattr(packet, overload_name)
            if _is_functional(op) and _touches_tensors(op):
                allowed[str(op)] = op
    return allowed


def _build_allowlist() -> dict[str, torch._ops.OpOverload]:
    allowed = _expand(ALLOWED_BASE_OPS)
    for name in ALLOWED_EXTRA_OVERLOADS:
        _, base, overload = name.split(".")
        allowed[name] = getattr(getattr(torch.ops.aten, base), overload)
    return allowed


ALLOWED_OPS: dict[str, torch._ops.OpOverload] = _build_allowlist()


class GraphRejected(Exception):
    """The graph uses something the evaluator does not run. The message is one line for a person."""


# ---------------------------------------------------------------------------------------------
# Layer 1: the graph JSON, before torch sees it.

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
# Globals the generated forward() source refers to; a value named like one would shadow it.
RESERVED_VALUE_NAMES = frozenset(
    {"self", "torch", "operator", "builtins", "inf", "nan", "NoneType", "device", "fx_pytree", "pytree"}
)
_FQN = re.compile(r"[A-Za-z0-9_]{1,200}(\.[A-Za-z0-9_]{1,200}){0,31}")
_TORCH_OPS_PREFIX = "torch.ops."
_MAX_NODES = 200_000
_MAX_DIM = 1 << 31
_MAX_NUMEL = 1 << 36  # 64 Gi elements: larger than any tensor the eval container could hold
_MAX_LIST = 1_000_000

LONG_DTYPE = 5  # torch._export.serde.schema.ScalarType.LONG
STRIDED_LAYOUT = 7  # torch._export.serde.schema.Layout.Strided
# ScalarType codes accepted for tensors and dtype arguments (no complex, no float8).
KNOWN_SCALAR_TYPES: Mapping[int, torch.dtype] = {
    1: torch.uint8,
    2: torch.int8,
    3: torch.int16,
    4: torch.int32,
    5: torch.int64,
    6: torch.float16,
    7: torch.float32,
    8: torch.float64,
    12: torch.bool,
    13: torch.bfloat16,
}
_MEMORY_FORMATS = {0, 1, 2, 3, 4}
_DEVICE_TYPES = {"cpu", "cuda"}
_FLOAT_SPECIALS = {"Infinity", "-Infinity", "NaN"}  # how the serializer writes non-finite floats

_PROGRAM_KEYS = {
    "graph_module",
    "opset_version",
    "range_constraints",
    "schema_version",
    "verifiers",
    "torch_version",
    "guards_code",
}
_GRAPH_MODULE_KEYS = {"graph", "signature", "module_call_graph", "metadata", "treespec_namedtuple_fields"}
_GRAPH_KEYS = {
    "inputs",
    "outputs",
    "nodes",
    "tensor_values",
    "sym_int_values",
    "sym_bool_values",
    "is_single_tensor_return",
    "custom_obj_values",
    "sym_float_values",
}
_NODE_KEYS = {"target", "inputs", "outputs", "metadata", "is_hop_single_tensor_return", "name"}
_KNOWN_VERIFIERS = {"ATEN", "TRAINING"}


def _fail(reason: str) -> NoReturn:
    raise GraphRejected(reason)


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        _fail(f"malformed graph JSON: {what} is not an object")
    return value


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list) or len(value) > _MAX_LIST:
        _fail(f"malformed graph JSON: {what} is not a list of sane length")
    return value


def _keys(value: dict, allowed: set[str], what: str, required: Iterable[str] = ()) -> None:
    extra = set(value) - allowed
    if extra:
        _fail(f"unexpected field {sorted(extra)[0]!r} in {what}")
    missing = set(required) - set(value)
    if missing:
        _fail(f"missing field {sorted(missing)[0]!r} in {what}")


def _union(value: Any, what: str) -> tuple[str, Any]:
    value = _dict(value, what)
    if len(value) != 1:
        _fail(f"malformed graph JSON: {what} must have exactly one kind")
    ((tag, inner),) = value.items()
    return tag, inner


def check_identifier(name: Any, what: str) -> str:
    """Names end up in generated Python source: only plain identifiers pass."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name) or keyword.iskeyword(name):
        _fail(f"invalid {what} name {str(name)[:60]!r}")
    return name


def check_fqn(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _FQN.fullmatch(name):
        _fail(f"invalid {what} name {str(name)[:60]!r}")
    return name


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  # slices to the end use INT64_MAX


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(f"malformed graph JSON: {what} is not an integer")
    if minimum is not None and value < minimum:
        _fail(f"malformed graph JSON: {what} is below {minimum}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        _fail(f"malformed graph JSON: {what} is out of range")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"malformed graph JSON: {what} is not a boolean")
    return value


def _float(value: Any, what: str) -> float:
    if isinstance(value, str) and value in _FLOAT_SPECIALS:
        return float(value.replace("Infinity", "inf"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"malformed graph JSON: {what} is not a number")
    return float(value)


def static_int(value: Any, what: str, minimum: int | None = None) -> int:
    """A serialized SymInt that must be a plain integer: symbolic shapes are not accepted."""
    tag, inner = _union(value, what)
    if tag != "as_int":
        _fail(f"symbolic {what} in the graph; export with static shapes")
    return _int(inner, what, minimum)


def check_device(value: Any, what: str) -> None:
    value = _dict(value, what)
    _keys(value, {"type", "index"}, what, required=("type",))
    if value["type"] not in _DEVICE_TYPES:
        _fail(f"device {str(value['type'])[:20]!r} in {what} is not cpu or cuda")
    if value.get("index") is not None:
        _int(value["index"], f"{what} index", minimum=0)


def check_tensor_meta(meta: Any, what: str) -> dict:
    meta = _dict(meta, what)
    required = ("dtype", "sizes", "requires_grad", "device", "strides", "storage_offset", "layout")
    _keys(meta, set(required), what, required=required)
    if _int(meta["dtype"], f"{what} dtype") not in KNOWN_SCALAR_TYPES:
        _fail(f"{what} has an unsupported dtype code {meta['dtype']}")
    sizes = _list(meta["sizes"], f"{what} sizes")
    strides = _list(meta["strides"], f"{what} strides")
    if len(sizes) != len(strides) or len(sizes) > 8:
        _fail(f"{what} has mismatched sizes/strides")
    numel = 1
    for s in sizes:
        size = static_int(s, f"{what} size", minimum=0)
        if size > _MAX_DIM:
            _fail(f"{what} has a dimension of {size} (limit {_MAX_DIM})")
        numel *= size
    if numel > _MAX_NUMEL:
        _fail(f"{what} has {numel} elements (limit {_MAX_NUMEL})")
    for s in strides:
        static_int(s, f"{what} stride", minimum=0)
    static_int(meta["storage_offset"], f"{what} storage offset", minimum=0)
    if meta["layout"] != STRIDED_LAYOUT:
        _fail(f"{what} is not a dense strided tensor")
    _bool(meta["requires_grad"], f"{what} requires_grad")
    check_device(meta["device"], f"{what} device")
    return meta


def check_value_name(name: Any, what: str) -> str:
    """A graph value's name: an identifier that does not shadow what the generated code uses."""
    check_identifier(name, what)
    if name in RESERVED_VALUE_NAMES:
        _fail(f"the graph names a value {name!r}, which is reserved")
    return name


def _tensor_ref(value: Any, what: str) -> str:
    value = _dict(value, what)
    _keys(value, {"name"}, what, required=("name",))
    return check_value_name(value["name"], what)


def _check_argument(arg: Any, what: str, sym_ints: Mapping[str, int]) -> Any:
    """Validate one serialized Argument; returns its Python value for the simple scalar kinds."""
    tag, inner = _union(arg, what)
    if tag == "as_none":
        return None
    if tag == "as_tensor":
        _tensor_ref(inner, what)
        return None
    if tag == "as_tensors":
        for item in _list(inner, what):
            _tensor_ref(item, what)
        return None
    if tag == "as_optional_tensors":
        for item in _list(inner, what):
            _check_optional_tensor(item, what)
        return None
    if tag == "as_optional_tensor":
        _check_optional_tensor(inner, what)
        return None
    if tag == "as_int":
        return _int(inner, what)
    if tag == "as_ints":
        return [_int(v, what) for v in _list(inner, what)]
    if tag == "as_float":
        return _float(inner, what)
    if tag == "as_floats":
        return [_float(v, what) for v in _list(inner, what)]
    if tag == "as_bool":
        return _bool(inner, what)
    if tag == "as_bools":
        return [_bool(v, what) for v in _list(inner, what)]
    if tag == "as_string":
        if not isinstance(inner, str) or len(inner) > 256:
            _fail(f"malformed graph JSON: {what} string")
        return inner
    if tag == "as_strings":
        for v in _list(inner, what):
            if not isinstance(v, str) or len(v) > 256:
                _fail(f"malformed graph JSON: {what} string")
        return None
    if tag in ("as_sym_int", "as_sym_ints"):
        items = [inner] if tag == "as_sym_int" else _list(inner, what)
        for item in items:
            kind, value = _union(item, what)
            if kind == "as_int":
                _int(value, what)
            elif kind == "as_name":
                if check_value_name(value, what) not in sym_ints:
                    _fail(f"{what} refers to an undefined symbolic integer")
            else:
                _fail(f"malformed graph JSON: {what}")
        return None
    if tag == "as_scalar_type":
        if _int(inner, what) not in KNOWN_SCALAR_TYPES:
            _fail(f"{what} names an unsupported dtype code {inner}")
        return None
    if tag == "as_memory_format":
        if _int(inner, what) not in _MEMORY_FORMATS:
            _fail(f"malformed graph JSON: {what} memory format")
        return None
    if tag == "as_layout":
        if inner != STRIDED_LAYOUT:
            _fail(f"{what} asks for a non-strided layout")
        return None
    if tag == "as_device":
        check_device(inner, what)
        return None
    if tag in ("as_graph", "as_custom_obj", "as_operator"):
        _fail(
            f"{what} passes a {tag[3:].replace('_', ' ')} "
            "(subgraphs, custom objects and operator arguments are not allowed)"
        )
    _fail(f"{what} has an argument kind the evaluator does not accept ({tag[:40]})")


def _check_optional_tensor(value: Any, what: str) -> None:
    tag, inner = _union(value, what)
    if tag == "as_tensor":
        _tensor_ref(inner, what)
    elif tag != "as_none":
        _fail(f"malformed graph JSON: {what} optional tensor")


def _schema_default(op: torch._ops.OpOverload, arg_name: str) -> Any:
    for a in op._schema.arguments:
        if a.name == arg_name:
            return a.default_value if a.has_default_value() else _MISSING
    return _MISSING


_MISSING = object()


def _check_arg_rules(base: str, op: torch._ops.OpOverload, values: Mapping[str, Any], where: str) -> None:
    for arg_name, required in ARG_RULES.get(base, {}).items():
        if not any(a.name == arg_name for a in op._schema.arguments):
            continue  # this overload has no such argument
        value = values.get(arg_name, _schema_default(op, arg_name))
        if value is _MISSING or value != required or isinstance(value, bool) != isinstance(required, bool):
            _fail(f"{where}: {op} with {arg_name}={value!r} is not allowed (needs {arg_name}={required!r})")


def resolve_target(target: Any, where: str) -> Any:
    """The fx target for a serialized node target, if it is allowed."""
    if not isinstance(target, str) or len(target) > 200:
        _fail(f"{where}: malformed op target")
    if target in ALLOWED_PYTHON_TARGETS:
        return ALLOWED_PYTHON_TARGETS[target]
    name = target[len(_TORCH_OPS_PREFIX) :] if target.startswith(_TORCH_OPS_PREFIX) else None
    if name is None or name not in ALLOWED_OPS:
        _fail(_refusal(target[:120]))
    return ALLOWED_OPS[name]


def _refusal(target: str) -> str:
    """Why a target is refused, worded from its name alone (no lookup of untrusted names)."""
    parts = target.split(".")
    if len(parts) == 5 and parts[:3] == ["torch", "ops", "aten"]:
        base, overload = parts[3], parts[4]
        if (base.endswith("_") and not base.startswith("__")) or overload == "out" or overload.endswith("_out"):
            return f"op {target} mutates a tensor in place: state must not change in forward"
    return f"op {target} is not in the evaluator's allowlist"


def _check_node(node: Any, index: int, sym_ints: Mapping[str, int]) -> None:
    node = _dict(node, f"node {index}")
    _keys(node, _NODE_KEYS, f"node {index}", required=("target", "inputs", "outputs"))
    target = resolve_target(node["target"], f"node {index}")
    where = f"node {index} ({node['target']})"
    if node.get("name") is not None:
        check_value_name(node["name"], where)
    if node.get("is_hop_single_tensor_return") not in (None, False):
        _fail(f"{where}: higher-order op outputs are not allowed")
    values: dict[str, Any] = {}
    for j, named in enumerate(_list(node["inputs"], f"{where} inputs")):
        named = _dict(named, f"{where} input {j}")
        _keys(named, {"name", "arg", "kind"}, f"{where} input {j}", required=("name", "arg"))
        arg_name = check_identifier(named["name"], f"{where} argument")
        if named.get("kind") not in (None, 0, 1, 2):
            _fail(f"malformed graph JSON: {where} argument kind")
        values[arg_name] = _check_argument(named["arg"], f"{where} argument {arg_name}", sym_ints)
    for j, out in enumerate(_list(node["outputs"], f"{where} outputs")):
        _check_argument(out, f"{where} output {j}", sym_ints)
    if isinstance(target, torch._ops.OpOverload):
        _check_arg_rules(target._opname, target, values, where)


def _check_signature(sig: Any, graph_inputs: list[str]) -> tuple[list[tuple[str, str]], str, str]:
    """Returns ([(kind, fqn) per lifted input], user input name, output name)."""
    sig = _dict(sig, "signature")
    _keys(sig, {"input_specs", "output_specs"}, "signature", required=("input_specs", "output_specs"))
    lifted: list[tuple[str, str]] = []
    user_inputs: list[str] = []
    names: list[str] = []
    for i, spec in enumerate(_list(sig["input_specs"], "input specs")):
        kind, inner = _union(spec, f"input spec {i}")
        inner = _dict(inner, f"input spec {i}")
        if kind == "parameter":
            _keys(inner, {"arg", "parameter_name"}, "parameter spec", required=("arg", "parameter_name"))
            names.append(_tensor_ref(inner["arg"], "parameter"))
            lifted.append(("parameter", check_fqn(inner["parameter_name"], "parameter")))
        elif kind == "buffer":
            _keys(
                inner,
                {"arg", "buffer_name", "persistent"},
                "buffer spec",
                required=("arg", "buffer_name", "persistent"),
            )
            names.append(_tensor_ref(inner["arg"], "buffer"))
            persistent = _bool(inner["persistent"], "buffer persistent")
            lifted.append(("buffer" if persistent else "constant", check_fqn(inner["buffer_name"], "buffer")))
        elif kind == "tensor_constant":
            _keys(inner, {"arg", "tensor_constant_name"}, "constant spec", required=("arg", "tensor_constant_name"))
            names.append(_tensor_ref(inner["arg"], "constant"))
            lifted.append(("constant", check_fqn(inner["tensor_constant_name"], "constant")))
        elif kind == "user_input":
            _keys(inner, {"arg"}, "user input spec", required=("arg",))
            tag, ref = _union(inner["arg"], "user input")
            if tag != "as_tensor":
                _fail("the model's inputs must be one token tensor (found a non-tensor input)")
            names.append(_tensor_ref(ref, "user input"))
            user_inputs.append(names[-1])
        elif kind == "custom_obj":
            _fail("the graph takes a custom object (torchbind/opaque); not allowed")
        else:
            _fail(
                f"the graph has a {kind[:30]} input; "
                "only parameters, buffers, constants and one token tensor are allowed"
            )
    if names != graph_inputs:
        _fail("malformed graph JSON: the signature does not match the graph inputs")
    if len(user_inputs) != 1:
        _fail(f"the model must take exactly one input (token ids), it takes {len(user_inputs)}")
    outputs = _list(sig["output_specs"], "output specs")
    for i, spec in enumerate(outputs):
        kind, inner = _union(spec, f"output spec {i}")
        if kind == "buffer_mutation":
            name = _dict(inner, "buffer mutation").get("buffer_name")
            _fail(f"the model mutates buffer {str(name)[:60]!r} in forward; state must not change")
        if kind == "user_input_mutation":
            _fail("the model mutates its input in forward")
        if kind == "parameter_mutation":
            _fail("the model mutates a parameter in forward")
        if kind != "user_output":
            _fail(f"the graph has a {kind[:30]} output; only one logits output is allowed")
        _keys(_dict(inner, "user output"), {"arg"}, "user output", required=("arg",))
        tag, ref = _union(inner["arg"], "user output")
        if tag != "as_tensor":
            _fail("the model's output must be one logits tensor")
        output = _tensor_ref(ref, "user output")
    if len(outputs) != 1:
        _fail(f"the model must return exactly one tensor (logits), it returns {len(outputs)} outputs")
    return lifted, user_inputs[0], output


def check_program_json(program: Any, batch_size: int, seq_len: int) -> tuple[dict, list[tuple[str, str]]]:
    """Check the ExportedProgram JSON; returns (sanitized copy for the deserializer, lifted inputs).

    The sanitized copy keeps the graph and its signature and drops what the evaluator never
    needs and torch would interpret: node and module metadata (target names resolved by
    getattr, stack traces), the module call graph (pytree specs), guards code (exec'd).
    """
    program = _dict(program, "program")
    _keys(program, _PROGRAM_KEYS, "program", required=("graph_module", "schema_version"))
    if program.get("guards_code") not in (None, []):
        _fail("the archive carries guards code (Python source); not allowed")
    if program.get("range_constraints") not in (None, {}):
        _fail("the graph has symbolic shapes; export with static shapes")
    verifiers = _list(program.get("verifiers", []), "verifiers")
    if any(not isinstance(v, str) or v not in _KNOWN_VERIFIERS for v in verifiers):
        _fail("the archive names an unknown verifier")
    opset = _dict(program.get("opset_version", {}), "opset_version")
    if set(opset) - {"aten"} or any(not isinstance(v, int) for v in opset.values()):
        _fail("the archive declares an operator set other than aten")
    version = _dict(program["schema_version"], "schema_version")
    _keys(version, {"major", "minor"}, "schema_version", required=("major", "minor"))
    _int(version["major"], "schema major")
    _int(version["minor"], "schema minor")
    if not isinstance(program.get("torch_version", ""), str) or len(program.get("torch_version", "")) > 64:
        _fail("malformed graph JSON: torch_version")

    gm = _dict(program["graph_module"], "graph_module")
    _keys(gm, _GRAPH_MODULE_KEYS, "graph_module", required=("graph", "signature"))
    graph = _dict(gm["graph"], "graph")
    _keys(graph, _GRAPH_KEYS, "graph", required=("inputs", "outputs", "nodes", "tensor_values"))
    for key in ("custom_obj_values", "sym_bool_values", "sym_float_values"):
        if graph.get(key):
            _fail(f"the graph has {key.replace('_values', '').replace('_', ' ')} values; not allowed")
    sym_ints: dict[str, int] = {}
    for name, value in _dict(graph.get("sym_int_values", {}), "sym_int_values").items():
        sym_ints[check_value_name(name, "symbolic integer")] = static_int(value, "symbolic integer")
    tensor_values = _dict(graph["tensor_values"], "tensor_values")
    for name, meta in tensor_values.items():
        check_tensor_meta(meta, f"tensor {check_value_name(name, 'tensor')}")

    graph_inputs = []
    for i, arg in enumerate(_list(graph["inputs"], "graph inputs")):
        tag, ref = _union(arg, f"graph input {i}")
        if tag != "as_tensor":
            _fail("the graph has a non-tensor input")
        graph_inputs.append(_tensor_ref(ref, "graph input"))
    lifted, user_input, output = _check_signature(gm["signature"], graph_inputs)
    if graph["outputs"] != [{"as_tensor": {"name": output}}]:
        _fail("malformed graph JSON: the graph outputs do not match the signature")
    nodes = _list(graph["nodes"], "nodes")
    if len(nodes) > _MAX_NODES:
        _fail(f"the graph has {len(nodes)} nodes (limit {_MAX_NODES})")
    for i, node in enumerate(nodes):
        _check_node(node, i, sym_ints)

    meta = tensor_values.get(user_input)
    if meta is None:
        _fail("malformed graph JSON: the input has no tensor metadata")
    shape = [static_int(s, "input size") for s in meta["sizes"]]
    if meta["dtype"] != LONG_DTYPE or shape != [batch_size, seq_len]:
        _fail(f"the model input must be int64 of shape ({batch_size}, {seq_len}); export at the profile's eval shape")

    sanitized_nodes = [{**node, "metadata": {}} for node in nodes]
    sanitized = {
        "graph_module": {
            "graph": {**graph, "nodes": sanitized_nodes},
            "signature": gm["signature"],
            "module_call_graph": [],
            "metadata": {},
            "treespec_namedtuple_fields": {},
        },
        "opset_version": opset,
        "range_constraints": {},
        "schema_version": version,
        "verifiers": verifiers,
        "torch_version": program.get("torch_version", ""),
        "guards_code": [],
    }
    return sanitized, lifted


# ---------------------------------------------------------------------------------------------
# Layer 2: the deserialized fx graph.


def _bound_arguments(op: torch._ops.OpOverload, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    positional = [a for a in op._schema.arguments if not a.kwarg_only]
    for a, v in zip(positional, args, strict=False):  # trailing defaults may be omitted
        values[a.name] = v
    values.update(kwargs)
    return values


def check_exported_program(ep: torch.export.ExportedProgram, batch_size: int, seq_len: int) -> None:
    """Re-check the graph torch built: allowed ops only, no mutation, (B, T) int64 in, one out."""
    sig = ep.graph_signature
    if sig.buffers_to_mutate:
        _fail(f"the model mutates buffer {next(iter(sig.buffers_to_mutate.values()))!r} in forward")
    if sig.user_inputs_to_mutate:
        _fail("the model mutates its input in forward")
    if getattr(sig, "parameters_to_mutate", None):
        _fail("the model mutates a parameter in forward")
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1 or len(sig.output_specs) != 1:
        _fail("the model must take one token tensor and return one logits tensor")
    for node in ep.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            _fail(f"graph node {node.name} is a {node.op}; only op calls are allowed")
        target = node.target
        if target in ALLOWED_PYTHON_TARGETS.values():
            continue
        if not isinstance(target, torch._ops.OpOverload) or ALLOWED_OPS.get(str(target)) is not target:
            _fail(_refusal(f"torch.ops.{target}"))
        _check_arg_rules(target._opname, target, _bound_arguments(target, node.args, node.kwargs), f"node {node.name}")
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name == sig.user_inputs[0]]
    val = user[0].meta.get("val") if user else None
    if val is None or val.dtype != torch.int64 or tuple(val.shape) != (batch_size, seq_len):
        _fail(f"the model input must be int64 of shape ({batch_size}, {seq_len})")


def check_allowlist_sane() -> None:
    """Invariant used by tests: nothing allowed mutates or draws random numbers (bar the extras)."""
    for name, op in ALLOWED_OPS.items():
        if name in ALLOWED_EXTRA_OVERLOADS:
            continue
        assert _is_functional(op), name
        assert op.namespace == "aten", name

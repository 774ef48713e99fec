"""The `search` agent (offline, no API key): optuna's TPE over the constants block of train.py.

Search space. One dimension per constant of the seed train.py (controller/agents/constants_block.py
says what a constant is), derived from its seed value:
- bool: False / True.
- int >= 1 that is a power of two: powers of two from value/4 to value*4 (DEPTH 8 -> 2..32).
- other int >= 1: integers from ceil(value/4) to value*4, log scale.
- float > 0: log-uniform from value/4 to value*4; a fraction (value < 1) stays below 1: its upper
  end is min(value*4, (1+value)/2), so a momentum of 0.95 is searched in [0.2375, 0.975].
- zero or negative numbers: not searched (nothing to scale from); name them in the override file.
Float proposals are rounded to 3 significant digits, so descriptions read like a person wrote them.

Override file (optional, JSON, checked strictly): `programs/<name>/search_space.<profile>.json` if it
exists, else `programs/<name>/search_space.json` (or an explicit path in the settings):
    {"derive_others": true,
     "params": {"MATRIX_LR": {"kind": "float", "low": 0.005, "high": 0.08, "log": true},
                "DEPTH": {"kind": "int", "low": 2, "high": 12},
                "TOTAL_BATCH_TOKENS": {"kind": "pow2", "low": 65536, "high": 1048576},
                "MAX_LOSS": null}}
`null` leaves a constant out; `derive_others: false` searches only the listed ones.

Proposals. Each proposal changes 1 to 3 constants of the CURRENT BEST train.py (the file the
controller hands over). TPE (seeded: the seed plus the number of trials so far, so a resumed run
draws exactly what an uninterrupted one would) samples a full configuration from everything
observed; the agent takes 1-3 of the constants where that draw differs from the best and applies
them. A configuration already tried (in any state) is never proposed again. It cannot fix code
(`can_fix_crashes = False`); asked to (context.fix_attempt set), it does not fail but proposes a
fresh configuration from the best kept one, written over the constants of the file it was given.

Persistence. One optuna study per tag in SQLite at `<runs_dir>/optuna.db`. It holds the search
space (study user attrs, fixed at creation so a resumed study keeps its space) and exactly one
trial per experiment, carrying user attrs `experiment` (n), `changes` and `description`. The
trial's params are the full configuration that ran.

Learning. The controller calls `observe(n, val_bpb, status)` after each run: keep/discard with a
finite val_bpb -> the trial completes with that value; crash/timeout/rejected -> it fails (TPE
ignores failed trials; the configuration is still never repeated). Experiment 0 (the baseline,
which the agent did not propose) is recorded as the seed configuration. `propose` also replays
`context.history` the same way first, so a result missed by a killed controller is not lost.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

import optuna
import structlog
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.agents.base import AgentError, BaseAgent, HistoryRow, Proposal, ProposalContext
from controller.agents.constants_block import Constant, ConstantsError, Value, parse_constants, rewrite_constants
from controller.agents.constants_block import format_value as format_literal
from controller.agents.tools import ToolError, read_regular_file, read_train_py, write_train_py

log = structlog.get_logger(__name__)

STUDY_NAME = "overnight-search"
DB_NAME = "optuna.db"
MAX_SPACE_FILE_BYTES = 64_000
SCORED_STATUSES = ("keep", "discard")


class SearchSpaceError(ValueError):
    """The override file is wrong; the message says where."""


# --- the search space ------------------------------------------------------------------------


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["int", "pow2", "float", "bool"]
    low: float | None = None
    high: float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.kind == "bool":
            return self
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError("needs low <= high")
        if (self.log or self.kind == "pow2") and self.low <= 0:
            raise ValueError("log scale and pow2 need low > 0")
        if self.kind in ("int", "pow2") and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("int bounds must be whole numbers")
        if self.kind == "pow2" and not (_is_pow2(int(self.low)) and _is_pow2(int(self.high))):
            raise ValueError("pow2 bounds must be powers of two")
        return self


class SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    derive_others: bool = True
    params: dict[str, ParamSpec | None] = Field(default_factory=dict)


def _is_pow2(v: int) -> bool:
    return v >= 1 and v & (v - 1) == 0


def derive_spec(value: Value) -> ParamSpec | None:
    """The default dimension for a constant with this seed value (see the module docstring)."""
    if isinstance(value, bool):
        return ParamSpec(kind="bool")
    if isinstance(value, int):
        if value < 1:
            return None
        if _is_pow2(value):
            return ParamSpec(kind="pow2", low=max(1, value // 4), high=value * 4)
        return ParamSpec(kind="int", low=max(1, math.ceil(value / 4)), high=value * 4, log=True)
    if value <= 0:
        return None
    high = min(value * 4, (1 + value) / 2) if value < 1 else value * 4
    return ParamSpec(kind="float", low=value / 4, high=high, log=True)


def build_space(seed_source: str, override: SpaceFile | None) -> dict[str, ParamSpec]:
    constants = parse_constants(seed_source)
    space: dict[str, ParamSpec] = {}
    listed = override.params if override else {}
    unknown = sorted(set(listed) - set(constants))
    if unknown:
        raise SearchSpaceError(f"search space names constants the seed train.py does not have: {', '.join(unknown)}")
    for name, const in constants.items():
        if name in listed:
            spec = listed[name]
        elif override is None or override.derive_others:
            spec = derive_spec(const.value)
        else:
            spec = None
        if spec is not None:
            _check_kind(name, spec, const.value)
            space[name] = spec
    return space


def _check_kind(name: str, spec: ParamSpec, value: Value) -> None:
    is_bool = isinstance(value, bool)
    if (spec.kind == "bool") != is_bool or (spec.kind in ("int", "pow2") and not isinstance(value, int)):
        raise SearchSpaceError(
            f"search space: {name} is {type(value).__name__} in train.py but {spec.kind} in the file"
        )


def load_space_file(path: Path) -> SpaceFile:
    try:
        return SpaceFile.model_validate_json(read_regular_file(path, MAX_SPACE_FILE_BYTES))
    except ToolError as exc:
        raise SearchSpaceError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SearchSpaceError(f"{path}: {where}: {first['msg']}") from None


def distribution(spec: ParamSpec) -> BaseDistribution:
    if spec.kind == "bool":
        return CategoricalDistribution([False, True])
    assert spec.low is not None and spec.high is not None
    if spec.kind == "pow2":
        return IntDistribution(int(math.log2(spec.low)), int(math.log2(spec.high)))
    if spec.kind == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log)
    return FloatDistribution(spec.low, spec.high, log=spec.log)


def to_internal(spec: ParamSpec, value: Value) -> Any | None:
    """The optuna value for a train.py value; None when the space cannot hold it."""
    if spec.kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    internal: Any
    if spec.kind == "pow2":
        if not isinstance(value, int) or not _is_pow2(value):
            return None
        internal = int(math.log2(value))
    elif spec.kind == "int":
        if not isinstance(value, int):
            return None
        internal = value
    else:
        internal = float(value)
    return internal if _in_space(spec, internal) else None


def _in_space(spec: ParamSpec, internal: Any) -> bool:
    """Whether an optuna value lies inside the dimension of `spec`."""
    if spec.kind == "bool":
        return isinstance(internal, bool)
    dist = distribution(spec)
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    if isinstance(dist, IntDistribution) and (isinstance(internal, bool) or not isinstance(internal, int)):
        return False
    return dist.low <= internal <= dist.high


def to_value(spec: ParamSpec, internal: Any) -> Value:
    """The train.py value for an optuna value (floats rounded to 3 significant digits, kept in bounds)."""
    if spec.kind == "bool":
        return bool(internal)
    if spec.kind == "pow2":
        return 2 ** int(internal)
    if spec.kind == "int":
        return int(internal)
    assert spec.low is not None and spec.high is not None
    rounded = float(f"{float(internal):.3g}")
    return min(max(rounded, spec.low), spec.high)


def exact_value(spec: ParamSpec, internal: Any) -> Value:
    """The train.py value for an optuna value, as it is (no rounding)."""
    if spec.kind == "float":
        return float(internal)
    return to_value(spec, internal)


def config_key(params: dict[str, Any]) -> str:
    return json.dumps(sorted(params.items()), default=str)


# --- the agent -------------------------------------------------------------------------------


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs_dir: Path  # runs/<tag>: the study lives in runs_dir/optuna.db
    seed_train_py: Path  # programs/<name>/train.py: the space is derived from its constants
    search_space: Path | None = None  # override file; None = look next to seed_train_py
    profile: str | None = None  # picks search_space.<profile>.json when it exists
    seed: int = 0
    n_startup_trials: int = Field(default=5, ge=1)  # random draws before TPE models the results
    max_changes: int = Field(default=3, ge=1, le=3)  # constants changed per proposal (1..this)
    max_draws: int = Field(default=64, ge=1)  # TPE draws per proposal before falling back to neighbours


class SearchAgent(BaseAgent):
    name = "search"
    can_fix_crashes = False  # asked to fix anyway, it proposes a fresh configuration from the best

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        derived, seed_values = self._derive_space()  # checked before anything is written
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        self.study = optuna.create_study(
            storage=f"sqlite:///{settings.runs_dir / DB_NAME}",
            study_name=STUDY_NAME,
            direction="minimize",
            load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=settings.seed),  # never samples: trials are added whole
        )
        self.space, self.seed_values = self._stored_space(derived, seed_values)

    # --- the controller's interface -------------------------------------------------------------

    def observe(self, experiment: int, val_bpb: float | None, status: str) -> None:
        """Feed the result of experiment n to the study (idempotent; unknown experiments are ignored)."""
        trial = self._trial_for(experiment)
        if trial is None:
            if experiment == 0:
                self._add_baseline(val_bpb, status)
            else:
                log.debug("search_observe_unknown", experiment=experiment)
            return
        if trial.state != TrialState.RUNNING:
            return
        if status in SCORED_STATUSES and val_bpb is not None and math.isfinite(val_bpb):
            self.study.tell(trial.number, val_bpb, skip_if_finished=True)
        else:
            self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.info("search_observe", experiment=experiment, trial=trial.number, val_bpb=val_bpb, status=status)

    def propose(self, context: ProposalContext) -> Proposal:
        if Path(context.runs_dir).resolve() != self.settings.runs_dir.resolve():
            raise AgentError(f"this search agent keeps its study in {self.settings.runs_dir}, not {context.runs_dir}")
        self._replay_history(context.history)
        try:
            source = read_train_py(context.train_py)
            constants = parse_constants(source)
        except (ToolError, ConstantsError) as exc:
            raise AgentError(f"search agent cannot read train.py: {exc}") from None
        if context.fix_attempt is None:
            current = {n: to_internal(self.space[n], c.value) for n, c in constants.items() if n in self.space}
        else:
            # It cannot fix code. Asked to, it moves on: a fresh configuration from the best one,
            # written over the constants of the failed train.py (which differs from the best only there).
            current = self._best_config(context.history)
        best = {n: v for n, v in current.items() if n in constants and v is not None}
        if not best:
            raise AgentError("no constant of train.py is in the search space; nothing to search")
        trial = self._trial_for(context.experiment)
        if trial is None or trial.state != TrialState.RUNNING:
            trial = self._new_trial(context.experiment, best, constants)
        values = {n: exact_value(self.space[n], v) for n, v in trial.params.items() if n in constants}
        try:
            write_train_py(context.train_py, rewrite_constants(source, values))
        except (ToolError, ConstantsError) as exc:
            raise AgentError(f"search agent cannot write train.py: {exc}") from None
        description = trial.user_attrs["description"]
        log.info("search_propose", experiment=context.experiment, trial=trial.number, description=description)
        changes = trial.user_attrs["changes"]
        record = {"role": "search", "trial": trial.number, "how": trial.user_attrs.get("how"), "changes": changes}
        return Proposal(description=description, transcript=[record])

    def _best_config(self, history: list[HistoryRow]) -> dict[str, Any]:
        """The configuration of the best kept experiment (the seed's when nothing was kept)."""
        kept = [r for r in history if r.status == "keep" and r.val_bpb is not None]
        best_n = min(kept, key=lambda r: (r.val_bpb, r.n)).n if kept else 0
        trial = self._trial_for(best_n)
        if trial is not None:
            return dict(trial.params)
        if best_n == 0:
            return dict(self.seed_values)
        raise AgentError(
            f"the best experiment ({best_n}) was not proposed by the search agent; its constants are unknown"
        )

    # --- study bookkeeping ---------------------------------------------------------------------

    def _derive_space(self) -> tuple[dict[str, ParamSpec], dict[str, Any]]:
        try:
            seed_source = read_train_py(self.settings.seed_train_py)
            constants = parse_constants(seed_source)
        except (ToolError, ConstantsError) as exc:
            raise SearchSpaceError(f"cannot read the seed train.py: {exc}") from None
        path = self._space_file()
        space = build_space(seed_source, load_space_file(path) if path else None)
        if not space:
            raise SearchSpaceError("the seed train.py has no searchable constants (ALL-CAPS int/float/bool literals)")
        seed_values = {n: v for n in space if (v := to_internal(space[n], constants[n].value)) is not None}
        return space, seed_values

    def _stored_space(
        self, derived: dict[str, ParamSpec], seed_values: dict[str, Any]
    ) -> tuple[dict[str, ParamSpec], dict[str, Any]]:
        """The space the study began with (a resumed study keeps it), or `derived` for a new study."""
        attrs = self.study.user_attrs
        if "space" in attrs:
            stored = {n: ParamSpec.model_validate(s) for n, s in attrs["space"].items()}
            if stored != derived:
                log.warning(
                    "search_space_changed",
                    hint="the study keeps the space it began with; use a new tag for the new one",
                )
            return stored, attrs["seed_values"]
        self.study.set_user_attr("space", {n: s.model_dump() for n, s in derived.items()})
        self.study.set_user_attr("seed_values", seed_values)
        log.info("search_space", size=len(derived), names=sorted(derived))
        return derived, seed_values

    def _space_file(self) -> Path | None:
        if self.settings.search_space is not None:
            return self.settings.search_space
        folder = self.settings.seed_train_py.parent
        names = ([f"search_space.{self.settings.profile}.json"] if self.settings.profile else []) + [
            "search_space.json"
        ]
        return next((folder / n for n in names if (folder / n).is_file()), None)

    def _trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _trial_for(self, experiment: int) -> FrozenTrial | None:
        for trial in reversed(self._trials()):
            if trial.user_attrs.get("experiment") == experiment:
                return trial
        return None

    def _replay_history(self, history: list[HistoryRow]) -> None:
        """observe() every result of the history the study has not heard of yet (one read of the study)."""
        by_experiment = {t.user_attrs.get("experiment"): t for t in self._trials()}
        for row in history:
            trial = by_experiment.get(row.n)
            if (trial is None and row.n == 0) or (trial is not None and trial.state == TrialState.RUNNING):
                self.observe(row.n, row.val_bpb, row.status)

    def _add_baseline(self, val_bpb: float | None, status: str) -> None:
        scored = status in SCORED_STATUSES and val_bpb is not None and math.isfinite(val_bpb)
        self.study.add_trial(
            create_trial(
                params=dict(self.seed_values),
                distributions={n: distribution(self.space[n]) for n in self.seed_values},
                value=val_bpb if scored else None,
                state=TrialState.COMPLETE if scored else TrialState.FAIL,
                user_attrs={"experiment": 0, "changes": {}, "description": "baseline", "how": "seed"},
            )
        )

    def _new_trial(self, experiment: int, best: dict[str, Any], constants: dict[str, Any]) -> FrozenTrial:
        trials = self._trials()
        seen = {config_key(t.params) for t in trials}
        config, how = self._draw(best, seen, len(trials))
        changed = [n for n in constants if n in config and config[n] != best[n]]
        changes = {n: [exact_value(self.space[n], best[n]), exact_value(self.space[n], config[n])] for n in changed}
        description = ", ".join(
            f"{n} {_literal(constants[n], changes[n][0])} -> {_literal(constants[n], changes[n][1])}" for n in changed
        )
        self.study.add_trial(
            create_trial(
                params=config,
                distributions={n: distribution(self.space[n]) for n in config},
                state=TrialState.RUNNING,
                user_attrs={"experiment": experiment, "changes": changes, "description": description, "how": how},
            )
        )
        trial = self._trial_for(experiment)
        assert trial is not None
        return trial

    # --- drawing a configuration -----------------------------------------------------------------

    def _draw(self, best: dict[str, Any], seen: set[str], n_trials: int) -> tuple[dict[str, Any], str]:
        """A configuration not in `seen`: the best with 1..max_changes values taken from a TPE draw."""
        rng = random.Random(self.settings.seed * 1_000_003 + n_trials)
        sampler = optuna.samplers.TPESampler(
            seed=self.settings.seed + n_trials, n_startup_trials=self.settings.n_startup_trials
        )
        draft = optuna.create_study(direction="minimize", sampler=sampler)
        completed = [t for t in self._trials() if t.state == TrialState.COMPLETE]
        draft.add_trials(completed)
        how = "tpe" if len(completed) >= self.settings.n_startup_trials else "random"
        dists = {n: distribution(self.space[n]) for n in best}
        for _ in range(self.settings.max_draws):
            drawn = draft.ask(dists).params  # left running: TPE's constant liar steers the next draw elsewhere
            proposal = {n: to_internal(self.space[n], to_value(self.space[n], drawn[n])) for n in best}
            differing = sorted(n for n, v in proposal.items() if v is not None and v != best[n])
            if not differing:
                continue
            k = rng.randint(1, min(self.settings.max_changes, len(differing)))
            config = dict(best)
            for name in rng.sample(differing, k):
                config[name] = proposal[name]
            if config_key(config) not in seen:
                return config, how
        return self._neighbour(best, seen, rng), "neighbour"

    def _neighbour(self, best: dict[str, Any], seen: set[str], rng: random.Random) -> dict[str, Any]:
        """Fallback: one constant moved one step (a power of two, x1.5, a bool flipped), unseen."""
        candidates = []
        for name, value in sorted(best.items()):
            spec = self.space[name]
            for step in _steps(spec, value):
                config = {**best, name: step}
                if config_key(config) not in seen:
                    candidates.append(config)
        if not candidates:
            raise AgentError("the search space is exhausted around the current best: every neighbour was tried")
        return rng.choice(candidates)


def _literal(const: Constant, value: Value) -> str:
    """How train.py writes `value` for this constant (its own text when the value is unchanged)."""
    same = value == const.value and type(value) is type(const.value)
    return const.text if same else format_literal(const, value)


def _steps(spec: ParamSpec, internal: Any) -> list[Any]:
    if spec.kind == "bool":
        return [not internal]
    if spec.kind == "pow2":
        raw = [internal - 1, internal + 1]
    elif spec.kind == "int":
        raw = sorted({internal - 1, internal + 1, int(internal / 1.5), math.ceil(internal * 1.5)})
    else:
        raw = [to_value(spec, internal / 1.5), to_value(spec, internal * 1.5)]
    return [v for v in raw if v != internal and _in_space(spec, v)]

"""`python -m controller overnight|replay|verify|logs|status|notebook|report|cleanup|profile|doctor`.

Errors meant for a person are one line on stderr (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from controller.ledger import Ledger, LedgerError, find_run, latest_tag
from controller.records import RunRecord
from controller.settings import Settings, SettingsError, load_settings
from controller.status import ConsoleObserver

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# Flags of `overnight`, one per setting (values are validated by Settings, not argparse).
OVERNIGHT_FLAGS: dict[str, str] = {
    "tag": "name of the night: branch autoresearch/<tag>, runs/<tag>/ (default: today, e.g. nov23)",
    "program": "programs/<program>/ holds train.py and program.md (default: default)",
    "profile": "gpu | cpu | test (default: gpu with a GPU and the NVIDIA container runtime, else cpu)",
    "agent": "anthropic | search (default: anthropic when ANTHROPIC_API_KEY is set, else search)",
    "model": "model of the anthropic agent",
    "gpus": "all, or GPU indices like 0,1,3: one slot per GPU (default on the gpu profile: all)",
    "slots": "CPU profiles: experiments at once, each pinned to its own cores (default: 1)",
    "overlap": "true | false: the agent prepares the next proposal while experiments run (default: true)",
    "preflight": "true | false: a short CPU check before a proposal takes a slot (default: on for gpu)",
    "calibration_runs": "runs of the baseline that measure the noise at the start (default: 3)",
    "verify_runs": "at the night's end, re-run the baseline and the best this many times each: the "
    "improvement with error bars (default: 0, off; `make verify TAG=..` does it later)",
    "hours": "end the night after this many hours",
    "until": "end the night at this local time, HH:MM",
    "max_experiments": "end when the tag has this many experiments after the baseline",
    "max_fix_attempts": "fix tries after a crash (and re-asks after a refused edit)",
    "vram_cap_gb": "kill a run whose GPU memory passes this",
    "memory_limit_gb": "RAM limit of each container (default: the profile's, sized from measured peaks)",
    "compile_cache": "true | false: compile the seed once at night start and give every run that cache "
    "(default: on for gpu with Docker)",
    "data_dir": "prepared data (default: data/<profile>)",
    "runs_dir": "where results go (default: runs)",
    "worktrees_dir": "where the experiment worktree goes (default: worktrees)",
    "repo": "the project checkout the night starts from (default: .)",
    "image": "evaluator image both containers start from",
    "sandbox": "docker | bare (bare: plain processes, development only, no protection)",
    "seed": "seed handed to train.py",
}
COMMON_FLAGS = ("runs_dir", "repo", "data_dir", "image", "sandbox")
DOCTOR_FLAGS = ("profile", "agent", "data_dir", "runs_dir", "image")
# Settings of the Kubernetes backend (sandbox.kubernetes, docs/kubernetes.md).
K8S_FLAGS: dict[str, str] = {
    "backend": "docker | kubernetes (default: docker)",
    "kube_config": "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)",
    "kube_namespace": "namespace of the experiments' Jobs (default: overnight)",
    "image_registry": "registry the cluster pulls the images from, e.g. registry.example.com/team",
    "storage_class": "storage class of the per-job output volumes (default: the cluster's)",
    "gpu_resource_name": "the GPU resource the device plugin advertises (default: nvidia.com/gpu)",
    "kube_data_volume": "PVC with the prepared data (default: overnight-data)",
    "kube_runtime_class": "RuntimeClass for every sandbox pod, e.g. gvisor",
    "kube_cpus": "CPU limit of each job (default: 8)",
}


class UserError(RuntimeError):
    pass


def _add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | list[str]) -> None:
    for name in names:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar="X",
            help={**OVERNIGHT_FLAGS, **K8S_FLAGS}[name],
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controller", description="overnight: autonomous ML research")
    sub = p.add_subparsers(dest="command", required=True)
    night = sub.add_parser("overnight", help="run the research loop until stopped or a limit is reached")
    _add_flags(night, [*OVERNIGHT_FLAGS, *K8S_FLAGS])
    rp = sub.add_parser("replay", help="run a recorded commit again and compare val_bpb")
    rp.add_argument("sha", help="commit (prefix) of the run to replay")
    _add_flags(rp, [*COMMON_FLAGS, *K8S_FLAGS])
    vf = sub.add_parser("verify", help="re-run a tag's baseline and best k times each: the improvement with error bars")
    vf.add_argument("--tag", required=True, help="the night to verify (it must have ended)")
    vf.add_argument("--runs", type=int, default=3, metavar="K", help="runs of each commit, fresh seeds (default: 3)")
    _add_flags(vf, [*COMMON_FLAGS, *K8S_FLAGS])
    lg = sub.add_parser("logs", help="print a run's train.log and eval.log")
    lg.add_argument("run", help="experiment number (in --tag, default the latest tag) or commit prefix")
    lg.add_argument("--tag", default=None)
    lg.add_argument("--which", choices=("train", "eval", "both"), default="both")
    _add_flags(lg, ("runs_dir",))
    st = sub.add_parser("status", help="the ledger of a tag as a table")
    st.add_argument("--tag", default=None, help="default: the latest tag")
    _add_flags(st, ("runs_dir",))
    nb = sub.add_parser("notebook", help="print the agent's research notebook of a tag")
    nb.add_argument("--tag", default=None, help="default: the latest tag")
    _add_flags(nb, ("runs_dir",))
    rep = sub.add_parser("report", help="write runs/<tag>/progress.png")
    rep.add_argument("--tag", default=None, help="default: the latest tag")
    _add_flags(rep, ("runs_dir",))
    cl = sub.add_parser("cleanup", help="remove containers an interrupted night left behind")
    cl.add_argument("--tag", default=None, help="only this tag's containers (default: all of the sandbox's)")
    _add_flags(cl, ("repo",))
    sub.add_parser("profile", help="print the profile a night would use here (gpu or cpu)")
    dr = sub.add_parser("doctor", help="everything a night depends on, as a table (exit 1: a night could not start)")
    _add_flags(dr, DOCTOR_FLAGS)
    km = sub.add_parser("k8s-manifests", help="print the Kubernetes objects of one experiment, to review")
    km.add_argument("--profile", default=None, help=OVERNIGHT_FLAGS["profile"])
    for name in ("image", "memory_limit_gb", "data_dir"):
        km.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="X", help=OVERNIGHT_FLAGS[name])
    for name, text in K8S_FLAGS.items():
        km.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="X", help=text)
    return p


def _overrides(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# -- sandbox adapters ------------------------------------------------------------------------


def make_backend(settings: Settings) -> Any:
    """The runner (sandbox.runner.Runner) the night's experiments go through: the local Docker
    engine, or Kubernetes Jobs (docs/kubernetes.md)."""
    from sandbox.errors import SandboxError

    try:
        if settings.backend == "kubernetes":
            from sandbox.kubernetes.runner import make_kubernetes_runner

            return make_kubernetes_runner(settings)
        from sandbox.docker_runner import DockerRunner

        return DockerRunner()
    except SandboxError as exc:
        raise UserError(str(exc)) from None


def make_runner(settings: Settings, backend: Any = None) -> Callable:
    """spec -> result for the loop: the bare runner (development), or the sandbox on a backend."""
    if settings.sandbox == "bare":
        from sandbox.bare import run_bare

        return run_bare
    from sandbox.experiment import run_experiment

    return functools.partial(run_experiment, runner=backend if backend is not None else make_backend(settings))


def make_preflight(settings: Settings, backend: Any, console: Console) -> Callable | None:
    """The CPU preflight (sandbox.preflight) when it is on; None when off, or (said in one line)
    where it cannot run: bare processes, or a backend without one unless it was asked for."""
    if not settings.preflight_on:
        return None
    from sandbox.errors import SandboxError
    from sandbox.preflight import SandboxPreflight

    try:
        if backend is None:
            raise SandboxError("the CPU preflight needs a sandbox backend, not bare processes")
        return SandboxPreflight(backend)
    except SandboxError as exc:
        if settings.preflight:  # asked for explicitly
            raise UserError(str(exc)) from None
        console.print(Text(f"preflight off: {exc}", style="yellow"))
        return None


def current_image_id(settings: Settings, backend: Any = None) -> str | None:
    """What exactly the image is (a content id; a registry reference on a cluster), None for the
    bare runner; one-line errors."""
    if settings.sandbox == "bare":
        return None
    from sandbox.errors import SandboxError

    try:
        return str((backend if backend is not None else make_backend(settings)).image_id(settings.image))
    except SandboxError as exc:
        raise UserError(str(exc)) from None


def remove_tag_containers(tag: str | None, backend: Any = None) -> list[str]:
    """Force-remove the containers and volumes (or pods, jobs and claims) of `tag`, by the
    controller's overnight.tag label, or everything the sandbox made when tag is None."""
    from sandbox.docker_runner import DockerRunner

    runner = backend if backend is not None else DockerRunner()
    return runner.cleanup() if tag is None else runner.cleanup_tag(tag)


def data_manifest(settings: Settings, backend: Any = None) -> str:
    """The data's identity, after checking every file against the manifest (a damaged data dir
    is a one-line error now, not a crash in every experiment of the night). On a cluster the
    data lives on its volume and is checked there."""
    from evaluator import layout
    from evaluator.manifest import ManifestError, verify_manifest

    if settings.backend == "kubernetes" and settings.sandbox != "bare":
        from sandbox.errors import SandboxError

        try:
            return str(backend.data_manifest(Path(settings.data_dir).name, current_image_id(settings, backend)))
        except SandboxError as exc:
            raise UserError(str(exc)) from None
    if not (Path(settings.data_dir) / layout.MANIFEST).is_file():
        raise UserError(f"no prepared data in {settings.data_dir}: run `make prepare PROFILE={settings.profile}` first")
    try:
        return verify_manifest(settings.data_dir, [layout.TRAIN_DIR, layout.VAL_DIR, layout.EVAL_DIR])
    except ManifestError as exc:
        raise UserError(str(exc)) from None


def make_agent_for(settings: Settings) -> Any:
    from controller.agents import AgentConfigError, make_agent

    repo = Path(settings.repo)
    try:
        if settings.agent == "anthropic":
            key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
            return make_agent("anthropic", api_key=key, model=settings.model)
        return make_agent(
            "search",
            runs_dir=settings.tag_dir,
            seed_train_py=repo / "programs" / settings.program / "train.py",
            profile=settings.profile,
            seed=settings.seed,
        )
    except AgentConfigError as exc:
        raise UserError(str(exc)) from None


# -- commands --------------------------------------------------------------------------------


class ReportingObserver(ConsoleObserver):
    """The console observer that also redraws progress.png after every experiment."""

    def __init__(self, *args: Any, tag_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tag_dir = tag_dir

    def finished(self, record: RunRecord, best: Any) -> None:
        super().finished(record, best)
        self.write_report()

    def write_report(self) -> None:
        from controller.report import write_report

        try:
            rows = Ledger(self.tag_dir).rows()
            if rows:
                write_report(self.tag_dir, rows)
        except Exception as exc:  # a plot must never end the night
            self.say(f"progress.png not written: {exc}", "warning")


def resume_command(settings: Settings, argv: list[str]) -> list[str]:
    """The exact commands that resume this night: the same flags, with --tag pinned."""
    flags: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--tag":
            skip = True
            continue
        if arg.startswith("--tag="):
            continue
        flags.append(arg)
    python = ["python -m controller overnight " + shlex.join(["--tag", settings.tag, *flags])]
    make = f"make overnight TAG={settings.tag}" + (f" ARGS={shlex.quote(shlex.join(flags))}" if flags else "")
    return [make, *python]


def cmd_overnight(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    from controller.logs import configure_logging
    from controller.loop import (
        AgentFatalError,
        InfrastructureError,
        LoopDeps,
        NightLoop,
        SetupError,
        StopFlag,
        agent_model,
        resume_settings,
    )

    settings = load_settings(**_overrides(args, [*OVERNIGHT_FLAGS, *K8S_FLAGS]))
    try:
        settings = resume_settings(settings)
    except SetupError as exc:
        raise UserError(str(exc)) from None
    from controller.slots import plan_slots, slot_lines

    slots = plan_slots(settings)  # a plan that cannot work is a one-line error before anything starts
    backend = None if settings.sandbox == "bare" else make_backend(settings)
    manifest = data_manifest(settings, backend)
    image = current_image_id(settings, backend)
    log_path = configure_logging(settings.tag_dir)
    agent = make_agent_for(settings)
    runner = make_runner(settings, backend)

    if "profile" in settings.model_fields_set:
        why_profile = "chosen explicitly"
    elif settings.profile == "gpu":
        why_profile = "GPU and NVIDIA container runtime found"
    else:
        why_profile = "no GPU with the NVIDIA container runtime found"
    console.print(
        Text(
            f"overnight {settings.tag}: program {settings.program}, profile {settings.profile} "
            f"({why_profile}), data {settings.data_dir}",
            style="bold",
        )
    )
    model = agent_model(agent)
    console.print(Text(settings.agent_reason() + (f", model {model}" if model else "")))
    if settings.sandbox == "bare":
        console.print(Text("sandbox: bare processes, NO containers and none of their protections", style="red"))
    else:
        console.print(Text(f"image {settings.image} ({image[:19] if image else '?'})"))
    console.print(Text(f"results {settings.tag_dir}/results.tsv, log {log_path}"))
    for line in slot_lines(slots, settings):
        console.print(Text(line))

    rows = Ledger(settings.tag_dir).rows() if Ledger(settings.tag_dir).exists() else []
    deadline = settings.deadline(dt.datetime.now().astimezone())
    stop = StopFlag()
    observer = ReportingObserver(
        console, settings.tag, rows, deadline, settings.max_experiments, tag_dir=settings.tag_dir
    )

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.requested:
            stop.request_now()
            raise KeyboardInterrupt
        stop.request()
        observer.say("Ctrl-C: finishing the experiment in flight, then stopping (Ctrl-C again: stop now)", "warning")

    def on_sigterm(signum: int, frame: Any) -> None:
        stop.request_now()
        raise KeyboardInterrupt

    remover = None if backend is None else functools.partial(remove_tag_containers, backend=backend)
    compile_cache = warm_night_cache(settings, backend, console)
    deps = LoopDeps(
        agent=agent,
        runner=runner,
        observer=observer,
        remove_orphans=remover,
        manifest_sha256=manifest,
        stop=stop,
        compile_cache=compile_cache,
        preflight=make_preflight(settings, backend, console),
    )
    loop = NightLoop(settings, deps, slots=slots)
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)  # the terminal went away: stop now, leave no container
    resume = resume_command(settings, argv)
    try:
        with observer:
            summary = loop.run()
    except KeyboardInterrupt:
        if remover is not None:
            try:
                remover(settings.tag)
            except Exception:
                pass
        console.print(Text("stopped; the experiment in flight will be redone on resume. Resume with:", style="yellow"))
        for line in resume:
            console.print(Text("  " + line))
        return EXIT_INTERRUPTED
    except SetupError as exc:
        raise UserError(str(exc)) from None
    except (AgentFatalError, InfrastructureError) as exc:
        if remover is not None:
            try:
                remover(settings.tag)
            except Exception:
                pass
        console.print(Text(str(exc), style="red"))
        console.print(Text("fix that, then resume with:"))
        for line in resume:
            console.print(Text("  " + line))
        return EXIT_ERROR
    finally:
        if compile_cache is not None:  # the night's only: a resumed night warms its own
            from sandbox.compile_cache import remove_compile_cache

            remove_compile_cache(settings.tag_dir)
    observer.write_report()
    ends = {
        "max-experiments": "reached --max-experiments",
        "deadline": "reached its end time",
        "stopped": "stopped by Ctrl-C",
    }
    best = summary.best
    console.print(
        Text(
            f"night {settings.tag} {ends.get(summary.reason, summary.reason)}: "
            f"{len(summary.rows)} experiments" + (f", best val_bpb {best.val_bpb:.6f} ({best.commit})" if best else ""),
            style="bold",
        )
    )
    console.print(
        Text(
            f"results: {settings.tag_dir}/results.tsv, plot: {settings.tag_dir}/progress.png, "
            f"branch: autoresearch/{settings.tag}"
        )
    )
    if summary.reason == "stopped":
        console.print(Text("resume with:"))
        for line in resume:
            console.print(Text("  " + line))
    return 0


def warm_night_cache(settings: Settings, backend: Any, console: Console) -> Path | None:
    """The night's warm compile cache (sandbox.compile_cache): the user's seed train.py compiled
    once by trusted code, its cache handed to every train job as a private copy. None when off or
    when warming gave nothing (every run then compiles cold, as the baseline does)."""
    if not settings.compile_cache_on or backend is None:
        return None
    from sandbox.compile_cache import warm_compile_cache
    from sandbox.errors import SandboxError
    from sandbox.specs import LABEL_TAG

    console.print(Text("warming the compile cache: the seed compiles once, every run gets a copy ..."))
    try:
        warm = warm_compile_cache(
            seed_train_py=Path(settings.repo) / "programs" / settings.program / "train.py",
            tag_dir=settings.tag_dir,
            run_id=f"{settings.tag}-warmup",
            profile=settings.profile,
            data_dir=Path(settings.data_dir),
            image=settings.image,
            gpu=settings.gpu,
            memory_gb=settings.container_memory_gb,
            labels={LABEL_TAG: settings.tag},
            runner=backend,
        )
    except SandboxError as exc:
        raise UserError(f"warming the compile cache failed: {exc} (or run with --compile-cache false)") from None
    if warm.path is None:
        console.print(Text(f"no compile cache ({warm.reason}); every run compiles cold", style="yellow"))
        return None
    console.print(Text(f"compile cache: {warm.bytes / 2**20:.0f} MiB in {warm.seconds:.0f} s"))
    return warm.path


def _tag_or_latest(runs_dir: Path, tag: str | None) -> str:
    tag = tag or latest_tag(runs_dir)
    if tag is None:
        raise UserError(f"no runs in {runs_dir}/ yet: start a night with `make overnight`")
    if not Ledger(runs_dir / tag).exists():
        raise UserError(f"no ledger for tag {tag} in {runs_dir}/")
    return tag


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from controller.loop import tag_running
    from controller.status import in_flight_lines, ledger_table

    runs_dir = Path(args.runs_dir or "runs")
    tag = _tag_or_latest(runs_dir, args.tag)
    ledger = Ledger(runs_dir / tag)
    rows = ledger.rows()
    console.print(ledger_table(tag, rows))
    for text in in_flight_lines(ledger.read_journal(), ledger.read_slots(), tag_running(runs_dir / tag)):
        console.print(text)
    for line in morning_notes(runs_dir / tag, rows):
        console.print(Text(line))
    return 0


def morning_notes(tag_dir: Path, rows: list) -> list[str]:
    """Fixes the agent gave up on, and where its notebook is."""
    from controller.agents.notebook import NotebookError, notebook_path, parse, read_notebook
    from controller.records import FIX_DECLINED_JSON, FixDeclinedRecord
    from controller.safefiles import read_regular
    from evaluator.hostile import clean_line

    ledger, lines = Ledger(tag_dir), []
    for row in rows:
        n = row.n
        path = ledger.row_run_dir(n, row) / FIX_DECLINED_JSON
        if path.is_file():
            try:
                reason = FixDeclinedRecord.model_validate_json(read_regular(path, 2**20)).reason
            except (OSError, ValueError):
                reason = "(unreadable record)"
            lines.append(f"#{n}: the agent gave up fixing it: {clean_line(reason)}")
    try:
        sections = parse(read_notebook(tag_dir))
    except NotebookError as exc:
        return [*lines, f"notebook: {exc}"]
    if sections:
        lines.append(
            f"notebook: {notebook_path(tag_dir)} ({len(sections)} sections; "
            f"`python -m controller notebook --tag {tag_dir.name}` prints it)"
        )
    return lines


def cmd_notebook(args: argparse.Namespace, console: Console) -> int:
    from controller.agents.notebook import NotebookError, notebook_path, read_notebook

    runs_dir = Path(args.runs_dir or "runs")
    tag = _tag_or_latest(runs_dir, args.tag)
    try:
        text = read_notebook(runs_dir / tag)
    except NotebookError as exc:
        raise UserError(str(exc)) from None
    if not text.strip():
        console.print(Text(f"tag {tag} has no notebook yet ({notebook_path(runs_dir / tag)})"))
        return 0
    console.print(Text(text.rstrip()))  # plain text: agent-written, never markup
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from controller.report import write_report

    runs_dir = Path(args.runs_dir or "runs")
    tag = _tag_or_latest(runs_dir, args.tag)
    try:
        plot = write_report(runs_dir / tag)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    console.print(
        Text(
            f"wrote {plot.path}: {plot.points} experiments ({plot.kept} kept, "
            f"{plot.discarded} discarded, {plot.failed} failed)"
        )
    )
    return 0


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    from controller.status import print_run_logs

    runs_dir = Path(args.runs_dir or "runs")
    try:
        loc = find_run(runs_dir, args.run, tag=args.tag)
    except LedgerError as exc:
        raise UserError(str(exc)) from None
    print_run_logs(console, loc, args.which)
    return 0


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    from controller.logs import configure_logging
    from controller.replay import ReplayError, describe, locate, replay

    settings = load_settings(**_overrides(args, [*COMMON_FLAGS, *K8S_FLAGS]))
    try:
        loc, _ = locate(settings, args.sha)
        configure_logging(settings.runs_dir / loc.tag)
        backend = None if settings.sandbox == "bare" else make_backend(settings)
        image = current_image_id(settings, backend)
        console.print(Text(f"replaying {loc.tag} #{loc.n} {loc.row.commit} ...", style="bold"))
        outcome = replay(settings, args.sha, make_runner(settings, backend), image)
    except ReplayError as exc:
        raise UserError(str(exc)) from None
    for line in describe(outcome):
        console.print(Text(line))
    return 0 if outcome.equal is not False else 1


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    from controller.logs import configure_logging
    from controller.verify import (
        VerifyError,
        check_runs,
        describe,
        verify_lock,
        verify_tag,
    )

    settings = load_settings(tag=args.tag, **_overrides(args, [*COMMON_FLAGS, *K8S_FLAGS]))
    try:
        check_runs(args.runs)
        with verify_lock(settings):
            configure_logging(settings.tag_dir)
            backend = None if settings.sandbox == "bare" else make_backend(settings)
            image = current_image_id(settings, backend)
            result = verify_tag(
                settings,
                make_runner(settings, backend),
                image,
                runs=args.runs,
                say=lambda line: console.print(Text(line)),
            )
    except VerifyError as exc:
        raise UserError(str(exc)) from None
    for line in describe(result):
        console.print(Text(line))
    return 0 if result.ok else 1


def cmd_cleanup(args: argparse.Namespace, console: Console) -> int:
    from controller import git
    from sandbox.errors import SandboxError

    try:
        removed = remove_tag_containers(args.tag)
    except SandboxError as exc:
        raise UserError(str(exc)) from None
    console.print(Text(f"removed {len(removed)} container(s)" + (f": {', '.join(removed)}" if removed else "")))
    try:
        git.git(git.repo_root(Path(args.repo or ".")), "worktree", "prune")
    except git.GitError:
        pass
    return 0


def cmd_k8s_manifests(args: argparse.Namespace) -> int:
    from sandbox.kubernetes.cluster import Cluster
    from sandbox.kubernetes.sample import sample_manifests, to_yaml

    settings = load_settings(**_overrides(args, ["profile", "image", "memory_limit_gb", "data_dir", *K8S_FLAGS]))
    objects = sample_manifests(
        settings.profile,
        Cluster.from_settings(settings),
        image=settings.image,
        data_dir=Path(settings.data_dir),
        memory_gb=settings.container_memory_gb,
    )
    print(
        f"# The Kubernetes objects of one {settings.profile} experiment, as the kubernetes backend\n"
        f"# creates them in namespace {settings.kube_namespace} (train.py shortened). Review, or\n"
        "# check with: kubectl apply --dry-run=server -f <this file>"
    )
    print(to_yaml(objects), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    from controller.git import GitError
    from controller.logs import configure_quiet

    if args.command not in ("overnight", "replay", "verify"):
        configure_quiet()
    try:
        if args.command == "overnight":
            return cmd_overnight(args, argv[1:], console)
        if args.command == "replay":
            return cmd_replay(args, console)
        if args.command == "verify":
            return cmd_verify(args, console)
        if args.command == "logs":
            return cmd_logs(args, console)
        if args.command == "status":
            return cmd_status(args, console)
        if args.command == "notebook":
            return cmd_notebook(args, console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "cleanup":
            return cmd_cleanup(args, console)
        if args.command == "doctor":
            from controller.doctor import run_doctor

            return run_doctor(_overrides(args, DOCTOR_FLAGS), console)
        if args.command == "profile":
            print(load_settings().profile)
            return 0
        if args.command == "k8s-manifests":
            return cmd_k8s_manifests(args)
    except (UserError, SettingsError, GitError, LedgerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # before the night's own handlers are in place, or in another command
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

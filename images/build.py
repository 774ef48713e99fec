"""Build the images, from the bottom layer up: base -> runtime -> evaluator -> prepare, then a
smoke test in the evaluator image.

    python images/build.py [--base auto|local|registry] [--base-image IMAGE] [--keep-base-torch]
                           [--debian-image IMAGE] [--smoke auto|cpu|cuda] [--prefix NAME] [-v]

One torch. The images run the torch everything is tested on: the `torch==` line of
images/requirements.txt, which `make setup` installs on the host too (the Makefile's TORCH_SPEC
reads that line), so the two cannot drift. It is installed from the host's wheelhouse on every
base; the build fails if the version in the image differs, and records it in the label
`overnight.torch` (the evaluator and prepare images inherit it), which `docker image inspect`
reads without running anything. On a GPU host pip downloads the CUDA build of that version with
its nvidia-* wheels (CUDA runtime, cuDNN, NCCL); the NVIDIA container toolkit injects only the
driver, so no CUDA base image is needed. Why not the torch a CUDA PyTorch image brings: its version
is whatever the image's tag froze (the old default, pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime,
had 2.9.0 against 2.13.0 under test), and evaluator/artifact.py calls torch's private export serde
functions, which change between releases.

Two ways to get a base: Python, venv, and the compiler toolchain that Triton and Inductor need the
first time torch.compile runs (gcc, g++, libc6-dev, Python.h).
- local (the default, CPU or GPU host): `debootstrap --variant=minbase` a Debian root with those
  packages, `docker import` it as overnight-base:bookworm. Needs root once and no registry.
- registry: BASE_IMAGE=<image>, any Debian or Ubuntu image (e.g. a CUDA runtime image), pulled and
  completed by images/base.Dockerfile, which apt-installs what of the above is missing, as
  overnight-base:registry. The pinned torch goes into an isolated venv: a torch the base brings is
  not seen (it is dead weight, so prefer a base without one). --keep-base-torch (KEEP_BASE_TORCH=1)
  opts out: the venv sees the base's torch and installs none; the label then records the base's
  version and the build warns that it is not the one under test. `auto` uses the registry when
  BASE_IMAGE is set and builds the local base when it cannot be pulled.
The prepare image's stdlib test suites come from Debian's package, installed in a stage built from
a Debian bookworm image (--debian-image; default: the local base when it exists, else
debian:bookworm-slim pulled, else the local base made), and go into whatever stdlib the evaluator
image's Python has (see prepare.Dockerfile).

Smoke test: the build ends by running images/smoke.py in a fresh evaluator-image container locked
down like a train container (sandbox/specs.py: no network, read-only root, tmpfs /tmp, non-root,
no capabilities): torch.compile of a tiny model (forward and backward), torch.export, and the
evaluator's own loader. On CUDA when the host has an NVIDIA GPU, else on CPU. A failure fails the
build; its time is printed.

Builds run with no network (the wheels come from the host's wheelhouse), except base.Dockerfile
and the prepare image's Debian stage, which apt-get packages over the host's network (so they also
work where dockerd has no bridge). Whatever was picked is printed. Rebuilds are cached: an existing local base is reused, the
wheelhouse is downloaded once per requirements set, and docker's layer cache does the rest (build
contexts are packed deterministically so unchanged inputs hit the cache). Image building talks to
the engine through the docker SDK; debootstrap and pip run on the host.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's sandbox/specs.py locks the smoke test down
from sandbox import specs  # noqa: E402

IMAGES = REPO / "images"
WHEELHOUSE = IMAGES / ".wheelhouse"
SMOKE_STAMPS_KEPT = 32
SMOKE_STAMP = IMAGES / ".smoke-passed"  # one "image-id device" line per evaluator image the smoke test passed on
REQUIREMENTS = IMAGES / "requirements.txt"
SMOKE_SCRIPT = IMAGES / "smoke.py"

SUITE = "bookworm"
SUITE_PYTHON = "3.11"  # bookworm's python3: its libpython3.11-testsuite feeds the prepare image
DEBIAN_REGISTRY_IMAGE = f"debian:{SUITE}-slim"
# Python with venv, and the toolchain Triton and Inductor compile with (Python.h: python3-dev).
BASE_PACKAGES = ("python3", "python3-venv", "python3-dev", "gcc", "g++", "libc6-dev")
# Trimmed from the debootstrapped root (globs; a folder is emptied): never needed at run time.
# Python's config folder holds static libraries nothing links (and python-config.py, which would
# join the `stdlib` dataset's train text); lto-dump is a gcc debugging tool.
ROOTFS_TRIM = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
               "usr/share/info", "usr/share/locale", f"usr/lib/python{SUITE_PYTHON}/config-*",
               "usr/bin/*lto-dump*")
LABEL_TORCH = "overnight.torch"  # the torch version the image runs
LABEL_BASE = "overnight.base"  # the image it was built on
SMOKE_MEMORY_GB = 4.0
SMOKE_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """A one-line reason the images could not be built, and what to do."""


@dataclass(frozen=True)
class Tags:
    base: str  # the local base (debootstrap + import)
    registry_base: str  # BASE_IMAGE completed by base.Dockerfile
    runtime: str
    evaluator: str  # what the sandbox runs (sandbox.result.ExperimentSpec.image)
    prepare: str

    @classmethod
    def named(cls, prefix: str) -> Tags:
        return cls(f"{prefix}-base:{SUITE}", f"{prefix}-base:registry", f"{prefix}-runtime:latest",
                   f"{prefix}-evaluator:latest", f"{prefix}-prepare:latest")


TAGS = Tags.named("overnight")


@dataclass(frozen=True)
class Base:
    image: str  # the local base's tag, or the registry image as given
    kind: str  # "local" or "registry"
    why: str


@dataclass(frozen=True)
class PythonFacts:
    version: str  # "3.11"
    stdlib: str  # e.g. /usr/lib/python3.11
    torch: str | None  # the base's own torch, if it has one (a PyTorch image)


@dataclass(frozen=True)
class SmokeResult:
    torch: str  # torch.__version__ in the image
    cuda: str | None  # the CUDA version torch was built for
    device: str  # "cpu" or the GPU's name
    compile_s: float
    export_s: float
    load_s: float
    wall_s: float  # container create to exit


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# choosing the base


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def host_has_nvidia_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "no GPU here"
        return False


def try_pull(client: docker.DockerClient, ref: str) -> str | None:
    """None when the image is here (pulled or already local), else why not."""
    if image_exists(client, ref):
        return None
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    try:
        log(f"pulling {ref} ...")
        client.images.pull(repo, tag=tag)
        return None
    except docker.errors.APIError as exc:
        return str(exc.explanation or exc).splitlines()[0]


def choose_base(client: docker.DockerClient, mode: str, base_image: str | None,
                local_base: str = TAGS.base) -> Base:
    """The local base unless a registry image is asked for and can be had."""
    if mode == "local":
        return Base(local_base, "local", "asked for the local base")
    if base_image is None:
        if mode == "registry":
            raise BuildError("--base registry needs an image: pass --base-image or set BASE_IMAGE")
        return Base(local_base, "local", "no BASE_IMAGE given")
    failure = try_pull(client, base_image)
    if failure is None:
        return Base(base_image, "registry", f"BASE_IMAGE {base_image} is here")
    if mode == "registry":
        raise BuildError(f"cannot pull {base_image}: {failure}; use --base local for an offline build")
    return Base(local_base, "local", f"registry not usable ({failure}); built offline instead")


def debian_image(client: docker.DockerClient, given: str | None, local_base: str) -> str:
    """A Debian bookworm image with apt for the prepare image's test-suite stage."""
    if given is not None:
        if not image_exists(client, given) and try_pull(client, given) is not None:
            raise BuildError(f"--debian-image {given} is neither here nor pullable")
        return given
    if image_exists(client, local_base) or try_pull(client, DEBIAN_REGISTRY_IMAGE) is not None:
        build_local_base(client, local_base)
        return local_base
    return DEBIAN_REGISTRY_IMAGE


# ---------------------------------------------------------------------------------------------
# the local base: debootstrap + docker import


def apt_source_files(etc_apt: Path = Path("/etc/apt")) -> list[Path]:
    return [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]


def host_debian_mirror(suite: str = SUITE, sources: list[Path] | None = None) -> str | None:
    """The Debian mirror the host's apt uses for `suite`, so debootstrap fetches from the same
    place; None lets debootstrap use its own default. DEBIAN_MIRROR overrides."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    for path in sources if sources is not None else apt_source_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, flags=re.M))
                if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", ""):
                    return fields.get("URIs", "").split()[0] or None
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                    return parts[1]
    return None


def trim_rootfs(rootfs: Path, patterns: Iterable[str] = ROOTFS_TRIM) -> None:
    for pattern in patterns:
        for target in rootfs.glob(pattern):
            if target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            else:
                target.unlink()


LABEL_BASE_KEY = "overnight.base-key"  # what the local base was made from: a different recipe rebuilds it


def base_key() -> str:
    recipe = json.dumps([SUITE, BASE_PACKAGES, ROOTFS_TRIM])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def build_local_base(client: docker.DockerClient, tag: str) -> None:
    if image_exists(client, tag):
        made_from = (client.images.get(tag).labels or {}).get(LABEL_BASE_KEY)
        if made_from == base_key():
            log(f"{tag} exists: skipping debootstrap")
            return
        log(f"{tag} was made from another recipe ({made_from or 'unlabelled'}): making it again")
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed: `apt-get install debootstrap`, then retry")
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root: run `sudo make images` once to make the base")
    mirror = host_debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overnight-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               SUITE, str(rootfs)] + ([mirror] if mirror else [])
        log(f"debootstrap {SUITE} (minbase + {', '.join(BASE_PACKAGES)}) ...")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["?"]
            raise BuildError(f"debootstrap failed: {tail[0]}")
        trim_rootfs(rootfs)
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."],
                       check=True)
        repo, version = tag.split(":")
        client.api.import_image_from_file(
            str(archive), repository=repo, tag=version,
            changes=['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                     'CMD ["/bin/bash"]', f"LABEL {LABEL_BASE_KEY}={base_key()}"],
        )
    log(f"{tag} imported in {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# python facts and the wheelhouse


def probe_python(client: docker.DockerClient, image: str) -> PythonFacts:
    script = ("import json, sys, sysconfig, importlib.metadata as md\n"
              "try: torch = md.version('torch')\n"
              "except md.PackageNotFoundError: torch = None\n"
              "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
              "'stdlib': sysconfig.get_paths()['stdlib'], 'torch': torch}))")
    out = client.containers.run(image, ["python3", "-c", script], entrypoint=[],
                                network_mode="none", remove=True, user="0")
    return PythonFacts(**json.loads(out.decode().strip().splitlines()[-1]))


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def pinned_torch(path: Path = REQUIREMENTS) -> str:
    """The torch version of the project: the `torch==` line of images/requirements.txt."""
    pins = [ln.split("==", 1)[1] for ln in requirement_lines(path) if ln.startswith("torch==")]
    if len(pins) != 1:
        raise BuildError(f"{path} must pin torch with exactly one `torch==X.Y.Z` line")
    return pins[0]


def wheel_requirements(keep_base_torch: bool, path: Path = REQUIREMENTS) -> list[str]:
    return [ln for ln in requirement_lines(path)
            if not (keep_base_torch and ln.startswith("torch=="))]


def ensure_wheelhouse(reqs: list[str], python: PythonFacts) -> None:
    """Download the wheels for the image's Python once; a stamp records what is inside."""
    arch = platform.machine()
    key = hashlib.sha256(json.dumps([reqs, python.version, arch]).encode()).hexdigest()
    stamp = WHEELHOUSE / ".stamp"
    if stamp.exists() and stamp.read_text().strip() == key:
        log("wheelhouse up to date")
        return
    if WHEELHOUSE.exists():
        shutil.rmtree(WHEELHOUSE)
    WHEELHOUSE.mkdir(parents=True)
    platforms = [f"manylinux_2_{m}_{arch}" for m in (28, 27, 17)] + [f"manylinux2014_{arch}"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
           "--python-version", python.version, "--implementation", "cp",
           *[arg for p in platforms for arg in ("--platform", p)], "-d", str(WHEELHOUSE), *reqs]
    log(f"downloading wheels for Python {python.version} ({len(reqs)} requirements) ...")
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise BuildError(f"pip download failed: {tail}")
    stamp.write_text(key + "\n")
    size = sum(p.stat().st_size for p in WHEELHOUSE.glob("*.whl")) / 2**20
    log(f"wheelhouse: {len(list(WHEELHOUSE.glob('*.whl')))} wheels, {size:.0f} MiB, "
        f"{time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# docker builds with deterministic contexts


def context_files(patterns: Iterable[str]) -> list[Path]:
    files: set[Path] = set()
    for pattern in patterns:
        for path in REPO.glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts and path.name != ".stamp":
                files.add(path)
    return sorted(files)


def pack_context(files: list[Path], into: io.BufferedRandom) -> None:
    """A tar of `files` (paths relative to the repo) with fixed owners and times, so the same
    inputs give the same layer cache keys whatever their mtimes."""
    with tarfile.open(fileobj=into, mode="w") as tar:
        for path in files:
            info = tarfile.TarInfo(str(path.relative_to(REPO)))
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    into.seek(0)


def docker_build(client: docker.DockerClient, tag: str, dockerfile: str, files: list[Path],
                 buildargs: dict[str, str], verbose: bool, network: str = "none",
                 labels: dict[str, str] | None = None) -> str:
    """Build with the legacy builder. `network`: "none" for the offline builds; "host" only for
    Dockerfiles that apt-get Debian packages (works where dockerd has no bridge, too)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile(dir="/var/tmp") as ctx:
        pack_context(files, ctx)
        stream = client.api.build(fileobj=ctx, custom_context=True, dockerfile=dockerfile,
                                  tag=tag, buildargs=buildargs, labels=labels, network_mode=network,
                                  rm=True, forcerm=True,
                                  pull=False, decode=True)
        image_id, cached, steps = None, 0, 0
        for chunk in stream:
            if "error" in chunk:
                raise BuildError(f"building {tag} failed: {chunk['error'].strip().splitlines()[-1]}")
            line = chunk.get("stream", "")
            steps += line.startswith("Step ")
            cached += "Using cache" in line
            if verbose and line.strip():
                print(line.rstrip(), flush=True)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    image_id = image_id or client.images.get(tag).id
    log(f"{tag}: {image_id[:19]} in {time.monotonic() - t0:.1f} s ({cached} cached steps)")
    return image_id


def image_torch(python: PythonFacts, keep_base_torch: bool, base: Base) -> str:
    """The torch version the runtime image will run (its label); says when it is not the pin."""
    pin = pinned_torch()
    if not keep_base_torch:
        return pin
    if python.torch is None:
        raise BuildError(f"--keep-base-torch: {base.image} has no torch to keep; drop the option")
    if python.torch.split("+")[0] != pin:
        log(f"warning: keeping the base's torch {python.torch}, not torch=={pin} that everything "
            "is tested with (images/requirements.txt)")
    return python.torch


def prepare_base(client: docker.DockerClient, base: Base, tags: Tags, verbose: bool) -> str:
    """The tag runtime.Dockerfile builds FROM: the local base, or BASE_IMAGE completed."""
    if base.kind == "local":
        build_local_base(client, tags.base)
        return tags.base
    docker_build(client, tags.registry_base, "images/base.Dockerfile",
                 context_files(["images/base.Dockerfile"]), {"BASE_IMAGE": base.image}, verbose,
                 network="host")
    return tags.registry_base


def build_all(mode: str, base_image: str | None, verbose: bool, only_through: str = "prepare",
              tags: Tags = TAGS, keep_base_torch: bool = False, smoke: str = "auto", force_smoke: bool = False,
              debian: str | None = None) -> Base:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise BuildError(f"no Docker engine reachable ({exc.__class__.__name__}): start dockerd") from None
    base = choose_base(client, mode, base_image, tags.base)
    log(f"base: {base.image} [{base.kind}] because {base.why}")
    from_image = prepare_base(client, base, tags, verbose)
    python = probe_python(client, from_image)
    torch_version = image_torch(python, keep_base_torch, base)
    ensure_wheelhouse(wheel_requirements(keep_base_torch), python)
    docker_build(client, tags.runtime, "images/runtime.Dockerfile",
                 context_files(["images/runtime.Dockerfile", "images/requirements.txt",
                                "images/.wheelhouse/*"]),
                 {"BASE_IMAGE": from_image, "KEEP_BASE_TORCH": "1" if keep_base_torch else ""},
                 verbose, labels={LABEL_TORCH: torch_version, LABEL_BASE: base.image})
    if only_through == "runtime":
        log("no smoke test: it runs in the evaluator image (--through evaluator or prepare)")
        return base
    docker_build(client, tags.evaluator, "images/evaluator.Dockerfile",
                 context_files(["images/evaluator.Dockerfile", "evaluator/**/*.py",
                                "evaluator/**/*.json", "evaluator/**/*.txt"]),
                 {"RUNTIME_IMAGE": tags.runtime}, verbose)
    if only_through == "prepare":
        docker_build(client, tags.prepare, "images/prepare.Dockerfile",
                     context_files(["images/prepare.Dockerfile"]),
                     {"DEBIAN_IMAGE": debian_image(client, debian, tags.base),
                      "SUITE_PYTHON": SUITE_PYTHON, "EVALUATOR_IMAGE": tags.evaluator,
                      "STDLIB": python.stdlib}, verbose,
                     network="host")
    device = smoke_device(smoke)
    evaluator_id = client.images.get(tags.evaluator).id
    passed = SMOKE_STAMP.read_text().splitlines() if SMOKE_STAMP.exists() else []
    stamp = f"{evaluator_id} {device}"
    if stamp in passed and not force_smoke:
        log(f"smoke test: passed before for exactly this image ({evaluator_id[:19]}) on {device}")
        return base
    result = smoke_test(client, tags.evaluator, device)
    log(f"smoke test in {tags.evaluator}: torch {result.torch} on {result.device}: compile "
        f"{result.compile_s:.1f} s, export {result.export_s:.1f} s, load {result.load_s:.1f} s, "
        f"{result.wall_s:.1f} s in all")
    print(f"smoke_s: {result.wall_s:.1f}", flush=True)
    kept = [line for line in passed if line != stamp][-(SMOKE_STAMPS_KEPT - 1):]  # other prefixes' images too
    SMOKE_STAMP.write_text("".join(f"{line}\n" for line in [*kept, stamp]))
    return base


# ---------------------------------------------------------------------------------------------
# the smoke test


def smoke_device(smoke: str) -> str:
    if smoke != "auto":
        return smoke
    return "cuda" if host_has_nvidia_gpu() else "cpu"


def smoke_test(client: docker.DockerClient, image: str, device: str) -> SmokeResult:
    """Run images/smoke.py in `image`, locked down as a train container; raises BuildError."""
    gpu = 0 if device == "cuda" else None
    run_id = f"images-smoke-{secrets.token_hex(3)}"
    kwargs = specs.oneoff_config(image=image, name=run_id, command=["python", "-c", SMOKE_SCRIPT.read_text(), device],
                                 gpu=gpu, memory_gb=SMOKE_MEMORY_GB, labels={"overnight.smoke": "1"})
    log(f"smoke test in {image} on {device} (torch.compile, torch.export, the evaluator's loader) ...")
    t0 = time.monotonic()
    container = client.containers.create(**kwargs)
    try:
        try:
            container.start()
        except docker.errors.APIError as exc:
            why = str(exc.explanation or exc).splitlines()[0]
            if gpu is not None:
                raise BuildError(f"the smoke test could not get the GPU ({why}): install the NVIDIA "
                                 "container toolkit and restart dockerd, or pass --smoke cpu") from None
            raise BuildError(f"the smoke test container did not start: {why}") from None
        try:
            status = container.wait(timeout=SMOKE_TIMEOUT_S)
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError):
            raise BuildError(f"the smoke test in {image} ran past {SMOKE_TIMEOUT_S} s") from None
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    wall = time.monotonic() - t0
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if status.get("StatusCode") != 0 or not lines:
        tail = (lines[-1] if lines else f"exit code {status.get('StatusCode')}")[:400]
        raise BuildError(f"the smoke test failed in {image} on {device}: {tail}")
    return SmokeResult(**json.loads(lines[-1]), wall_s=wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", choices=["auto", "local", "registry"],
                        default=os.environ.get("OVERNIGHT_BASE", "auto"))
    parser.add_argument("--base-image", default=os.environ.get("BASE_IMAGE") or None,
                        help="a Debian or Ubuntu image from a registry to build on (BASE_IMAGE)")
    parser.add_argument("--keep-base-torch", action="store_true",
                        default=bool(os.environ.get("KEEP_BASE_TORCH")),
                        help="run the base image's own torch instead of the pinned one (KEEP_BASE_TORCH=1)")
    parser.add_argument("--debian-image", default=os.environ.get("DEBIAN_IMAGE") or None,
                        help="Debian bookworm image for the stdlib test-suite stage (DEBIAN_IMAGE)")
    parser.add_argument("--smoke", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the smoke test runs (auto: cuda when the host has an NVIDIA GPU)")
    parser.add_argument("--force-smoke", action="store_true",
                        help="run the smoke test even if it passed before for exactly this image")
    parser.add_argument("--through", choices=["runtime", "evaluator", "prepare"], default="prepare",
                        help="stop after this image")
    parser.add_argument("--prefix", default="overnight",
                        help="image names: PREFIX-base, PREFIX-runtime, PREFIX-evaluator, PREFIX-prepare")
    parser.add_argument("-v", "--verbose", action="store_true", help="show docker build output")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        tags = Tags.named(args.prefix)
        base = build_all(args.base, args.base_image, args.verbose, args.through, tags,
                         args.keep_base_torch, args.smoke, debian=args.debian_image,
                         force_smoke=args.force_smoke)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log(f"built the {base.kind} way (base {base.image}) in {time.monotonic() - t0:.0f} s: "
        f"{tags.runtime}, {tags.evaluator}" + (f", {tags.prepare}" if args.through == "prepare" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

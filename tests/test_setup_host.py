"""scripts/setup-host: from a fresh machine to a running engine, saying every command that changes
the machine; nothing at all on a ready machine; one line saying what to run when it cannot.

Most tests run the real script on a fake machine: a PATH holding only the basic tools it needs
plus stubs (apt-get, sudo, systemctl, dockerd, docker, nvidia-smi, id) that record how they were
called; the stub apt-get "installs" a package by putting its stub commands on that PATH. The tests
at the end run it for real: as an unprivileged user (setpriv), and against a second, separate
Docker engine that `make overnight` has to start (the shared engine is never stopped)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_support import host_venv

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "setup-host"
BASIC_TOOLS = (
    "bash",
    "sh",
    "env",
    "cat",
    "grep",
    "sed",
    "tail",
    "cut",
    "sleep",
    "timeout",
    "mktemp",
    "rm",
    "uname",
    "setsid",
    "nohup",
    "head",
    "tr",
    "touch",
    "cp",
)  # cp, touch: for the stubs
BASH = shutil.which("bash") or "/bin/bash"

# What the stub commands do. STATE is the fake machine's state directory, LOG the call record.
STUBS = {
    "docker": """case $1 in
  version) [ -e "$STATE/engine_up" ] && { echo 20.10.24; exit 0; }
           echo "Cannot connect to the Docker daemon at ${DOCKER_HOST:-unix:///var/run/docker.sock}" >&2; exit 1 ;;
  info) cat "$STATE/runtimes" 2>/dev/null || echo '{"runc":{"path":"runc"}}' ;;
  *) exit 1 ;;
esac""",
    "dockerd": """echo "dockerd starting: $*"
[ -e "$STATE/dockerd_fails" ] && { echo "failed to start daemon: boom"; exit 1; }
touch "$STATE/engine_up"; echo "API listen on ${2:-/var/run/docker.sock}" """,
    "docker-compose": 'echo "docker-compose version 1.29.2"',
    "debootstrap": "exit 0",
    "git": "exit 0",
    "make": "exit 0",
    "python3": '[ -e "$STATE/python3-venv" ]',
    "apt-get": """[ -e "$STATE/apt_fails" ] && { echo "E: Unable to locate package docker.io"; exit 100; }
case " $* " in *" install "*)
  for pkg in "$@"; do case $pkg in
    docker.io) cp "$PKGS/docker" "$PKGS/dockerd" "$BIN/" ;;
    docker-compose|debootstrap|git|make|python3) cp "$PKGS/$pkg" "$BIN/" ;;
    python3-venv) touch "$STATE/python3-venv" ;;
  esac; done ;;
esac""",
    "sudo": '[ "$1 $2" = "-n true" ] && exit 0; exec "$@"',
    "systemctl": """case $1 in
  is-system-running) cat "$STATE/systemd" 2>/dev/null || { echo offline; exit 1; } ;;
  start) touch "$STATE/engine_up" ;;
esac""",
    "nvidia-smi": (
        'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"; echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"'
    ),
    "id": '[ "$1" = -un ] && echo ada || echo "$UID_IS"',
    "uname": "echo Darwin",
}


class FakeHost:
    """A fake machine for the script: tools on PATH are chosen per test, calls are recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin, self.pkgs, self.state, self.sys = (root / d for d in ("bin", "pkgs", "state", "sys"))
        for d in (self.bin, self.pkgs, self.state, self.sys):
            d.mkdir()
        self.log = root / "calls.log"
        self.log.touch()
        for name in BASIC_TOOLS:
            os.symlink(shutil.which(name), self.sys / name)
        for name, body in STUBS.items():
            stub = self.pkgs / name
            stub.write_text(f'#!{BASH}\necho "{name} $*" >>"$LOG"\n{body}\n')
            stub.chmod(0o755)
        (root / "venv" / "bin").mkdir(parents=True)
        (root / "venv" / "bin" / "python").write_text("")
        (root / "venv" / "bin" / "python").chmod(0o755)
        self.uid = "0"

    def has(self, *names: str) -> FakeHost:
        for name in names:
            shutil.copy(self.pkgs / name, self.bin / name)
        return self

    def ready(self) -> FakeHost:
        """Everything installed and the engine running."""
        self.has("docker", "dockerd", "docker-compose", "debootstrap", "git", "make", "apt-get", "systemctl", "id")
        (self.state / "engine_up").touch()
        return self

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {
            "PATH": f"{self.bin}:{self.sys}",
            "LOG": str(self.log),
            "STATE": str(self.state),
            "PKGS": str(self.pkgs),
            "BIN": str(self.bin),
            "UID_IS": self.uid,
            "TMPDIR": str(self.root),
            "VENV": str(self.root / "venv"),
            "DOCKERD_LOG": str(self.root / "dockerd.log"),
            "DOCKER_HOST": f"unix://{self.root}/docker.sock",
            "DOCKERD_WAIT": "5",
        }
        base.update(env)
        base = {k: v for k, v in base.items() if v != ""}
        return subprocess.run(
            [BASH, str(SCRIPT), *args], capture_output=True, text=True, env=base, cwd=self.root, timeout=60, check=False
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def one_line(done: subprocess.CompletedProcess[str], said: str = "") -> str:
    """The script stopped with exactly one line on stderr; on stdout only what it ran first (`said`)."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == said
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("setup-host: ")
    return lines[0]


# --- a machine that is ready ---------------------------------------------------------------------


def test_a_ready_machine_changes_nothing_and_prints_nothing(host: FakeHost) -> None:
    done = host.ready().run()
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # One probe of the engine (and who am I); nothing installed, started or configured.
    assert [c for c in host.calls() if c != "id -u"] == ["docker version --format {{.Server.Version}}"]


# --- installing ----------------------------------------------------------------------------------


def test_installs_what_is_missing_with_apt_get_as_root_and_says_what_it_runs(host: FakeHost) -> None:
    host.has("apt-get", "id", "python3")
    done = host.run(VENV=str(host.root / "no-venv-yet"))
    assert done.returncode == 0, done.stderr
    wanted = "docker.io docker-compose debootstrap python3-venv git make"
    apt = [c for c in host.calls() if c.startswith("apt-get")]
    assert apt == ["apt-get -qq update", f"apt-get -qq install -y {wanted}"]
    out = done.stdout.splitlines()
    assert out[:3] == [
        f"setup-host: installing what is missing: {wanted}",
        "setup-host: running: env DEBIAN_FRONTEND=noninteractive apt-get -qq update",
        f"setup-host: running: env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y {wanted}",
    ]
    # ...then the engine it just installed is not running: it starts it, and says so.
    assert (
        f"setup-host: running: dockerd -H unix://{host.root}/docker.sock (in the background, log "
        f"{host.root}/dockerd.log)" in out
    )
    assert (
        out[-1]
        == f"setup-host: ready in {out[-1].split()[3]} s: Docker engine 20.10.24 at unix://{host.root}/docker.sock"
    )
    assert "sudo" not in done.stdout


def test_through_sudo_when_not_root(host: FakeHost) -> None:
    host.has("apt-get", "id", "sudo", "dockerd", "debootstrap", "git", "make")
    host.uid = "1000"
    done = host.run()
    assert done.returncode == 0, done.stderr
    calls = host.calls()
    install = next(c for c in calls if c.startswith("sudo ") and " install " in c)
    assert install.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y docker.io docker-compose")
    assert "setup-host: running: sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq update" in done.stdout
    assert any(c.startswith("sudo sh -c") and "dockerd -H" in c for c in calls)  # the engine, started as root
    assert f"setup-host: running: sudo dockerd -H unix://{host.root}/docker.sock" in done.stdout


def test_a_failed_install_stops_with_apt_gets_own_words_and_one_line_last(host: FakeHost) -> None:
    host.has("apt-get", "id")
    (host.state / "apt_fails").touch()
    done = host.run()
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "setup-host: running: env DEBIAN_FRONTEND=noninteractive apt-get -qq update"
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "E: Unable to locate package docker.io",
        "setup-host: apt-get update failed (its output is above): fix that, then run make again",
    ]


# --- when it cannot ------------------------------------------------------------------------------


def test_without_root_or_sudo_it_stops_at_once_with_one_line(host: FakeHost) -> None:
    host.has("apt-get", "id", "dockerd", "debootstrap", "git", "make")
    host.uid = "1000"
    t0 = time.monotonic()
    line = one_line(host.run())
    assert line == (
        "setup-host: docker.io docker-compose missing and installing needs root, which ada does not have "
        "here (no sudo): as root run `apt-get install -y docker.io docker-compose`, then run make again"
    )
    assert not any(c.startswith("apt-get") for c in host.calls())
    print(f"stopped after {time.monotonic() - t0:.2f} s")


def test_not_debian_or_ubuntu_stops_with_one_line(host: FakeHost) -> None:
    host.has("id", "docker-compose", "debootstrap", "git", "make")  # no apt-get: not a Debian-like system
    line = one_line(host.run())
    assert line.startswith("setup-host: cannot install docker.io on ")
    assert line.endswith(
        ": this script installs with apt-get (Debian, Ubuntu); install them with your package "
        "manager, then run make again"
    )


def test_not_linux_stops_with_one_line(host: FakeHost) -> None:
    host.has("id", "uname")
    line = one_line(host.run())
    assert line == (
        "setup-host: Darwin is not supported: the sandbox needs a Docker engine on Linux "
        "(a Debian or Ubuntu machine or VM)"
    )


def test_a_remote_engine_that_does_not_answer_is_not_started_here(host: FakeHost) -> None:
    host.ready()
    (host.state / "engine_up").unlink()
    line = one_line(host.run(DOCKER_HOST="tcp://10.0.0.9:2376"))
    assert line == (
        "setup-host: no Docker engine answers at tcp://10.0.0.9:2376: start it there, or unset "
        "DOCKER_HOST to use this machine's engine"
    )
    assert not any(c.startswith(("dockerd", "systemctl start")) for c in host.calls())


def test_an_engine_that_never_answers_stops_with_the_last_line_of_its_log(host: FakeHost) -> None:
    host.ready()
    (host.state / "engine_up").unlink()
    (host.state / "dockerd_fails").touch()
    sock, log = f"unix://{host.root}/docker.sock", f"{host.root}/dockerd.log"
    said = (
        f"setup-host: the Docker engine is not running at {sock}: starting it\n"
        f"setup-host: running: dockerd -H {sock} (in the background, log {log})\n"
    )
    line = one_line(host.run(DOCKERD_WAIT="1"), said)
    assert line == (
        f"setup-host: the Docker engine did not answer within 1 s: see {host.root}/dockerd.log "
        "(last: failed to start daemon: boom)"
    )


def test_a_gpu_host_without_the_nvidia_runtime_stops_with_one_line(host: FakeHost) -> None:
    host.ready().has("nvidia-smi")
    line = one_line(host.run())
    assert line.startswith(
        "setup-host: this host has 2 NVIDIA GPU(s) but the Docker engine has no nvidia runtime: "
        "install the NVIDIA container toolkit (https://docs.nvidia.com/"
    )
    assert line.endswith(
        "run `sudo nvidia-ctk runtime configure --runtime=docker` and restart the engine, "
        "or run on the CPU with PROFILE=cpu"
    )
    assert host.run("--profile", "cpu").returncode == 0  # a CPU night asked for explicitly needs no toolkit
    (host.state / "runtimes").write_text('{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}\n')
    done = host.run()
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# --- starting the engine ---------------------------------------------------------------------------


def test_starts_the_default_engine_through_systemd_when_systemd_runs(host: FakeHost) -> None:
    host.ready()
    (host.state / "engine_up").unlink()
    (host.state / "systemd").write_text("running\n")
    done = host.run(DOCKER_HOST="")  # the default socket
    assert done.returncode == 0, done.stderr
    assert "systemctl start docker" in host.calls()
    assert not any(c.startswith("dockerd") for c in host.calls())
    assert done.stdout.splitlines()[:2] == [
        "setup-host: the Docker engine is not running at unix:///var/run/docker.sock: starting it",
        "setup-host: running: systemctl start docker",
    ]


def test_starts_dockerd_on_the_docker_host_socket_with_dockerd_flags(host: FakeHost) -> None:
    host.ready()
    (host.state / "engine_up").unlink()
    sock = host.root / "second" / "docker.sock"
    flags = f"--data-root {host.root}/second/root --exec-root {host.root}/second/exec --bridge=none"
    done = host.run(DOCKER_HOST=f"unix://{sock}", DOCKERD_FLAGS=flags)
    assert done.returncode == 0, done.stderr
    assert f"dockerd -H unix://{sock} {flags}" in host.calls()
    assert f"dockerd starting: -H unix://{sock} {flags}" in (host.root / "dockerd.log").read_text()


def test_usage_errors_are_one_line(host: FakeHost) -> None:
    assert one_line(host.run("--frobnicate")) == (
        "setup-host: unknown argument --frobnicate (usage: scripts/setup-host [--profile gpu|cpu|test])"
    )


# --- for real ------------------------------------------------------------------------------------


def as_nobody(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        check=False,
        env={**os.environ, "HOME": "/tmp", **(env or {})},
    )


def test_an_unprivileged_user_with_no_engine_is_told_what_to_run_within_seconds() -> None:
    """No root, no sudo, no engine on its socket: it can neither start one nor wait for one."""
    empty = Path(tempfile.mkdtemp(prefix="setup-host-"))
    empty.chmod(0o755)
    try:
        t0 = time.monotonic()
        done = as_nobody(str(SCRIPT), env={"DOCKER_HOST": f"unix://{empty}/docker.sock"})
        took = time.monotonic() - t0
    finally:
        shutil.rmtree(empty)
    line = one_line(done)
    print(f"unprivileged, no engine: stopped after {took:.2f} s: {line}")
    assert line.startswith(
        f"setup-host: the Docker engine is not running (nothing answers at unix://{empty}/"
        "docker.sock) and starting it needs root, which nobody does not have here"
    )
    assert line.endswith(
        f"as root run `dockerd -H unix://{empty}/docker.sock >>/var/log/dockerd.log 2>&1 &`, then run make again"
    )


def test_a_user_without_permission_on_the_docker_socket_is_told_to_join_the_docker_group() -> None:
    socket = Path("/var/run/docker.sock")
    if not socket.is_socket() or socket.stat().st_mode & 0o002:
        pytest.skip("needs the engine's socket, closed to other users")
    line = one_line(as_nobody(str(SCRIPT), env={"DOCKER_HOST": ""}))
    assert line.startswith("setup-host: nobody may not use the Docker socket /var/run/docker.sock: ")
    assert "usermod -aG docker nobody`, log out and in again, then run make again" in line


# --- the first night on a machine whose engine is stopped ------------------------------------------

# Its own bridge, never `--bridge=none`: an engine started with none deletes the docker0 interface
# of the network namespace it runs in, which is the shared engine's.
SECOND_BRIDGE = "ovn2br0"
SECOND_ENGINE_FLAGS = (
    "--data-root {d}/root --exec-root {d}/exec --pidfile {d}/docker.pid --config-file {d}/daemon.json "
    f"--bridge={SECOND_BRIDGE} --iptables=false --ip-masq=false --ip-forward=false "
    "--default-address-pool base=10.213.0.0/16,size=24"
)
LOCAL_BASE = "overnight-base:bookworm"
IMAGES = (LOCAL_BASE, "overnight-runtime:latest", "overnight-evaluator:latest", "overnight-prepare:latest")


class SecondEngine:
    """A second Docker engine of its own (socket, data, exec root, pid file; no bridge, no iptables
    rules), which the test starts and stops; the shared engine is never touched but to read images."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "daemon.json").write_text("{}\n")
        subprocess.run(["ip", "link", "delete", SECOND_BRIDGE], capture_output=True, check=False)  # a leftover
        for cmd in (
            ["ip", "link", "add", SECOND_BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", "10.213.254.1/24", "dev", SECOND_BRIDGE],
            ["ip", "link", "set", SECOND_BRIDGE, "up"],
        ):
            subprocess.run(cmd, capture_output=True, check=True)
        self.host = f"unix://{root}/docker.sock"
        self.env = {
            "DOCKER_HOST": self.host,
            "DOCKERD_FLAGS": SECOND_ENGINE_FLAGS.format(d=root),
            "DOCKERD_LOG": str(root / "dockerd.log"),
        }
        self.pidfile = root / "docker.pid"

    def docker(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )

    def answers(self) -> bool:
        return self.docker("version", "--format", "{{.Server.Version}}").returncode == 0

    def stop(self) -> None:
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Containers, networks, the daemon, its containerd, its mounts, its files: nothing stays."""
        if self.answers():
            ids = self.docker("ps", "-aq").stdout.split()
            if ids:
                self.docker("rm", "-f", *ids)
            self.docker("network", "prune", "-f")
        self.stop()
        mine = subprocess.run(
            ["pgrep", "-f", str(self.root)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in mine:  # only processes whose command line names this engine's own directory
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", SECOND_BRIDGE], capture_output=True, check=False)


@pytest.fixture
def second_engine() -> Iterator[SecondEngine]:
    if (
        os.geteuid() != 0
        or shutil.which("dockerd") is None
        or shutil.which("docker") is None
        or shutil.which("ip") is None
    ):
        pytest.skip("needs root, dockerd and ip (iproute2) to run a second engine")
    engine = SecondEngine(Path(tempfile.mkdtemp(prefix="ovn2-", dir="/tmp")))  # short: socket paths are capped
    try:
        yield engine
    finally:
        engine.remove()
    assert not engine.root.exists()


def image_family(shared) -> list[str]:
    """The local base and every image built on it (the three images, their build steps, the
    prepare image's stdlib stage), ids with their parent links, so builds on the second engine
    find them in the layer cache instead of building again."""
    base = shared.images.get(LOCAL_BASE).id
    parent = {img["Id"]: img.get("ParentId") or "" for img in shared.api.images(all=True)}

    def descends(image_id: str) -> bool:
        while image_id:
            if image_id == base:
                return True
            image_id = parent.get(image_id, "")
        return False

    return [image_id for image_id in parent if descends(image_id)]


def copy_checkout(dest: Path) -> Path:
    """This checkout's files (tracked and new, as they are now) as a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if (REPO_ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, dest / rel)
    wheelhouse = REPO_ROOT / "images" / ".wheelhouse"
    if wheelhouse.is_dir():  # the wheels the shared images were built from (else build.py downloads them)
        shutil.copytree(wheelhouse, dest / "images" / ".wheelhouse", copy_function=os.link)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "checkout"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_first_make_overnight_starts_a_stopped_engine_and_reaches_the_baseline(second_engine: SecondEngine) -> None:
    """Deselect with -m 'not slow' (about 5 minutes on 2 cores, most of it copying the images)."""
    import docker

    shared = docker.from_env()
    try:
        for ref in IMAGES:
            shared.images.get(ref)
        family = image_family(shared)
    except docker.errors.ImageNotFound:
        pytest.skip("the shared engine has no locally based images: make images")
    root = second_engine.root
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OVERNIGHT_") and k not in ("ANTHROPIC_API_KEY", "BASE_IMAGE")
    }
    env.update(second_engine.env)
    timings: dict[str, float] = {}

    # The script starts an engine that is not running (and says so) ...
    assert not second_engine.answers()
    t0 = time.monotonic()
    done = subprocess.run(
        [str(SCRIPT), "--profile", "test"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    timings["setup-host starts the engine"] = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"setup-host: the Docker engine is not running at {second_engine.host}: starting it" in done.stdout
    assert second_engine.answers()

    # ... the images come from the shared engine rather than a rebuild ...
    t0 = time.monotonic()
    saved = subprocess.Popen(["docker", "save", *IMAGES, *family], stdout=subprocess.PIPE)
    try:
        loaded = second_engine.docker("load", "-q", stdin=saved.stdout, timeout=1200)
    finally:
        saved.stdout.close()
        if saved.poll() is None:
            saved.kill()
    assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
    timings[f"copying {len(family)} images into it"] = time.monotonic() - t0

    # ... and it is stopped again: the first `make overnight` finds no engine running.
    second_engine.stop()
    assert not second_engine.answers()
    repo = copy_checkout(root / "repo")
    venv = host_venv(root / "venv")
    t0 = time.monotonic()
    night = subprocess.Popen(
        ["make", "overnight", "PROFILE=test", "MAX_EXPERIMENTS=0", "TAG=first", f"VENV={venv}"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    timed = [f"{time.monotonic() - t0:6.1f} s  {line.rstrip()}" for line in night.stdout]  # when each line came
    night.wait()
    timings["make overnight, engine stopped, to the baseline"] = time.monotonic() - t0
    out = "\n".join(line[10:] for line in timed)
    assert night.returncode == 0, out[-4000:]
    assert f"setup-host: the Docker engine is not running at {second_engine.host}: starting it" in out
    assert "overnight-base:bookworm exists: skipping debootstrap" in out
    runtime = next(line for line in out.splitlines() if line.startswith("[images] overnight-runtime:latest:"))
    assert not runtime.endswith("(0 cached steps)"), runtime  # the copied images were the layer cache
    rows = (repo / "runs" / "first" / "results.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    _, val_bpb, _, status, description = rows[1].split("\t")[:5]
    assert (status, description) == ("keep", "baseline") and 0 < float(val_bpb) < 10
    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")
    print("\n".join(timed))

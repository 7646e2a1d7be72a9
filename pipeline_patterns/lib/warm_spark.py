"""The warm local Spark Connect server shared by the runs of a `dagster dev` (pattern: swappable
infrastructure); as a program (`python -m pipeline_patterns.lib.warm_spark`) the watchdog that owns
its JVM and stops it when idle or when `dagster dev` is gone. Linux only. docs/configuration.md."""

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

STATE, START_LOCK, IN_USE_LOCK, LOG = "server.json", "start.lock", "in_use.lock", "server.log"
# Set on the watchdog, the JVM and the JVM's Python workers: marks every process of one server.
MARKER_VAR = "PIPELINE_PATTERNS_WARM_SPARK_DIR"
IDLE_TIMEOUT_S = 15 * 60
START_TIMEOUT_S = 180
POLL_S = 1.0
PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class Proc:
    """A process by pid and start time (clock ticks since boot): a reused pid is another process."""

    pid: int
    start: int


def process(pid: int) -> Proc | None:
    """The live process `pid` (None if gone or a zombie), from /proc/<pid>/stat."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, start 22
    return None if fields[0] in ("Z", "X") else Proc(pid, int(fields[19]))


def alive(proc: Proc) -> bool:
    return process(proc.pid) == proc


def parent_pid(pid: int) -> int:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def is_dev_cli(argv: Sequence[str]) -> bool:
    """Whether a command line is `dagster dev` (as `dagster dev`, `python .../dagster dev`, `python -m dagster dev`)."""
    return any(os.path.basename(arg) == "dagster" and argv[i + 1 : i + 2] == ["dev"] for i, arg in enumerate(argv))


def dev_cli_process(pid: int | None = None) -> Proc | None:
    """The `dagster dev` process this process descends from (run worker <- code server <- dagster dev), if any."""
    pid = os.getpid() if pid is None else pid
    while pid > 1:
        with contextlib.suppress(FileNotFoundError):
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if is_dev_cli(argv):
                return process(pid)
        try:
            pid = parent_pid(pid)
        except FileNotFoundError:
            return None
    return None


@dataclasses.dataclass(frozen=True)
class ServerState:
    """What the watchdog writes once it has started the JVM: where to connect, whom to watch."""

    port: int
    jvm: Proc
    watchdog: Proc

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def session_id(state: ServerState, code_dir: pathlib.Path) -> str:
    """The Spark Connect session that every run of one server and one version of the code shares:
    Spark starts Python workers per session (~2 s a run otherwise), and a code change gets a new
    session, so no reused worker runs old code."""
    files = sorted(code_dir.rglob("*.py"))
    code = [f"{f.relative_to(code_dir)}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in files]
    digest = hashlib.sha256(json.dumps([state.port, dataclasses.asdict(state.jvm), code]).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def parse_state(text: str) -> ServerState | None:
    """The state file's content, or None when it is not a complete state (absent, partial, foreign)."""
    try:
        raw = json.loads(text)
        return ServerState(int(raw["port"]), Proc(**raw["jvm"]), Proc(**raw["watchdog"]))
    except (ValueError, KeyError, TypeError):
        return None


def read_state(state_dir: pathlib.Path) -> ServerState | None:
    try:
        return parse_state((state_dir / STATE).read_text())
    except FileNotFoundError:
        return None


def stop_reason(
    *, now: float, last_busy: float, idle_timeout_s: float, in_use: bool, watched_alive: bool
) -> str | None:
    """Why the watchdog stops the server now, or None to keep it."""
    if not watched_alive:
        return "the dagster dev process it served has stopped"
    if in_use:
        return None
    if now - last_busy >= idle_timeout_s:
        return f"no run used it for {idle_timeout_s:.0f} s"
    return None


def server_command(spark_home: pathlib.Path, port: int, settings: Mapping[str, str]) -> list[str]:
    """The wheel's Spark Connect server on 127.0.0.1:`port`, with `settings` as its `--conf`s."""
    confs = {
        **settings,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    command = [
        str(spark_home / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
    ]
    for key, value in confs.items():
        command += ["--conf", f"{key}={value}"]
    return command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def locked(path: pathlib.Path, mode: int = fcntl.LOCK_EX) -> Iterator[IO[str]]:
    with path.open("a") as handle:
        fcntl.flock(handle, mode)
        yield handle


@dataclasses.dataclass
class Lease:
    """A run's hold on the server: a shared lock the watchdog reads as "in use" (released by the
    kernel if the run's process dies)."""

    state: ServerState
    log: pathlib.Path
    handle: IO[str]

    def release(self) -> None:
        self.handle.close()


def acquire(
    state_dir: pathlib.Path,
    command: Callable[[int], list[str]],
    *,
    watch: Proc | None,
    env: Mapping[str, str],
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Lease:
    """The running server of `state_dir`, or a new one (`command(port)` with `env` added, owned by a
    new watchdog); one starter at a time (a file lock), so concurrent first runs start one server."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with locked(state_dir / START_LOCK):
        state = read_state(state_dir)
        if not (state and alive(state.jvm) and alive(state.watchdog) and accepting(state.port)):
            state = start(state_dir, command, watch=watch, env=env, idle_timeout_s=idle_timeout_s)
        handle = (state_dir / IN_USE_LOCK).open("a")
        fcntl.flock(handle, fcntl.LOCK_SH)
    return Lease(state, state_dir / LOG, handle)


def start(
    state_dir: pathlib.Path,
    command: Callable[[int], list[str]],
    *,
    watch: Proc | None,
    env: Mapping[str, str],
    idle_timeout_s: float,
) -> ServerState:
    """Start a watchdog (a new program, in a session of its own) and wait until its JVM listens."""
    (state_dir / STATE).unlink(missing_ok=True)
    port = free_port()
    args = [sys.executable, "-m", __name__, "--dir", str(state_dir), "--port", str(port)]
    args += ["--idle-timeout", str(idle_timeout_s)]
    if watch:
        args += ["--watch", f"{watch.pid}:{watch.start}"]
    log = state_dir / LOG
    with log.open("a") as out:
        watchdog = subprocess.Popen(
            [*args, "--", *command(port)],
            env={**os.environ, **env, MARKER_VAR: str(state_dir)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        state = read_state(state_dir)
        if state and state.watchdog.pid == watchdog.pid and accepting(port):
            return state
        if watchdog.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watchdog.pid, signal.SIGTERM)
            raise RuntimeError(
                f"The local Spark Connect server did not start within {START_TIMEOUT_S} s (watchdog exit code "
                f"{watchdog.poll()}). Its log, {log}, ends with:\n{log.read_text()[-3000:]}\nFix what it reports "
                "(Java 17+ on the PATH, memory), or set PIPELINE_PATTERNS_SPARK_MASTER=local[*] to run Spark "
                "inside each run instead."
            )
        time.sleep(0.2)


def _die_with_parent() -> None:
    """In the JVM's process before exec: the kernel KILLs it when the watchdog dies, however."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def in_use(path: pathlib.Path) -> bool:
    """Whether a run holds a lease (a shared lock blocks this exclusive probe)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def watchdog(argv: Sequence[str] | None = None) -> int:
    """Own the JVM; stop it when the watched process is gone or the server has been idle."""
    parser = argparse.ArgumentParser(description="the warm Spark Connect server's watchdog")
    parser.add_argument("--dir", type=pathlib.Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S)
    parser.add_argument("--watch", help="PID:START of the process whose end stops the server")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    state_dir: pathlib.Path = args.dir
    watched = Proc(*map(int, args.watch.split(":"))) if args.watch else None
    me = process(os.getpid())
    assert me is not None

    def say(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog {os.getpid()}: {message}", flush=True)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"signal {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    jvm = subprocess.Popen(args.command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    reason = "the watchdog failed"
    try:
        jvm_proc = process(jvm.pid)
        assert jvm_proc is not None, "the JVM exited at once"
        state = ServerState(args.port, jvm_proc, me)
        temporary = state_dir / f"{STATE}.{os.getpid()}"
        temporary.write_text(state.to_json())
        temporary.replace(state_dir / STATE)
        say(f"started the Spark Connect server, pid {jvm.pid}, on 127.0.0.1:{args.port}")
        last_busy = time.monotonic()
        while True:
            time.sleep(POLL_S)
            if jvm.poll() is not None:
                reason = f"the server's JVM exited with code {jvm.returncode}"
                return 1
            now, busy = time.monotonic(), in_use(state_dir / IN_USE_LOCK)
            last_busy = now if busy else last_busy
            check = {"now": now, "last_busy": last_busy, "idle_timeout_s": args.idle_timeout}
            verdict = stop_reason(**check, in_use=busy, watched_alive=watched is None or alive(watched))
            if verdict:
                # under the start lock, so no run connects while the server stops
                with locked(state_dir / START_LOCK):
                    busy = in_use(state_dir / IN_USE_LOCK)
                    again = stop_reason(**check, in_use=busy, watched_alive=watched is None or alive(watched))
                    if again:
                        reason = again
                        _clear_state(state_dir, me)
                        _terminate(jvm)
                        return 0
    except SystemExit as signalled:
        reason = str(signalled.code)
        return 0
    finally:
        _clear_state(state_dir, me)
        _terminate(jvm)
        say(f"stopped the server: {reason}")


def _clear_state(state_dir: pathlib.Path, me: Proc) -> None:
    state = read_state(state_dir)
    if state and state.watchdog == me:
        (state_dir / STATE).unlink(missing_ok=True)


def _terminate(jvm: subprocess.Popen) -> None:
    if jvm.poll() is None:
        jvm.terminate()
        try:
            jvm.wait(timeout=15)
        except subprocess.TimeoutExpired:
            jvm.kill()
            jvm.wait()


if __name__ == "__main__":
    sys.exit(watchdog())

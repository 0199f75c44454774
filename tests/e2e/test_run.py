"""`pyshim run` as a real subprocess (root, runc, /bin/busybox; no containerd needed): the demo,
exact stdout/stderr/exit status, stdin relayed, exit statuses of killed containers, signal
forwarding, --bundle, and clear 125 errors for bad input.

Each run goes through tests/e2e/subreaper.py: `pyshim run` is a subreaper itself, so whatever
it leaves behind is re-parented to the wrapper, which exits only once no process is left below
it. A wrapper that does not exit in time therefore means a leaked process (listed in the
failure). After each run: no runc state of the container in pyshim run's private runc root, no
cgroup of it, and the TMPDIR given to `pyshim run` is empty again (generated bundle removed).

The container's init is PID 1 of its own PID namespace: the kernel drops signals it has no
handler for when they come from inside the container, SIGKILL included (`sh -c 'kill -9 $$'`
exits 0 there), so the "killed from inside" test uses a bundle without a PID namespace.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from pyshim.run import NAMESPACE, RUNC_ROOT, runc_state_dir
from tests import cri_log_reader
from tests.e2e.conftest import REPO, require_e2e, unique_id
from tests.e2e.containerd import SUBREAPER, make_busybox_rootfs

GREETING = "Hello from a busybox container under pyshim!"
#: A run (container and clean-up included) must be over by then.
RUN_TIMEOUT = 60.0


def require_run() -> None:
    require_e2e(("runc",), ("/bin/busybox",))


def pyshim_command() -> list[str]:
    script = REPO / ".venv" / "bin" / "pyshim"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pyshim.main"]


@dataclass
class Finished:
    status: int
    stdout: str
    stderr: str


class PyshimRun:
    """`pyshim ARGS` below the subreaper wrapper (--parent: us), with its own TMPDIR."""

    def __init__(
        self,
        args: list[str],
        tmpdir: Path,
        *,
        container_ids: tuple[str, ...] = (),
        stdin: int = subprocess.DEVNULL,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.container_ids = container_ids
        self.tmpdir = tmpdir
        tmpdir.mkdir(exist_ok=True)
        self._early = b""
        self.process = subprocess.Popen(
            [sys.executable, str(SUBREAPER), "--parent", str(os.getpid()), "--",
             *prefix, *pyshim_command(), *args],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )

    def pyshim(self) -> psutil.Process:
        """The `pyshim` process: the wrapper's only direct child while it runs."""
        wrapper = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = wrapper.children()
            if children:
                assert len(children) == 1, children
                return children[0]
            time.sleep(0.02)
        raise AssertionError("pyshim run did not start")

    def wait_for_line(self, line: str, timeout: float = 20.0) -> None:
        """Read stdout until `line` was printed (the rest stays for finish())."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while line.encode() + b"\n" not in self._early:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line {line!r} on stdout; got {self._early!r}")
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"stdout closed before {line!r}; got {self._early!r}")
            self._early += data

    def finish(self, stdin: bytes | None = None) -> Finished:
        """Wait for the wrapper (so: for every process below it), then check the leftovers."""
        try:
            stdout, stderr = self.process.communicate(stdin, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            left = _below(self.process.pid)
            _kill_below(self.process.pid)
            stdout, stderr = self.process.communicate(timeout=30)
            raise AssertionError(
                f"pyshim run or processes it left did not exit in {RUN_TIMEOUT} s: {left}\n"
                f"stdout: {stdout!r}\nstderr: {stderr!r}"
            ) from None
        finished = Finished(
            self.process.returncode, (self._early + stdout).decode(errors="replace"),
            stderr.decode(errors="replace"),
        )
        assert_clean(self.container_ids, self.tmpdir)
        return finished


def _below(pid: int) -> list[str]:
    try:
        processes = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline())!r}")
    return described


def _kill_below(pid: int) -> None:
    """SIGKILL every process below the wrapper (by PID; the wrapper then exits)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def assert_clean(container_ids: tuple[str, ...], tmpdir: Path) -> None:
    for container_id in container_ids:
        state = runc_state_dir(container_id)
        assert not os.path.lexists(state), f"runc state left: {state}"
        cgroups = glob.glob(f"/sys/fs/cgroup/*/{container_id}")
        assert not cgroups, f"cgroups left: {cgroups}"
    assert not list(tmpdir.iterdir()), f"left in pyshim run's TMPDIR: {list(tmpdir.iterdir())}"


def run(
    args: list[str], tmp_path: Path, container_id: str | None = None, stdin: bytes | None = None
) -> Finished:
    """`pyshim run [--id ID] ARGS` to completion."""
    ids = (container_id,) if container_id else ()
    run_args = ["run", *(["--id", container_id] if container_id else []), *args]
    process = PyshimRun(
        run_args, tmp_path / "tmp", container_ids=ids,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
    )
    return process.finish(stdin)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    require_run()
    return make_busybox_rootfs(tmp_path / "rootfs")


def make_bundle(
    directory: Path, rootfs: Path, args: list[str], *, pid_namespace: bool = True
) -> Path:
    """An OCI bundle made independently of pyshim: `runc spec` plus root, args, no terminal."""
    directory.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(directory)], check=True)
    config = directory / "config.json"
    spec = json.loads(config.read_text())
    spec["root"] = {"path": str(rootfs), "readonly": False}
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    if not pid_namespace:
        spec["linux"]["namespaces"] = [
            entry for entry in spec["linux"]["namespaces"] if entry["type"] != "pid"
        ]
    config.write_text(json.dumps(spec))
    return directory


# ------------------------------------------------------------------------------- tests


def _demo_ids() -> set[str]:
    """Demo containers (random ids) in pyshim run's runc root."""
    try:
        names = os.listdir(os.path.join(RUNC_ROOT, NAMESPACE))
    except FileNotFoundError:
        return set()
    return {name for name in names if name.startswith("pyshim-demo-")}


@pytest.mark.parametrize("words", [[], ["run"]], ids=["pyshim", "pyshim-run"])
def test_demo_prints_greeting(tmp_path: Path, words: list[str]) -> None:
    require_run()
    before = _demo_ids()
    finished = PyshimRun(words, tmp_path / "tmp").finish()
    assert finished.status == 0, finished
    assert GREETING in finished.stdout
    assert "hostname: pyshim" in finished.stdout
    assert "uid=0" in finished.stdout
    assert finished.stderr == ""
    assert _demo_ids() <= before


def test_stdout_stderr_and_exit_code(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-io")
    finished = run(["--rootfs", str(rootfs), "--", "/bin/sh", "-c",
                    "echo out; echo err >&2; exit 3"], tmp_path, container_id)
    assert (finished.status, finished.stdout, finished.stderr) == (3, "out\n", "err\n")


def test_stdin_is_relayed(tmp_path: Path, rootfs: Path) -> None:
    # Large enough to need back-pressure through both relays (pipes hold 64 KiB).
    data = b"".join(b"line %d of the input\n" % index for index in range(100_000))
    container_id = unique_id("run-cat")
    finished = run(["--rootfs", str(rootfs), "--", "/bin/cat"], tmp_path, container_id,
                   stdin=data)
    assert finished.status == 0, finished.stderr
    assert finished.stdout.encode() == data
    assert finished.stderr == ""


def test_closed_stdout(tmp_path: Path, rootfs: Path) -> None:
    # Our fd 1 closed: the container's stdout goes nowhere, its stderr and status still count
    # (no pipe of ours may take the free number 1).
    container_id = unique_id("run-closed")
    finished = PyshimRun(
        ["run", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         "echo lost; echo kept >&2; exit 4"],
        tmp_path / "tmp", container_ids=(container_id,),
        prefix=("/bin/sh", "-c", 'exec "$@" >&-', "sh"),
    ).finish()
    assert (finished.status, finished.stdout, finished.stderr) == (4, "", "kept\n")


def test_env_cwd_hostname_and_verbose(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-env")
    finished = run(["--verbose", "--rootfs", str(rootfs), "--env", "GREETING=hi there",
                    "--cwd", "/bin", "--", "/bin/sh", "-c",
                    'echo "$GREETING"; echo "$PATH"; pwd; hostname; exit 7'],
                   tmp_path, container_id)
    assert finished.status == 7
    assert finished.stdout.splitlines() == [
        "hi there", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "/bin",
        "pyshim",
    ]
    assert finished.stderr == f"pyshim run: container {container_id} exited with status 7\n"


def test_killed_from_inside_gives_137(tmp_path: Path, rootfs: Path) -> None:
    # Without a PID namespace of its own the init is an ordinary process: SIGKILL works.
    bundle = make_bundle(tmp_path / "bundle", rootfs, ["/bin/sh", "-c", "kill -9 $$"],
                         pid_namespace=False)
    container_id = unique_id("run-kill9")
    finished = run(["--bundle", str(bundle)], tmp_path, container_id)
    assert finished.status == 137, finished


def test_killed_from_outside_gives_137(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-sigkill")
    process = PyshimRun(
        ["run", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         "echo ready; while true; do sleep 0.1; done"],
        tmp_path / "tmp", container_ids=(container_id,),
    )
    process.wait_for_line("ready")
    with open(os.path.join(runc_state_dir(container_id), "state.json"), encoding="utf-8") as f:
        init_pid = json.load(f)["init_process_pid"]
    assert psutil.Process(init_pid).ppid() == process.pyshim().pid  # re-parented to pyshim
    os.kill(init_pid, signal.SIGKILL)
    finished = process.finish()
    assert (finished.status, finished.stdout, finished.stderr) == (137, "ready\n", "")


def test_sigterm_is_forwarded(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-term")
    process = PyshimRun(
        ["run", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         'trap "exit 42" TERM; echo ready; while true; do sleep 0.1; done'],
        tmp_path / "tmp", container_ids=(container_id,),
    )
    process.wait_for_line("ready")
    process.pyshim().send_signal(signal.SIGTERM)
    finished = process.finish()
    assert (finished.status, finished.stdout, finished.stderr) == (42, "ready\n", "")


def test_second_signal_kills(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-int")
    process = PyshimRun(
        ["run", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         'trap "" INT TERM; echo ready; while true; do sleep 0.1; done'],
        tmp_path / "tmp", container_ids=(container_id,),
    )
    process.wait_for_line("ready")
    pyshim = process.pyshim()
    pyshim.send_signal(signal.SIGINT)  # ignored by the container
    time.sleep(0.5)
    assert pyshim.is_running()
    pyshim.send_signal(signal.SIGINT)
    finished = process.finish()
    assert finished.status == 137, finished
    assert finished.stderr == f"pyshim run: killing container {container_id}\n"


def test_bundle(tmp_path: Path, rootfs: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", rootfs,
                         ["/bin/sh", "-c", "echo from the bundle; hostname; exit 5"])
    container_id = unique_id("run-bundle")
    finished = run(["--bundle", str(bundle)], tmp_path, container_id)
    assert (finished.status, finished.stdout, finished.stderr) == (
        5, "from the bundle\nrunc\n", ""
    )
    assert sorted(path.name for path in bundle.iterdir()) == ["config.json"]


def test_id_in_use(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-twice")
    first = PyshimRun(
        ["run", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         'trap "exit 0" TERM; echo ready; while true; do sleep 0.1; done'],
        tmp_path / "tmp1", container_ids=(container_id,),
    )
    try:
        first.wait_for_line("ready")
        # No state check for this one: the state it finds is the first one's.
        second = PyshimRun(["run", "--id", container_id, "--rootfs", str(rootfs), "--",
                            "/bin/true"], tmp_path / "tmp2").finish()
    finally:
        first.pyshim().send_signal(signal.SIGTERM)
        assert first.finish().status == 0
    assert second.status == 125
    assert second.stderr == (f"pyshim run: container id {container_id} is already in use "
                             f"(runc state {runc_state_dir(container_id)} exists)\n")


def test_missing_rootfs(tmp_path: Path) -> None:
    require_run()
    missing = tmp_path / "no-such-rootfs"
    finished = run(["--rootfs", str(missing), "--", "/bin/sh"], tmp_path)
    assert finished.status == 125
    assert finished.stderr == f"pyshim run: rootfs {missing} does not exist\n"
    assert finished.stdout == ""


def test_bundle_without_config(tmp_path: Path) -> None:
    require_run()
    bundle = tmp_path / "empty-bundle"
    bundle.mkdir()
    finished = run(["--bundle", str(bundle)], tmp_path)
    assert finished.status == 125
    assert str(bundle / "config.json") in finished.stderr
    assert finished.stderr.startswith("pyshim run: ") and finished.stderr.count("\n") == 1


def test_command_not_found(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-nocmd")
    finished = run(["--rootfs", str(rootfs), "--", "no-such-command"], tmp_path, container_id)
    assert finished.status == 127
    assert "no-such-command" in finished.stderr and "not found" in finished.stderr
    assert finished.stderr.count("\n") == 1


def test_runc_missing(tmp_path: Path, rootfs: Path) -> None:
    container_id = unique_id("run-norunc")
    finished = run(["--runc", "/no/such/runc", "--rootfs", str(rootfs), "--", "/bin/true"],
                   tmp_path, container_id)
    assert finished.status == 125
    assert "/no/such/runc" in finished.stderr and finished.stderr.count("\n") == 1


def test_help(tmp_path: Path) -> None:
    require_run()
    finished = PyshimRun(["run", "--help"], tmp_path / "tmp").finish()
    assert finished.status == 0
    assert "--rootfs DIR -- CMD" in finished.stdout


# ------------------------------------------------------------------------- --log-path


def test_log_path_writes_cri_log_and_still_shows_output(tmp_path: Path, rootfs: Path) -> None:
    log_path = tmp_path / "logs" / "c.log"
    log_path.parent.mkdir()
    container_id = unique_id("run-log")
    script = ("echo out-1; echo err-1 >&2; printf 'no newline'; sleep 0.1; printf ' end\\n'; "
              "head -c 40000 /dev/zero | tr '\\0' L; echo; printf tail")
    finished = run(["--log-path", str(log_path), "--rootfs", str(rootfs), "--", "/bin/sh",
                    "-c", script], tmp_path, container_id)
    assert finished.status == 0, finished.stderr
    stdout = "out-1\nno newline end\n" + "L" * 40000 + "\ntail"
    assert (finished.stdout, finished.stderr) == (stdout, "err-1\n")
    records = cri_log_reader.read(log_path)
    assert cri_log_reader.streams(records) == {"stdout": stdout.encode(), "stderr": b"err-1\n"}
    lines = log_path.read_bytes().split(b"\n")
    assert lines[0].endswith(b" stdout F out-1"), lines[0]
    # Lines are reassembled across writes; the 40000-byte line is cut into 16 KiB P parts;
    # the last line without a newline ends as a P record.
    shapes = [(record.stream, record.partial, len(record.content)) for record in records]
    assert ("stdout", False, len("no newline end\n")) in shapes
    assert [size for stream, partial, size in shapes if partial and size == 16384] == [16384] * 2
    assert shapes[-1] == ("stdout", True, 4)


def test_log_path_size_cap_keeps_the_newest_records(tmp_path: Path, rootfs: Path) -> None:
    log_path = tmp_path / "capped.log"
    finished = run(["--log-path", str(log_path), "--log-size-max", "400", "--rootfs",
                    str(rootfs), "--", "/bin/sh", "-c",
                    "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line-$i; sleep 0.01; done"],
                   tmp_path, unique_id("run-cap"))
    assert finished.status == 0, finished.stderr
    assert finished.stdout.count("line-") == 12
    assert 0 < log_path.stat().st_size <= 400
    contents = [record.content for record in cri_log_reader.read(log_path)]
    assert contents[-1] == b"line-12\n"
    assert b"line-1\n" not in contents


def test_log_path_in_a_missing_directory_is_refused(tmp_path: Path, rootfs: Path) -> None:
    missing = tmp_path / "nowhere" / "c.log"
    finished = run(["--log-path", str(missing), "--rootfs", str(rootfs), "--", "/bin/true"],
                   tmp_path)
    assert finished.status == 125
    assert f"directory {missing.parent} does not exist" in finished.stderr

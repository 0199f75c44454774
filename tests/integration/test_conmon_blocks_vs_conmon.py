"""The monitor's output and exit blocks wired together, side by side with the real conmon 2.1.6
on the same payload: the same log content per stream, the same exit files, the same exit
command call, the same FIFOs. A stand-in runtime lets conmon run without runc or a parent
(`--sync`, no channels); what is compared never depends on how reads were chunked."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyshim.conmon.ctl import ControlFifos, WindowSizer
from pyshim.conmon.exits import ExitCommand, ExitSteps, conclude
from pyshim.conmon.logdrivers import open_log_drivers, parse_log_paths
from pyshim.io.fanout import Fanout, OutputPump
from pyshim.reaper import Reaper
from tests.integration.conmon_helpers import records, run

CONMON = shutil.which("conmon")
CID = "5ca1ab1e5ca1ab1e5ca1ab1e"
PAYLOAD = ('echo hello; echo oops >&2; printf partial; printf "a\\nb\\nc"; echo; '
           'head -c 20000 /dev/zero | tr "\\0" x; echo; exit 3')
# The runtime stand-in: `create … --pid-file P … CID` starts the payload and exits 0.
RUNTIME = f"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --pid-file) pidfile=$2; shift;; esac; shift
done
# Started by a process that never waits (posix_spawn, then exit): a shell, even a subshell
# that exits at once, may reap a payload that exits fast, and the monitor would wait for it
# forever. The payload is the monitor's to reap, as a container started by runc is.
PAYLOAD='{PAYLOAD}' PIDFILE=$pidfile /usr/bin/python3 -I -S -c 'import os
pid = os.posix_spawn("/bin/sh", ["sh", "-c", os.environ["PAYLOAD"]], os.environ)
open(os.environ["PIDFILE"], "w").write(str(pid))'
"""
EXIT_COMMAND = """#!/bin/sh
{ printf '%s|' "$@"; cat "$PERSIST/exit"; } > "$OUT"
"""


def streams(log: Path) -> dict[str, bytes]:
    out = {"stdout": b"", "stderr": b""}
    for _, stream, tag, content in records(log):
        out[stream] += content + (b"\n" if tag == "F" else b"")
    return out


def layout(root: Path) -> dict[str, object]:
    return {
        "log": streams(root / "bundle" / "ctr.log"),
        "persist": (root / "persist" / "exit").read_bytes(),
        "exit": (root / "exits" / CID).read_bytes(),
        "exit mode": stat.S_IMODE((root / "exits" / CID).stat().st_mode),
        "exit command": (root / "out").read_text(),
        "fifos": {name: stat.filemode((root / "bundle" / name).stat().st_mode)
                  for name in ("ctl", "winsz")},
    }


def prepare(root: Path) -> dict[str, str]:
    for name in ("bundle", "exits", "persist"):
        (root / name).mkdir(parents=True)
    exit_command = root / "exit-command"
    exit_command.write_text(EXIT_COMMAND)
    exit_command.chmod(0o755)
    return {"OUT": str(root / "out"), "PERSIST": str(root / "persist")}


def run_conmon(root: Path) -> int:
    assert CONMON is not None
    env = {**os.environ, **prepare(root)}
    runtime = root / "runtime"
    runtime.write_text(RUNTIME)
    runtime.chmod(0o755)
    bundle = root / "bundle"
    argv = [CONMON, "--api-version", "1", "-c", CID, "-u", CID, "-r", str(runtime),
            "-b", str(bundle), "-p", str(bundle / "pidfile"), "--exit-dir", str(root / "exits"),
            "-0", str(root / "persist"), "--full-attach", "-l", f"k8s-file:{bundle}/ctr.log",
            "--exit-command", str(root / "exit-command"), "--exit-command-arg", "cleanup",
            "--exit-command-arg", "a b", "--sync"]
    return subprocess.run(argv, env=env, cwd=root, timeout=60, check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def run_blocks(root: Path) -> int:
    env = prepare(root)
    bundle = root / "bundle"

    async def monitor() -> int:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        os.environ.update(env)
        try:
            drivers = open_log_drivers(parse_log_paths([f"k8s-file:{bundle}/ctr.log"]), cid=CID)
            fifos = ControlFifos(str(bundle), on_resize=WindowSizer().resize,
                                 on_reopen=drivers.reopen)
            fifos.start()
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            fanout = Fanout(drivers.sinks)
            pumps = [OutputPump(out_read, "stdout", fanout, name="stdout"),
                     OutputPump(err_read, "stderr", fanout, name="stderr")]
            _, exited = reaper.spawn(["/bin/sh", "-c", PAYLOAD], stdout=out_write,
                                     stderr=err_write)
            os.close(out_write)
            os.close(err_write)
            for pump in pumps:
                pump.start()
            status = (await exited).status

            async def drain() -> None:
                await asyncio.gather(*(pump.drained() for pump in pumps))

            steps = ExitSteps(
                cid=CID, persist_dir=str(root / "persist"), exit_dir=str(root / "exits"),
                drain=drain, log_drivers=drivers, close_resources=fifos.close,
                exit_command=ExitCommand(str(root / "exit-command"), ["cleanup", "a b"]),
                reaper=reaper,
            )
            code = await conclude(steps, status)
            for pump in pumps:
                await pump.close()
            return code
        finally:
            for name in env:
                os.environ.pop(name, None)
            reaper.uninstall()

    return run(monitor)


@pytest.mark.skipif(CONMON is None, reason="needs conmon (scripts/setup installs it)")
def test_blocks_behave_like_conmon(short_tmp: Path) -> None:
    conmon_code = run_conmon(short_tmp / "conmon")
    ours_code = run_blocks(short_tmp / "pyshim")
    assert conmon_code == ours_code == 3
    theirs, ours = layout(short_tmp / "conmon"), layout(short_tmp / "pyshim")
    assert ours == theirs
    assert ours["log"] == {"stdout": b"hello\npartiala\nb\nc\n" + b"x" * 20000 + b"\n",
                           "stderr": b"oops\n"}
    assert ours["exit command"] == "cleanup|a b|3"

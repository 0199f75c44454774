#!/usr/bin/python3
"""A stand-in OCI runtime for engine tests: records its argv and cwd (one JSON line per call in
$FAKE_RUNTIME_LOG), and for create/exec starts `sh -c $FAKE_<COMMAND>_SCRIPT` detached, writing
its pid to --pid-file as runc does. kill signals the pid create recorded. A command named in
$FAKE_RUNTIME_FAIL fails the way runc does: an error line in its JSON --log, exit status 1.
"""

import contextlib
import json
import os
import signal
import sys

COMMANDS = ("create", "restore", "start", "exec", "kill", "delete", "pause", "resume", "state")


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_RUNTIME_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")
    index = next(i for i, arg in enumerate(argv) if arg in COMMANDS)
    command, rest = argv[index], argv[index + 1:]
    state = os.path.join(os.environ["FAKE_RUNTIME_STATE"], "init.pid")
    if command == os.environ.get("FAKE_RUNTIME_FAIL"):
        error_log = os.environ.get("FAKE_RUNTIME_ERROR_LOG") or argv[argv.index("--log") + 1]
        with open(error_log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"level": "error", "msg": f"fake {command} failed"}) + "\n")
        print(f"fake {command} failed", file=sys.stderr)  # as runc: on its stderr as well
        return 1
    if command in ("create", "exec"):
        script = os.environ[f"FAKE_{command.upper()}_SCRIPT"]
        # As runc: fds 3 … 3+N-1 of ours go on to the container with --preserve-fds N.
        preserved = int(rest[rest.index("--preserve-fds") + 1]) if "--preserve-fds" in rest else 0
        for fd in range(3 + preserved, 64):
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        # posix_spawn, not subprocess: a Popen object would reap an early exit itself when the
        # runtime exits, and the container's exit must reach the monitor (the subreaper).
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script], os.environ, setsid=True)
        with open(rest[rest.index("--pid-file") + 1], "w", encoding="ascii") as pid_file:
            pid_file.write(str(pid))
        if command == "create":
            with open(state, "w", encoding="ascii") as saved:
                saved.write(str(pid))
    elif command == "kill":
        with open(state, encoding="ascii") as saved:
            pid = int(saved.read())
        try:
            os.kill(pid, int(rest[-1]))
        except ProcessLookupError:
            print("container not running", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))

"""Kubernetes' path to pyshim: containerd's CRI plugin, driven over CRI v1 gRPC as the kubelet
drives it, with the runtime handler that ``deploy/containerd/pyshim-runtime.toml`` registers.

One private containerd for the module, with CRI enabled (the harness disables it by default)
and a ``config.toml`` made of a few test-only settings plus the deploy snippet, verbatim. No
registry is reachable, so a busybox OCI image is built (``pyshim/image.py``) and
imported twice into the ``k8s.io`` namespace: as the sandbox (pause) image, whose command
sleeps forever, and under the image name of ``deploy/kubernetes/pod.yaml``. The pod and
container configs are made from that pod.yaml (``tests/e2e/cri/kube.py``). The pod uses the
node's network (``hostNetwork``), so no CNI plugin is needed.

The module runs twice, on a containerd of its own each time: with pyshim's warm fork-server
on (``forkserver-on``: a first container brings it up before the tests, so the pod's shim is a
daemon it forked) and off (``forkserver-off``: ``PYSHIM_FORKSERVER=0``, the shim is forked by
its ``start``).

With ``PYSHIM_E2E_REFERENCE=1`` the pod test runs with the snippet's ``runc`` handler
(containerd-shim-runc-v2) too, to check the test itself (once: the fork-server is pyshim's).

containerd's log, which has the shims' log lines too, is kept after the run as
``<pytest basetemp>/cri-forkserver-<on|off>0/containerd.log`` (e.g.
``/tmp/pytest-of-root/pytest-<n>/cri-forkserver-on0/``).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from pyshim.image import ImageArchive, build_image_archive
from tests.e2e.conftest import (
    BUSYBOX,
    FORKSERVER_MARKER,
    FORKSERVER_ON_ONLY,
    PYSHIM_RUNTIME,
    SHIM_BIN_DIR,
    SHIM_TOOLS,
    assert_no_leftovers,
    bundle_dir,
    expected_shim_parent,
    forkserver_env,
    forkserver_problems,
    reference_enabled,
    require_e2e,
    shim_path_env,
    shim_processes,
    task_list,
    unique_id,
    wait_until,
    warm_up_forkserver,
)
from tests.e2e.containerd import (
    DEFAULT_DISABLED_PLUGINS,
    PrivateContainerd,
    cgroup_hierarchies,
    make_busybox_rootfs,
)
from tests.e2e.cri import api_pb2 as api
from tests.e2e.cri import kube
from tests.e2e.cri.client import CriClient, rpc_code_name, rpc_error_text

#: containerd's namespace for everything CRI does.
K8S_NAMESPACE = "k8s.io"
#: The configured ``sandbox_image``: our busybox image, running ``sleep infinity``.
PAUSE_IMAGE = "docker.io/pyshim/pause:test"
PAUSE_COMMAND = ["/bin/sleep", "infinity"]

#: The handler the deploy files register for pyshim, and the reference one they keep.
PYSHIM_HANDLER = "pyshim"
RUNC_HANDLER = "runc"
#: Handlers of the pod test; the reference only with the fork-server on (it is pyshim's).
HANDLERS = [
    PYSHIM_HANDLER,
    *([pytest.param(RUNC_HANDLER, marks=FORKSERVER_ON_ONLY)] if reference_enabled() else []),
]

#: Exit status the runtime reports for a process killed by SIGKILL.
SIGKILL_STATUS = 128 + 9

#: One line of a CRI log file: ``<RFC 3339 nano time> <stream> <F(ull)|P(artial)> <text>``.
CRI_LOG_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<stream>stdout|stderr) (?P<tag>[FP]) (?P<text>.*)"
)


def cri_test_config(base_dir: Path) -> str:
    """The private containerd's extra config: test-only CRI settings, then the deploy snippet.

    * ``restrict_oom_score_adj``: the sandbox asks for oom_score_adj -998, which this machine's
      root (no CAP_SYS_RESOURCE) may not set: runc then fails with "can't get final child's PID
      from pipe: EOF". With it, CRI caps the value at the daemon's own (observed).
    * ``sandbox_image``: our imported image (nothing can be pulled here).
    * CNI directories of our own, empty: host-network pods need no CNI; CRI only logs "no
      network config found".
    """
    settings = (
        f'[plugins."{kube.CRI_PLUGIN}"]\n'
        f'  sandbox_image = "{PAUSE_IMAGE}"\n'
        "  restrict_oom_score_adj = true\n"
        f'  [plugins."{kube.CRI_PLUGIN}".cni]\n'
        f'    bin_dir = "{base_dir / "cni" / "bin"}"\n'
        f'    conf_dir = "{base_dir / "cni" / "conf"}"\n'
    )
    return settings + "\n" + kube.RUNTIME_TOML.read_text()


@dataclass
class CriEnv:
    containerd: PrivateContainerd
    client: CriClient
    pause: ImageArchive
    workload: ImageArchive
    #: Where the pods' log directories go (the kubelet's /var/log/pods).
    log_root: Path
    #: The pods' cgroup parent (the kubelet's /kubepods/...), one directory per module.
    cgroup_parent: str
    #: pyshim's fork-server, serving before the first test; None when it is off.
    forkserver: psutil.Process | None


@pytest.fixture(
    scope="module",
    params=[pytest.param(True, id="forkserver-on"), pytest.param(False, id="forkserver-off")],
)
def forkserver(request: pytest.FixtureRequest) -> bool:
    """Whether the module's containerd lets pyshim use its warm fork-server (both, in turn)."""
    return bool(request.param)


@pytest.fixture(scope="module")
def cri(tmp_path_factory: pytest.TempPathFactory, forkserver: bool) -> Iterator[CriEnv]:
    """A private containerd with CRI on, the deploy snippet's handlers, both images imported;
    with the fork-server on, it serves (brought up by a first container, ``default``
    namespace)."""
    require_e2e((*SHIM_TOOLS, "runc"), (BUSYBOX, str(SHIM_BIN_DIR / "containerd-shim-pyshim-v1")))
    base_dir = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    for directory in ("cni/bin", "cni/conf", "images", "logs"):
        (base_dir / directory).mkdir(parents=True)
    containerd = PrivateContainerd(
        base_dir,
        extra_config=cri_test_config(base_dir),
        disabled_plugins=[name for name in DEFAULT_DISABLED_PLUGINS if name != kube.CRI_PLUGIN],
        env={"PATH": shim_path_env(), **forkserver_env(forkserver)},
    )
    client: CriClient | None = None
    try:
        containerd.start(timeout=60)
        pod = kube.load_pod()
        workload_names = {kube.normalize_image(c.image) for c in pod.containers}
        assert len(workload_names) == 1, f"one image for all of pod.yaml: {workload_names}"
        [workload_name] = workload_names
        pause = build_image_archive(
            base_dir / "images" / "pause.tar", PAUSE_IMAGE,
            entrypoint=PAUSE_COMMAND[:1], cmd=PAUSE_COMMAND[1:],
        )
        workload = build_image_archive(
            base_dir / "images" / "workload.tar", workload_name, cmd=["sh"]
        )
        for archive in (pause, workload):
            containerd.ctr("images", "import", str(archive.path), namespace=K8S_NAMESPACE)
        client = connected = CriClient(str(containerd.address))
        images = (pause, workload)

        def known() -> bool:
            return all(connected.image_status(image.name) is not None for image in images)

        # CRI learns about imported images from containerd's events, asynchronously.
        wait_until(known, 60, "CRI knows the imported images")
        server = None
        if forkserver:
            server = warm_up_forkserver(containerd, make_busybox_rootfs(base_dir / "rootfs"))
        yield CriEnv(
            containerd, connected, pause, workload, base_dir / "logs",
            f"/pyshim-cri-{secrets.token_hex(4)}", server,
        )
    finally:
        try:
            if client is not None:
                client.close()
            # Keep containerd's log (the shims log there too) for a post-mortem: stop()
            # removes base_dir.
            if containerd.log_path.exists():
                mode = "on" if forkserver else "off"
                kept = tmp_path_factory.mktemp(f"cri-forkserver-{mode}") / "containerd.log"
                shutil.copyfile(containerd.log_path, kept)
        finally:
            containerd.stop()


# ------------------------------------------------------------------------------- helpers


def read_cri_log(path: Path) -> list[tuple[str, str]]:
    """(stream, line) of each complete line of a CRI log file; every line must be CRI format."""
    entries: list[tuple[str, str]] = []
    partial = {"stdout": "", "stderr": ""}
    for line in path.read_text().splitlines():
        match = CRI_LOG_LINE.fullmatch(line)
        assert match is not None, f"{path}: not a CRI log line: {line!r}"
        stream = match["stream"]
        if match["tag"] == "P":
            partial[stream] += match["text"]
        else:
            entries.append((stream, partial[stream] + match["text"]))
            partial[stream] = ""
    return entries


def wait_for_log(path: Path, expected: list[tuple[str, str]], timeout: float = 30.0) -> None:
    """Wait until the CRI log at ``path`` holds every (stream, line) of ``expected``."""
    seen: list[list[tuple[str, str]]] = [[]]

    def complete() -> bool:
        seen[0] = read_cri_log(path) if path.exists() else []
        return all(entry in seen[0] for entry in expected)

    try:
        wait_until(complete, timeout, f"{expected} in {path}")
    except AssertionError as error:
        raise AssertionError(f"{error}; the log holds {seen[0]}") from None


def info_json(info: Mapping[str, str]) -> dict[str, object]:
    """The JSON document CRI puts in the ``info`` map of a verbose status."""
    document = json.loads(info["info"])
    assert isinstance(document, dict)
    return document


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cgroup_leftovers(ids: list[str], cgroup_parent: str) -> list[str]:
    """What :func:`assert_no_leftovers` does not look at: the CRI containers' cgroups (under
    the pod's cgroup parent)."""
    problems: list[str] = []
    for container_id in ids:
        for hierarchy in cgroup_hierarchies():
            cgroup = hierarchy / cgroup_parent.lstrip("/") / container_id
            if cgroup.exists():
                problems.append(f"cgroup of {container_id}: {cgroup}")
    return problems


def expect_rpc_error(code: str, call: Callable[..., object], *args: object) -> str:
    """Call ``call(*args)``; it must fail with gRPC status ``code``. Returns the details."""
    with pytest.raises(Exception) as caught:
        call(*args)
    assert rpc_code_name(caught.value) == code, rpc_error_text(caught.value)
    return rpc_error_text(caught.value)


# --------------------------------------------------------------------------------- tests


def test_deploy_files_name_the_same_runtime() -> None:
    """RuntimeClass.handler is a runtime table of the containerd snippet, of type pyshim, and
    the example pod selects that RuntimeClass."""
    runtimes = kube.cri_runtimes(kube.RUNTIME_TOML.read_text())
    runtime_class = kube.load_runtime_class()
    pod = kube.load_pod()
    assert runtimes.get(runtime_class.handler) == PYSHIM_RUNTIME, runtimes
    assert runtime_class.handler == PYSHIM_HANDLER
    assert pod.runtime_class_name == runtime_class.name
    # The reference handler the snippet declares alongside (CRI's default_runtime_name).
    assert runtimes.get(RUNC_HANDLER) == "io.containerd.runc.v2", runtimes
    # The test pod needs: a container that exits on SIGTERM and one that ignores it.
    assert {c.name for c in pod.containers} == {"talker", "stubborn"}
    assert pod.host_network, "no CNI here: the pod must use the node's network"


def test_config_and_images(cri: CriEnv) -> None:
    """containerd runs with the snippet appended (CRI v1 answers) and CRI sees both images
    under their names, with the ids (config digests) the archives were built with."""
    config = tomllib.loads(cri.containerd.config_path.read_text())
    assert config["plugins"][kube.CRI_PLUGIN]["sandbox_image"] == PAUSE_IMAGE
    assert kube.cri_runtimes(cri.containerd.config_path.read_text()) == kube.cri_runtimes(
        kube.RUNTIME_TOML.read_text()
    )
    version = cri.client.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_api_version == "v1"
    for archive in (cri.pause, cri.workload):
        image = cri.client.image_status(archive.name)
        assert image is not None, archive.name
        assert image.id == archive.config_digest
        assert list(image.repo_tags) == [archive.name]
        assert image.size > 0
    listed = {image.id: list(image.repo_tags) for image in cri.client.list_images()}
    assert listed[cri.workload.config_digest] == [cri.workload.name]
    assert cri.client.image_status("docker.io/pyshim/absent:none") is None


def test_unknown_runtime_handler_is_rejected(cri: CriEnv) -> None:
    pod = kube.load_pod()
    config = kube.sandbox_config(pod, unique_id("uid"), cri.log_root, cri.cgroup_parent)
    details = expect_rpc_error(
        "UNKNOWN", cri.client.run_pod_sandbox, config, "no-such-handler"
    )
    assert "no-such-handler" in details
    assert shim_processes(cri.containerd) == []


@pytest.mark.parametrize("handler", HANDLERS)
def test_pod_lifecycle_as_the_kubelet_drives_it(cri: CriEnv, handler: str) -> None:
    client, containerd = cri.client, cri.containerd
    runtime_type = kube.cri_runtimes(kube.RUNTIME_TOML.read_text())[handler]
    if handler == PYSHIM_HANDLER:
        assert runtime_type == PYSHIM_RUNTIME
    pod = kube.load_pod()
    uid = unique_id("uid")
    sandbox = kube.sandbox_config(pod, uid, cri.log_root, cri.cgroup_parent)
    log_dir = Path(sandbox.log_directory)
    log_dir.mkdir(parents=True)  # the kubelet makes it
    sandbox_id: str | None = None
    removed = False
    ids: list[str] = []
    try:
        # ---- RunPodSandbox: the pause container, started by the handler's shim.
        sandbox_id = client.run_pod_sandbox(sandbox, handler)
        ids.append(sandbox_id)
        status = client.pod_sandbox_status(sandbox_id, verbose=True)
        assert status.status.state == api.SANDBOX_READY
        assert status.status.runtime_handler == handler
        assert status.status.metadata.name == pod.name
        assert status.status.metadata.uid == uid
        info = info_json(status.info)
        assert info["runtimeHandler"] == handler
        assert info["runtimeType"] == runtime_type
        sandbox_pid = info["pid"]
        assert isinstance(sandbox_pid, int) and sandbox_pid > 0
        # The task is started once `runc start` returns, which may be before the process's
        # execve of the image's command is done (its cmdline reads empty meanwhile).
        pause_process = psutil.Process(sandbox_pid)
        wait_until(
            lambda: pause_process.cmdline() == PAUSE_COMMAND, 20,
            f"pause process {sandbox_pid} runs {PAUSE_COMMAND}",
        )

        # ---- CreateContainer + StartContainer for each container of pod.yaml.
        container_ids: dict[str, str] = {}
        for container in pod.containers:
            config = kube.container_config(pod, container, sandbox)
            container_id = client.create_container(sandbox_id, config, sandbox)
            ids.append(container_id)
            container_ids[container.name] = container_id
            created = client.container_status(container_id).status
            assert created.state == api.CONTAINER_CREATED
            client.start_container(container_id)
        talker, stubborn = container_ids["talker"], container_ids["stubborn"]
        talker_log = log_dir / "talker" / "0.log"
        for name, container_id in container_ids.items():
            running = client.container_status(container_id).status
            assert running.state == api.CONTAINER_RUNNING, running
            assert running.metadata.name == name
            assert running.started_at > 0
            assert running.image_ref == cri.workload.config_digest
            assert running.log_path == str(log_dir / name / "0.log")
        listed = {c.id: c.state for c in client.list_containers(sandbox_id)}
        assert listed == {cid: api.CONTAINER_RUNNING for cid in container_ids.values()}

        # ---- containerd writes the CRI log from the stdout/stderr the shim relays.
        wait_for_log(talker_log, [("stdout", "out-line"), ("stderr", "err-line")])
        wait_for_log(log_dir / "stubborn" / "0.log", [("stdout", "ignoring-term")])

        # ---- One shim for the whole pod: parent of the pause and of both containers.
        tasks = task_list(containerd, namespace=K8S_NAMESPACE)
        assert set(tasks) == set(ids), tasks
        assert all(state == "RUNNING" for _, state in tasks.values()), tasks
        assert tasks[sandbox_id][0] == sandbox_pid
        shims = shim_processes(containerd)
        assert len(shims) == 1, [shim.cmdline() for shim in shims]
        [shim] = shims
        command_line = " ".join(shim.cmdline())
        if runtime_type != PYSHIM_RUNTIME:
            assert "containerd-shim-runc-v2" in command_line, command_line
        elif cri.forkserver is None:
            assert "pyshim.main" in command_line, command_line  # its start's command line
        else:
            # Forked by the fork-server, it names itself as containerd would have started it.
            assert command_line.split()[:5] == [
                "containerd-shim-pyshim-v1", "-namespace", K8S_NAMESPACE, "-id", sandbox_id
            ], command_line
        assert FORKSERVER_MARKER not in command_line, command_line
        # Forked by the fork-server (its parent), or by its start (re-parented to the
        # subreaper) when the fork-server is off.
        forked_by = cri.forkserver if runtime_type == PYSHIM_RUNTIME else None
        assert shim.ppid() == expected_shim_parent(containerd, forked_by)
        for container_id in ids:
            pid, _ = tasks[container_id]
            assert psutil.Process(pid).ppid() == shim.pid, container_id
            address = (bundle_dir(containerd, container_id, K8S_NAMESPACE) / "address")
            assert address.read_text().strip() == (
                f"unix://{containerd.shim_socket_path(K8S_NAMESPACE, sandbox_id)}"
            )

        # ---- ExecSync: output of both streams and the exit code.
        result = client.exec_sync(talker, ["sh", "-c", "echo x; echo y >&2; exit 3"])
        assert (result.stdout, result.stderr, result.exit_code) == (b"x\n", b"y\n", 3)
        result = client.exec_sync(talker, ["cat", "/proc/1/cmdline"])
        assert result.stdout.split(b"\0")[:2] == [b"sh", b"-c"], result
        # ... and its timeout: the exec is killed, the call fails with DEADLINE_EXCEEDED.
        started = time.monotonic()
        details = expect_rpc_error(
            "DEADLINE_EXCEEDED", client.exec_sync, talker,
            ["sh", "-c", "echo started; exec sleep 987"], 1,
        )
        assert "timeout 1s exceeded" in details
        assert time.monotonic() - started < 30
        processes = client.exec_sync(talker, ["ps"]).stdout.decode()
        assert "sleep 987" not in processes, processes

        # ---- Log rotation: the kubelet renames the file and asks CRI to reopen it.
        def say(text: str) -> None:
            """Make the container itself (its stdio, fds 1 and 2 of PID 1) print ``text``."""
            command = f"echo {text} >/proc/1/fd/1; echo {text}-err >/proc/1/fd/2"
            assert client.exec_sync(talker, ["sh", "-c", command]).exit_code == 0

        say("before-rotation")
        wait_for_log(talker_log, [("stdout", "before-rotation"), ("stderr", "before-rotation-err")])
        rotated = talker_log.with_name("0.log.20260101-000000")
        talker_log.rename(rotated)
        client.reopen_container_log(talker)
        say("after-rotation")
        wait_for_log(talker_log, [("stdout", "after-rotation"), ("stderr", "after-rotation-err")])
        assert ("stdout", "out-line") not in read_cri_log(talker_log)
        old = read_cri_log(rotated)
        assert ("stdout", "before-rotation") in old
        assert ("stdout", "after-rotation") not in old

        # ---- StopContainer: SIGTERM, SIGKILL after the pod's grace period.
        grace = pod.grace_seconds
        client.stop_container(talker, grace)
        wait_for_log(talker_log, [("stdout", "term-received")])
        stopped = client.container_status(talker).status
        assert stopped.state == api.CONTAINER_EXITED, stopped
        assert (stopped.exit_code, stopped.reason) == (0, "Completed"), stopped
        assert stopped.finished_at >= stopped.started_at > 0

        started = time.monotonic()
        client.stop_container(stubborn, grace)
        elapsed = time.monotonic() - started
        assert grace - 0.1 <= elapsed < grace + 60, elapsed
        stopped = client.container_status(stubborn).status
        assert stopped.state == api.CONTAINER_EXITED, stopped
        assert (stopped.exit_code, stopped.reason) == (SIGKILL_STATUS, "Error"), stopped

        # The stopped containers' tasks are deleted; the shim stays for the sandbox.
        tasks = task_list(containerd, namespace=K8S_NAMESPACE)
        assert set(tasks) == {sandbox_id}, tasks
        assert [p.pid for p in shim_processes(containerd)] == [shim.pid]

        # ---- RemoveContainer.
        for container_id in container_ids.values():
            client.remove_container(container_id)
            expect_rpc_error("NOT_FOUND", client.container_status, container_id)
        assert client.list_containers(sandbox_id) == []
        assert client.pod_sandbox_status(sandbox_id).status.state == api.SANDBOX_READY

        # ---- StopPodSandbox: the pause container is killed, and the shim exits.
        client.stop_pod_sandbox(sandbox_id)
        assert client.pod_sandbox_status(sandbox_id).status.state == api.SANDBOX_NOTREADY
        wait_until(lambda: not alive(shim), 30, f"shim {shim.pid} exits")
        assert shim_processes(containerd) == []

        # ---- RemovePodSandbox.
        client.remove_pod_sandbox(sandbox_id)
        removed = True
        expect_rpc_error("NOT_FOUND", client.pod_sandbox_status, sandbox_id)
        assert task_list(containerd, namespace=K8S_NAMESPACE) == {}
        containers = containerd.ctr("containers", "ls", "-q", namespace=K8S_NAMESPACE).stdout
        assert containers.split() == []
    finally:
        if sandbox_id is not None and not removed:
            # Best effort, so that the next test starts clean; RemovePodSandbox removes the
            # pod's containers too.
            for call in (client.stop_pod_sandbox, client.remove_pod_sandbox):
                try:
                    call(sandbox_id)
                except Exception as error:
                    print(f"cleanup: {call.__name__}({sandbox_id}): {rpc_error_text(error)}")

    # ---- Nothing left: no shim or container process, bundle, mount, socket, runc state,
    # cgroup.
    assert_no_leftovers(containerd, ids, namespace=K8S_NAMESPACE)
    problems: list[str] = []

    def clean() -> bool:
        problems[:] = cgroup_leftovers(ids, cri.cgroup_parent)
        return not problems

    wait_until(clean, 20, "k8s.io cgroups gone")
    assert not problems, problems


def test_forkserver_as_configured(cri: CriEnv) -> None:
    """After the pods: the fork-server that served the module's first container still serves,
    with no warning or error in its log; or, when off, none was ever started."""
    problems = forkserver_problems(cri.containerd, cri.forkserver)
    assert not problems, problems

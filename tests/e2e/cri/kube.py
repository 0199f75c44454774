"""The deploy/ files, read the way containerd and the kubelet read them.

* :func:`cri_runtimes` parses ``deploy/containerd/pyshim-runtime.toml`` (a containerd 1.6
  ``config.toml`` snippet) into {runtime handler: runtime_type};
* :func:`load_runtime_class` / :func:`load_pod` read ``deploy/kubernetes/*.yaml``;
* :func:`sandbox_config` and :func:`container_config` turn the pod into the CRI messages the
  kubelet would send for it (the parts of the kubelet's conversion that matter on a node without
  CNI: metadata, the kubelet's labels, log directory and paths, namespace modes, command/args,
  the image reference normalised the way the kubelet and containerd do).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cri import api_pb2 as api

REPO = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO / "deploy"
RUNTIME_TOML = DEPLOY_DIR / "containerd" / "pyshim-runtime.toml"
RUNTIME_CLASS_YAML = DEPLOY_DIR / "kubernetes" / "runtimeclass.yaml"
POD_YAML = DEPLOY_DIR / "kubernetes" / "pod.yaml"

CRI_PLUGIN = "io.containerd.grpc.v1.cri"

#: Kubernetes' default when a pod does not set ``terminationGracePeriodSeconds``.
DEFAULT_GRACE_SECONDS = 30


def cri_runtimes(toml_text: str) -> dict[str, str]:
    """{handler name: runtime_type} of the CRI runtimes a config.toml (snippet) declares."""
    document = tomllib.loads(toml_text)
    runtimes = document["plugins"][CRI_PLUGIN]["containerd"]["runtimes"]
    return {name: table["runtime_type"] for name, table in runtimes.items()}


def _load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return document


@dataclass(frozen=True)
class RuntimeClass:
    name: str
    handler: str


def load_runtime_class(path: Path = RUNTIME_CLASS_YAML) -> RuntimeClass:
    document = _load_yaml(path)
    if (document.get("apiVersion"), document.get("kind")) != ("node.k8s.io/v1", "RuntimeClass"):
        raise ValueError(f"{path}: not a node.k8s.io/v1 RuntimeClass")
    return RuntimeClass(name=str(document["metadata"]["name"]), handler=str(document["handler"]))


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: list[str]
    args: list[str]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    runtime_class_name: str | None
    host_network: bool
    grace_seconds: int
    containers: list[Container]

    def container(self, name: str) -> Container:
        for container in self.containers:
            if container.name == name:
                return container
        raise KeyError(f"pod {self.name} has no container {name!r}")


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r}")
    return list(value)


def load_pod(path: Path = POD_YAML) -> Pod:
    document = _load_yaml(path)
    if (document.get("apiVersion"), document.get("kind")) != ("v1", "Pod"):
        raise ValueError(f"{path}: not a v1 Pod")
    metadata, spec = document["metadata"], document["spec"]
    containers = [
        Container(
            name=str(item["name"]),
            image=str(item["image"]),
            command=_strings(item.get("command"), f"{item['name']}.command"),
            args=_strings(item.get("args"), f"{item['name']}.args"),
        )
        for item in spec["containers"]
    ]
    runtime_class = spec.get("runtimeClassName")
    return Pod(
        name=str(metadata["name"]),
        namespace=str(metadata.get("namespace", "default")),
        runtime_class_name=None if runtime_class is None else str(runtime_class),
        host_network=bool(spec.get("hostNetwork", False)),
        grace_seconds=int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)),
        containers=containers,
    )


def normalize_image(reference: str) -> str:
    """A Docker-style reference as containerd stores it: ``busybox:1.36`` ->
    ``docker.io/library/busybox:1.36``, ``user/app`` -> ``docker.io/user/app:latest``."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", reference
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if "@" not in path and ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"{domain}/{path}"


def sandbox_config(pod: Pod, uid: str, log_root: Path, cgroup_parent: str) -> api.PodSandboxConfig:
    """The ``PodSandboxConfig`` of ``pod``; logs go to ``log_root/<ns>_<name>_<uid>`` (the
    kubelet uses ``/var/log/pods`` as ``log_root``)."""
    namespaces = api.NamespaceOption(
        network=api.NODE if pod.host_network else api.POD,
        # The kubelet gives each container of a v1 pod its own PID namespace unless the pod
        # asks for shareProcessNamespace (or hostPID).
        pid=api.CONTAINER,
        ipc=api.POD,
    )
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=pod.name, uid=uid, namespace=pod.namespace),
        log_directory=str(log_root / f"{pod.namespace}_{pod.name}_{uid}"),
        labels={
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": uid,
        },
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=api.LinuxSandboxSecurityContext(namespace_options=namespaces),
        ),
    )


def container_config(
    pod: Pod, container: Container, sandbox: api.PodSandboxConfig, attempt: int = 0
) -> api.ContainerConfig:
    """The ``ContainerConfig`` of one of the pod's containers (log path
    ``<container>/<attempt>.log`` below the sandbox's log directory, as the kubelet does)."""
    namespaces = sandbox.linux.security_context.namespace_options
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=container.name, attempt=attempt),
        image=api.ImageSpec(image=normalize_image(container.image)),
        command=container.command,
        args=container.args,
        labels={
            "io.kubernetes.container.name": container.name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": sandbox.metadata.uid,
        },
        log_path=f"{container.name}/{attempt}.log",
        linux=api.LinuxContainerConfig(
            security_context=api.LinuxContainerSecurityContext(namespace_options=namespaces)
        ),
    )

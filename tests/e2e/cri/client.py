"""A small, typed CRI v1 client over gRPC (the calls the kubelet makes, those the tests need).

No generated gRPC stubs: each method is a ``unary_unary`` callable for
``/runtime.v1.RuntimeService/<Method>`` (or ``ImageService``) built from the request's
``SerializeToString`` and the response's ``FromString`` (messages in ``api_pb2``, made from
``api.proto`` by ``make protos``). Every call has a deadline; a failed call raises
``grpc.RpcError``, whose ``code()`` and ``details()`` say what containerd answered (see
:func:`rpc_error_text`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from google.protobuf.message import Message

from tests.e2e.cri import api_pb2 as api

#: Deadline of every call unless the method says otherwise (seconds). Generous: other test
#: runs share this machine's two cores.
DEFAULT_TIMEOUT = 60.0

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class _Method(Generic[RequestT, ResponseT]):
    """One unary RPC: ``call(request, timeout)`` returns the decoded response."""

    def __init__(
        self, channel: Any, path: str, response_type: type[ResponseT]
    ) -> None:
        self.path = path
        self._call: Callable[..., Any] = channel.unary_unary(
            path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        self._response_type = response_type

    def __call__(self, request: RequestT, timeout: float) -> ResponseT:
        response = self._call(request, timeout=timeout)
        if not isinstance(response, self._response_type):
            raise TypeError(f"{self.path} returned {type(response).__name__}")
        return response


def rpc_error_text(error: BaseException) -> str:
    """``<CODE>: <details>`` of a ``grpc.RpcError`` (``repr`` of anything else)."""
    if isinstance(error, grpc.RpcError):
        code = cast(Any, error).code()
        details = cast(Any, error).details()
        return f"{getattr(code, 'name', code)}: {details}"
    return repr(error)


def rpc_code_name(error: BaseException) -> str | None:
    """The status code name (``NOT_FOUND``, ...) of a ``grpc.RpcError``, else None."""
    if not isinstance(error, grpc.RpcError):
        return None
    code = cast(Any, error).code()
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else None


class CriClient:
    """CRI v1 ``RuntimeService`` and ``ImageService`` on a unix socket (containerd's gRPC
    address). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.target = f"unix://{socket_path}"
        self.timeout = timeout
        self._channel: Any = grpc.insecure_channel(self.target)
        runtime, image = f"/{RUNTIME_SERVICE}/", f"/{IMAGE_SERVICE}/"
        channel = self._channel
        self._version = _Method[api.VersionRequest, api.VersionResponse](
            channel, runtime + "Version", api.VersionResponse
        )
        self._run_pod_sandbox = _Method[api.RunPodSandboxRequest, api.RunPodSandboxResponse](
            channel, runtime + "RunPodSandbox", api.RunPodSandboxResponse
        )
        self._stop_pod_sandbox = _Method[api.StopPodSandboxRequest, api.StopPodSandboxResponse](
            channel, runtime + "StopPodSandbox", api.StopPodSandboxResponse
        )
        self._remove_pod_sandbox = _Method[
            api.RemovePodSandboxRequest, api.RemovePodSandboxResponse
        ](channel, runtime + "RemovePodSandbox", api.RemovePodSandboxResponse)
        self._pod_sandbox_status = _Method[
            api.PodSandboxStatusRequest, api.PodSandboxStatusResponse
        ](channel, runtime + "PodSandboxStatus", api.PodSandboxStatusResponse)
        self._create_container = _Method[
            api.CreateContainerRequest, api.CreateContainerResponse
        ](channel, runtime + "CreateContainer", api.CreateContainerResponse)
        self._start_container = _Method[api.StartContainerRequest, api.StartContainerResponse](
            channel, runtime + "StartContainer", api.StartContainerResponse
        )
        self._stop_container = _Method[api.StopContainerRequest, api.StopContainerResponse](
            channel, runtime + "StopContainer", api.StopContainerResponse
        )
        self._remove_container = _Method[
            api.RemoveContainerRequest, api.RemoveContainerResponse
        ](channel, runtime + "RemoveContainer", api.RemoveContainerResponse)
        self._list_containers = _Method[api.ListContainersRequest, api.ListContainersResponse](
            channel, runtime + "ListContainers", api.ListContainersResponse
        )
        self._container_status = _Method[
            api.ContainerStatusRequest, api.ContainerStatusResponse
        ](channel, runtime + "ContainerStatus", api.ContainerStatusResponse)
        self._reopen_container_log = _Method[
            api.ReopenContainerLogRequest, api.ReopenContainerLogResponse
        ](channel, runtime + "ReopenContainerLog", api.ReopenContainerLogResponse)
        self._exec_sync = _Method[api.ExecSyncRequest, api.ExecSyncResponse](
            channel, runtime + "ExecSync", api.ExecSyncResponse
        )
        self._list_images = _Method[api.ListImagesRequest, api.ListImagesResponse](
            channel, image + "ListImages", api.ListImagesResponse
        )
        self._image_status = _Method[api.ImageStatusRequest, api.ImageStatusResponse](
            channel, image + "ImageStatus", api.ImageStatusResponse
        )

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # ------------------------------------------------------------------------ runtime

    def version(self, timeout: float | None = None) -> api.VersionResponse:
        return self._version(api.VersionRequest(version="v1"), self._deadline(timeout))

    def run_pod_sandbox(
        self, config: api.PodSandboxConfig, runtime_handler: str, timeout: float | None = None
    ) -> str:
        """Create and start the sandbox (pause container); its id."""
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._run_pod_sandbox(request, self._deadline(timeout)).pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        request = api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._stop_pod_sandbox(request, self._deadline(timeout))

    def remove_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        request = api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._remove_pod_sandbox(request, self._deadline(timeout))

    def pod_sandbox_status(
        self, sandbox_id: str, verbose: bool = False, timeout: float | None = None
    ) -> api.PodSandboxStatusResponse:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        return self._pod_sandbox_status(request, self._deadline(timeout))

    def create_container(
        self,
        sandbox_id: str,
        config: api.ContainerConfig,
        sandbox_config: api.PodSandboxConfig,
        timeout: float | None = None,
    ) -> str:
        """Create a container in the sandbox; its id."""
        request = api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return self._create_container(request, self._deadline(timeout)).container_id

    def start_container(self, container_id: str, timeout: float | None = None) -> None:
        request = api.StartContainerRequest(container_id=container_id)
        self._start_container(request, self._deadline(timeout))

    def stop_container(
        self, container_id: str, grace_seconds: int, timeout: float | None = None
    ) -> None:
        """Stop signal, then SIGKILL after ``grace_seconds``; the call deadline is ``timeout``
        (default: the client's plus the grace period)."""
        request = api.StopContainerRequest(container_id=container_id, timeout=grace_seconds)
        deadline = self.timeout + grace_seconds if timeout is None else timeout
        self._stop_container(request, deadline)

    def remove_container(self, container_id: str, timeout: float | None = None) -> None:
        request = api.RemoveContainerRequest(container_id=container_id)
        self._remove_container(request, self._deadline(timeout))

    def list_containers(
        self, sandbox_id: str = "", timeout: float | None = None
    ) -> list[api.Container]:
        request = api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=sandbox_id))
        return list(self._list_containers(request, self._deadline(timeout)).containers)

    def container_status(
        self, container_id: str, verbose: bool = False, timeout: float | None = None
    ) -> api.ContainerStatusResponse:
        request = api.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._container_status(request, self._deadline(timeout))

    def reopen_container_log(self, container_id: str, timeout: float | None = None) -> None:
        request = api.ReopenContainerLogRequest(container_id=container_id)
        self._reopen_container_log(request, self._deadline(timeout))

    def exec_sync(
        self, container_id: str, cmd: list[str], command_timeout: int = 0,
        timeout: float | None = None,
    ) -> api.ExecSyncResponse:
        """Run ``cmd`` in the container and wait: its stdout, stderr and exit code.
        ``command_timeout`` (seconds, 0 = none) is CRI's own limit for the command."""
        request = api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=command_timeout)
        deadline = self._deadline(timeout) + command_timeout
        return self._exec_sync(request, deadline)

    # -------------------------------------------------------------------------- image

    def list_images(self, timeout: float | None = None) -> list[api.Image]:
        request = api.ListImagesRequest()
        return list(self._list_images(request, self._deadline(timeout)).images)

    def image_status(self, image: str, timeout: float | None = None) -> api.Image | None:
        """The image, or None if CRI does not know it."""
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image))
        response = self._image_status(request, self._deadline(timeout))
        return response.image if response.HasField("image") else None

    # ----------------------------------------------------------------------- lifetime

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""One client API over Triton's HTTP and gRPC protocols, for the edge `svlm` and the cloud `lvlm`.

client = VLMClient("127.0.0.1:8000", protocol="http")
answer = client.ask_svlm(frame, "What color is the car?")
print(answer.text, answer.latency_ms)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from python_backends.image_processing import encode_jpeg

Protocol = Literal["http", "grpc"]

# Default ports of `spotvlm serve`: the edge on 80xx, the cloud on 81xx (HTTP, gRPC, metrics).
DEFAULT_PORTS = {"edge": (8000, 8001, 8002), "cloud": (8100, 8101, 8102)}


def default_url(server: str, protocol: Protocol) -> str:
    http, grpc, _ = DEFAULT_PORTS[server]
    return f"127.0.0.1:{http if protocol == 'http' else grpc}"


class ClientError(RuntimeError):
    """A request the server refused or failed.

    `status` is Triton's status as the protocol reports it: '400' over HTTP, 'StatusCode.INVALID_ARGUMENT' over gRPC.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def invalid_argument(self) -> bool:
        return self.status in {"400", "StatusCode.INVALID_ARGUMENT", "INVALID_ARG"}


@dataclass
class EdgeAnswer:
    text: str
    latency_ms: float


@dataclass
class CloudAnswer:
    text: str
    detections: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0


class VLMClient:
    def __init__(self, url: str, protocol: Protocol = "http", timeout_s: float = 120.0) -> None:
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol == "grpc":
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self._module = module
        self.protocol = protocol
        self.url = url
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server state ---------------------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # a server that cannot answer is not ready
            return False

    def model_states(self) -> dict[str, str]:
        """{model name: state} from the repository index, e.g. {'svlm': 'READY'}."""
        index = self._client.get_model_repository_index()
        if self.protocol == "grpc":
            return {m.name: m.state for m in index.models}
        return {m["name"]: m.get("state", "") for m in index}

    # -- inference ------------------------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]:
        """Sends numpy inputs as they are (dtype decides the Triton type) and returns the named outputs."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        infer_inputs = []
        for name, array in inputs.items():
            tensor = self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        extra = dict(kwargs)
        if self.protocol == "grpc":
            extra.setdefault("client_timeout", self.timeout_s)
        try:
            result = self._client.infer(model, infer_inputs, outputs=requested, parameters=parameters, **extra)
        except InferenceServerException as exc:
            raise ClientError(exc.message() or str(exc), status=str(exc.status())) from exc
        return {name: result.as_numpy(name) for name in outputs}

    def ask_svlm(
        self, image: np.ndarray, prompt: str, max_tokens: int | None = None, model: str = "svlm"
    ) -> EdgeAnswer:
        inputs = {"IMAGE": np.ascontiguousarray(image, dtype=np.uint8)[None], "PROMPT": text_tensor(prompt)}
        if max_tokens is not None:
            inputs["MAX_TOKENS"] = np.array([[max_tokens]], dtype=np.int32)
        started = time.perf_counter()
        result = self.infer(model, inputs, ["TEXT"])
        return EdgeAnswer(text=decode_text(result["TEXT"]), latency_ms=(time.perf_counter() - started) * 1000)

    def ask_lvlm(
        self,
        image: np.ndarray | bytes,
        prompt: str,
        max_tokens: int | None = None,
        jpeg_quality: int | None = 90,
        model: str = "lvlm",
    ) -> CloudAnswer:
        """`image` as RGB array (sent JPEG-encoded unless jpeg_quality is None) or as encoded JPEG/PNG bytes."""
        inputs: dict[str, np.ndarray] = {"PROMPT": text_tensor(prompt)}
        if isinstance(image, (bytes, bytearray)):
            inputs["IMAGE_BYTES"] = np.array([[bytes(image)]], dtype=np.object_)
        elif jpeg_quality is not None:
            inputs["IMAGE_BYTES"] = np.array([[encode_jpeg(image, jpeg_quality)]], dtype=np.object_)
        else:
            inputs["IMAGE"] = np.ascontiguousarray(image, dtype=np.uint8)[None]
        if max_tokens is not None:
            inputs["MAX_TOKENS"] = np.array([[max_tokens]], dtype=np.int32)
        started = time.perf_counter()
        result = self.infer(model, inputs, ["TEXT", "DETECTIONS"])
        latency_ms = (time.perf_counter() - started) * 1000
        return CloudAnswer(
            text=decode_text(result["TEXT"]),
            detections=json.loads(decode_text(result["DETECTIONS"])),
            latency_ms=latency_ms,
        )


def text_tensor(text: str) -> np.ndarray:
    """A BYTES tensor [1, 1] (batch of one)."""
    return np.array([[text.encode("utf-8")]], dtype=np.object_)


def decode_text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

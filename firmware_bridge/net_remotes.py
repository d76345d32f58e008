"""Remote models behind a model server, over JSON REST: Open Inference Protocol V2 and TF Serving V1.

    oip+http://host:8080/v2/models/NAME            KServe, MLServer, Triton (``/infer``)
    tfserving+http://host:8501/v1/models/NAME      TF Serving, KServe V1 (``:predict``)

``https`` instead of ``http`` for TLS; ``?output=NAME`` picks one output of a multi-output model.
The standard library's ``http.client`` keeps one connection per thread alive: a bridge sends a few
kB per request, so a TCP (and TLS) handshake per request would cost more than the payload. Every
failure becomes a one-line ``RemoteError`` that names the URL and what to check, because the bridge
logs it next to the device's fallback answer.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import urllib.parse
from typing import TYPE_CHECKING

import numpy as np

from bisup.firmware_bridge.remote_base import DEFAULT_TIMEOUT_S, RemoteError, as_probabilities

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HINTS = {404: "check the model name and path in the URL", 503: "the model is not ready yet; retry later"}


def _one_line(text: str, limit: int = 300) -> str:
    """Server errors are often multi-line tracebacks with terminal colours; the log wants one line."""
    flat = " ".join(_ANSI.sub("", text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Connections:
    """Keep-alive connections to one server, one per thread (an ``HTTPConnection`` is not thread-safe)."""

    def __init__(self, https: bool, host: str, port: int | None, timeout_s: float):
        self._factory = http.client.HTTPSConnection if https else http.client.HTTPConnection
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """Status and body. A kept-alive connection the server has closed meanwhile is retried once, fresh."""
        reused = getattr(self._local, "conn", None) is not None
        try:
            return self._send(method, path, body)
        except (ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        return self._send(method, path, body)  # requests are idempotent (inference), so resending is safe

    def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._factory(self.host, self.port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except BaseException:
            conn.close()  # the connection's state is unknown now; the next request opens a new one
            self._local.conn = None
            raise


class _RestRemote:
    """What both protocols share: URL parsing, one-line errors, and (N, K) outputs."""

    path_pattern: re.Pattern
    example: str

    def __init__(self, spec: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = spec
        url = urllib.parse.urlsplit(spec)
        if not url.hostname or not self.path_pattern.fullmatch(url.path.rstrip("/")):
            raise RemoteError(f"remote {spec}: expected a URL like {self.example}")
        self._path = url.path.rstrip("/")
        self._output = dict(urllib.parse.parse_qsl(url.query)).get("output")
        self._http = _Connections(url.scheme.endswith("https"), url.hostname, url.port, timeout_s)

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        where = f"{self._http.host}:{self._http.port or 'default port'}"
        try:
            return self._http.request(method, path, data)
        except TimeoutError as exc:
            raise self._error(f"no answer within {self._http.timeout_s:g} s; check the server's load") from exc
        except ConnectionRefusedError as exc:
            raise self._error(f"connection refused; is the model server running at {where}?") from exc
        except socket.gaierror as exc:
            raise self._error(f"host {self._http.host} not found ({exc.strerror}); check the URL") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(f"{type(exc).__name__} talking to {where}: {_one_line(str(exc))}") from exc

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        """The decoded JSON object of a 2xx answer; anything else is a RemoteError with the server's reason."""
        status, raw = self._request(method, path, body)
        if status >= 300:
            raise self._error(f"{method} {path} answered HTTP {status}: {_server_reason(raw)}"
                              + (f"; {_HINTS[status]}" if status in _HINTS else ""))
        try:
            reply = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._error(f"{method} {path} answered something that is not JSON: {_one_line(repr(raw[:80]))}"
                              ) from exc
        if not isinstance(reply, dict):
            raise self._error(f"{method} {path} answered a JSON {type(reply).__name__}, not an object")
        return reply

    def _error(self, reason: str) -> RemoteError:
        return RemoteError(f"remote {self.name}: {reason}")

    def _probabilities(self, outputs: ArrayLike, n: int, what: str) -> np.ndarray:
        """Class probabilities (n, K) from the server's outputs, which may be logits or probabilities."""
        try:
            out = np.asarray(outputs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise self._error(f"{what} is not numeric: {_one_line(str(exc))}") from exc
        if out.ndim < 2 or out.shape[0] != n:
            raise self._error(f"{what} has shape {list(out.shape)}; expected class scores [{n}, K] for {n} inputs")
        return as_probabilities(out.reshape(n, -1))


def _server_reason(raw: bytes) -> str:
    """The ``error`` (KServe, MLServer, Triton, TF Serving) or ``detail`` (FastAPI) text, else the raw body."""
    try:
        reply = json.loads(raw)
    except ValueError:
        return _one_line(raw.decode("utf-8", "replace")) or "(empty body)"
    if isinstance(reply, dict) and ("error" in reply or "detail" in reply):
        reason = reply.get("error", reply.get("detail"))
        return _one_line(reason if isinstance(reason, str) else json.dumps(reason))
    return _one_line(json.dumps(reply))


class OipRemote(_RestRemote):
    """Open Inference Protocol V2 over REST. The input name comes from the model's metadata at open time."""

    path_pattern = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?")
    example = "oip+http://host:8080/v2/models/NAME[?output=OUTPUT]"

    def __init__(self, spec: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(spec, timeout_s)
        status, raw = self._request("GET", self._path + "/ready")
        if status != 200:  # OIP: 200 means ready; the body may be empty
            raise self._error(f"model is not ready (HTTP {status}: {_server_reason(raw)})"
                              + (f"; {_HINTS[status]}" if status in _HINTS else ""))
        self._input = self._input_name(self._json("GET", self._path))

    def _input_name(self, metadata: dict) -> str:
        inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
        if len(inputs) != 1:
            raise self._error(f"model takes {len(inputs)} inputs {[i.get('name') for i in inputs]}; bisup sends one")
        if inputs[0].get("datatype", "FP32") != "FP32":
            raise self._error(f"model input is {inputs[0]['datatype']}; bisup sends FP32, so serve a float model")
        names = [o.get("name") for o in outputs]
        if self._output and names and self._output not in names:
            raise self._error(f"model has no output {self._output!r}; it has {names}")
        return inputs[0]["name"]

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        body: dict = {"inputs": [{"name": self._input, "shape": list(x.shape), "datatype": "FP32",
                                  "data": x.ravel().tolist()}]}
        if self._output:
            body["outputs"] = [{"name": self._output}]
        reply = self._json("POST", self._path + "/infer", body)
        outputs = reply.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise self._error(f"inference response has no outputs: {_one_line(json.dumps(reply), 120)}")
        chosen = next((o for o in outputs if o.get("name") == self._output), outputs[0])
        try:
            values = np.asarray(chosen["data"], dtype=np.float64).reshape(chosen["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error(f"output {chosen.get('name')!r} is malformed: {_one_line(str(exc))}") from exc
        return self._probabilities(values, len(x), f"output {chosen.get('name')!r}")


class TFServingRemote(_RestRemote):
    """TF Serving's REST predict API (row format); KServe's V1 protocol is compatible."""

    path_pattern = re.compile(r"/v1/models/[^/:]+(/versions/[^/:]+)?")
    example = "tfserving+http://host:8501/v1/models/NAME[?output=OUTPUT]"

    def __init__(self, spec: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(spec, timeout_s)
        status = self._json("GET", self._path)
        versions = status.get("model_version_status") or []  # TF Serving; KServe answers {"ready": true}
        if status.get("ready") is not True and not any(v.get("state") == "AVAILABLE" for v in versions):
            raise self._error(f"model is not available: {_one_line(json.dumps(status), 160)}")

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        reply = self._json("POST", self._path + ":predict", {"instances": x.tolist()})
        predictions = reply.get("predictions")
        if not isinstance(predictions, list):
            raise self._error(f"answer has no 'predictions' list: {_one_line(json.dumps(reply), 120)}")
        if predictions and isinstance(predictions[0], dict):  # a model with several outputs: one dict per row
            predictions = self._named(predictions)
        return self._probabilities(predictions, len(x), "predictions")

    def _named(self, rows: list[dict]) -> list:
        names = sorted(rows[0])
        if self._output is None and len(names) > 1:
            raise self._error(f"model has outputs {names}; pick one with ?output=NAME")
        name = self._output or names[0]
        if name not in rows[0]:
            raise self._error(f"model has no output {name!r}; it has {names}")
        return [row[name] for row in rows]


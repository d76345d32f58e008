"""A real KServe model server for one ``.keras`` file: the peer of the network-remote tests.

    python tests/kserve_keras.py --model_path m.keras --model_name digits --http_port 8080 --enable_grpc false

KServe serves the TF-Serving-compatible V1 REST protocol and the Open Inference Protocol (V2 REST)
on the same port, so one process exercises both backends in ``bisup.firmware_bridge.net_remotes``. The
model returns its raw outputs (logits for the digits CNN), so the client's softmax path is tested too.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import kserve  # noqa: E402  (parses the server flags, --http_port and --enable_grpc, from sys.argv)
import kserve.model_server  # noqa: E402
import numpy as np  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

INPUT, OUTPUT = "image", "logits"


class KerasModel(kserve.Model):
    """Runs the Keras model on V1 ``instances`` or on the V2 input named ``INPUT``."""

    def __init__(self, name: str, path: str):
        super().__init__(name)
        self._model = keras.models.load_model(path, compile=False)
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT, "datatype": "FP32", "shape": [-1, *self._model.input_shape[1:]]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, *self._model.output_shape[1:]]}]

    def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> dict | InferResponse:
        if isinstance(payload, dict):
            return {"predictions": self._run(np.asarray(payload["instances"], dtype=np.float32)).tolist()}
        x = payload.get_input_by_name(INPUT)
        if x is None:
            raise InvalidInput(f"expected an input named {INPUT!r}")
        out = self._run(x.as_numpy().astype(np.float32))
        output = InferOutput(OUTPUT, list(out.shape), "FP32", out.ravel().tolist())
        return InferResponse(payload.id or "", self.name, [output])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(x, training=False))


class LoopbackRESTServer(kserve.model_server.RESTServer):
    """KServe's REST server listens on 0.0.0.0, fixed; a test server should not be reachable from outside."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--model_name", required=True)
    args, _ = parser.parse_known_args()
    kserve.model_server.RESTServer = LoopbackRESTServer  # the name ModelServer.start() instantiates
    kserve.ModelServer().start([KerasModel(args.model_name, args.model_path)])


if __name__ == "__main__":
    main()

"""REST and gRPC client for the captioner behind TF Serving (or serving.model_server), and its CLI:

    python -m serving.client --rest http://127.0.0.1:8501 photos/        # path<TAB>caption lines
    python -m serving.client --grpc 127.0.0.1:8500 --signature beam_search dog.jpg  # + every beam
    python -m serving.client --json photos/     # one JSON object per image (JSON lines)

REST never imports TensorFlow; gRPC's protos do (~3 s), on first use. Retries (exponential
backoff) only where they can help: connection refused, HTTP 503, gRPC UNAVAILABLE.
"""
import argparse
import base64
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import numpy as np
import requests

from data.files import IMAGE_EXTENSIONS
from export.contract import (CAPTION_FEATURES, FEATURES_INPUT, IMAGE_INPUT, IMAGE_SIGNATURES,
                             SERVING_DEFAULT, CaptionResult, caption_results)
from serving.protocol import (ServingError, UnavailableError, error_for_code, error_for_http,
                              metadata_json, proto_json)

DEFAULT_REST = "http://127.0.0.1:8501"


@dataclasses.dataclass
class ClientSettings:
    model: str = "captioner"
    version: int | None = None  # pin a version; None = the newest
    timeout: float = 30.0  # seconds per request
    retries: int = 3  # extra attempts after a retryable failure
    backoff: float = 0.5  # first retry delay in seconds, doubled each time
    batch_size: int = 16  # images per request
    max_request_bytes: int = 8 * 1024 * 1024  # encoded request size cap (below the server's)


class _Client:
    """Batching, size capping and retries; the transports fill in _predict, _status, _metadata
    and close."""
    _overhead_per_image = 1.0  # encoded bytes per image byte (REST's base64 makes it 4/3)

    def __init__(self, settings: ClientSettings | None = None, **overrides):
        self.settings = dataclasses.replace(settings or ClientSettings(), **overrides)

    def caption(self, images: list[bytes], signature: str = SERVING_DEFAULT) -> list[CaptionResult]:
        """One CaptionResult per encoded image (JPEG/PNG/GIF/BMP/WebP), in order. A bad image gives a
        result with .error set; a failed request raises ServingError."""
        results, cap = [], self.settings.max_request_bytes
        for chunk in self._chunks(images):
            if len(chunk) == 1 and self._encoded_size(chunk[0]) > cap:  # alone and still too big
                results.append(CaptionResult("", 0.0, f"image of {len(chunk[0])} bytes is over the "
                                             f"{cap}-byte request cap; not sent"))
            else:
                results += self._caption_batch(signature, IMAGE_INPUT, chunk)
        return results

    def caption_features(self, features, signature: str = CAPTION_FEATURES) -> list[CaptionResult]:
        """Captions for precomputed encoder features, float32 [n, 2048]."""
        features, step = np.asarray(features, dtype=np.float32), self.settings.batch_size
        return [result for start in range(0, len(features), step)
                for result in self._caption_batch(signature, FEATURES_INPUT, features[start:start + step])]

    def status(self) -> dict:  # as TF Serving's REST API prints it, over either transport
        return self._retrying(self._status)

    def metadata(self) -> dict:  # the signature defs, likewise
        return self._retrying(self._metadata)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _caption_batch(self, signature: str, input_name: str, batch) -> list[CaptionResult]:
        """One request; a server answer that breaks the serving contract is a ServingError."""
        outputs = self._retrying(self._predict, signature, input_name, batch)
        try:
            return caption_results(outputs, len(batch))
        except ValueError as error:
            raise ServingError(f"the server's answer breaks the serving contract: {error}") from None

    def _encoded_size(self, image: bytes) -> int:
        return int(len(image) * self._overhead_per_image) + 64

    def _chunks(self, images: list[bytes]):
        """The images in order, in runs of at most batch_size images and max_request_bytes."""
        chunk, size = [], 0
        for image in images:
            cost = self._encoded_size(image)
            if chunk and (len(chunk) == self.settings.batch_size
                          or size + cost > self.settings.max_request_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(image)
            size += cost
        if chunk:
            yield chunk

    def _retrying(self, call, *args):
        """call(*args), retried with exponential backoff (and jitter) while UNAVAILABLE."""
        for attempt in range(self.settings.retries + 1):
            try:
                return call(*args)
            except UnavailableError:
                if attempt == self.settings.retries:
                    raise
                time.sleep(self.settings.backoff * 2 ** attempt * random.uniform(0.75, 1.25))


class RestClient(_Client):
    """TF Serving's REST API (port 8501) with a requests.Session."""
    _overhead_per_image = 4 / 3

    def __init__(self, url: str = DEFAULT_REST, settings: ClientSettings | None = None, **overrides):
        super().__init__(settings, **overrides)
        self.url = url.rstrip("/")
        self.session = requests.Session()

    @property
    def model_url(self) -> str:
        s = self.settings
        return f"{self.url}/v1/models/{s.model}" + (f"/versions/{s.version}" if s.version is not None else "")

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = self.session.request(method, url, timeout=self.settings.timeout, **kwargs)
        except requests.Timeout as e:
            raise ServingError(f"no answer from {url} within {self.settings.timeout} s",
                               code="DEADLINE_EXCEEDED") from e
        except requests.ConnectionError as e:
            raise UnavailableError(f"cannot connect to {url}: {type(e).__name__}") from e
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            message = body.get("error") if isinstance(body, dict) else None
            raise error_for_http(response.status_code, message or response.text[:200] or response.reason)
        if not isinstance(body, dict):
            raise ServingError(f"{url} answered 200 with a body that is not a JSON object")
        return body

    def _predict(self, signature: str, input_name: str, batch) -> dict:
        column = ([{"b64": base64.b64encode(image).decode("ascii")} for image in batch]
                  if input_name == IMAGE_INPUT else np.asarray(batch).tolist())
        return self._request("POST", f"{self.model_url}:predict", json={  # _caption_batch checks them
            "signature_name": signature, "inputs": {input_name: column}}).get("outputs")

    def _status(self) -> dict:
        return self._request("GET", self.model_url)

    def _metadata(self) -> dict:
        return self._request("GET", f"{self.model_url}/metadata")


class GrpcClient(_Client):
    """TF Serving's gRPC API (port 8500); imports grpc and its protos (and TensorFlow) on first use."""
    max_message_bytes = 64 * 1024 * 1024  # gRPC's Python default of 4 MB is too small for images

    def __init__(self, target: str = "127.0.0.1:8500", settings: ClientSettings | None = None, **overrides):
        super().__init__(settings, **overrides)
        self.target = target
        self._channel = None

    def _stubs(self):
        if self._channel is None:
            import grpc
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes)]
            self._channel = grpc.insecure_channel(self.target, options=options)
            self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        return self._prediction, self._models

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call(self, method, request):
        """method(request) for this client's model (and version), gRPC errors as ServingErrors."""
        import grpc
        request.model_spec.name = self.settings.model
        if self.settings.version is not None:
            request.model_spec.version.value = self.settings.version
        try:
            return method(request, timeout=self.settings.timeout)
        except grpc.RpcError as e:
            raise error_for_code(e.code().name, f"{e.details()} (gRPC {self.target})") from None

    def _predict(self, signature: str, input_name: str, batch) -> dict:
        import tensorflow as tf  # tensorflow_serving.apis imports it anyway
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest(model_spec={"signature_name": signature},
                                             inputs={input_name: tf.make_tensor_proto(batch)})
        response = self._call(self._stubs()[0].Predict, request)
        return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}

    def _status(self) -> dict:
        from tensorflow_serving.apis import get_model_status_pb2
        return proto_json(self._call(self._stubs()[1].GetModelStatus, get_model_status_pb2.GetModelStatusRequest()))

    def _metadata(self) -> dict:
        from tensorflow_serving.apis import get_model_metadata_pb2
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        return metadata_json(self._call(self._stubs()[0].GetModelMetadata, request))


def make_client(rest: str | None = None, grpc: str | None = None, **settings) -> _Client:
    """RestClient for a URL, GrpcClient for HOST:PORT (REST on 127.0.0.1:8501 if neither)."""
    return GrpcClient(grpc, **settings) if grpc else RestClient(rest or DEFAULT_REST, **settings)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--rest URL | --grpc HOST:PORT and --model, as every command names the model server."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", metavar="URL", help=f"REST base URL (default {DEFAULT_REST})")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC target, e.g. 127.0.0.1:8500")
    parser.add_argument("--model", default="captioner", help="model name (default captioner)")


# --- command line ------------------------------------------------------------------------------
def find_images(paths: list[str]) -> list[str]:
    """Files as given, plus image files (by extension) found recursively in folders, sorted."""
    found = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
        inside = sorted(str(p) for p in Path(path).rglob("*") if p.is_file()) if os.path.isdir(path) else None
        found += [path] if inside is None else [p for p in inside if p.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m serving.client",
        description="Caption images with the captioner served by TF Serving (or serving.model_server). "
                    "Prints path<TAB>caption, or path<TAB>ERROR: reason, one line per image (beam_search: "
                    "then each beam's score and caption, best first, indented).")
    add_server_arguments(parser)
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument("--signature", default=SERVING_DEFAULT, choices=IMAGE_SIGNATURES,
                        help="serving_default (greedy) or beam_search")
    parser.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")
    parser.add_argument("--json", action="store_true", help="one JSON object per image: path, caption, "
                        "log_prob, error, alternatives [{caption, score}] (beam_search; else [])")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="print the model status JSON")
    action.add_argument("--metadata", action="store_true", help="print the signature defs JSON")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders")
    args = parser.parse_args(argv)
    if not (args.status or args.metadata or args.paths):
        parser.error("give image files or folders, or --status / --metadata")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def main(argv=None) -> int:
    """Exit 0: all captioned; 1: some images had errors; 2: the request failed (message on stderr)."""
    args = _parse_args(argv)
    try:
        with make_client(args.rest, args.grpc, model=args.model, version=args.version, timeout=args.timeout,
                         retries=args.retries, batch_size=args.batch_size) as client:
            if args.status or args.metadata:
                print(json.dumps(client.status() if args.status else client.metadata(), indent=2))
                return 0
            return _caption_paths(client, find_images(args.paths), args.signature, args.batch_size, args.json)
    except (ServingError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _caption_paths(client, paths: list[str], signature: str, batch_size: int, as_json=False) -> int:
    if not paths:
        raise FileNotFoundError("no image files found (looked for " + ", ".join(IMAGE_EXTENSIONS) + ")")
    failures = 0
    for start in range(0, len(paths), batch_size):  # read only one batch of files at a time
        batch = paths[start:start + batch_size]
        images = [Path(path).read_bytes() for path in batch]
        for path, r in zip(batch, client.caption(images, signature)):
            if as_json:
                print(json.dumps({"path": path, **r.as_json()}), flush=True)
            else:  # beam_search's beams, best first, under the caption
                print(f"{path}\t{r.caption}" if r.ok else f"{path}\tERROR: {r.error}", *(
                    f"  {score:8.3f}  {caption}" for caption, score in r.alternatives), sep="\n", flush=True)
            failures += not r.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

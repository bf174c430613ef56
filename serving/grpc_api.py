"""TF Serving's gRPC API (port 8500) on grpcio: PredictionService.Predict and GetModelMetadata,
ModelService.GetModelStatus, with TF Serving's status codes (INVALID_ARGUMENT, NOT_FOUND, ...)."""
import concurrent.futures
import functools
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import api_protos
from serving.errors import InvalidArgumentError, ServingError
from serving.predictor import Predictor


def _grpc_errors(method):
    """ServingError -> the matching gRPC status; anything else -> INTERNAL."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN), error.message)
        except tf.errors.OpError as error:
            context.abort(grpc.StatusCode.INTERNAL, error.message)
    return wrapper


def _version_request(model_spec):
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    return model_spec.name, version, label


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, metrics=None):
        self.predictor = predictor
        self.metrics = metrics

    def Predict(self, request, context):
        started = time.monotonic()
        try:
            return self._predict(request, context)
        finally:
            if self.metrics is not None:
                code = context.code()  # set by context.abort, None on success
                self.metrics.observe_request(request.model_spec.name, "predict",
                                             getattr(code, "name", None) or "OK",
                                             time.monotonic() - started, entrypoint="GRPC")

    @_grpc_errors
    def _predict(self, request, context):
        with self.predictor.version(*_version_request(request.model_spec)) as loaded:
            signature = loaded.signature(request.model_spec.signature_name)
            inputs = {}
            for alias, tensor in request.inputs.items():
                try:
                    inputs[alias] = tf.make_ndarray(tensor)
                except (TypeError, ValueError) as e:
                    raise InvalidArgumentError(f"Input '{alias}' is not a valid TensorProto: {e}") from e
            outputs = self.predictor.predict(loaded, signature, inputs, list(request.output_filter),
                                             timeout=context.time_remaining())
            response = predict_pb2.PredictResponse()
            response.model_spec.name = loaded.model_name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature.name
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
            return response

    @_grpc_errors
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidArgumentError(f"Metadata field {fields} is not supported: ask for "
                                       "exactly [\"signature_def\"]")
        with self.predictor.version(*_version_request(request.model_spec)) as loaded:
            return api_protos.model_metadata(loaded)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, predictor: Predictor):
        self.registry = predictor.registry

    @_grpc_errors
    def GetModelStatus(self, request, context):
        return api_protos.model_status(self.registry, *_version_request(request.model_spec))


def create_server(predictor: Predictor, host: str, port: int, max_message_bytes: int,
                  metrics=None, workers: int = 32) -> tuple[grpc.Server, int]:
    """A started-later grpc.Server with both services; returns (server, bound port)."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="grpc"),
                         options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(predictor), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound

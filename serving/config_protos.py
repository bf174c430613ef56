"""Reads TF Serving's text-format config files with TF Serving's own proto messages.

- models.config      -> tensorflow.serving.ModelServerConfig (tensorflow_serving.config)
- batching.config    -> tensorflow.serving.BatchingParameters
- monitoring.config  -> tensorflow.serving.MonitoringConfig

The tensorflow-serving-api wheel (2.21.0) ships model_server_config_pb2 but neither
session_bundle_config_pb2 (BatchingParameters) nor monitoring_config_pb2. When they are not
importable, the two messages are built here from the field list of the upstream .proto files
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto and
tensorflow_serving/config/monitoring_config.proto: same package, names, numbers and types), in a
private descriptor pool so they can never clash with a real copy. Text-format parsing therefore
rejects a misspelt field exactly as the server would.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

_INT64_WRAPPER = ".google.protobuf.Int64Value"
_STRING_WRAPPER = ".google.protobuf.StringValue"
# (name, number, type, type_name, repeated) from upstream session_bundle_config.proto.
_BATCHING_FIELDS = [
    ("max_batch_size", 1, "TYPE_MESSAGE", _INT64_WRAPPER, False),
    ("batch_timeout_micros", 2, "TYPE_MESSAGE", _INT64_WRAPPER, False),
    ("max_enqueued_batches", 3, "TYPE_MESSAGE", _INT64_WRAPPER, False),
    ("num_batch_threads", 4, "TYPE_MESSAGE", _INT64_WRAPPER, False),
    ("thread_pool_name", 5, "TYPE_MESSAGE", _STRING_WRAPPER, False),
    ("allowed_batch_sizes", 6, "TYPE_INT64", None, True),
    ("pad_variable_length_inputs", 7, "TYPE_BOOL", None, False),
]


def _add_message(file_proto, name, fields):
    message = file_proto.message_type.add(name=name)
    for field_name, number, type_name, message_type, repeated in fields:
        field = message.field.add(
            name=field_name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, type_name),
            label=(descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                   else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL))
        if message_type:
            field.type_name = message_type


def _transcribed_messages():
    """BatchingParameters and MonitoringConfig classes built from the upstream field lists."""
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="serving_transcribed_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    _add_message(file_proto, "BatchingParameters", _BATCHING_FIELDS)
    _add_message(file_proto, "PrometheusConfig", [("enable", 1, "TYPE_BOOL", None, False),
                                                  ("path", 2, "TYPE_STRING", None, False)])
    _add_message(file_proto, "MonitoringConfig", [
        ("prometheus_config", 1, "TYPE_MESSAGE", ".tensorflow.serving.PrometheusConfig", False)])
    pool.Add(file_proto)

    def get(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))

    return get("BatchingParameters"), get("MonitoringConfig")


try:  # the real modules, where a tensorflow-serving build provides them
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
    from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
except ImportError:
    BatchingParameters, MonitoringConfig = _transcribed_messages()

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


def _parse(path: str, message):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e}") from e
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ValueError(f"{path} is not a valid text-format {message.DESCRIPTOR.full_name}: {e}") from e


def load_model_server_config(path: str) -> ModelServerConfig:
    """models.config (text ModelServerConfig holding a model_config_list)."""
    config = _parse(path, ModelServerConfig())
    if not config.model_config_list.config:
        raise ValueError(f"{path}: expected `model_config_list {{ config {{ name: ... base_path: ... }} }}`")
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: every model config needs a name and a base_path, got {model}")
    return config


def load_batching_parameters(path: str):
    """batching.config (text BatchingParameters), checked the way TF Serving checks it."""
    params = _parse(path, BatchingParameters())
    check_batching_parameters(params, path)
    return params


def check_batching_parameters(params, where: str = "batching parameters") -> None:
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] <= 0:
            raise ValueError(f"{where}: allowed_batch_sizes must be positive and increasing, got {sizes}")
        if params.HasField("max_batch_size") and sizes[-1] != params.max_batch_size.value:
            raise ValueError(f"{where}: the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                             f"max_batch_size ({params.max_batch_size.value})")
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name) and getattr(params, name).value < 1:
            raise ValueError(f"{where}: {name} must be >= 1, got {getattr(params, name).value}")


def load_monitoring_config(path: str):
    """monitoring.config (text MonitoringConfig)."""
    return _parse(path, MonitoringConfig())

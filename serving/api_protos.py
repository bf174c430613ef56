"""GetModelStatus / GetModelMetadata responses as TF Serving's own proto messages, shared by the gRPC
front end (sent as is) and the REST one (printed with json_format, as TF Serving prints them)."""
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.model_registry import LoadedVersion, ModelRegistry

_State = get_model_status_pb2.ModelVersionStatus.State


def model_status(registry: ModelRegistry, name: str, version: int | None = None,
                 label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state, error in registry.status(name, version, label):
        entry = response.model_version_status.add(version=number, state=_State.Value(state))
        entry.status.error_code = 0 if not error else 2  # tensorflow.error.Code OK / UNKNOWN
        entry.status.error_message = error
    return response


def model_metadata(loaded: LoadedVersion) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = loaded.model_name
    response.model_spec.version.value = loaded.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in loaded.signature_defs.items():
        signatures.signature_def[name].CopyFrom(signature_def)
    response.metadata["signature_def"].Pack(signatures)
    return response


def to_json_dict(message) -> dict:
    """TF Serving's JSON printing: proto field names, default values included."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """REST metadata: the SignatureDefMap is printed unpacked, as TF Serving's REST API does."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return {"model_spec": to_json_dict(response.model_spec),
            "metadata": {"signature_def": to_json_dict(signatures)}}

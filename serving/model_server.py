"""A local model server that speaks TF Serving's REST and gRPC APIs — for development and tests.

Production runs the real server, the tensorflow/serving:2.21.0 container (see
serving/README-deploy.md). This one exists so that the client, the Gradio app and the tests can talk
to the exported SavedModel on a machine without Docker, through the same protocol and the same TF1
session path (tf.compat.v1 SavedModel loader, signatures run by tensor name) as the real server.
It takes tensorflow_model_server's flag names:

    python -m serving.model_server --port=8500 --rest_api_port=8501 \\
        --model_name=captioner --model_base_path=models/captioner [--enable_batching ...]

It waits for the initial versions to load before listening, polls the base paths for new versions,
and stops cleanly (exit 0) on SIGINT/SIGTERM.
"""
import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading

# Before TensorFlow is imported (by the modules below).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("serving.model_server")


@dataclasses.dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    model_name: str = ""
    model_base_path: str = ""
    model_config_file: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    file_system_poll_wait_seconds: float = 1.0
    rest_api_timeout_in_ms: int = 30000
    max_request_bytes: int = 64 * 1024 * 1024
    monitoring_config_file: str = ""
    enable_model_warmup: bool = True


def _bool_flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None) -> ServerSettings:
    defaults = ServerSettings()
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_server",
        description="Local TF Serving-compatible model server (REST + gRPC) FOR DEVELOPMENT AND TESTS. "
                    "Production runs the tensorflow/serving:2.21.0 container: see serving/README-deploy.md.")
    add = parser.add_argument
    add("--host", default=defaults.host, help="address to bind both APIs to (default 127.0.0.1)")
    add("--port", type=int, default=defaults.port, help="gRPC port (default 8500)")
    add("--rest_api_port", type=int, default=defaults.rest_api_port,
        help="REST port (default 8501; 0 disables REST)")
    add("--model_name", default="", help="model name when serving one model (with --model_base_path)")
    add("--model_base_path", default="", help="folder holding numeric version sub-folders")
    add("--model_config_file", default="",
        help="text-format ModelServerConfig (model_config_list); replaces --model_name/--model_base_path")
    add("--enable_batching", type=_bool_flag, nargs="?", const=True, default=False,
        help="merge concurrent requests into batches (server-side batching)")
    add("--batching_parameters_file", default="", help="text-format BatchingParameters")
    add("--file_system_poll_wait_seconds", type=float, default=defaults.file_system_poll_wait_seconds,
        help="seconds between polls of the base paths for new versions (0 = no polling; default 1)")
    add("--rest_api_timeout_in_ms", type=int, default=defaults.rest_api_timeout_in_ms,
        help="REST predict timeout (default 30000)")
    add("--max_request_bytes", type=int, default=defaults.max_request_bytes,
        help="largest accepted REST body or gRPC message (default 64 MiB)")
    add("--monitoring_config_file", default="", help="text-format MonitoringConfig (Prometheus)")
    add("--enable_model_warmup", type=_bool_flag, nargs="?", const=True, default=True,
        help="replay assets.extra/tf_serving_warmup_requests before serving a version (default true)")
    args = parser.parse_args(argv)
    if not args.model_config_file and not (args.model_name and args.model_base_path):
        parser.error("give --model_config_file, or --model_name and --model_base_path")
    return ServerSettings(**vars(args))


def model_configs(settings: ServerSettings):
    from serving.config_protos import ModelConfig, load_model_server_config
    if settings.model_config_file:
        return list(load_model_server_config(settings.model_config_file).model_config_list.config)
    return [ModelConfig(name=settings.model_name, base_path=os.path.abspath(settings.model_base_path),
                        model_platform="tensorflow")]


class ModelServer:
    """Registry + predictor + REST and gRPC front ends; start() returns once both listen."""

    def __init__(self, settings: ServerSettings):
        from serving.batching import Batcher, BatchingSettings
        from serving.config_protos import BatchingParameters, load_batching_parameters, load_monitoring_config
        from serving.metrics import Metrics
        from serving.model_registry import ModelRegistry
        from serving.predictor import Predictor

        self.settings = settings
        self.registry = ModelRegistry(model_configs(settings), warmup=settings.enable_model_warmup)
        self.batcher = None
        if settings.enable_batching:
            params = (load_batching_parameters(settings.batching_parameters_file)
                      if settings.batching_parameters_file else BatchingParameters())
            self.batcher = Batcher(BatchingSettings.from_proto(params))
            log.info("batching enabled: %s", self.batcher.settings)
        self.metrics = None
        if settings.monitoring_config_file:
            prometheus = load_monitoring_config(settings.monitoring_config_file).prometheus_config
            if prometheus.enable:
                self.metrics = Metrics(prometheus.path)
        self.predictor = Predictor(self.registry, self.batcher)
        self._grpc = None
        self._rest = None
        self._rest_thread = None

    def start(self) -> None:
        import uvicorn
        from serving import grpc_api, rest_api

        s = self.settings
        self.registry.refresh()  # like TF Serving: load the initial versions before listening
        self.registry.start_polling(s.file_system_poll_wait_seconds)
        self._grpc, port = grpc_api.create_server(self.predictor, s.host, s.port, s.max_request_bytes,
                                                  self.metrics)
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%d (development server) ...", s.host, port)
        if s.rest_api_port:
            app = rest_api.create_app(self.predictor, s.max_request_bytes,
                                      s.rest_api_timeout_in_ms / 1000, self.metrics)
            config = uvicorn.Config(app, host=s.host, port=s.rest_api_port, log_level="warning",
                                    access_log=False, timeout_graceful_shutdown=5)
            self._rest = uvicorn.Server(config)
            # In a thread, so that uvicorn leaves signal handling to main().
            self._rest_thread = threading.Thread(target=self._rest.run, name="rest", daemon=True)
            self._rest_thread.start()
            while not self._rest.started:
                if not self._rest_thread.is_alive():
                    raise OSError(f"REST API could not start on {s.host}:{s.rest_api_port} (port in use?)")
                self._rest_thread.join(timeout=0.05)
            log.info("Exporting HTTP/REST API at %s:%d (development server) ...", s.host, s.rest_api_port)

    def stop(self) -> None:
        if self._rest is not None:
            self._rest.should_exit = True
            self._rest_thread.join(timeout=15)
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        if self.batcher is not None:
            self.batcher.close()
        self.registry.close()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: stop.set())
    server = None
    try:
        server = ModelServer(settings)
        server.start()
    except (OSError, ValueError) as e:
        log.error("%s", e)
        if server is not None:
            server.stop()
        return 1
    while not stop.wait(0.5):  # the signal handler runs in this (main) thread
        pass
    log.info("shutting down")
    server.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Everything is stopped and flushed by now; skip the interpreter's teardown of TensorFlow's and
    # gRPC's native state, which takes ~5 s here and has nothing left to save.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)

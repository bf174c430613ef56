"""A few Prometheus metrics for the local server (--monitoring_config_file with prometheus_config),
named after TF Serving's: request counts and latency per model, API and status, and the available
versions. The container exports many more; these let a scrape config be tried locally."""
import collections
import threading

from serving.errors import HTTP_STATUS

_CODE_BY_HTTP = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}


class Metrics:
    def __init__(self, path: str = "/monitoring/prometheus/metrics"):
        self.path = path or "/monitoring/prometheus/metrics"
        self._lock = threading.Lock()
        self._count = collections.Counter()
        self._latency_sum = collections.Counter()

    def observe_request(self, model: str, api: str, status, seconds: float, entrypoint: str = "REST"):
        """status: an HTTP status (REST) or a canonical code name (gRPC)."""
        code = _CODE_BY_HTTP.get(status, "UNKNOWN") if isinstance(status, int) else status
        with self._lock:
            self._count[(model, api, entrypoint, code)] += 1
            self._latency_sum[(model, api, entrypoint)] += seconds

    def render(self, registry) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, api, entrypoint, code), n in sorted(self._count.items()):
                lines.append(f':tensorflow:serving:request_count{{API="{api}",entrypoint="{entrypoint}",'
                             f'model_name="{model}",status="{code}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency_seconds_sum counter")
            for (model, api, entrypoint), total in sorted(self._latency_sum.items()):
                lines.append(f':tensorflow:serving:request_latency_seconds_sum{{API="{api}",'
                             f'entrypoint="{entrypoint}",model_name="{model}"}} {total:.6f}')
        lines.append("# TYPE :tensorflow:serving:available_versions gauge")
        for name in sorted(registry.configs):
            try:
                rows = registry.status(name)
            except Exception:
                rows = []
            available = sum(1 for _, state, _ in rows if state == "AVAILABLE")
            lines.append(f':tensorflow:serving:available_versions{{model_name="{name}"}} {available}')
        return "\n".join(lines) + "\n"

"""serving.client (library and CLI) against a real local server: same captions over REST and gRPC as
in-process, clear exceptions, retries only where they make sense."""
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from serving.client import ClientSettings, GrpcClient, RestClient, make_client
from serving.protocol import InvalidArgumentError, NotFoundError, UnavailableError
from tests.helpers import REPO
from tests.helpers.images import BLUE, RED, RED_CORNER, image_bytes, red_corner_image
from tests.helpers.servers import IS_STANDIN, ServerProcess, free_port, subprocess_env


@pytest.fixture(params=["rest", "grpc"])
def client(request, server):
    if request.param == "rest":
        c = RestClient(server.rest_url, retries=0)
    else:
        c = GrpcClient(server.grpc_target, retries=0)
    with c:
        yield c


def test_captions_equal_in_process(client, reference):
    images = [image_bytes(RED), image_bytes(BLUE, fmt="JPEG"), b"not an image"]
    for signature in ("serving_default", "beam_search"):
        results = client.caption(images, signature)
        expected = reference.caption(images, signature)
        assert [(r.caption, r.error) for r in results] == [(e.caption, e.error) for e in expected]
        assert [r.log_prob for r in results] == pytest.approx([e.log_prob for e in expected], abs=1e-5)
        assert [r.ok for r in results] == [True, True, False]
        # beam_search's beams, best first, as in process; none for greedy or for the bad image
        assert [[c for c, _ in r.alternatives] for r in results] == [[c for c, _ in e.alternatives] for e in expected]
        assert [s for r in results for _, s in r.alternatives] == \
            pytest.approx([s for e in expected for _, s in e.alternatives], abs=1e-5)
        widths = [len(r.alternatives) for r in results]
        assert widths == ([3, 3, 0] if signature == "beam_search" else [0, 0, 0])
        assert all(r.alternatives[0][0] == r.caption for r in results if r.alternatives)


def test_pooled_results_have_no_attention(client):
    result = client.caption([image_bytes(RED)])[0]
    assert result.attention is None
    with pytest.raises(ValueError, match="serves no attention maps"):
        result.word_maps()


@pytest.fixture(params=["rest", "grpc"])
def attention_client(request, attention_server):
    c = (RestClient(attention_server.rest_url, retries=0) if request.param == "rest"
         else GrpcClient(attention_server.grpc_target, retries=0))
    with c:
        yield c


@pytest.mark.slow  # the attention stand-in's own server
def test_attention_maps_equal_in_process(attention_client, attention_reference):
    images = [red_corner_image(), image_bytes(BLUE, fmt="JPEG"), b"not an image"]
    for signature in ("serving_default", "beam_search"):
        results = attention_client.caption(images, signature)
        expected = attention_reference.run(signature, {"image_bytes": np.array(images, dtype=object)})
        assert [r.caption for r in results] == [c.decode() for c in expected["caption"]]
        for result, maps in zip(results, expected["attention"]):
            assert result.attention.dtype == np.float32 and result.attention.shape == (30, 7, 7)
            np.testing.assert_allclose(result.attention, maps, atol=1e-6)
        assert not np.any(results[2].attention)  # the bad image: all zeros


@pytest.mark.slow  # the attention stand-in's own server
def test_attention_word_maps_show_where_the_colour_is(attention_client):
    red, blue = attention_client.caption([red_corner_image(), image_bytes(BLUE)])
    pairs = red.word_maps()
    assert [word for word, _ in pairs] == ["a", "red", "image", "<end>"]
    np.testing.assert_allclose([grid.sum() for _, grid in pairs], 1, atol=1e-5)
    assert not np.any(red.attention[len(pairs):])  # zeros after <end>
    block = int(7 * RED_CORNER)  # cells fully inside the red block: rows and columns 0..block-1
    red_map = dict(pairs)["red"]
    assert red_map[:block + 1, :block + 1].sum() > 0.95  # (band `block` is partly red)
    assert dict(pairs)["image"][:block, :block].sum() < 0.01  # other words look elsewhere
    np.testing.assert_allclose(dict(blue.word_maps())["blue"], 1 / 49, atol=1e-6)  # one colour


def test_batches_and_order_are_kept(server, reference):
    images = [image_bytes(RED if i % 3 else BLUE) for i in range(11)]
    with RestClient(server.rest_url, batch_size=4) as client:
        results = client.caption(images)
    assert [r.caption for r in results] == [e.caption for e in reference.caption(images)]


def test_caption_features(client, reference):
    features = np.random.default_rng(0).random([3, 2048], dtype=np.float32)
    expected = reference.run("caption_features", {"features": features})
    assert [r.caption for r in client.caption_features(features)] == [c.decode() for c in expected["caption"]]


def test_status_and_metadata_same_over_both(server):
    with RestClient(server.rest_url) as rest, GrpcClient(server.grpc_target) as grpc_client:
        assert rest.status() == grpc_client.status()
        assert rest.status()["model_version_status"][0]["state"] == "AVAILABLE"
        assert rest.metadata() == grpc_client.metadata()
        assert "beam_search" in rest.metadata()["metadata"]["signature_def"]["signature_def"]


def test_clear_exceptions(client):
    with pytest.raises(InvalidArgumentError, match="nope"):
        client.caption([image_bytes()], signature="nope")
    wrong_model = type(client)(getattr(client, "url", None) or client.target, model="nope")
    with pytest.raises(NotFoundError, match="nope"), wrong_model:
        wrong_model.caption([image_bytes()])
    wrong_version = type(client)(getattr(client, "url", None) or client.target, version=42)
    with pytest.raises(NotFoundError) as raised, wrong_version:
        wrong_version.status()
    assert raised.value.http_status == 404


def test_no_retry_on_400(server):
    started = time.monotonic()
    with RestClient(server.rest_url, retries=3, backoff=5) as client:
        with pytest.raises(InvalidArgumentError):
            client.caption([image_bytes()], signature="nope")
    assert time.monotonic() - started < 3.5  # one retry would have waited at least 3.75 s


def test_oversized_image_is_not_sent(server):
    with RestClient(server.rest_url, max_request_bytes=4096) as client:
        results = client.caption([image_bytes(RED), b"\xff\xd8\xff" + bytes(8000)])
    assert results[0].ok and not results[1].ok
    assert "not sent" in results[1].error


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_unavailable_after_retries_with_backoff(transport):
    port = free_port()  # nothing listens there
    target = f"http://127.0.0.1:{port}" if transport == "rest" else f"127.0.0.1:{port}"
    client = make_client(**{transport: target}, retries=2, backoff=0.3, timeout=5)
    started = time.monotonic()
    with pytest.raises(UnavailableError), client:
        client.caption([image_bytes()])
    # two retries: ~0.3 s + ~0.6 s of backoff (each +-25%)
    assert 0.6 < time.monotonic() - started < 15


@pytest.mark.slow
def test_retries_until_a_late_server_comes_up(served_model_base, reference, tmp_path):
    late = ServerProcess(str(tmp_path / "late.log"), base=served_model_base)
    settings = ClientSettings(retries=8, backoff=0.5, timeout=30)
    outcome = {}

    def call():
        with RestClient(late.rest_url, settings) as client:
            try:
                outcome["results"] = client.caption([image_bytes(BLUE)])
            except Exception as e:  # reported below
                outcome["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the client is already retrying against a closed port
    late.start(wait=False)
    try:
        caller.join(timeout=200)
        assert not caller.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["results"][0].caption == reference.caption([image_bytes(BLUE)])[0].caption
    finally:
        assert late.stop(signal.SIGINT) == 0  # Ctrl-C stops it cleanly too


# --- CLI ----------------------------------------------------------------------------------------
def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m serving.client ARGS` in a fresh interpreter: the command's smoke test."""
    return subprocess.run([sys.executable, "-m", "serving.client", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def cli(capsys):
    """cli(*ARGS) -> the exit code, stdout and stderr of the command's main(ARGS), run in this
    process (what `python -m serving.client ARGS` runs, without starting an interpreter)."""
    from serving.client import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as done:  # argparse
            code = done.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["serving.client", *args], code, out.out, out.err)
    return run


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_images")
    (folder / "sub").mkdir()
    (folder / "red.png").write_bytes(image_bytes(RED))
    (folder / "sub" / "blue.jpg").write_bytes(image_bytes(BLUE, fmt="JPEG"))
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_cli_captions_a_folder(server, reference, image_folder, transport, cli):
    where = ["--rest", server.rest_url] if transport == "rest" else ["--grpc", server.grpc_target]
    # The one test of the command itself, in its own interpreter; the others call its main().
    result = (run_cli if transport == "rest" else cli)(*where, "--batch-size", "2", str(image_folder))
    assert result.returncode == 1, result.stderr  # 1: one image could not be captioned
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    red, blue = str(image_folder / "red.png"), str(image_folder / "sub" / "blue.jpg")
    assert set(lines) == {red, blue, str(image_folder / "sub" / "broken.png")}
    assert lines[red] == reference.caption([image_bytes(RED)])[0].caption
    assert lines[blue] == reference.caption([(image_folder / "sub" / "blue.jpg").read_bytes()])[0].caption
    assert lines[str(image_folder / "sub" / "broken.png")].startswith("ERROR: ")
    if IS_STANDIN:
        assert lines[red] == "a red image"


@pytest.mark.slow
def test_cli_beam_search_status_and_metadata(server, image_folder, cli):
    result = cli("--rest", server.rest_url, "--signature", "beam_search", str(image_folder / "red.png"))
    assert result.returncode == 0, result.stderr
    if IS_STANDIN:  # the caption's line (its beams follow: test_cli_lists_beam_search_alternatives)
        assert result.stdout.splitlines()[0].endswith("\ta picture that is mostly red")
    status = cli("--rest", server.rest_url, "--status")
    assert status.returncode == 0 and '"AVAILABLE"' in status.stdout
    metadata = cli("--grpc", server.grpc_target, "--metadata")
    assert metadata.returncode == 0 and '"caption_features"' in metadata.stdout


def test_cli_lists_beam_search_alternatives(server, reference, image_folder, cli):
    red, broken = str(image_folder / "red.png"), str(image_folder / "sub" / "broken.png")
    result = cli("--rest", server.rest_url, "--signature", "beam_search", red, broken)
    assert result.returncode == 1, result.stderr
    good, bad = reference.caption([open(red, "rb").read(), open(broken, "rb").read()], "beam_search")
    assert len(good.alternatives) == 3 and not bad.alternatives
    assert result.stdout.splitlines() == [  # every beam under its caption, best first; none for an error
        f"{red}\t{good.caption}", *(f"  {score:8.3f}  {caption}" for caption, score in good.alternatives),
        f"{broken}\tERROR: {bad.error}"]


@pytest.mark.parametrize("transport, signature", [("rest", "beam_search"), ("grpc", "beam_search"),
                                                  pytest.param("rest", "serving_default", marks=pytest.mark.slow)])
def test_cli_json_writes_one_object_per_image(server, reference, image_folder, transport, signature,
                                            cli):
    where = ["--rest", server.rest_url] if transport == "rest" else ["--grpc", server.grpc_target]
    result = cli(*where, "--signature", signature, "--json", str(image_folder))
    assert result.returncode == 1, result.stderr  # 1: one image could not be captioned
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # JSON lines
    assert sorted(row["path"] for row in rows) == sorted(
        str(image_folder / name) for name in ("red.png", "sub/blue.jpg", "sub/broken.png"))
    for row in rows:
        assert list(row) == ["path", "caption", "log_prob", "error", "alternatives"]
        expected = reference.caption([open(row["path"], "rb").read()], signature)[0]
        assert (row["caption"], row["error"]) == (expected.caption, expected.error)
        assert row["log_prob"] == pytest.approx(expected.log_prob, abs=1e-5)
        assert [(a["caption"], pytest.approx(a["score"], abs=1e-5)) for a in row["alternatives"]] == \
            [(c, s) for c, s in expected.alternatives]
        assert len(row["alternatives"]) == (3 if signature == "beam_search" and not row["error"] else 0)
    assert [row["error"] != "" for row in rows].count(True) == 1


@pytest.mark.parametrize("args, mentions", [
    (["--model", "nope"], "nope"),
    (["--rest", "http://127.0.0.1:1", "--retries", "0"], "cannot connect"),
    (["/no/such/folder"], "no such file or folder"),
])
def test_cli_errors_are_clear(server, image_folder, args, mentions, cli):
    if "--rest" not in args:
        args = ["--rest", server.rest_url, *args]
    if not any(a.startswith("/") for a in args):
        args.append(str(image_folder))
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and mentions in result.stderr
    assert "Traceback" not in result.stderr

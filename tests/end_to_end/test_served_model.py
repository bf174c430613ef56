"""The whole path with a real export: a run folder (an untrained one: what is checked is that every
stage passes the model's answers on unchanged, not their quality) -> export -> the development
server (TF Serving's API) -> REST client, gRPC client and the Gradio app (gradio_client and a real
headless Chromium) all return the in-process model's captions."""
from pathlib import Path

import numpy as np
import pytest

from data.layouts import load_dataset
from data.splits import split_dataset
from model.decoding import caption_features
from model.run_dir import load_run
from serving.client import GrpcClient, RestClient
from tests.helpers.browser import CHROMIUM, captioned_page, wait_for_captions
from tests.helpers.reference import encoder_features, in_process_alternatives
from tests.helpers.servers import AppProcess, running_server

# Full tier only: the whole path again through a server process and a browser (~25 s); the fast
# tier covers each piece (export, C++ loader, client, page) on its own.
pytestmark = pytest.mark.slow
NUM_IMAGES = 12


@pytest.fixture(scope="module")
def exported(untrained_export):
    return untrained_export()


@pytest.fixture(scope="module")
def expected(exported):
    """Test-split image files and the in-process greedy/beam captions (and beam search's
    alternatives) from features computed in this process."""
    images = split_dataset(load_dataset(exported.data))["test"][:NUM_IMAGES]
    run = load_run(exported.run)
    features = encoder_features(run, [i.path for i in images])
    captioner = run.load_captioner()
    greedy, _ = caption_features(captioner, run.vocabulary.tokens, features, run.decode_config,
                                 "greedy", progress=False)
    beam, _ = caption_features(captioner, run.vocabulary.tokens, features, run.decode_config,
                               "beam", progress=False)
    return images, greedy, beam, in_process_alternatives(run, features)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    logs = tmp_path_factory.mktemp("e2e")
    with running_server(str(logs / "server.log"), base=str(exported.path.parent)) as server:
        yield server


def test_rest_and_grpc_return_the_in_process_captions(server, expected):
    images, greedy, beam, alternatives = expected
    payload = [image.path.read_bytes() for image in images]
    with RestClient(server.rest_url) as rest, GrpcClient(server.grpc_target) as grpc:
        for client in (rest, grpc):
            got = client.caption(payload)
            assert [r.error for r in got] == [""] * len(images)
            assert [r.caption for r in got] == greedy
            beams = client.caption(payload, "beam_search")
            assert [r.caption for r in beams] == beam
            assert [[c for c, _ in r.alternatives] for r in beams] == \
                [[c for c, _ in a] for a in alternatives]
            np.testing.assert_allclose([[s for _, s in r.alternatives] for r in beams],
                                       [[s for _, s in a] for a in alternatives], atol=1e-4)
        assert rest.status() == grpc.status()


def test_gradio_app_and_browser_show_the_model_caption(server, expected, tmp_path):
    from gradio_client import Client, handle_file
    images, greedy, beam, _ = expected
    app = AppProcess(server.rest_url, str(tmp_path / "app.log"))
    try:
        client = Client(app.url, verbose=False)
        assert client.predict(None, handle_file(str(images[0].path)), "greedy",
                              api_name="/caption_image") == greedy[0]
        assert client.predict(None, handle_file(str(images[1].path)), "beam search",
                              api_name="/caption_image") == beam[1]
        if not Path(CHROMIUM).exists():
            pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium (as .ci/run does)")
        with captioned_page(app.url, images[2].path, "end_to_end_app.png") as page:
            shown = wait_for_captions(page)
        assert shown == greedy[2]
    finally:
        app.stop()


@pytest.fixture(scope="module")
def attention_export(untrained_export):
    return untrained_export("attention")


@pytest.fixture(scope="module")
def attention_server(attention_export, tmp_path_factory):
    logs = tmp_path_factory.mktemp("e2e-attention")
    with running_server(str(logs / "server.log"), base=str(attention_export.path.parent)) as server:
        yield server


def test_attention_model_serves_maps_to_clients_and_the_page(attention_server, attention_export,
                                                             tmp_path):
    """A real attention export: REST and gRPC return its per-word maps exactly as the model
    computes them in TF Serving's session path, and the page draws them in a real browser."""
    from export.artifact import SessionModel
    images = split_dataset(load_dataset(attention_export.data))["test"][:4]
    payload = [image.path.read_bytes() for image in images]
    with SessionModel(attention_export.path) as session:
        direct = session.caption(payload)
    with RestClient(attention_server.rest_url) as rest, GrpcClient(attention_server.grpc_target) as grpc:
        for client in (rest, grpc):
            got = client.caption(payload)
            assert [r.caption for r in got] == [d.caption for d in direct]
            for result, reference in zip(got, direct):
                np.testing.assert_allclose(result.attention, reference.attention, atol=1e-6)
                words = result.word_maps()
                assert [w for w, _ in words][:len(result.caption.split())] == result.caption.split()
    app = AppProcess(attention_server.rest_url, str(tmp_path / "app.log"))
    try:
        if not Path(CHROMIUM).exists():
            pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium (as .ci/run does)")
        with captioned_page(app.url, images[0].path, "end_to_end_attention.png") as page:
            strip = page.locator("#attention-strip img").first
            strip.wait_for(state="visible", timeout=60000)
            box = strip.bounding_box()
            shown = page.input_value("#captions textarea")
        assert shown == direct[0].caption
        assert box["width"] > 300 and box["height"] > 60  # a strip of word tiles, not an icon
    finally:
        app.stop()

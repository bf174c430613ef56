"""The Gradio front end (serving.app) in a subprocess, talking to a real local model server: through
gradio_client, and through a real headless Chromium (Debian's /usr/bin/chromium, driven by the
playwright package) that uploads an image, clicks Caption, reads the caption and saves a screenshot
to tests/artifacts/. With beam search the page lists every beam's caption and score under the
caption; with the attention stand-in, it also shows the per-word heatmap strip."""
import os

import pytest

from tests.helpers.browser import ARTIFACTS, CHROMIUM, captioned_page, wait_for_captions
from tests.helpers.images import BLUE, RED, image_bytes, red_corner_image
from tests.helpers.servers import IS_STANDIN, AppProcess, free_port


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_images")
    (folder / "hostile").mkdir()  # not among the examples (those are the folder's top-level images)
    paths = {"red": folder / "red.png", "blue": folder / "blue.jpg", "bad": folder / "hostile" / "bad.png",
             "corner": folder / "hostile" / "red_corner.png"}
    paths["red"].write_bytes(image_bytes(RED, size=(320, 240)))
    paths["corner"].write_bytes(red_corner_image(size=(480, 300)))
    paths["blue"].write_bytes(image_bytes(BLUE, size=(320, 240), fmt="JPEG"))
    paths["bad"].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def app(server, images, tmp_path_factory):
    app = AppProcess(server.rest_url, str(tmp_path_factory.mktemp("app") / "app.log"),
                     examples=os.path.dirname(images["red"]))
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def attention_app(attention_server, tmp_path_factory):
    app = AppProcess(attention_server.rest_url, str(tmp_path_factory.mktemp("attention_app") / "app.log"))
    try:
        yield app
    finally:
        app.stop()


def test_gradio_client_single_multiple_and_beam(app, images, reference):
    from gradio_client import Client, handle_file
    client = Client(app.url, verbose=False)
    assert "/caption_image" in client.view_api(return_format="dict")["named_endpoints"]
    red, blue = (open(images[k], "rb").read() for k in ("red", "blue"))

    single = client.predict(None, handle_file(images["red"]), "greedy", api_name="/caption_image")
    assert single == reference.caption([red])[0].caption
    beam = client.predict(None, handle_file(images["blue"]), "beam search", api_name="/caption_image")
    assert beam == reference.caption([blue], "beam_search")[0].caption
    several = client.predict([handle_file(images[k]) for k in ("red", "blue", "bad")], None, "greedy",
                             api_name="/caption_image")
    lines = several.splitlines()
    assert lines[0] == f"red.png: {reference.caption([red])[0].caption}"
    assert lines[1] == f"blue.jpg: {reference.caption([blue])[0].caption}"
    assert lines[2].startswith("bad.png: ERROR: ")
    if IS_STANDIN:
        assert single == "a red image" and beam == "a picture that is mostly blue"


@pytest.mark.slow
def test_gradio_client_gets_just_the_caption_from_an_attention_model(attention_app, images):
    from gradio_client import Client, handle_file
    client = Client(attention_app.url, verbose=False)
    caption = client.predict(None, handle_file(images["corner"]), "greedy", api_name="/caption_image")
    assert caption == "a red image"  # the text alone, as for pooled models: the strip is page-only
    several = client.predict([handle_file(images[k]) for k in ("bad", "red")], None, "beam search",
                             api_name="/caption_image")
    assert several.splitlines()[0].startswith("bad.png: ERROR: ")  # a bad first image: no strip, no crash
    assert several.splitlines()[1] == "red.png: a picture that is mostly red"


def test_app_names_the_server_as_the_client_does(capsys):
    """One vocabulary: --rest URL | --grpc HOST:PORT (serving.client.add_server_arguments)."""
    from serving import app, client
    helps = []
    for module in (app, client):
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0
        helps.append(" ".join(capsys.readouterr().out.split()))
        with pytest.raises(SystemExit) as done:
            module.main(["--rest", "http://127.0.0.1:1", "--grpc", "127.0.0.1:1", "x.png"])
        assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    for text in helps:
        assert "--rest URL" in text and "--grpc HOST:PORT" in text and "--server" not in text


@pytest.mark.slow
def test_gradio_app_over_grpc(server, images, reference, tmp_path):
    from gradio_client import Client, handle_file
    app = AppProcess(server.grpc_target, str(tmp_path / "app.log"), transport="grpc")
    try:
        caption = Client(app.url, verbose=False).predict(None, handle_file(images["blue"]), "beam search",
                                                         api_name="/caption_image")
    finally:
        app.stop()
    assert caption == reference.caption([open(images["blue"], "rb").read()], "beam_search")[0].caption


@pytest.mark.slow
def test_clear_message_when_the_server_is_down(images, tmp_path):
    from gradio_client import Client, handle_file
    app = AppProcess(f"http://127.0.0.1:{free_port()}", str(tmp_path / "app.log"))
    try:
        message = Client(app.url, verbose=False).predict(None, handle_file(images["red"]), "greedy",
                                                         api_name="/caption_image")
    finally:
        app.stop()
    assert "not reachable" in message and "cannot connect" in message


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_browser_upload_and_caption(app, images, reference):
    with captioned_page(app.url, images["red"], "serving_app.png") as page:
        caption = wait_for_captions(page)
        strip_shown = page.locator("#attention-strip").is_visible()
        beams_shown = page.locator("#alternatives").is_visible()
    screenshot = os.path.join(ARTIFACTS, "serving_app.png")
    assert caption == reference.caption([open(images["red"], "rb").read()])[0].caption
    assert not strip_shown  # pooled model: the page is as it always was
    assert not beams_shown  # greedy: one caption, no list
    assert os.path.getsize(screenshot) > 10000


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
@pytest.mark.slow
def test_browser_lists_beam_search_alternatives(app, images, reference):
    with captioned_page(app.url, images["blue"], "serving_app_beams.png", beam=True) as page:
        page.locator("#alternatives textarea").wait_for(state="visible", timeout=60000)
        page.wait_for_function(
            "() => document.querySelector('#alternatives textarea').value.length > 0", timeout=30000)
        caption = page.input_value("#captions textarea")
        listed = page.input_value("#alternatives textarea").splitlines()
    screenshot = os.path.join(ARTIFACTS, "serving_app_beams.png")
    expected = reference.caption([open(images["blue"], "rb").read()], "beam_search")[0]
    assert caption == expected.caption and len(expected.alternatives) == 3
    # under the caption, every beam best first with its score; the first is the caption
    assert listed == [f"{rank}. {c}  ({s:.3f})" for rank, (c, s) in enumerate(expected.alternatives, 1)]
    if IS_STANDIN:
        assert listed[0].startswith("1. a picture that is mostly blue  (")
    assert os.path.getsize(screenshot) > 10000


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
@pytest.mark.slow
def test_browser_shows_the_attention_strip(attention_app, images):
    with captioned_page(attention_app.url, images["corner"], "serving_app_attention.png") as page:
        strip = page.locator("#attention-strip img").first
        strip.wait_for(timeout=60000)
        page.wait_for_function("() => document.querySelector('#attention-strip img').complete "
                               "&& document.querySelector('#attention-strip img').naturalWidth > 0",
                               timeout=30000)
        caption = page.input_value("#captions textarea")
        natural = page.evaluate("() => { const i = document.querySelector('#attention-strip img');"
                                " return [i.naturalWidth, i.naturalHeight]; }")
        shown = strip.bounding_box()
    screenshot = os.path.join(ARTIFACTS, "serving_app_attention.png")
    assert caption == "a red image"
    # a, red, image, <end>: four word tiles of the 480x300 image (160x100 each) in one row
    assert natural[0] > 3 * natural[1] and natural[0] >= 4 * 160
    assert shown["width"] > 300 and shown["height"] > 60
    assert os.path.getsize(screenshot) > 10000

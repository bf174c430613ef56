"""A thin Gradio front end: uploads images, asks the model server for captions, shows them.

    python -m serving.app [--rest URL | --grpc HOST:PORT] [--port 7860] [--examples DIR]

It talks ONLY to a model server (the TF Serving container or serving.model_server) through
serving.client, with its flags: no model code here, and no TensorFlow unless --grpc (serving.client).
Binds 127.0.0.1, share=False, analytics off. gradio_client's endpoint is /caption_image (the
caption text); the page also lists beam search's other captions with their scores, and for an
attention model shows each word's map over the first image.
"""
import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # a command: TensorFlow's start-up noise is hidden before anything loads it
    from data.quiet import quiet_command
    quiet_command()

import gradio as gr
from PIL import Image

from data.files import BUILTIN_IMAGES, IMAGE_EXTENSIONS
from export.contract import BEAM_SEARCH, SERVING_DEFAULT, CaptionResult
from model.attention_maps import strip_of_file
from serving.client import DEFAULT_REST, add_server_arguments, make_client
from serving.protocol import ServingError, UnavailableError

MODES = {"greedy": SERVING_DEFAULT, "beam search": BEAM_SEARCH}
MAX_EXAMPLES = 6
STRIP_COLUMNS = 4  # word tiles per row: fits the page's right column at a readable size


def example_images(folder: str | None) -> list[str]:
    names = sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []
    return [os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)][:MAX_EXAMPLES]


def word_strip(path: str, result: CaptionResult) -> tuple[Image.Image | None, str]:
    """(the per-word attention strip of the image, "") or (None, a line on why there is none)."""
    if not result.ok or result.attention is None:
        return None, ""  # a pooled model, or nothing was captioned: nothing to explain
    strip, problem = strip_of_file(path, result.caption, result.attention, columns=STRIP_COLUMNS)
    return strip, f"\n({problem})" if problem else ""


def beam_list(captioned: list[tuple[str, CaptionResult]]) -> str:
    """Beam search's captions of each (path, result), best first, with their scores; "" if none."""
    named = len(captioned) > 1  # several images: each line names its image
    return "\n".join((f"{os.path.basename(path)}: " if named else "") + f"{rank}. {caption}  ({score:.3f})"
                     for path, result in captioned for rank, (caption, score) in enumerate(result.alternatives, 1))


def build_app(client, server_label: str, examples_dir: str | None = None) -> gr.Blocks:
    """The Gradio Blocks for a serving.client client (RestClient or GrpcClient)."""

    def captions(files, image, mode) -> tuple[str, list]:
        """(one caption line per image, [(path, CaptionResult)] or [] when nothing was captioned)."""
        paths = [f if isinstance(f, str) else f.name for f in (files or [])] + ([image] if image else [])
        if not paths:
            return "Upload one or more images first.", []
        try:
            results = client.caption([Path(p).read_bytes() for p in paths], MODES.get(mode, SERVING_DEFAULT))
        except ServingError as e:  # UnavailableError: down, or not ready yet
            reply = f"is not reachable or not ready: {e.message}" if isinstance(e, UnavailableError) \
                else f"returned an error: {e}"
            return f"The model server at {server_label} {reply}", []
        lines = [r.caption if r.ok else f"ERROR: {r.error}" for r in results]
        if len(paths) > 1:
            lines = [f"{os.path.basename(path)}: {line}" for path, line in zip(paths, lines)]
        return "\n".join(lines), list(zip(paths, results))

    def caption_image(files, image, mode):
        """Captions for the uploaded files and/or the single image, one line per image."""
        return captions(files, image, mode)[0]

    def caption_page(files, image, mode):
        text, captioned = captions(files, image, mode)
        strip, problem = word_strip(*captioned[0]) if captioned else (None, "")
        beams = beam_list(captioned)
        return text + problem, gr.Textbox(beams, visible=bool(beams)), strip, gr.Column(visible=strip is not None)

    # Analytics off by argument, not by environment: importing this module changes nothing.
    with gr.Blocks(title="Neural Storyteller", analytics_enabled=False) as app:
        gr.Markdown(f"# Neural Storyteller\nCaptions from the model server at `{server_label}`.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", format="png", elem_id="image")
                files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                label="Or several images", elem_id="files")
                mode = gr.Radio(list(MODES), value="greedy", label="Decoding")
                submit = gr.Button("Caption", variant="primary", elem_id="caption-button")
            with gr.Column():
                caption = gr.Textbox(label="Caption", lines=6, interactive=False, elem_id="captions")
                beams = gr.Textbox(label="Beam search: every beam, best first (length-normalised "
                                   "log-probability)", lines=3, interactive=False, visible=False,
                                   elem_id="alternatives")
                # Hidden until a model serves attention maps (pooled models never show it). No label
                # or buttons on the image: Gradio floats them over it, hiding the words' titles.
                with gr.Column(visible=False) as strip_box:
                    gr.Markdown("**Where the model looked for each word** (first image; brighter = "
                                "more attention)")
                    strip = gr.Image(type="pil", format="png", interactive=False, show_label=False,
                                     buttons=[], elem_id="attention-strip")
        if examples := example_images(examples_dir):
            gr.Examples(examples=[[path] for path in examples], inputs=[image])
        # The page's button shows caption and strip in one step, off the API. gradio_client's
        # /caption_image returns the caption text alone, on a hidden button (an endpoint needs a
        # trigger; gr.State instead would keep a heartbeat connection open on every page).
        submit.click(caption_page, inputs=[files, image, mode], outputs=[caption, beams, strip, strip_box],
                     api_name=False)
        gr.Button(visible=False).click(caption_image, inputs=[files, image, mode], outputs=caption,
                                       api_name="caption_image")
    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.app", description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", default=str(BUILTIN_IMAGES),
                        help=f"folder of example images (default {BUILTIN_IMAGES}, if present)")
    args = parser.parse_args(argv)
    client = make_client(args.rest, args.grpc, model=args.model)
    app = build_app(client, args.grpc or args.rest or DEFAULT_REST, args.examples)
    app.launch(server_name="127.0.0.1", server_port=args.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

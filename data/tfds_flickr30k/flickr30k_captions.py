"""Flickr30k (or Flickr8k, or the built-in dataset) as a TensorFlow Datasets builder.

There is no download: the user points `manual_dir` at the folder they downloaded, in any layout
data.layouts reads. The builder uses the very same reader (load_dataset) and split
(split_dataset) as the rest of the project, so TFDS and the plain-folder path agree on every
image, caption and split.

    import data.tfds_flickr30k  # registers the builder
    prepare("datasets/flickr30k", data_dir="datasets/tfds")       # once
    tfds.load("flickr30k_captions", data_dir="datasets/tfds", split="train")
"""
from __future__ import annotations

import pathlib
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

from data.layouts import LAYOUTS, ImageCaptions, load_dataset
from data.splits import split_dataset, split_mode

NAME = "flickr30k_captions"
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # ours -> TFDS names


class Flickr30kCaptions(tfds.core.GeneratorBasedBuilder):
    """Images with their cleaned captions; train/validation/test split by image."""

    # TFDS derives code_path from the package with an isinstance check against the optional
    # `importlib_resources` backport, which is not installed on Python >= 3.9
    # (ModuleNotFoundError in download_and_prepare). Naming the module file directly avoids it.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Any Flickr30k/Flickr8k layout; Karpathy split when available."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download Flickr30k yourself (it needs accepting its terms) and pass the folder holding it as
    manual_dir. Any of these layouts works ({", ".join(LAYOUTS)}):
      Kaggle adityajn105/flickr30k:         captions.txt + Images/
      Kaggle hsankesara/flickr-image-dataset: results.csv + flickr30k_images/[flickr30k_images/]
      Original release:                     results_20130124.token + flickr30k-images/
      Karpathy split (preferred, carries the split): dataset_flickr30k.json beside the images
    Flickr8k (Flickr8k.token.txt + Flicker8k_Dataset/) works the same way.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo(builder=self) builds the info from this class alone; TFDS's metadata-file
        # lookup (dataset_info_from_configs) fails for builders living outside tfds' own tree.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Flickr30k-style images with their cleaned captions.",
            features=tfds.features.FeaturesDict({
                # Given a file path, TFDS stores the file's original bytes (no re-encoding).
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image_name": tfds.features.Text(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            homepage="https://shannon.cs.illinois.edu/DenotationGraph/",
            metadata=tfds.core.MetadataDict(),
            citation="""@article{young2014image,
  title={From image descriptions to visual denotations},
  author={Young, Peter and Lai, Alice and Hodosh, Micah and Hockenmaier, Julia},
  journal={TACL}, volume={2}, pages={67--78}, year={2014}}""",
        )

    def _split_generators(self, dl_manager):
        dataset = load_dataset(dl_manager.manual_dir)
        splits = split_dataset(dataset)
        # Kept in the prepared dataset's metadata.json, so the skips stay visible later.
        self.info.metadata.update({
            "layout": dataset.layout,
            "split_mode": split_mode(dataset),
            "skipped": dataset.skipped.as_dict(),
        })
        print(f"{NAME}: {dataset.layout} in {dataset.root}; {dataset.skipped.summary()}")
        return {TFDS_SPLITS[name]: self._generate_examples(images)
                for name, images in splits.items() if images}  # TFDS refuses empty splits

    def _generate_examples(self, images: list[ImageCaptions]):
        for image in images:
            yield image.name, {"image": str(image.path), "image_name": image.name,
                               "captions": list(image.captions)}


def prepare(manual_dir, data_dir) -> tfds.core.DatasetBuilder:
    """Builds the TFDS dataset in `data_dir` from the download in `manual_dir` (offline)."""
    builder = Flickr30kCaptions(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _builder_from_dir(data_dir) -> tfds.core.DatasetBuilder:
    """The prepared dataset in `data_dir`: a TFDS data_dir (holding flickr30k_captions/<version>)
    or the version folder itself."""
    data_dir = pathlib.Path(data_dir)
    if (data_dir / "dataset_info.json").is_file():
        return tfds.builder_from_directory(str(data_dir))
    versions = sorted((p for p in (data_dir / NAME).glob("*") if (p / "dataset_info.json").is_file()),
                      key=lambda p: tfds.core.Version(p.name) if _is_version(p.name) else
                      tfds.core.Version("0.0.0"))
    if not versions:
        raise FileNotFoundError(f"no prepared {NAME} dataset in {data_dir}: expected "
                                f"{data_dir / NAME}/<version>/dataset_info.json (run prepare)")
    return tfds.builder_from_directory(str(versions[-1]))


def _is_version(text: str) -> bool:
    try:
        tfds.core.Version(text)
        return True
    except ValueError:
        return False


def tfds_records(data_dir, split: str) -> Iterator[tuple[str, bytes, list[str]]]:
    """(image name, encoded image bytes, captions) of a prepared split, images not decoded
    (data.images decodes them, as for every other source). `split`: train, val(idation), test."""
    builder = _builder_from_dir(data_dir)
    split = TFDS_SPLITS.get(split, split)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {data_dir}; it has "
                         f"{', '.join(builder.info.splits)}")
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    for example in dataset.as_numpy_iterator():
        yield (example["image_name"].decode("utf-8"), bytes(example["image"]),
               [caption.decode("utf-8") for caption in example["captions"]])

"""A TFDS dataset by name (data/tfds_reader.py) on tfds.testing.mock_data (nothing downloads): the one-time
export, the label offset and void, the training stream (deterministic, sharded over 2 processes, resumed at
step k), the one-line errors, and configs/ade20k.py's `:tfds` variant through every stage."""
import io
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from semeda_jax import data, stages
from semeda_jax.data.errors import IGNORE_LABEL, DatasetError
from configs import ade20k
from fake_datasets import _codes, _image

HW = (24, 32)
NUM_EXAMPLES = 7  # odd: the two processes' shards differ in size


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def fake_scene_parse(split: str) -> dict:
    """{tfds_id: (JPEG bytes, raw mask uint8 [H,W])} as scene_parse150 stores them (codes 0..150); the ids
    spread over two record files, so their sorted order differs from the order the mock yields them in."""
    offset = 0 if split == "train" else 100
    examples = {}
    for n in range(NUM_EXAMPLES):
        tfds_id = f"scene_parse150-{split}.tfrecord-{n % 2:05d}-of-00002__{n // 2}"
        examples[tfds_id] = (_jpeg(_image(offset + n, HW)), _codes(offset + n, HW, [0, 150, 1, 1 + 20 * n]))
    return examples


class MockTFDS:
    """tfds.testing.mock_data yielding fake_scene_parse's examples (image undecoded, mask [H,W,3] as TFDS's
    Image feature holds a grayscale PNG); counts the as_dataset calls."""

    def __init__(self):
        self.calls = 0

    def as_dataset(self, builder, split, decoders=None, read_config=None, **kwargs):
        self.calls += 1
        assert read_config.add_tfds_id and isinstance(decoders["image"], tfds.decode.SkipDecoding)
        examples = list(fake_scene_parse(split).items())

        def generate():
            for tfds_id, (encoded, mask) in examples:
                yield {"image": encoded, "annotation": np.repeat(mask[..., None], 3, axis=-1), "tfds_id": tfds_id}

        return tf.data.Dataset.from_generator(generate, output_signature={
            "image": tf.TensorSpec([], tf.string), "annotation": tf.TensorSpec([None, None, 3], tf.uint8),
            "tfds_id": tf.TensorSpec([], tf.string)})

    def __enter__(self):
        self.context = tfds.testing.mock_data(as_dataset_fn=lambda builder, **kw: self.as_dataset(builder, **kw))
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


def config_for(tmp_path, **overrides) -> dict:
    return {"name": "tfds", "tfds_name": "scene_parse150", "num_classes": 150, "image_key": "image",
            "label_key": "annotation", "label_offset": -1, "void_values": (0, 255),
            "class_names": data.ADE20K_CLASSES, "cache_dir": str(tmp_path / "cache"), **overrides}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The train split exported once (module scope); -> (reader, mock)."""
    tmp_path = tmp_path_factory.mktemp("tfds")
    with MockTFDS() as mock:
        reader = data.build_reader(config_for(tmp_path), "train")
    return reader, mock


def test_tfds_split_is_exported_once_and_reads_back(exported, tmp_path):
    reader, mock = exported
    examples = fake_scene_parse("train")
    assert mock.calls == 1 and reader.ids == sorted(examples)
    assert reader.class_names == data.ADE20K_CLASSES and reader.num_classes == 150
    for image_id, (encoded, codes) in examples.items():
        image, label = reader.load(image_id)
        np.testing.assert_array_equal(image, np.array(Image.open(io.BytesIO(encoded)).convert("RGB")))
        with open(reader.image_path(image_id), "rb") as f:
            assert f.read() == encoded  # the stored bytes, not a re-encoding
        np.testing.assert_array_equal(label, np.where(codes == 0, IGNORE_LABEL, codes.astype(int) - 1))
    index = json.loads((reader.folder / "index.json").read_text())
    assert index["tfds_name"] == "scene_parse150" and index["split"] == "train"
    with MockTFDS() as again:  # a second run (same cache) reads index.json only
        assert data.build_reader(config_for(reader.root.parents[2]), "train").ids == reader.ids
    assert again.calls == 0


def take(ds, n):
    return [batch for batch, _ in zip(ds.as_numpy_iterator(), range(n))]


def test_tfds_stream_is_sharded_and_resumes_exactly(exported):
    reader, _ = exported
    settings = dict(crop_size=HW, batch_size=2, scale_range=(1.0, 1.0), seed=5)
    full = take(data.train_dataset(reader, **settings), 6)
    again = take(data.train_dataset(reader, **settings), 6)
    resumed = take(data.train_dataset(reader, start_step=3, **settings), 3)
    for a, b in zip(full, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    labels = {i: reader.load_label(i) for i in reader.ids}
    seen = []
    for p in range(2):
        local = data.shard_ids(reader.ids, p, 2)
        ds = data.train_dataset(reader, process_index=p, process_count=2, **{**settings, "batch_size": 1})
        epoch = [b["label"][0] for b in take(ds, len(local))]
        found = [next(i for i in reader.ids if np.array_equal(label, labels[i]) or
                      np.array_equal(label[:, ::-1], labels[i])) for label in epoch]
        assert sorted(found) == sorted(local)  # one epoch of a process: each of its own ids once
        seen += found
    assert sorted(seen) == reader.ids  # the two shards: disjoint, covering


def test_tfds_errors_are_one_line(tmp_path):
    def error(match, config, split="train"):
        with pytest.raises(DatasetError, match=match) as e:
            data.build_reader(config, split)
        assert "\n" not in str(e.value)

    data_dir = tmp_path / "tfds_data"
    error(re.escape(f"TFDS dataset 'scene_parse150' is not prepared in {data_dir}/scene_parse150/1.0.0: run "
                    f"`tfds build scene_parse150 --data_dir={data_dir}` (add --manual_dir="),
          config_for(tmp_path, data_dir=str(data_dir)))
    error("tfds_name 'no_such_dataset': not a TFDS dataset", config_for(tmp_path, tfds_name="no_such_dataset"))
    error("needs config key 'tfds_name'", {"name": "tfds", "num_classes": 3})
    error("needs config key 'num_classes'", {"name": "tfds", "tfds_name": "scene_parse150"})
    with MockTFDS():
        error(re.escape("feature 'segmentation_mask' not found; the features are ['annotation', 'image']"),
              config_for(tmp_path, label_key="segmentation_mask"))
        reader = data.build_reader(config_for(tmp_path, label_offset=0, void_values=(255,)), "test")
    image_id = next(i for i, (_, codes) in fake_scene_parse("test").items() if (codes == 150).any())
    path = reader.label_path(image_id)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: label values {{150}} are out of range (expected "
                                                     f"raw values v with v +0 in [0, 150), or void [255])")):
        reader.load(image_id)


def test_ade20k_tfds_variant_runs_every_stage(tmp_path, float32_jax):
    config = ade20k.get_config("tfds,smoke")
    config.dataset.cache_dir = str(tmp_path / "cache")
    config.train.update(steps=3, log_every=3, eval_every=3, checkpoint_every=3)
    workdir = str(tmp_path / "run")
    with MockTFDS():
        stages.run_train(config, workdir, log=lambda line: None)
        report = stages.run_eval(config, workdir, log=lambda line: None)
    with open(os.path.join(workdir, "report.json")) as f:
        saved = json.load(f)
    assert saved["miou"] == pytest.approx(report["miou"])
    valid = sum(int((codes != 0).sum()) for _, codes in fake_scene_parse("test").values())
    assert sum(map(sum, saved["confusion_matrix"])) == valid  # "other" (raw 0) never reaches the metric


class TinySegmentation(tfds.core.GeneratorBasedBuilder):
    """A real (unmocked) TFDS builder prepared in a temporary data_dir: PNG images, a [H,W,1] mask of 1..3
    (as oxford_iiit_pet's trimap)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="png"),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png")}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5, 0), "validation": self._generate_examples(3, 50)}

    def _generate_examples(self, n, seed):
        for i in range(n):
            yield i, {"image": _image(seed + i, HW), "segmentation_mask": _codes(seed + i, HW, [1, 2, 3])[..., None]}


def test_a_prepared_tfds_dataset_reads_without_mocks(tmp_path):
    config = {"name": "tfds", "tfds_name": "tiny_segmentation", "num_classes": 3, "label_offset": -1,
              "data_dir": str(tmp_path / "tfds"), "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DatasetError, match=re.escape("run `tfds build tiny_segmentation --data_dir=")):
        data.build_reader(config, "train")
    TinySegmentation(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    for split, n, seed in (("train", 5, 0), ("validation", 3, 50), ("train[:2]", 2, 0)):
        reader = data.build_reader(config, split)
        assert len(reader) == n and reader.ids == sorted(reader.ids)
        expected = {_codes(seed + i, HW, [1, 2, 3]).tobytes(): _image(seed + i, HW) for i in range(5)}
        for image_id in reader.ids:
            image, label = reader.load(image_id)
            np.testing.assert_array_equal(image, expected[(label + 1).astype(np.uint8).tobytes()])  # PNG: exact
    with pytest.raises(DatasetError, match=re.escape(f"TFDS dataset 'tiny_segmentation' in {tmp_path}/tfds (split "
                                                     f"'test'): Unknown split 'test'. Should be one of ['train', "
                                                     f"'validation'].; expected: the dataset prepared")):
        data.build_reader(config, "test")

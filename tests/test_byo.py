"""Bring your own backbone and dataset: ``timm:NAME`` through the generic exit adapter, ``hf:OWNER/NAME``
and folder datasets, recipes read from the data, ``dataset.train_fraction``.

Real timm models (random weights, tiny inputs) and real ``datasets`` loading of parquet files and
image folders written here in the hub's schema; nothing is mocked.
"""
from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import DATA_DIR, needs_shared, read_record
from eebench.backbones.timm_generic import TimmExits, default_recipe_for
from eebench.harness.costs import count_muladds, profile_exits
from eebench.data.splits import ImageInfo, image_info, load_splits

#: (timm model, model keywords) of four families: ResNet, MobileNet, ConvNeXt, ViT (DeiT)
CONTRACT_MODELS = [
    ("resnet18", {}),
    ("mobilenetv3_small_050", {}),
    ("convnext_atto", {}),
    ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
]


@pytest.mark.parametrize("name,kwargs", CONTRACT_MODELS, ids=[m for m, _ in CONTRACT_MODELS])
def test_generic_adapter_contract(name: str, kwargs: dict) -> None:
    """Exits at forward_intermediates, block by block equal to the plain model, IM shapes, and a
    cost profile whose blocks sum to the plain model's Mul-Adds."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, pretrained_cfg_overlay={"input_size": (3, 32, 32)}, **kwargs).eval()
    adapter = TimmExits(model)
    x = torch.randn(3, 3, 32, 32)
    ims, logits = adapter.forward_exits(x)
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)
    assert adapter.num_blocks >= 4 and len(ims) == adapter.num_blocks - 1 == len(adapter.im_dims)
    # the hidden state after each exit's block is timm's own intermediate at that index
    reference = model.forward_intermediates(x, intermediates_only=True)
    h = adapter.stem(x)
    for k, index in enumerate(adapter.exit_indices, start=1):
        h = adapter.block(k, h)
        if k < adapter.num_blocks:
            ours = h
            if h.dim() == 3:   # tokens: drop the prefix tokens, lay the patches out as a map, as timm does
                side = reference[index].shape[-1]
                ours = h[:, model.num_prefix_tokens:].transpose(1, 2).reshape(3, -1, side, side)
            torch.testing.assert_close(ours, reference[index], rtol=1e-4, atol=1e-5)
    for k, (f, d) in enumerate(zip(ims, adapter.im_dims), start=1):
        assert f.shape == (3, d)
        assert adapter.make_im(k, 7)(f).shape == (3, 7)
    profile = profile_exits(adapter, x[:1], 7)
    plain, _ = count_muladds(model, x[:1])
    assert profile.backbone_muladds == plain and all(m > 0 for m in profile.block_muladds)
    assert all(m > 0 for m in profile.im_muladds)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of 32 px RGB images, 3 classes (brightness), 20 train and 8 test each."""
    return write_image_folder(tmp_path_factory.mktemp("colour") / "toy", mode="RGB", size=32, n_train=20)


@pytest.mark.parametrize("name,kwargs", CONTRACT_MODELS, ids=[m for m, _ in CONTRACT_MODELS])
def test_generic_backbone_end_to_end(name: str, kwargs: dict, colour_folder: Path, tmp_path: Path, cli) -> None:
    """Each family trained here for one epoch on a folder dataset, its features cached and the
    threshold method run on them: a record whose exits and figures come from the data."""
    sets = ["epochs=1", "batch_size=20", "im.epochs=3",
            *(f"backbone.{k}={v}" for k, v in kwargs.items() if k != "img_size")]
    flags = ["--dataset", colour_folder, "--backbone", f"timm:{name}", *[a for s in sets for a in ("--set", s)]]
    status, out, err = cli("backbone", "train", *flags)   # the same flags: im.* does not change the weights
    assert status == 0, err
    status, out, err = cli("run", "--method", "threshold", *flags, "--out", tmp_path)
    assert status == 0, err
    record = read_record(tmp_path)
    assert record["num_classes"] == 3 and record["backbone"]["num_exits"] >= 4
    assert record["config"]["recipe"]["model_kwargs"]["in_chans"] == 3
    assert record["backbone"]["muladds"] == sum(record["backbone"]["cost_profile"]["block_muladds"])
    assert max(p["accuracy"] for p in record["operating_points"]) > 1 / 3 + 0.1   # above chance


def test_generic_adapter_exit_choice() -> None:
    """Default exits skip the stem intermediate; chosen ones are honoured; the last is always there."""
    model = timm.create_model("resnet18", num_classes=3).eval()
    assert TimmExits(model).exit_indices == [1, 2, 3, 4]
    assert TimmExits(model, exits=[0, 2]).exit_indices == [0, 2, 4]
    vit = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3).eval()
    assert TimmExits(vit).num_blocks == 12


def synthetic_images(n_per_class: int, classes: int, size: int = 16, mode: str = "L", seed: int = 0) -> list:
    """Images whose class is their brightness (class c: grey level 40 + 60c, plus noise), with labels."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(classes):
        for _ in range(n_per_class):
            pixels = np.clip(40 + 60 * c + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L")
            out.append((image.convert(mode), c))
    return out


def write_hub_mirror(root: Path, with_validation: bool, names=("dark", "mid", "bright")) -> Path:
    """``root/owner/toy/{train,[validation,]test}.parquet`` with hub Features: an ``Image`` column named
    ``picture``, a ``ClassLabel`` named ``kind`` and a second ClassLabel after it."""
    folder = root / "owner" / "toy"
    folder.mkdir(parents=True)
    features = datasets.Features({"id": datasets.Value("int32"), "picture": datasets.Image(),
                                  "kind": datasets.ClassLabel(names=list(names)),
                                  "coarse": datasets.ClassLabel(names=["low", "high"])})
    sizes = {"train": 40, "test": 10, **({"validation": 10} if with_validation else {})}
    for i, (split, n) in enumerate(sizes.items()):
        rows = synthetic_images(n, len(names), seed=i)
        ds = datasets.Dataset.from_dict({"id": list(range(len(rows))), "picture": [r[0] for r in rows],
                                         "kind": [r[1] for r in rows], "coarse": [int(r[1] > 0) for r in rows]},
                                        features=features)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.mark.parametrize("with_validation", [False, True])
def test_hub_dataset_from_mirror(tmp_path: Path, with_validation: bool) -> None:
    """hf:OWNER/NAME: columns and C read from the Features; a hub validation split gives val and calib."""
    write_hub_mirror(tmp_path, with_validation)
    splits = load_splits("hf:owner/toy", data_dir=tmp_path)
    assert splits.spec.num_classes == 3
    assert (splits.spec.image_column, splits.spec.label_column) == ("picture", "kind")
    d = splits.describe()
    if with_validation:
        assert d["val"]["source"] == d["calib"]["source"] == "validation"
        assert d["val"]["n"] + d["calib"]["n"] == 30 and d["train"]["n"] == 120
    else:
        assert d["val"]["source"] == "train" and d["train"]["n"] + d["val"]["n"] + d["calib"]["n"] == 120
    assert d["test"]["source"] == "test" and d["test"]["n"] == 30
    assert image_info(splits) == ImageInfo(1, 16, 16)
    other = load_splits("hf:owner/toy", {"label_column": "coarse"}, data_dir=tmp_path)
    assert other.spec.num_classes == 2 and other.spec.label_column == "coarse"


def test_train_fraction_is_stratified_and_seeded(tmp_path: Path) -> None:
    write_hub_mirror(tmp_path, with_validation=False)
    full = load_splits("hf:owner/toy", data_dir=tmp_path)
    part = load_splits("hf:owner/toy", {"train_fraction": 0.5}, data_dir=tmp_path)
    again = load_splits("hf:owner/toy", {"train_fraction": 0.5}, data_dir=tmp_path)
    np.testing.assert_array_equal(part.indices["train"][1], again.indices["train"][1])
    assert set(part.indices["train"][1]) < set(full.indices["train"][1])
    counts_full, counts_part = np.bincount(full.labels("train")), np.bincount(part.labels("train"))
    assert np.abs(counts_part - counts_full / 2).max() <= 1          # every class halved
    for s in ("val", "calib", "test"):
        np.testing.assert_array_equal(part.indices[s][1], full.indices[s][1])


def write_image_folder(root: Path, mode: str = "L", size: int = 16, n_train: int = 30) -> Path:
    for split, n, seed in (("train", n_train, 0), ("test", 8, 1)):
        for i, (image, c) in enumerate(synthetic_images(n, 3, size=size, mode=mode, seed=seed)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    return root


def test_folder_dataset_runs_end_to_end(tmp_path: Path, cli) -> None:
    """A greyscale ImageFolder tree through timm:resnet18 trained here (recipe read from the data),
    the threshold method end to end; the second run reuses the feature cache."""
    data = write_image_folder(tmp_path / "toy")
    flags = ["--dataset", data, "--backbone", "timm:resnet18", "--set", "epochs=1", "--set", "batch_size=16"]
    status, out, err = cli("backbone", "recipe", *flags)
    assert status == 0, err
    assert "in_chans: 1" in out and "input_size: [1, 16, 16]" in out and "not trained yet" in out
    status, out, err = cli("backbone", "train", *flags)
    assert status == 0, err
    status, out, err = cli("run", "--method", "threshold", *flags, "--out", tmp_path / "runs")
    assert status == 0, err
    record = read_record(tmp_path / "runs")
    assert record["num_classes"] == 3 and record["backbone"]["num_exits"] == 4
    assert record["config"]["recipe"]["model_kwargs"] == {"in_chans": 1}
    assert record["splits"]["test"]["n"] == 24
    # brightness is linearly separable: the exits' IMs learn it even on a one-epoch backbone
    assert max(p["accuracy"] for p in record["operating_points"]) >= 0.9
    status, out, err = cli("run", "--method", "threshold", *flags, "--seed", "1", "--out", tmp_path / "runs2")
    assert status == 0 and read_record(tmp_path / "runs2")["features"]["reused"]


def test_recipes_read_from_the_data() -> None:
    small = default_recipe_for("deit_tiny_patch16_224", ImageInfo(1, 28, 28), hflip_invariant=False)
    assert small["init"] == "scratch" and small["augment"] == "crop"
    assert small["model_kwargs"] == {"in_chans": 1, "img_size": 28}
    assert default_recipe_for("resnet18", ImageInfo(3, 32, 32), True)["model_kwargs"] == {"in_chans": 3}
    assert default_recipe_for("resnet18", ImageInfo(3, 32, 32), True)["augment"] == "crop_flip"
    large = default_recipe_for("resnet18", ImageInfo(1, 224, 224), None)
    assert large["init"] == "pretrained" and large["model_kwargs"] == {} and large["augment"] == "crop"


def test_recipe_flags_name_the_checkpoint(tmp_path: Path, cli) -> None:
    """The same flags give the same checkpoint (a second call resumes); another recipe another."""
    data = write_image_folder(tmp_path / "toy")
    base = ["backbone", "recipe", "--dataset", data, "--backbone", "timm:resnet18"]

    def checkpoint(*sets: str) -> str:
        status, out, err = cli(*base, *[a for s in sets for a in ("--set", s)])
        assert status == 0, err
        return out.strip().splitlines()[-1]

    assert checkpoint("epochs=2") == checkpoint("recipe.epochs=2")
    assert checkpoint("epochs=2") != checkpoint("epochs=3")
    assert checkpoint("backbone.drop_rate=0.1") != checkpoint()


def one_error_line(err: str, needle: str) -> bool:
    """stderr holds one ``error:`` line (beside the data loader's progress), and it says ``needle``."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return len(errors) == 1 and needle in errors[0]


@pytest.mark.parametrize("args,needle", [
    (["--backbone", "timm:resnet_18"], "did you mean 'timm:resnet18'"),
    (["--backbone", "timm:cifar_resnet20"], "no forward_intermediates"),
    (["--backbone", "timm:resnet18", "--set", "backbone.exits=[9]"], "out of range"),
    (["--backbone", "timm:resnet18", "--set", "backbone.exits=[4]"], "needs an exit before the last"),
    (["--backbone", "vit_digits", "--set", "backbone.exits=[1]"], "applies to timm:NAME backbones"),
])
def test_bad_backbone_input(tmp_path: Path, cli, args: list, needle: str) -> None:
    data = write_image_folder(tmp_path / "toy")
    status, out, err = cli("run", "--method", "threshold", "--dataset", data, *args, "--out", tmp_path / "runs")
    assert status == 2 and one_error_line(err, needle), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_dataset_input(tmp_path: Path, cli) -> None:
    write_hub_mirror(tmp_path / "mirror", with_validation=False)
    no_label = tmp_path / "nolabel"
    no_label.mkdir()
    datasets.Dataset.from_dict({"picture": [synthetic_images(1, 1)[0][0]], "kind": [0]},
                               features=datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("int64")})
                               ).to_parquet(str(no_label / "train.parquet"))
    cases = [
        (["--dataset", "hf:owner/missing", "--data-dir", tmp_path / "mirror"], "no local mirror of 'hf:owner/missing'"),
        (["--dataset", "owner/toy"], "write hf:owner/toy"),
        (["--dataset", no_label], "has no ClassLabel column"),
        (["--dataset", "hf:owner/toy", "--data-dir", tmp_path / "mirror", "--set", "dataset.label_column=id"],
         "has no ClassLabel column of that name"),
        (["--dataset", "hf:owner/toy", "--data-dir", tmp_path / "mirror", "--set", "dataset.train_fraction=0"],
         "train_fraction=0.0: must be"),
    ]
    for args, needle in cases:
        status, out, err = cli("run", "--method", "threshold", *args, "--out", tmp_path / "runs")
        assert status == 2 and one_error_line(err, needle), (args, err)


@needs_shared
def test_hub_id_reads_the_shared_mnist_mirror() -> None:
    """``hf:ylecun/mnist`` with ``--data-dir ../shared/data``: C = 10 from the ClassLabel, 28 px grey."""
    splits = load_splits("hf:ylecun/mnist", {"train_fraction": 0.1}, data_dir=DATA_DIR)
    assert splits.spec.num_classes == 10 and splits.spec.label_column == "label"
    assert image_info(splits) == ImageInfo(1, 28, 28)
    assert splits.describe()["test"]["n"] == 10000 and abs(splits.describe()["train"]["n"] - 4500) <= 1


def test_large_images_fine_tune_weights_from_a_local_file(tmp_path: Path, cli, monkeypatch) -> None:
    """Images over 64 px: the recipe fine-tunes timm's pretrained weights, here from --weights-dir
    (``resnet18.safetensors``, written from a fresh model), greyscale read as RGB at 224 px; without
    the file and offline, one line saying to pass --weights-dir."""
    from safetensors.torch import save_file

    data = write_image_folder(tmp_path / "big", size=72, n_train=4)
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18").state_dict(), str(weights / "resnet18.safetensors"))
    flags = ["--dataset", data, "--backbone", "timm:resnet18", "--set", "epochs=1", "--set", "batch_size=4"]
    status, out, err = cli("backbone", "recipe", *flags)
    assert status == 0 and "init: pretrained" in out and "model_kwargs: {}" in out, err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, out, err = cli("backbone", "train", *flags)
    assert status == 2 and one_error_line(err, "--weights-dir"), err
    status, out, err = cli("backbone", "train", *flags, "--weights-dir", weights)
    assert status == 0, err
    assert "trained timm:resnet18" in out

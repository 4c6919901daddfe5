"""Shared fixtures: one cache folder per test session (the digits ViT trains once), paths to the
real data and weights in ``../shared``, a helper that runs the CLI in-process, synthetic datasets
in the hub's exact schemas (CIFAR-100, SVHN, ImageNet cannot reach this machine) and synthetic
T2T-ViT checkpoints in the official release format."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA_DIR = SHARED / "data"
EXPERIMENTS = ROOT / "experiments"
SMOKE = EXPERIMENTS / "smoke.yaml"
WEIGHTS_DIR = SHARED / "weights"

needs_shared = pytest.mark.skipif(not (DATA_DIR / "cifar10" / "test.parquet").exists(),
                                  reason="../shared/data (real CIFAR-10 / MNIST mirror) is not present")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EEBENCH_CACHE_DIR for the whole session, unless the caller set one (CI keeps one warm)."""
    if os.environ.get("EEBENCH_TEST_CACHE_DIR"):
        path = Path(os.environ["EEBENCH_TEST_CACHE_DIR"])
    else:
        path = tmp_path_factory.mktemp("eebench-cache")
    os.environ["EEBENCH_CACHE_DIR"] = str(path)
    os.environ.setdefault("TQDM_DISABLE", "1")
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run ``eebench ARGS`` in-process; returns ``(status, stdout, stderr)``."""
    from eebench.cli.main import main

    def _run(*args: str) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        out = capsys.readouterr()
        return status, out.out, out.err

    return _run


def read_record(out_dir: Path) -> dict:
    records = list(Path(out_dir).glob("*/record.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def check_replay(out_dir: Path, options: Any = None, runtime_samples: int | None = 300, batch_size: int = 64
                 ) -> None:
    """The run in ``out_dir``, replayed from its saved exits without refitting, answers every test
    sample of every operating point as the run did (same exit, same class); so does the runtime
    (:mod:`eebench.deploy.runtime`, through ``eebench latency`` on the first ``runtime_samples`` test
    samples in batches of ``batch_size``, exited samples dropped from the batch), whose
    ``latency.json`` has every field. Each point's rule on the cached IM inputs decides as the record
    on every sample; the backbone's own IM inputs may round otherwise at batch 1 than at the feature
    pass's 256 (docs/decisions.md H4), so there the runtime must agree on 99 % of the samples."""
    from eebench.deploy.latency import LatencyOptions, measure
    from eebench.deploy.replay import replay
    from eebench.harness.runner import RunOptions

    run_dir = next(Path(out_dir).glob("*/record.json")).parent
    replayed = replay(run_dir, options or RunOptions())
    samples = np.load(run_dir / "samples.npz")
    points = replayed.predict("test")
    assert [p.setting for p in points] == [p["setting"] for p in replayed.record["operating_points"]]
    for i, p in enumerate(points):
        np.testing.assert_array_equal(p.exit_index, samples["exit_index"][i])
        np.testing.assert_array_equal(p.answered_probs.argmax(1).numpy(), samples["prediction"][i])
    result = measure(run_dir, options or RunOptions(), LatencyOptions(batch_size=batch_size, samples=runtime_samples,
                                                                       repeats=1))
    assert json.loads((run_dir / "latency.json").read_text()) == json.loads(json.dumps(result))
    assert [p["setting"] for p in result["points"]] == [p.setting for p in points]
    n = result["samples"]
    assert n == min(runtime_samples or 10**9, samples["exit_index"].shape[1])
    for i, p in enumerate(result["points"]):
        assert p["decision_agreement"] == 1.0, (p["setting"], p["decision_agreement"])
        assert p["agreement"] >= (1.0 if batch_size > 1 else 0.99), (p["setting"], p["agreement"])
        accuracy = (samples["prediction"][i][:n] == samples["labels"][:n]).mean()
        assert p["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert p["muladd_speedup"] == pytest.approx(1 / p["cost"]) and p["measured_speedup"] > 0
        assert p["time_profile_speedup"] > 0 and 0 < p["p50_ms"] <= p["p90_ms"]
    assert result["device"] == "cpu" and result["batch_size"] == batch_size and result["plain_s"] > 0


def check_record(record: dict) -> None:
    """A real run record of the digits ViT: its numbers, not just its presence."""
    assert record["config"]["dataset"] == "digits" and record["backbone"]["num_exits"] == 6
    assert record["backbone_accuracy"] >= 0.90                  # the ViT trained on first use
    points = record["operating_points"]
    method_params = record["config"]["method_params"]
    assert len(points) == (len(method_params["q_grid"]) if record["config"]["method"] == "threshold" else 2)
    for p in points:
        assert 0.0 < p["cost"] < 1.5 and 0.0 <= p["accuracy"] <= 1.0
        assert abs(sum(p["exit_shares"]) - 1) < 1e-9
    best = max(p["accuracy"] for p in points)
    if record["config"]["method"] == "threshold":   # the dearest budget keeps the backbone's accuracy
        assert best >= record["backbone_accuracy"] - 0.02
    else:   # JEI in its test_parameters: far above chance (0.10); a dearer λ never costs less
        assert best >= 0.70 and points[0]["cost"] >= points[1]["cost"]


CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()   # "cra" (sic) on the hub
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2").split()

#: ILSVRC/imagenet-1k's label names: the WordNet descriptions in class order ("tench, Tinca tinca", ...),
#: the second "crane" (517, the machine) named "crane2" so that names are unique.
IMAGENET_NAMES = [d + ("2" if i == 517 else "") for i, d in enumerate(ImageNetInfo().label_descriptions())]

#: The hub's Features: uoft-cs/cifar100, ufldl-stanford/svhn (cropped_digits), ILSVRC/imagenet-1k.
HUB_FEATURES = {
    "cifar100": datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CIFAR100_FINE),
                                   "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE)}),
    "svhn": datasets.Features({"image": datasets.Image(),
                               "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}),
    "imagenet": datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=IMAGENET_NAMES)}),
}


def tagged_image(row: int, size=(32, 32)) -> Image.Image:
    """A random RGB image whose first two pixels encode ``row`` (so kept rows can be traced)."""
    a = np.random.default_rng(row).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    a[0, 0, 0], a[0, 1, 0] = row % 256, row // 256
    return Image.fromarray(a)


def row_of(image: Image.Image) -> int:
    a = np.asarray(image)
    return int(a[0, 0, 0]) + 256 * int(a[0, 1, 0])


def synthetic_split(name: str, labels: list[int], first_row: int = 0, size=(32, 32)) -> datasets.Dataset:
    """Rows in the hub schema of ``name``: tagged images, the given labels (and a coarse label for CIFAR-100)."""
    features = HUB_FEATURES[name]
    image_col = "img" if name == "cifar100" else "image"
    data = {image_col: [tagged_image(first_row + i, size) for i in range(len(labels))]}
    if name == "cifar100":
        data["fine_label"] = labels
        data["coarse_label"] = [y % 20 for y in labels]
    else:
        data["label"] = labels
    return datasets.Dataset.from_dict(data, features=features)


def write_mirror(root: Path, name: str, splits: dict[str, list[int]], size=(32, 32)) -> None:
    """``root/<name>/<split>.parquet`` for each split (labels given), as the hub's parquet files."""
    (root / name).mkdir(parents=True, exist_ok=True)
    start = 0
    for split, labels in splits.items():
        synthetic_split(name, labels, start, size).to_parquet(str(root / name / f"{split}.parquet"))
        start += len(labels)


# (embed_dim, depth, mlp_ratio) of the official factories; T2T token_dim 64; 224 px → 14×14 tokens.
OFFICIAL = {"t2t_vit_7": (256, 7, 2), "t2t_vit_14": (384, 14, 3)}


def official_shapes(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of the official T2T_ViT (tokens_type='performer', qkv_bias=False),
    written out from yitu-opensource/T2T-ViT models/t2t_vit.py, token_performer.py, transformer_block.py."""
    D, depth, r = OFFICIAL[name]
    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, D), "pos_embed": (1, 197, D)}
    for layer, dim in (("attention1", 3 * 7 * 7), ("attention2", 64 * 3 * 3)):
        p = f"tokens_to_token.{layer}."
        shapes.update({p + "kqv.weight": (192, dim), p + "kqv.bias": (192,), p + "proj.weight": (64, 64),
                       p + "proj.bias": (64,), p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                       p + "norm2.weight": (64,), p + "norm2.bias": (64,), p + "mlp.0.weight": (64, 64),
                       p + "mlp.0.bias": (64,), p + "mlp.2.weight": (64, 64), p + "mlp.2.bias": (64,),
                       p + "w": (32, 64)})
    shapes.update({"tokens_to_token.project.weight": (D, 576), "tokens_to_token.project.bias": (D,)})
    for i in range(depth):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (D,), p + "norm1.bias": (D,), p + "attn.qkv.weight": (3 * D, D),
                       p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,), p + "norm2.weight": (D,),
                       p + "norm2.bias": (D,), p + "mlp.fc1.weight": (r * D, D), p + "mlp.fc1.bias": (r * D,),
                       p + "mlp.fc2.weight": (D, r * D), p + "mlp.fc2.bias": (D,)})
    shapes.update({"norm.weight": (D,), "norm.bias": (D,), "head.weight": (num_classes, D),
                   "head.bias": (num_classes,)})
    return shapes


def write_official_checkpoint(path, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A file in the format of the released ``*.pth.tar``: a timm training checkpoint with
    ``state_dict`` and ``state_dict_ema`` (keys prefixed ``module.``) and the run's argparse
    namespace. Random weights; returns the EMA tensors (unprefixed)."""
    g = torch.Generator().manual_seed(seed)
    shapes = official_shapes(name)
    ema = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    raw = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save({"epoch": 309, "arch": name, "version": 2, "metric": 71.7,
                "args": argparse.Namespace(model=name, lr=1e-3, img_size=224),
                "state_dict": {"module." + k: v for k, v in raw.items()},
                "state_dict_ema": {"module." + k: v for k, v in ema.items()}}, path)
    return ema

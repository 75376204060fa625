"""Teach a classifier: a generated, learnable 3-class set reaches held-out accuracy >= 0.9
with the REAL EfficientNet-Lite0 backbone offline (chance 1/3), the exported folder loads
through the app's own loader and agrees with the report, the grouped split never straddles a
group, duplicates are reported, bad input gets clear messages, the Lung CT tab serves the
taught model (also after a restart), and a kill -9 leaves the previous model in use."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.teach_data import CLASSES, write_folders, zip_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("teach-data")
    # MEDLAB_MODEL_<KEY> wins over a taught model: clear what an earlier module's live app set
    names = ("MEDLAB_DATA_DIR", "MEDLAB_MODEL_LUNG_CT", "MEDLAB_MODEL_SKIN")
    old = {k: os.environ.pop(k, None) for k in names}
    os.environ["MEDLAB_DATA_DIR"] = str(d)
    yield d
    from medlab.core.loaders import reset_cache

    reset_cache()  # no taught model stays cached for the next test module
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def image_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folders(tmp_path_factory.mktemp("set") / "textures", per_class=24, seed=1)


@pytest.fixture(scope="module")
def taught_run(data_dir: Path, image_set: Path, tmp_path_factory: pytest.TempPathFactory):
    """One teaching run through the tab's API function (the /teach_train handler)."""
    from tabs.teach import teach_train

    archive = zip_folder(image_set, tmp_path_factory.mktemp("zip") / "textures.zip", prefix="My set/")
    summary, markdown, figure, gallery, model_id = teach_train(str(archive), test_fraction=0.25)
    return summary, markdown, figure, gallery, model_id


def test_generated_set_is_learned_and_the_saved_model_agrees(taught_run, image_set: Path, data_dir: Path) -> None:
    from sklearn.metrics import accuracy_score, recall_score

    from medlab.core.loaders import load_image_classifier
    from medlab.core.registry import ModelSource, get_spec
    from medlab.vision import classify

    summary, markdown, figure, gallery, model_id = taught_run
    assert summary["classes"] == sorted(CLASSES)
    assert summary["n_train"] + summary["n_test"] == 3 * 24
    assert summary["model_id"] == model_id and summary["validated"] is False
    assert summary["held_out_accuracy"] >= 0.9  # chance is 1/3
    assert "Held-out accuracy" in markdown and "high-risk confirmation" in markdown
    assert figure.size[0] > 300 and len(gallery) >= 1

    folder = data_dir / "taught" / "models" / model_id
    for name in ("config.json", "model.safetensors", "evaluation.json", "README.md", "taught.json", "splits.json"):
        assert (folder / name).is_file(), name
    card = (folder / "README.md").read_text()
    assert "Taught in this app" in card and "textures.zip" in card and "Not validated" in card
    assert f"{summary['n_images']} images" in card

    # independent check: the exported folder, loaded by the app's loader, re-predicts the held-out
    # images; accuracy and recall recomputed with scikit-learn must match the report
    loaded = load_image_classifier(get_spec("lung_ct"), ModelSource("lung_ct", str(folder), None, True, False, "X"),
                                   "cpu", lambda f, m: None)
    labels = classify.model_labels(loaded.model)
    assert labels == sorted(CLASSES)
    test = json.loads((folder / "splits.json").read_text())["test"]
    assert len(test) == summary["n_test"]
    y_true, y_pred = [], []
    for rel in test:
        cls = rel.split("/")[0]
        image = Image.open(image_set / rel).convert("RGB")
        logits = classify.forward(loaded, classify.preprocess(loaded, image))
        y_true.append(labels.index(cls))
        y_pred.append(int(logits.argmax()))
    assert accuracy_score(y_true, y_pred) == pytest.approx(summary["held_out_accuracy"])
    recalls = recall_score(y_true, y_pred, average=None, labels=[0, 1, 2])
    assert [summary["per_class_recall"][c] for c in labels] == pytest.approx(list(recalls))
    report = json.loads((folder / "evaluation.json").read_text())
    assert np.asarray(report["confusion_matrix"]).sum() == len(test)
    assert [r["threshold"] for r in report["defer"]] == [0.3, 0.5, 0.7]


def test_use_in_lung_tab_then_restart(taught_run, image_set: Path, data_dir: Path) -> None:
    from medlab.core.loaders import get_cache, reset_cache
    from medlab.vision import lung_ct
    from tabs.teach import teach_use

    model_id = taught_run[4]
    text, done = teach_use(model_id, "lung_ct")
    assert done["classes"] == sorted(CLASSES) and "Lung CT" in text
    pointer = json.loads((data_dir / "taught" / "current" / "lung_ct.json").read_text())
    assert pointer["model_id"] == model_id
    assert lung_ct.classes() == sorted(CLASSES)
    assert lung_ct.explain_choices() == ["predicted", *sorted(CLASSES)]

    image = image_set / "dots" / "dots_000.png"
    for _ in range(2):  # second round: a fresh cache, as after a restart (the pointer is on disk)
        result = lung_ct.classify_lung(str(image))
        assert set(result.probabilities) == set(CLASSES)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.overlay.size == Image.open(image).size
        assert 0.0 <= result.heatmap.min() and 0.9 < result.heatmap.max() <= 1.0  # resized CAM in [0, 1]
        reset_cache()
    assert "lung_ct" not in get_cache().loaded_keys()

    # a three-class texture model cannot become the skin (benign / malignant) model
    from medlab.core.errors import InputError
    from medlab.vision.teach import taught

    with pytest.raises(InputError, match="benign / malignant"):
        taught.use(model_id, "skin")


def test_grouped_split_never_puts_a_group_on_both_sides() -> None:
    from medlab.vision.teach.dataset import grouped_split

    rng = np.random.default_rng(0)
    for seed in range(12):
        n = int(rng.integers(30, 120))
        groups = [f"p{g}" for g in rng.integers(0, max(4, n // 5), n)]
        labels = [int(hashlib.sha256(g.encode()).digest()[0]) % 3 for g in groups]  # one class per patient
        train, test = grouped_split(labels, groups, 0.2, seed)
        assert len(train) + len(test) == n and len(test) > 0
        assert not {groups[i] for i in train} & {groups[i] for i in test}


def test_groups_csv_and_duplicates_are_reported(tmp_path: Path, data_dir: Path) -> None:
    from medlab.vision.teach.dataset import grouped_split, read_groups, scan, split_report

    root = write_folders(tmp_path / "set", per_class=6, seed=3, size=48)
    shutil.copy(root / "dots" / "dots_000.png", root / "dots" / "copy_of_dots_000.png")  # same class
    shutil.copy(root / "checks" / "checks_001.png", root / "stripes" / "not_stripes.png")  # two classes
    (root / "stripes" / "notes.txt").write_text("not an image")
    csv = tmp_path / "groups.csv"
    rows = ["file,patient"] + [f"{c}/{c}_{i:03d}.png,{c}-{i // 2}" for c in CLASSES for i in range(6)]
    csv.write_text("\n".join(rows))
    data = scan(root, "test", read_groups(csv))
    expected = {hashlib.sha256((root / "dots" / "dots_000.png").read_bytes()).hexdigest(),
                hashlib.sha256((root / "checks" / "checks_001.png").read_bytes()).hexdigest()}
    assert {d["sha256"] for d in data.duplicates} == expected
    by_hash = {d["sha256"]: d for d in data.duplicates}
    cross = by_hash[hashlib.sha256((root / "checks" / "checks_001.png").read_bytes()).hexdigest()]
    assert cross["classes"] == ["checks", "stripes"] and "dropped" in cross["action"]
    rels = {it.rel for it in data.items}
    assert "checks/checks_001.png" not in rels and "stripes/not_stripes.png" not in rels
    assert sum(r.startswith("dots/") for r in rels) == 6  # the same-class copy kept once
    assert data.skipped["not an image or DICOM file"] == ["stripes/notes.txt"]
    assert data.grouped and data.items[0].group.count("-") == 1
    train, test = grouped_split([it.label for it in data.items], [it.group for it in data.items], 0.3)
    assert split_report(data, train, test)["groups_on_both_sides"] == []


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def test_bad_inputs_get_clear_messages(tmp_path: Path, data_dir: Path) -> None:
    from medlab.core.errors import InputError
    from medlab.vision.teach.dataset import materialise, scan

    png = (ROOT / "assets" / "lung" / "ct_small_lung_window.png").read_bytes()

    def run(members: dict[str, bytes], **kw):
        folder, name = materialise(str(_zip(tmp_path / f"a{len(list(tmp_path.iterdir()))}.zip", members)),
                                   tmp_path / f"w{len(list(tmp_path.iterdir()))}")
        return scan(folder, name, **kw)

    with pytest.raises(InputError, match="at least two classes"):
        run({"only/a.png": png, "only/b.png": png[:-1] + b"x"})
    with pytest.raises(InputError, match="'empty' holds no images"):
        run({"a/1.png": png, "a/2.png": png + b"1", "empty/readme.txt": b"x"})
    with pytest.raises(InputError, match="class name must be a folder"):
        run({"loose.png": png, "a/1.png": png, "b/1.png": png})
    with pytest.raises(InputError, match=r"cap is 4 \(MEDLAB_TEACH_MAX_IMAGES\)"):
        run({f"{c}/{i}.png": png + bytes([i, ord(c)]) for c in "ab" for i in range(3)}, max_images=4)
    with pytest.raises(InputError, match="'b' has 1 usable image"):
        run({"a/1.png": png, "a/2.png": png + b"2", "b/1.png": png + b"3"})
    with pytest.raises(InputError, match="unsafe path"):
        run({"a/1.png": png, "../evil.png": png})
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"this is not a zip")
    with pytest.raises(InputError, match="not a .zip"):
        materialise(str(not_zip), tmp_path / "w")
    with pytest.raises(InputError, match="outside the folders"):
        materialise("/usr", tmp_path / "w")
    with pytest.raises(InputError, match="needs a machine connected to the Hub"):  # HF_HUB_OFFLINE=1 here
        materialise("someone/iq-oth-nccd", tmp_path / "w")


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path) -> None:
    from medlab.vision.teach import features

    good = write_folders(tmp_path / "s", per_class=1, size=48)
    bad = tmp_path / "broken.png"
    bad.write_bytes((good / "dots" / "dots_000.png").read_bytes()[:60])
    dcm = Path(__import__("pydicom").data.get_testdata_file("CT_small.dcm", download=False))
    model, cfg = features.build_backbone(features.get_backbone("efficientnet_lite0"), 3)
    out = features.extract(model, features.eval_transform(cfg), [good / "dots" / "dots_000.png", bad, dcm], batch_size=2)
    assert out.kept == [0, 2] and [i for i, _ in out.skipped] == [1]
    assert out.matrix.shape == (2, 1280) and np.isfinite(out.matrix).all()


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from medlab.vision.teach import service
def progress(fraction, message):
    if message.startswith({when!r}):
        os.kill(os.getpid(), signal.SIGKILL)
service.teach({source!r}, progress=progress, cam_examples=0)
"""


@pytest.mark.slow
def test_kill_9_during_training_leaves_the_previous_model(taught_run, image_set: Path, data_dir: Path,
                                                          tmp_path: Path) -> None:
    from medlab.vision import lung_ct
    from medlab.vision.teach import taught
    from tabs.teach import teach_use

    model_id = taught_run[4]
    teach_use(model_id, "lung_ct")
    pointer = data_dir / "taught" / "current" / "lung_ct.json"
    before_pointer = pointer.read_bytes()
    folder = data_dir / "taught" / "models" / model_id
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}
    small = write_folders(data_dir / "uploads" / "small", per_class=4, size=48)  # under an allowed root
    env = dict(os.environ, MEDLAB_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    for when in ("Extracting features", "Saving the model"):
        script = KILL_SCRIPT.format(root=str(ROOT), when=when, source=str(small))
        proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=600, capture_output=True)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        assert pointer.read_bytes() == before_pointer
        assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()} == before
        assert [m["model_id"] for m in taught.list_models()] == [model_id]  # no half-written model listed
    result = lung_ct.classify_lung(str(image_set / "checks" / "checks_000.png"))
    assert set(result.probabilities) == set(CLASSES)


def test_small_sets_still_split_with_every_group_on_one_side() -> None:
    from medlab.vision.teach.dataset import grouped_split

    labels = [0] * 4 + [1] * 4 + [2] * 3
    groups = [f"g{i}" for i in range(11)]
    train, test = grouped_split(labels, groups, 0.2)
    assert len(test) >= 1 and len(train) + len(test) == 11
    assert not {groups[i] for i in train} & {groups[i] for i in test}


@pytest.mark.slow
def test_lung_dataset_is_taught_at_first_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDLAB_LUNG_DATASET + no lung model configured -> taught and used in the background,
    once; with MEDLAB_MODEL_LUNG_CT set nothing is taught."""
    import time

    from medlab.core.registry import resolve_source
    from medlab.vision.teach import service, taught

    data = tmp_path / "data"
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(data))
    monkeypatch.setenv("MEDLAB_MODEL_LUNG_CT", str(tmp_path))
    monkeypatch.setenv("MEDLAB_LUNG_DATASET", str(write_folders(data / "lung-set", per_class=4, size=48)))
    assert service.autoteach_needed() is False  # a configured model wins
    monkeypatch.delenv("MEDLAB_MODEL_LUNG_CT")
    monkeypatch.setattr(service, "_AUTO", {"state": "idle", "message": ""})
    assert service.autoteach_lung_in_background() is True
    assert service.autoteach_lung_in_background() is False  # once per process
    deadline = time.monotonic() + 400
    while service.autoteach_status()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert service.autoteach_status()["state"] == "done", service.autoteach_status()
    current = taught.current("lung_ct")
    assert current is not None and resolve_source("lung_ct").location == str(taught.model_dir(current).resolve())
    assert service.autoteach_needed() is False


@pytest.mark.parametrize("n_classes", [2, 3])
def test_folded_head_equals_the_scaled_sklearn_model(n_classes: int) -> None:
    """The (W, b) put in the classifier slot gives the probabilities of scikit-learn's own
    StandardScaler + class-weighted LogisticRegression pipeline on raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medlab.vision.teach.head import fit_head

    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 90)
    x = rng.normal(0, 1, (90, 12)) * rng.uniform(0.1, 30, 12) + rng.normal(0, 5, 12) + y[:, None] * 0.8
    head = fit_head(x, y, n_classes)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000,
                                                             random_state=0)).fit(x, y)
    np.testing.assert_allclose(head.predict_proba(x), ref.predict_proba(x), atol=1e-4)


@pytest.mark.slow
def test_use_in_the_skin_tab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benign / malignant set becomes the skin model; its evaluation.json threshold is the tab's."""
    from medlab.vision import skin
    from medlab.vision.teach import service, taught
    from tests.teach_data import texture

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDLAB_MODEL_SKIN", raising=False)
    rng = np.random.default_rng(7)
    for name, kind in (("benign", "stripes"), ("malignant", "dots")):
        (tmp_path / "data" / "skin-set" / name).mkdir(parents=True)
        for i in range(8):
            texture(kind, rng, 64).convert("RGB").save(tmp_path / "data" / "skin-set" / name / f"{i}.png")
    result = service.teach(str(tmp_path / "data" / "skin-set"), cam_examples=0, test_fraction=0.25)
    assert result.summary["classes"] == ["benign", "malignant"]
    taught.use(result.model_id, "skin")
    report = json.loads((taught.model_dir(result.model_id) / "evaluation.json").read_text())
    threshold, where = skin.decision_threshold()
    assert report["class_counts"] == {"benign": 2, "malignant": 2}  # stratified: both classes held out
    assert threshold == pytest.approx(report["binary_threshold"]["threshold"]) and "evaluation.json" in where
    out = skin.classify_skin(str(tmp_path / "data" / "skin-set" / "malignant" / "0.png"))
    assert 0.0 <= out.malignant_probability <= 1.0

"""Train an image classifier (documents 000 and 001) and save it as a standard Hugging Face
model directory that the app loads as is (MEDLAB_MODEL_SKIN / MEDLAB_MODEL_LUNG_CT).

Recipe:
- any timm backbone by name, wrapped by transformers' TimmWrapperForImageClassification
  (saves config.json with id2label + the timm preprocessing, and model.safetensors);
  defaults: DenseNet121 for skin (document 000), EfficientNet-B1 for lung CT (document 001);
- stratified train/val/test split (scikit-learn), written to splits.json;
- document 001's augmentation: rotation, horizontal+vertical flips, shifts 0.1, zoom 0.75-1
  (Keras convention, i.e. up to 1.33x magnification), brightness 0.75-1.25;
- class imbalance by a weighted sampler (default) or class-weighted loss. NOT SMOTE on raw
  pixels: document 001 tried it and the model collapsed to a single class (accuracy 0.38);
- phase 1 trains the new head with the backbone frozen, phase 2 unfreezes and fine-tunes
  at a lower learning rate; ReduceLROnPlateau and early stopping on the validation loss;
- resumable: a checkpoint after every epoch (--resume continues from it).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from training.common import (
    ImageFolder,
    load_rgb,
    pick_device,
    scan_image_folder,
    seed_everything,
    setup_logging,
    utc_now,
    write_json,
)

log = logging.getLogger("training.train_classifier")

PRESETS = {
    "skin": {"backbone": "densenet121", "image_size": 224, "rotation": 180.0},
    "lung_ct": {"backbone": "efficientnet_b1", "image_size": 240, "rotation": 360.0},
}
CHECKPOINT = "checkpoint/last.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train_classifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("data")
    src.add_argument("--data", type=Path, help="image folder: <data>/<class name>/<images or DICOM>")
    src.add_argument("--hub-dataset", help="a Hugging Face dataset id instead of --data (needs `pip install datasets`)")
    src.add_argument("--hub-split", default="train")
    src.add_argument("--image-column", default="image")
    src.add_argument("--label-column", default="label")
    src.add_argument("--val-fraction", type=float, default=0.15)
    src.add_argument("--test-fraction", type=float, default=0.15, help="held out; evaluate with evaluate_classifier --split test")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), default="lung_ct", help="defaults for backbone, image size, rotation")
    m.add_argument("--backbone", help="timm architecture name (default from --preset: densenet121 / efficientnet_b1)")
    m.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights from the Hub")
    m.add_argument("--image-size", type=int, help="square input size (default from --preset)")
    t = p.add_argument_group("training")
    t.add_argument("--out", type=Path, required=True, help="output model directory")
    t.add_argument("--epochs-frozen", type=int, default=5, help="phase 1: head only, backbone frozen")
    t.add_argument("--epochs", type=int, default=30, help="phase 2: all layers (or --unfreeze-fraction of them)")
    t.add_argument("--unfreeze-fraction", type=float, default=1.0,
                   help="fraction of backbone parameter tensors (from the top) trained in phase 2")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr-head", type=float, default=1e-3)
    t.add_argument("--lr-finetune", type=float, default=1e-4)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--patience", type=int, default=5, help="early stopping: epochs without val-loss improvement")
    t.add_argument("--plateau-patience", type=int, default=2, help="ReduceLROnPlateau patience (factor 0.2)")
    t.add_argument(
        "--balance",
        choices=("sampler", "class-weights", "none"),
        default="sampler",
        help="class imbalance: weighted random sampler (default) or class-weighted loss; "
        "SMOTE on raw pixels is deliberately not offered (it collapsed in document 001)",
    )
    t.add_argument("--rotation", type=float, help="max rotation in degrees (default from --preset)")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint/last.pt")
    t.add_argument("--keep-checkpoint", action="store_true", help="keep <out>/checkpoint/ after a finished run")
    t.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap batches per epoch (0 = all; for smoke runs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.data is None) == (args.hub_dataset is None):
        p.error("give exactly one of --data or --hub-dataset")
    preset = PRESETS[args.preset]
    args.backbone = args.backbone or preset["backbone"]
    args.image_size = args.image_size or preset["image_size"]
    args.rotation = preset["rotation"] if args.rotation is None else args.rotation
    return args


# -- data ------------------------------------------------------------------------------------
def materialise_hub_dataset(args: argparse.Namespace) -> Path:
    """Write a Hub dataset split to <out>/_data/<class>/<i>.png once, then train from it as a folder."""
    target = args.out / "_data"
    if (target / ".complete").exists():
        return target
    try:
        import datasets
    except ImportError as exc:
        raise SystemExit("--hub-dataset needs the `datasets` package: pip install datasets (or use --data)") from exc
    ds = datasets.load_dataset(args.hub_dataset, split=args.hub_split)
    feature = ds.features[args.label_column]
    names = getattr(feature, "names", None)
    from tqdm.auto import tqdm

    for i, row in enumerate(tqdm(ds, desc="writing images", unit="img")):
        label = row[args.label_column]
        name = names[label] if names else str(label)
        folder = target / name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        row[args.image_column].convert("RGB").save(folder / f"{i:06d}.png")
    (target / ".complete").write_text(utc_now())
    return target


def stratified_split(folder: ImageFolder, val: float, test: float, seed: int) -> dict[str, list[int]]:
    from sklearn.model_selection import train_test_split

    idx = list(range(len(folder.paths)))
    y = list(folder.targets)
    rest, test_idx = (idx, []) if test <= 0 else train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    y_rest = [y[i] for i in rest]
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=y_rest, random_state=seed)
    return {"train": sorted(train_idx), "val": sorted(val_idx), "test": sorted(test_idx)}


def build_transforms(data_cfg: dict[str, Any], size: int, rotation: float, augment: bool) -> tuple[Any, Any]:
    """Train (document 001's augmentation) and eval transforms; eval mirrors the timm
    transform the saved image processor applies (resize, centre crop, normalise)."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_cfg["mean"], data_cfg["std"])]
    resize = [v2.Resize(size, interpolation=InterpolationMode.BICUBIC), v2.CenterCrop(size)]
    eval_tf = v2.Compose(resize + norm)
    if not augment:
        return eval_tf, eval_tf
    aug = [
        v2.RandomAffine(degrees=rotation, translate=(0.1, 0.1), scale=(1.0, 1 / 0.75)),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.ColorJitter(brightness=(0.75, 1.25)),
    ]
    return v2.Compose(resize + aug + norm), eval_tf


class _Dataset:
    def __init__(self, folder: ImageFolder, transform: Any) -> None:
        self.folder = folder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.folder.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(load_rgb(self.folder.paths[i])), self.folder.targets[i]


# -- model -----------------------------------------------------------------------------------
def build_model(backbone: str, classes: tuple[str, ...], pretrained: bool, image_size: int) -> Any:
    """A TimmWrapperForImageClassification with a fresh head for `classes` (saved as a
    standard HF dir: AutoModelForImageClassification + AutoImageProcessor load it)."""
    import timm

    from medlab.vision.teach.export import wrap_timm

    net = timm.create_model(backbone, pretrained=pretrained, num_classes=len(classes))
    pretrained_cfg = dict(net.pretrained_cfg)
    # the processor saved inside config.json resizes to our training size, centre crop 1.0
    pretrained_cfg.update({"input_size": [3, image_size, image_size], "crop_pct": 1.0, "crop_mode": "center"})
    pretrained_cfg.pop("num_classes", None)
    return wrap_timm(net, backbone, pretrained_cfg, classes)


def head_parameter_names(model: Any) -> set[str]:
    head = model.timm_model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def set_trainable(model: Any, phase: int, unfreeze_fraction: float) -> None:
    head = head_parameter_names(model)
    names = [n for n, _ in model.named_parameters()]
    body = [n for n in names if n not in head]
    n_open = math.ceil(len(body) * unfreeze_fraction) if phase == 2 else 0
    open_names = head | set(body[len(body) - n_open :])
    for n, p in model.named_parameters():
        p.requires_grad = n in open_names


# -- loop ------------------------------------------------------------------------------------
def run_epoch(
    model: Any, loader: Any, loss_fn: Any, device: str, optimizer: Any = None, max_steps: int = 0, desc: str = "",
) -> tuple[float, float]:
    import torch
    from tqdm.auto import tqdm

    train = optimizer is not None
    model.train(train)
    total, correct, loss_sum = 0, 0, 0.0
    with torch.set_grad_enabled(train):
        for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, unit="batch")):
            if max_steps and step >= max_steps:
                break
            x, y = x.to(device), y.to(device)
            logits = model(pixel_values=x).logits
            loss = loss_fn(logits, y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach().item() * y.numel()
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
    return loss_sum / max(total, 1), correct / max(total, 1)


def make_optimizer(model: Any, lr: float, wd: float) -> tuple[Any, Any]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.2, patience=0)
    return opt, sched


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    seed_everything(args.seed)
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    data_root = args.data if args.data is not None else materialise_hub_dataset(args)
    folder = scan_image_folder(data_root)
    splits_path = args.out / "splits.json"
    if args.resume and splits_path.exists():
        import json

        saved = json.loads(splits_path.read_text())
        position = {s: i for i, s in enumerate(folder.ids())}
        splits = {k: [position[s] for s in saved[k]] for k in ("train", "val", "test")}
    else:
        splits = stratified_split(folder, args.val_fraction, args.test_fraction, args.seed)
        ids = folder.ids()
        write_json(splits_path, {"root": str(folder.root), "classes": list(folder.classes),
                                 **{k: [ids[i] for i in v] for k, v in splits.items()}})
    train_set, val_set = folder.subset(splits["train"]), folder.subset(splits["val"])
    counts = Counter(train_set.targets)
    log.info("classes %s; train %d val %d test %d; train counts %s", folder.classes, len(train_set.paths),
             len(val_set.paths), len(splits["test"]), dict(sorted(counts.items())))

    model = build_model(args.backbone, folder.classes, not args.no_pretrained, args.image_size).to(device)
    data_cfg = model.config.pretrained_cfg
    train_tf, eval_tf = build_transforms(data_cfg, args.image_size, args.rotation, not args.no_augment)

    g = torch.Generator().manual_seed(args.seed)
    class_weights = None
    if args.balance == "sampler":
        w = [1.0 / counts[t] for t in train_set.targets]
        sampler = WeightedRandomSampler(w, num_samples=len(w), replacement=True, generator=g)
        train_loader = DataLoader(_Dataset(train_set, train_tf), batch_size=args.batch_size, sampler=sampler,
                                  num_workers=args.workers)
    else:
        train_loader = DataLoader(_Dataset(train_set, train_tf), batch_size=args.batch_size, shuffle=True, generator=g,
                                  num_workers=args.workers)
        if args.balance == "class-weights":
            n = len(train_set.targets)
            weights = [n / (len(folder.classes) * counts[i]) for i in range(len(folder.classes))]
            class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    val_loader = DataLoader(_Dataset(val_set, eval_tf), batch_size=args.batch_size, num_workers=args.workers)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)

    state: dict[str, Any] = {"phase": 1, "epoch": 0, "best_loss": float("inf"), "bad_epochs": 0, "history": []}
    ckpt_path = args.out / CHECKPOINT
    resume_ckpt = torch.load(ckpt_path, map_location=device, weights_only=True) if args.resume and ckpt_path.exists() else None
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        state = resume_ckpt["state"]
        log.info("resuming phase %d after epoch %d", state["phase"], state["epoch"])

    phases = [(1, args.epochs_frozen, args.lr_head), (2, args.epochs, args.lr_finetune)]
    for phase, n_epochs, lr in phases:
        if phase < state["phase"] or n_epochs <= 0:
            continue
        set_trainable(model, phase, args.unfreeze_fraction)
        optimizer, scheduler = make_optimizer(model, lr, args.weight_decay)
        scheduler.patience = args.plateau_patience
        if resume_ckpt is not None and resume_ckpt["state"]["phase"] == phase:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            torch.set_rng_state(resume_ckpt["rng"])
            g.set_state(resume_ckpt["sampler_rng"])
        else:
            state.update(phase=phase, epoch=0, bad_epochs=0)
        resume_ckpt = None
        while state["epoch"] < n_epochs:
            epoch = state["epoch"] + 1
            tr_loss, tr_acc = run_epoch(model, train_loader, loss_fn, device, optimizer, args.max_steps_per_epoch,
                                        f"phase {phase} epoch {epoch} train")
            va_loss, va_acc = run_epoch(model, val_loader, loss_fn, device, desc=f"phase {phase} epoch {epoch} val")
            scheduler.step(va_loss)
            lr_now = optimizer.param_groups[0]["lr"]
            state["history"].append({"phase": phase, "epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc,
                                     "val_loss": va_loss, "val_acc": va_acc, "lr": lr_now})
            log.info("phase %d epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | lr %.2e",
                     phase, epoch, tr_loss, tr_acc, va_loss, va_acc, lr_now)
            if va_loss < state["best_loss"] - 1e-6:
                state["best_loss"], state["bad_epochs"] = va_loss, 0
                state["best"] = {"phase": phase, "epoch": epoch, "val_loss": va_loss, "val_acc": va_acc}
                model.save_pretrained(args.out)  # the best weights are always the saved model
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "state": state, "rng": torch.get_rng_state(), "sampler_rng": g.get_state()}, ckpt_path)
            if state["bad_epochs"] >= args.patience:
                log.info("early stopping in phase %d after epoch %d", phase, epoch)
                break
        state["bad_epochs"] = 0
        state["epoch"] = n_epochs
        state["phase"] = phase + 1

    if not (args.out / "model.safetensors").exists():
        model.save_pretrained(args.out)
    summary = {
        "created": utc_now(),
        "backbone": args.backbone,
        "pretrained": not args.no_pretrained,
        "image_size": args.image_size,
        "classes": list(folder.classes),
        "train_counts": {folder.classes[k]: v for k, v in sorted(counts.items())},
        "balance": args.balance,
        "augment": not args.no_augment,
        "seed": args.seed,
        "best": state.get("best"),
        "history": state["history"],
        "data": str(folder.root),
    }
    write_json(args.out / "training_log.json", summary)
    if not args.keep_checkpoint:
        # finished: the resume state (optimizer included) would only inflate the model dir
        shutil.rmtree(args.out / "checkpoint", ignore_errors=True)
    log.info("saved %s (best %s)", args.out, state.get("best"))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    train(args)
    log.info("next: python -m training.evaluate_classifier --model %s --data %s --split test",
             args.out, args.data or args.out / "_data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

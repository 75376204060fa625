"""Command line: `python -m medlab doctor` and `python -m medlab download [KEYS]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError
from medlab.core.registry import get_spec, model_keys, resolve_source
from medlab.core.status import availability, hub_offline, hub_reachable

# Never fetch pickle weights or other frameworks' files for an app that loads safetensors.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.ot", "tf_model*", "flax_model*"]


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except MedlabError as exc:
        print(f"configuration error: {exc}")
        return 2
    rows = [availability(key, wait_for_probe=True) for key in model_keys()]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"device={settings.device}  memory budget={settings.memory_budget_bytes() / 2**30:.1f} GB  "
          f"data dir={settings.data_dir}  hub={'offline' if hub_offline() else 'online' if hub_reachable() else 'unreachable'}")
    for r in rows:
        mark = {"ready": "ok", "loaded": "ok", "downloadable": "..", "unavailable": "!!"}[r.status]
        print(f"[{mark}] {r.key:<18} {r.status:<12} {r.origin:<5} {r.source}")
        if r.reason:
            print(f"       why: {r.reason}")
        if r.fix and r.status != "ready":
            print(f"       fix: {r.fix}")
    return 0 if all(r.usable for r in rows) else 1


def cmd_download(args: argparse.Namespace) -> int:
    keys = args.keys or model_keys()
    for key in keys:
        try:
            get_spec(key)
        except MedlabError as exc:
            print(exc)
            return 2
    if hub_offline():
        print("HF_HUB_OFFLINE is set: unset it on a machine with internet access to download weights.")
        return 2
    from huggingface_hub import snapshot_download

    allow_pickle = load_settings().allow_pickle
    failed = 0
    for key in keys:
        try:
            source = resolve_source(key)
        except MedlabError as exc:
            print(f"[skip] {key}: {exc}")
            continue
        if source.is_local:
            print(f"[skip] {key}: local source {source.location} (nothing to download)")
            continue
        print(f"[get ] {key}: {source.location} ({get_spec(key).memory_gb:g} GB)")
        try:
            path = snapshot_download(
                source.location,
                revision=source.revision,
                ignore_patterns=None if allow_pickle else IGNORE_PATTERNS,
            )
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other keys
            failed += 1
            print(f"[fail] {key}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            print("       Is this machine online? Gated repos need `huggingface-cli login` or HF_TOKEN.")
            continue
        print(f"[ ok ] {key}: {path}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m medlab", description="Medical AI Lab model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="show for every model where it comes from and whether it can load")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    download = sub.add_parser("download", help="pre-fetch weights into the Hugging Face cache")
    download.add_argument("keys", nargs="*", metavar="KEY", help=f"model keys (default all): {', '.join(model_keys())}")
    download.set_defaults(func=cmd_download)
    from medlab.retrieval.default_index import cli_prepare

    prepare = sub.add_parser("prepare", help="build the default pathology index (MEDLAB_PATHOLOGY_SOURCE) now")
    prepare.set_defaults(func=cli_prepare)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

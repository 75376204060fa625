"""Command line: `python -m medlab doctor`, `download [KEYS]`, `prepare` and `kb list|remove DOC`."""

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
    gpu = settings.gpu_memory_budget_gb
    print(f"device={settings.device}  memory budget={settings.memory_budget_bytes() / 2**30:.1f} GB  "
          f"GPU budget={'free memory at start' if gpu is None else f'{gpu:g} GB'}  "
          f"data dir={settings.data_dir}  hub={'offline' if hub_offline() else 'online' if hub_reachable() else 'unreachable'}")
    for r in rows:
        mark = {"ready": "ok", "loaded": "ok", "downloadable": "..", "unavailable": "!!"}[r.status]
        print(f"[{mark}] {r.key:<18} {r.status:<12} {r.origin:<5} {r.source}")
        if r.reason:
            print(f"       why: {r.reason}")
        if r.fix and r.status != "ready":
            print(f"       fix: {r.fix}")
    from medlab.retrieval.default_index import doctor_lines

    for line in doctor_lines():  # the self-building pathology index: source, state, what to do
        print(line)
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
    from medlab.core.hub import fetch_snapshot, repair_snapshot, require_weights
    from medlab.core.load_errors import translate

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
            tty = sys.stdout.isatty()
            path = fetch_snapshot(source, _console_progress() if tty else None)
            if tty:
                print()  # end the progress line
            require_weights(source, path)
            for repaired in repair_snapshot(source, path):
                print(f"[fix ] {key}: {repaired}: downloaded again")
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other keys
            failed += 1
            error = exc if isinstance(exc, MedlabError) else translate(source, exc)
            print(f"[fail] {key}: {getattr(error, 'reason', error)}")
            if getattr(error, "fix", ""):
                print(f"       fix: {error.fix}")
            continue
        print(f"[ ok ] {key}: {path}")
    return 1 if failed else 0


def prepare_keys() -> list[str]:
    """The models this machine's default configuration uses: what a classroom must have before
    going offline (the optional answer writer and an adapter nobody attaches are left out)."""
    import os

    from medlab.generation.captioner_adapter import uses_adapter
    from medlab.retrieval.generator import GENERATOR_ENV

    skip = set()
    if not uses_adapter():
        skip.add("captioner_adapter")
    if not os.environ.get(GENERATOR_ENV, "").strip():
        skip.add("assistant_generator")
    return [k for k in model_keys() if k not in skip]


def cmd_prepare(args: argparse.Namespace) -> int:
    """Everything a classroom needs before going offline, idempotent (cached weights and indexed
    tiles are not fetched again): 1) the default weights, 2) the default pathology index."""
    from medlab.retrieval.default_index import cli_prepare

    keys = prepare_keys()
    print(f"== 1/2 model weights: {', '.join(keys)}")
    if hub_offline():
        print("HF_HUB_OFFLINE is set: no downloads; what is in the cache is used.")
        weights = 0
    else:
        weights = cmd_download(argparse.Namespace(keys=keys))
    print("== 2/2 default pathology index")
    index = cli_prepare(args)
    return max(weights, index)


def cmd_kb(args: argparse.Namespace) -> int:
    """`kb list`: the knowledge base's documents as the store records them (every replica's);
    `kb remove DOC`: remove one for every replica (README "Scale out")."""
    from medlab.retrieval import doc_records, knowledge_store

    try:
        if args.action == "remove":
            if not args.doc:
                print("kb remove needs a document id, e.g. uploads/notes.pdf (see `python -m medlab kb list`)")
                return 2
            deleted = knowledge_store.remove_document(args.doc)
            print(f"removed {args.doc} ({deleted} chunks) for every replica")
            return 0
        for doc, r in sorted(doc_records.read_all().items()):
            print(f"{r.get('status', '?'):<8} v{r.get('version')} {doc}  sha256 {str(r.get('sha256'))[:12]}  "
                  f"by {r.get('replica')}  ({r.get('kind')}, release {r.get('release')})")
        return 0
    except MedlabError as exc:
        print(exc)
        return 1


def _console_progress():  # type: ignore[no-untyped-def]
    def report(fraction: float, message: str) -> None:  # noqa: ARG001 - the message carries the MB
        print(f"\r       {message}", end="", flush=True)

    return report


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
    prepare = sub.add_parser("prepare", help="before going offline: download the default weights, then build the "
                                             "default pathology index (MEDLAB_PATHOLOGY_SOURCE); idempotent")
    prepare.set_defaults(func=cmd_prepare)
    kb = sub.add_parser("kb", help="the knowledge base's documents: `kb list`, `kb remove DOC` (for every replica)")
    kb.add_argument("action", choices=["list", "remove"])
    kb.add_argument("doc", nargs="?", help="document id for remove, e.g. uploads/notes.pdf")
    kb.set_defaults(func=cmd_kb)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

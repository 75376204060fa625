#!/usr/bin/env bash
# GPU paths in one run (< 5 minutes on one CUDA device), on tiny models built here:
#   cuda placement, bf16 captioner, bitsandbytes 4-bit captioner (tiny Mllama), unsloth import,
#   per-device memory accounting, Grad-CAM on cuda, the ZeroGPU wrappers (fake `spaces`).
# Prints one row per check: name, result, seconds, detail. Exit 0 when every check passed (or
# was skipped because an optional GPU extra is not installed), 1 otherwise.
# Without a CUDA device it prints "no CUDA device" and exits 0.
#   bash scripts/gpu_check.sh            (GPU_CHECK_ALLOW_CPU=1: dry run of the checks on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
export MEDLAB_DATA_DIR="${MEDLAB_DATA_DIR:-$(mktemp -d)}" HF_HOME="${HF_HOME:-$(mktemp -d)}"

if [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA device: nothing to check (the GPU paths need one)"
    exit 0
  fi
fi

exec timeout 290 "$PY" - "$@" <<'PYTHON'
import contextlib, importlib.util, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

sys.path.insert(0, os.getcwd())
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda:0" if CUDA else "cpu"
os.environ["MEDLAB_DEVICE"] = "cuda" if CUDA else "cpu"
ROOT = Path(tempfile.mkdtemp(prefix="gpu-check-"))
rows = []


def check(name):
    def run(fn):
        started = time.perf_counter()
        try:
            result, detail = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is a row, the run goes on
            result, detail = "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            traceback.print_exc(file=sys.stderr)
        rows.append((name, result, time.perf_counter() - started, detail))
        return fn
    return run


from tests import tiny_generation, tiny_models  # noqa: E402

env = {}
env.update(tiny_models.build(ROOT))
env.update(tiny_generation.build(ROOT))
os.environ.update(env)
os.environ["MEDLAB_MODEL_CAPTIONER_ADAPTER"] = "none"  # the base model; the adapter has its own tests

from medlab.core import loaders  # noqa: E402
from medlab.core.cache import measure_bytes  # noqa: E402
from medlab.generation import radiograph  # noqa: E402


def on_device(module):
    return {str(p.device) for p in module.parameters()}


@check("cuda placement (skin classifier)")
def _():
    loaders.reset_cache()
    with loaders.use_model("skin") as loaded:
        devices = on_device(loaded.model)
        want = {"cuda:0"} if CUDA else {"cpu"}
        ok = devices == want and loaders.normalize_device(loaded.device) == DEVICE
        return ("ok" if ok else "FAIL"), f"parameters on {sorted(devices)}"


def caption(n_tokens=8):
    from PIL import Image
    image = Image.new("RGB", (64, 64), (120, 120, 120))
    path = ROOT / "xray.png"
    image.save(path)
    text = ""
    for text in radiograph.caption_stream(str(path), "Describe this radiograph.",
                                          radiograph.CaptionSettings(max_new_tokens=n_tokens, temperature=0.0)):
        pass
    return text


@contextlib.contextmanager
def patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


@check("bf16 captioner (tiny Mllama, transformers)")
def _():
    loaders.reset_cache()
    with patched(radiograph, "_unsloth_importable", lambda d: False), \
         patched(radiograph, "_bitsandbytes_usable", lambda d: False):
        loaded = loaders.get_model("captioner")
        dtypes = {str(p.dtype) for p in loaded.model.parameters()}
        text = caption()
    want = "torch.bfloat16" if CUDA else "torch.float32"
    ok = want in dtypes and not loaded.extras.get("quantized_4bit")
    return ("ok" if ok else "FAIL"), f"dtypes {sorted(dtypes)}; generated {len(text)} chars"


@check("bitsandbytes 4-bit captioner (tiny Mllama)")
def _():
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skip", "bitsandbytes not installed (requirements-gpu.txt)"
    loaders.reset_cache()
    with patched(radiograph, "_unsloth_importable", lambda d: False):
        loaded = loaders.get_model("captioner")
        import bitsandbytes as bnb
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
        text = caption()
        estimate = loaders.estimate_bytes("captioner", DEVICE)
        used = loaders.get_cache().stats()["models"]["captioner"]["bytes"]
    ok = bool(loaded.extras.get("quantized_4bit")) and n4 > 0
    return ("ok" if ok else "FAIL"), f"{n4} Linear4bit layers; estimate {estimate} B vs measured {used} B; {len(text)} chars"


@check("unsloth import")
def _():
    if importlib.util.find_spec("unsloth") is None:
        return "skip", "unsloth not installed (requirements-gpu.txt)"
    proc = subprocess.run([sys.executable, "-c", "import unsloth, sys; print(unsloth.__version__)"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return "FAIL", (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
    return "ok", f"unsloth {proc.stdout.strip()}"


@check("per-device accounting")
def _():
    loaders.reset_cache()
    cache = loaders.get_cache()
    with loaders.use_model("skin") as skin, loaders.use_model("lung_ct") as lung:
        stats = cache.stats()["devices"][DEVICE]
        measured = measure_bytes(skin) + measure_bytes(lung)
        torch_alloc = stats.get("torch_allocated_bytes")
        ok = (stats["used_bytes"] == measured and stats["budget_bytes"] and stats["peak_bytes"] >= measured
              and stats["models"] == ["skin", "lung_ct"]
              and (not CUDA or (torch_alloc is not None and torch_alloc >= measured)))
        if CUDA:
            ok = ok and cache.stats()["devices"]["cpu"]["used_bytes"] == 0
    return ("ok" if ok else "FAIL"), (f"used {stats['used_bytes']} B = measured {measured} B, budget "
                                      f"{stats['budget_bytes']} B, torch allocated {torch_alloc}")


@check("Grad-CAM on cuda (lung classifier)")
def _():
    import numpy as np
    from pydicom.data import get_testdata_file
    from medlab.vision.lung_ct import classify_lung
    loaders.reset_cache()
    result = classify_lung(get_testdata_file("CT_small.dcm", download=False))
    loaded = loaders.get_model("lung_ct")
    heat = np.asarray(result.heatmap)
    ok = (on_device(loaded.model) == {DEVICE} and abs(sum(result.probabilities.values()) - 1) < 1e-4
          and heat.size > 0 and float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 and float(heat.max()) > 0)
    return ("ok" if ok else "FAIL"), (f"on {sorted(on_device(loaded.model))}; heatmap {heat.shape} "
                                      f"max {float(heat.max()):.2f}; probabilities sum to 1")


@check("ZeroGPU wrappers (fake spaces)")
def _():
    if os.environ.get("GPU_CHECK_SKIP_ZEROGPU") == "1":
        return "skip", "GPU_CHECK_SKIP_ZEROGPU=1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_zerogpu.py",
                           "-k", "wrapped or garbage"], capture_output=True, text=True, timeout=200)
    last = (proc.stdout.strip().splitlines() or ["?"])[-1]
    return ("ok" if proc.returncode == 0 else "FAIL"), last[:160]


width = max(len(r[0]) for r in rows)
print(f"\n{'check':<{width}}  result  seconds  detail")
for name, result, seconds, detail in rows:
    print(f"{name:<{width}}  {result:<6}  {seconds:7.1f}  {detail}")
print(f"device: {torch.cuda.get_device_name(0) if CUDA else 'cpu (dry run)'}; torch {torch.__version__}")
sys.exit(0 if all(r[1] in ("ok", "skip") for r in rows) else 1)
PYTHON

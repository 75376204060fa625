"""About & status tab: purpose, disclaimer, each model's source/licence/availability and
live cache statistics. Hosts the /model_status API endpoint."""

from __future__ import annotations

from typing import Any

import gradio as gr

from medlab import DISCLAIMER
from tabs.common import disclaimer, on_page_load, ui_errors
from tabs.i18n import translate

TITLE = "About & status"
TAB_ID = "about"

ABOUT_MD = """
## Medical AI Lab

Try five medical-AI models in one place and see **how they reason and where they fail**:

| Tab | Model | What to look at |
|---|---|---|
| Skin lesion | melanoma classifier + a grounded melanoma assistant | the tuned threshold and its "uncertain" band; cited answers |
| Lung CT | benign / malignant / normal classifier | Grad-CAM: where the model looked; when it defers to an expert |
| Radiograph captioning | Llama-3.2-11B-Vision + radiology LoRA | what fine-tuning changed (adapter on/off) |
| Findings → impression | FLAN-T5 summariser | ROUGE against a reference impression |
| Pathology search | PLIP beside general CLIP | text-to-image search; zero-shot labels |

Models load on first use and share one memory-bounded cache. A model that cannot run on
this machine says why and how to fix it; the others keep working.
"""


LESSON_MD = """
### Running a lesson

**Which link to share.**
- *A tab with an example loaded*: `<app address>/?tab=lung_ct&example=2` opens the Lung CT tab with its
  2nd example in the input (tab ids: `skin`, `lung_ct`, `teach`, `radiograph`, `impression`, `pathology`,
  `quiz`, `about`; `example=N` counts the tab's Examples from 1). A link the app does not understand
  (unknown tab, example out of range) still opens the page, and a line at the top says which part was
  not understood.
- *Exactly what is on your screen*: **Copy a link to this view** (top right) copies a link with the
  current inputs, settings, results and tab (Gradio's deep link; it lives in the server's temporary
  folder, so make it on the day, on the running server).
- *A quiz*: the **Class quiz** tab creates one and shows the student link `<app address>/?quiz=CODE`.

**Reaching the class.** `python app.py --share` prints a public `https://….gradio.live` address for
the lesson (it lasts while the app runs). Set `MEDLAB_AUTH=user:password` before starting the app to
ask everyone for that login (tell the class the password; a Space keeps it as a secret).

**A 45-minute class with the quiz.**
1. Before class: open the Class quiz tab, choose a case set, keep 24 hours (or the length of the
   lesson), **Create the quiz**. Note the **educator secret**: it is shown once.
2. Show the code or the student link. Students open it, look at each case and **commit a guess
   before the model's answer is shown**, then read the model's answer, its explanation and the
   class's guesses so far (one guess per case and browser; no names).
3. Discussion: type the code and the secret under *the class's tally*: per case, the class's
   guesses, the model's answer and the reference label where one is known (most shipped examples have
   none: they are synthetic or test images, and the table says so).
"""

# English source text of the column headers; locales/*.json translate them (runtime.about_col_*).
MODEL_HEADERS = ["model", "status", "source", "licence", "MB loaded", "load s", "notes"]
DEVICE_HEADERS = ["device", "budget GB", "used GB", "peak GB", "models"]
STATUS_WORDS = ("loaded", "ready", "downloadable", "unavailable")  # medlab.core.status.Availability.status


def _status_table(status: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, m in status["models"].items():
        model = status["cache"]["models"].get(key, {})
        rows.append([
            key,
            translate(f"runtime.about_status_{m['status']}") if m["status"] in STATUS_WORDS else m["status"],
            m["source"],
            m["licence"],
            model.get("mb", ""),
            model.get("load_seconds", ""),
            (m["reason"] + (translate("runtime.about_fix", fix=m["fix"])
                            if m["status"] == "unavailable" and m["fix"] else "")).strip(),
        ])
    return rows


def _headed(rows: list[list[Any]], headers: list[str]) -> Any:
    """The table with its column headers in the page's language (Dataframe headers are not
    translated by Gradio's frontend, so they are sent with each refresh)."""
    return gr.Dataframe(value=rows, headers=[translate(h) for h in headers])


def _device_table(status: dict[str, Any]) -> list[list[Any]]:
    """One row per device: budget, used and peak memory of the model cache (GB)."""
    rows = []
    for device, d in status["cache"].get("devices", {}).items():
        budget = translate("runtime.about_not_known_yet") if d["budget_gb"] is None else round(d["budget_gb"], 2)
        rows.append([device, budget, round(d["used_gb"], 3), round(d["peak_gb"], 3), ", ".join(d["models"])])
    return rows


@ui_errors
def model_status() -> dict[str, Any]:
    """Report every model's availability (ready, downloadable or unavailable, with the fix) and the cache's memory use.

    Loads no model.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Returns:
        status: JSON with each model's status, source, licence and reason, and the cache's budget and use per device
    """
    from medlab.core.status import model_status as engine_status

    return engine_status()


def build() -> None:
    disclaimer()
    gr.Markdown(ABOUT_MD)
    gr.Markdown(f"**Disclaimer.** {DISCLAIMER} Outputs can be wrong in ways that look convincing.")
    gr.Markdown(LESSON_MD)
    refresh = gr.Button("Refresh status", variant="secondary")
    table = gr.Dataframe(
        headers=MODEL_HEADERS,
        label="Models",
        interactive=False,
        wrap=True,
    )
    devices = gr.Dataframe(
        headers=DEVICE_HEADERS,
        label="Model memory per device (CPU RAM and each GPU have their own budget)",
        interactive=False,
    )
    with gr.Accordion("Raw status (JSON, also at /model_status)", open=False):
        raw = gr.JSON(label="model_status")
    on_page_load(table, lambda: _headed(_status_table(model_status()), MODEL_HEADERS), None)  # on every page view
    on_page_load(devices, lambda: _headed(_device_table(model_status()), DEVICE_HEADERS), None)
    refresh.click(model_status, inputs=None, outputs=raw, api_name="model_status").then(
        lambda status: (_headed(_status_table(status), MODEL_HEADERS), _headed(_device_table(status), DEVICE_HEADERS)),
        inputs=raw, outputs=[table, devices],
        api_visibility="private",
    )

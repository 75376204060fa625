"""PLACEHOLDER - replaced by the issue that builds this tab."""

import gradio as gr

from tabs.common import disclaimer

TITLE = "Radiograph captioning"
TAB_ID = "radiograph"


def build() -> None:
    disclaimer()
    gr.Markdown("This tab is being built.")

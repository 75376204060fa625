"""PLACEHOLDER - replaced by the issue that builds this tab."""

import gradio as gr

from tabs.common import disclaimer

TITLE = "Lung CT"
TAB_ID = "lung_ct"


def build() -> None:
    disclaimer()
    gr.Markdown("This tab is being built.")

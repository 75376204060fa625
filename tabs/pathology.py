"""PLACEHOLDER - replaced by the issue that builds this tab."""

import gradio as gr

from tabs.common import disclaimer

TITLE = "Pathology search"
TAB_ID = "pathology"


def build() -> None:
    disclaimer()
    gr.Markdown("This tab is being built.")

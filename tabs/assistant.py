"""PLACEHOLDER - replaced by the knowledge-assistant issue. build() renders inside the skin tab."""

import gradio as gr


def build() -> None:
    gr.Markdown("The melanoma assistant is being built.")

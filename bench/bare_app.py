"""A bare Gradio Blocks app with the same number of tabs as Medical AI Lab: the cold-start
baseline. Usage: python bench/bare_app.py PORT NTABS"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

port, ntabs = int(sys.argv[1]), int(sys.argv[2])
with gr.Blocks(title="bare") as demo:
    with gr.Tabs():
        for i in range(ntabs):
            with gr.Tab(f"Tab {i}"):
                gr.Markdown(f"tab {i}")
demo.queue()
demo.launch(server_name="127.0.0.1", server_port=port, ssr_mode=False, quiet=True)

"""Medical AI Lab engine: configuration, model registry and cache, image I/O and one
module per task. Importable without gradio; heavy libraries load inside the functions
that need them so importing this package stays cheap."""

__version__ = "0.1.0"

DISCLAIMER = (
    "Educational use only. This is not a medical device and must not be used for "
    "diagnosis, treatment or any clinical decision."
)

"""UI layer: one module per tab, each exposing TITLE, TAB_ID and build(). No model code."""

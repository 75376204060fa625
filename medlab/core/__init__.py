"""Core: settings, errors, the model registry, the model cache and loaders, availability and model cards."""

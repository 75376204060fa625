"""Text generation: radiograph captioning, findings -> impression, remote backends, text metrics."""

"""Retrieval: the vector store, pathology search / zero-shot and the knowledge assistant."""

"""Teach a classifier in the browser: class folders -> frozen pretrained backbone features ->
a class-weighted logistic head -> a standard Hugging Face classifier folder the lung-CT or
skin tab can use (dataset, features, head, export, taught, service)."""

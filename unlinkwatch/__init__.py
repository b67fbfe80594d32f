"""unlinkwatch: records every file deletion on a Kubernetes node with its pod, container and process."""

__version__ = "0.5.0"

"""Arrow schemas of documents, annotations and manifests, and the pydantic config models.

Imports nothing of ours, so every other package can depend on it.
"""
from schemas.documents import DOCUMENT, QUARANTINE, annotation_schema

__all__ = ["DOCUMENT", "QUARANTINE", "annotation_schema"]

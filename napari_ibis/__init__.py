"""napari-ibis: agentic, text-driven biomedical segmentation (IBISAgent) for napari.

The core (``protocol``, ``clicker``, ``metrics``, ``overlay``, ``segmenters``,
``policies``, ``session``, ``io``, ``cli``) imports neither Qt nor napari, and
loads torch, transformers and sam2 only when a backend is built.
"""

__version__ = "0.1.0"

"""The web dashboard: a server that reads only Redis (no TensorFlow), its pages and the
chart library's assets shipped inside the package, ``/metrics``, and the HTML report."""

from tunecluster.dashboard.server import start_in_background

__all__ = ["start_in_background"]

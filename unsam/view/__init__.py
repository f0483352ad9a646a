"""``python -m unsam.view``: a local web viewer for hierarchical mask labels.

- :mod:`unsam.view.labels` — label folders, their images, bad files as messages;
- :mod:`unsam.view.server` — the HTTP server (page, image list, label files, images, point prompts);
- :mod:`unsam.view.cli` — the command; ``static/`` — the page (decodes the masks itself).
"""

from unsam.view.cli import main
from unsam.view.labels import PAGE_MAX, LabelSet
from unsam.view.server import STATIC_DIR, Viewer, address, make_server

__all__ = ["PAGE_MAX", "STATIC_DIR", "LabelSet", "Viewer", "address", "main", "make_server"]

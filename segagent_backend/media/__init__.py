"""Task images under a media policy: where they may come from, how they are fetched, decoded and cached.

- ``loader``: ``MediaLoader`` (URL -> (H, W, 3) uint8 RGB array), ``MediaSource``, ``load_image_file``;
- ``policy``: ``MediaPolicy`` (allowed hosts, address rules, byte cap, local-files root, trust in /setup)
  and Label Studio's host (where its token may go);
- ``download``: the streamed fetch (checked addresses, redirects, one deadline, byte cap, atomic write);
- ``local``: ``/data/local-files/?d=`` read from the document root.
"""
from ..errors import MediaError
from .loader import MediaLoader, MediaSource, check_task_id, load_image_file
from .policy import MediaPolicy

__all__ = ["MediaError", "MediaLoader", "MediaPolicy", "MediaSource", "check_task_id", "load_image_file"]

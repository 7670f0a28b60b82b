"""``nanotron``: the format's entry in the registry; importing it registers the reader and the writer.

The reader (``reader``) and the writer (``writer``) know nothing of each other; both use the pure
layout rule (``layout``) and the side-file schemas (``config``).
"""

from . import reader, writer  # noqa: F401  (importing them registers them)

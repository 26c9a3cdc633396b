"""TensorFlow's start-up lines kept out of what users see.

TensorFlow 2.16+ writes its start-up notices (oneDNN, absl's "before InitializeLog")
straight to file descriptor 2 from C++ while it is imported; ``TF_CPP_MIN_LOG_LEVEL``
no longer silences them. ``import_tensorflow`` imports it once with fd 2 pointed at a
temporary file, and shows what was held back only if the import fails.
"""

from __future__ import annotations

import os
import sys
import tempfile


def import_tensorflow() -> None:
    """Import TensorFlow and Keras quietly (once per process; later calls are free)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401 - imports TensorFlow, its backend
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)

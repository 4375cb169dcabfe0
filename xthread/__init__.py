"""xthread: threads you can stop safely, on CPython's own thread machinery.

``xthread.Thread`` is a drop-in for ``threading.Thread`` whose life cycle
runs on the ``_xthread`` C module: the start handshake and the join wait
are done in C.
"""
import _xthread

from ._thread import Thread

__all__ = ["Thread", "get_ident", "get_native_id"]

get_ident = _xthread.get_ident
get_native_id = _xthread.get_native_id

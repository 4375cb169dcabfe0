"""xthread: threads you can stop safely, on CPython's own thread machinery."""
import _xthread

__all__ = ["get_ident", "get_native_id"]

get_ident = _xthread.get_ident
get_native_id = _xthread.get_native_id

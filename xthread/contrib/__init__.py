"""Integrations of xthread with other libraries, one module each.

Each is imported only when asked for (``import xthread.contrib.dramatiq``)
and needs its library installed (``pip install xthread[dramatiq]``).
"""

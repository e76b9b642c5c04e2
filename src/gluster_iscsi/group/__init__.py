"""The gateway group's storage primitives (issue 20, docs/HA.md): the group directory on the
Gluster volume, its two-slot records, byte locks and GFIDs (``shared.py``, ``records.py``),
each LUN's shared identity (``identity.py``) and the group definition (``definition.py``).

A layer just above ``backstore``: blocking I/O, no asyncio; the server runs it on worker
threads.
"""

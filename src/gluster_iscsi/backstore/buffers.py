"""Moved to :mod:`gluster_iscsi.buffers` (neutral ground for the iSCSI core, the stores and
the server). This name stays only for ``iscsi/pdu.py``, whose imports another change owns;
once it imports ``..buffers``, delete this file."""

from ..buffers import POOL, BudgetShare, BufferPool, MemoryBudget, PooledBuffer, default_budget

__all__ = ["POOL", "BufferPool", "BudgetShare", "MemoryBudget", "PooledBuffer", "default_budget"]

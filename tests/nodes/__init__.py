"""One test module per iterator node, over small exact inputs: a broken guarantee names the node that broke it.

Each module checks the node's exact output (values, order, block boundaries, lineage) and runs
:func:`headrace.testing.check_node_resume` over it, alone over a :class:`~headrace.testing.ListNode` and
inside a small pipeline over real files. The guarantees across stages stay in ``tests/test_resume.py``.
"""

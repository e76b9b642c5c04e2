"""``python -m gluster_iscsi`` is the ``gluster-iscsi`` command."""

from .cli.main import main

main()

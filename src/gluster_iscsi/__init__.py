"""gluster-iscsi: a user-space iSCSI target for GlusterFS and plain files."""

__version__ = "0.1.0"

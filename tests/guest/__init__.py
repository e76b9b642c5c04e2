"""QEMU guest tier: the Linux kernel initiator against the target (see README.md)."""

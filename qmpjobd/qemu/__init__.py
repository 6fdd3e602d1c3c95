"""QEMU's own face: its command line (``qmpjobd-system-x86_64``), as libvirt runs it."""

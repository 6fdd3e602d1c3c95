"""COLO: guest model, replication stream, checkpoint jobs and failover (QEMU 7.2 surface)."""

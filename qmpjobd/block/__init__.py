"""A small real block layer: file, raw, null-co and blkdebug nodes, and the backup job."""

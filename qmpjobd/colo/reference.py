"""QEMU 7.2's migration constants, as a running QEMU 7.2.22 reports them
(migration/migration.c).

The parameter order is the order query-migrate-parameters shows (QEMU's QDict order).
"""

from __future__ import annotations

from typing import Any, Final

from ..schema.migration import MIGRATION_CAPABILITIES

CAPABILITIES: Final = tuple(MIGRATION_CAPABILITIES)
"""MigrationCapability, in enum order (query-migrate-capabilities lists them so)."""

DEFAULT_PARAMETERS: Final[dict[str, Any]] = {
    "cpu-throttle-tailslow": False, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
    "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1,
    "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50,
    "block-incremental": False, "compress-wait-thread": True, "downtime-limit": 300,
    "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5,
    "announce-step": 100, "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10,
}
"""query-migrate-parameters of a fresh QEMU 7.2."""



def _range(lo: int, hi: int, text: str) -> tuple[int, int, str]:
    return lo, hi, text


PARAMETER_CHECKS: Final = (
    ("compress-level", *_range(0, 9, "a value between 0 and 9")),
    ("compress-threads", *_range(1, 255, "a value between 1 and 255")),
    ("decompress-threads", *_range(1, 255, "a value between 1 and 255")),
    ("throttle-trigger-threshold", *_range(1, 100, "an integer in the range of 1 to 100")),
    ("cpu-throttle-initial", *_range(1, 99, "an integer in the range of 1 to 99")),
    ("cpu-throttle-increment", *_range(1, 99, "an integer in the range of 1 to 99")),
    ("downtime-limit", *_range(0, 2000 * 1000,
                               "an integer in the range of 0 to (2000 * 1000) ms")),
    ("multifd-channels", *_range(1, 255, "a value between 1 and 255")),
    ("multifd-zlib-level", *_range(0, 9, "a value between 0 and 9")),
    ("multifd-zstd-level", *_range(0, 20, "a value between 0 and 20")),
)
"""QEMU 7.2's migrate_params_check() range checks before xbzrle-cache-size, in its order;
the error names the C field (underscores)."""

ANNOUNCE_CHECKS: Final = (
    ("announce-initial", *_range(0, 100000, "a value between 0 and 100000")),
    ("announce-max", *_range(0, 100000, "a value between 0 and 100000")),
    ("announce-rounds", *_range(0, 1000, "a value between 0 and 1000")),
    ("announce-step", *_range(1, 10000, "a value between 0 and 10000")),
)
"""The checks after max-cpu-throttle (QEMU's own text for announce-step says 0)."""


def check_parameters(params: dict[str, Any]) -> str | None:
    """The first complaint of migrate_params_check() about merged parameters, or None."""
    def bad(key: str, lo: int, hi: int, text: str) -> str | None:
        v = params[key]
        return None if lo <= v <= hi else f"Parameter '{key.replace('-', '_')}' expects {text}"
    for key, lo, hi, text in PARAMETER_CHECKS:
        if (err := bad(key, lo, hi, text)) is not None:
            return err
    size = params["xbzrle-cache-size"]
    if size < 4096 or size & (size - 1):
        return ("Parameter 'xbzrle_cache_size' expects a power of two no less than the "
                "target page size")
    if not params["cpu-throttle-initial"] <= params["max-cpu-throttle"] <= 99:
        return ("Parameter 'max_cpu_throttle' expects an integer in the range of "
                "cpu_throttle_initial to 99")
    for key, lo, hi, text in ANNOUNCE_CHECKS:
        if (err := bad(key, lo, hi, text)) is not None:
            return err
    return None

"""The vLLM plugin: entry point ``shmq`` in group ``vllm.general_plugins``.

vLLM calls ``register()`` early in every process it starts (API server, engine core, workers).
It does nothing unless ``SHMQ_VLLM=1``: installing shmq never changes vLLM by itself. When
enabled, it rebinds ``MessageQueue`` and ``Handle`` in every loaded vLLM module that holds vLLM's
own classes, ``shm_broadcast`` itself and names taken earlier with ``from ... import
MessageQueue`` alike (a worker imports its executor module before it loads plugins); modules
imported later take them from ``shm_broadcast``.
"""

from __future__ import annotations

import logging
import os
import sys

from .queue import Handle, MessageQueue

#: A child of vLLM's logger, so the one line saying the plugin is active shows in vLLM's log.
log = logging.getLogger("vllm.plugins.shmq")

ENABLE_VARIABLE = "SHMQ_VLLM"
#: vLLM releases whose MessageQueue interface shmq.vllm mirrors; others are left alone.
SUPPORTED_VERSIONS = ("0.33.",)
_SOURCE_MODULE = "vllm.distributed.device_communicators.shm_broadcast"
_REPLACEMENTS = {"MessageQueue": MessageQueue, "Handle": Handle}
_originals: dict[str, type] = {}  # vLLM's classes, once this process has replaced them


def register() -> bool:
    """Replace vLLM's MessageQueue and Handle in this process when SHMQ_VLLM=1. Idempotent.

    Returns whether shmq's classes are in place.
    """
    if os.environ.get(ENABLE_VARIABLE) != "1":
        return False
    import vllm

    if not vllm.__version__.startswith(SUPPORTED_VERSIONS):
        log.warning("shmq: vLLM %s is not a version shmq.vllm supports (%s); vLLM's own MessageQueue stays in "
                    "place", vllm.__version__, ", ".join(v + "x" for v in SUPPORTED_VERSIONS))
        return False
    first = not _originals
    if first:
        source = __import__(_SOURCE_MODULE, fromlist=["MessageQueue"])
        _originals.update({name: getattr(source, name) for name in _REPLACEMENTS})
    rebound = []
    for module_name, module in list(sys.modules.items()):
        if module_name != "vllm" and not module_name.startswith("vllm."):
            continue
        namespace = getattr(module, "__dict__", {})
        for name, replacement in _REPLACEMENTS.items():
            if namespace.get(name) is _originals[name]:
                setattr(module, name, replacement)
                rebound.append(f"{module_name}.{name}")
    if first:
        log.info("shmq %s: vLLM's MessageQueue is shmq's in this process (pid %d); rebound %s",
                 _shmq_version(), os.getpid(), ", ".join(rebound))
    return True


def _shmq_version() -> str:
    from importlib.metadata import version

    return version("shmq")

"""shmq inside vLLM: a drop-in for vLLM 0.33's MessageQueue, and the plugin that installs it.

    pip install shmq
    SHMQ_VLLM=1 vllm serve ...

Every vLLM process then uses ``shmq.vllm.MessageQueue`` (see shmq.vllm.plugin). The class also
works on its own, with the same interface as vLLM's.
"""

from .queue import Cancelled, Handle, MessageQueue, WrongEnd

__all__ = ["Cancelled", "Handle", "MessageQueue", "WrongEnd"]

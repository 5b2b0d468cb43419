"""shmq configurations under test, and the small spec language of ``--compare``.

A spec is one configuration: ``key=value`` options joined by ``+``, for example
``wait=BusySpin+stats=off``. Several specs are separated by commas:
``--compare stats=on,stats=off``. Keys:

    wait=NAME[:K=V...]   BusySpin | Yield | Backoff | Adaptive | SpinYieldPark (the default), with
                         constructor arguments, e.g. wait=SpinYieldPark:spins=50:yields=100
    stats=on|off         per-participant counters (shmq.create(stats=...))
    recorder=on|off      the flight recorder (shmq.create(flight_entries=0) turns it off)
    flight_entries=INT   the flight recorder's entries per participant (a power of two; 0: off)
    lease=on|off         readers take messages with reader.lease() (zero-copy) instead of get()
    hooks=MODULE:NAME    NAME() is called in the writer and in every reader process and its
                         result is installed with shmq.hooks.install() (e.g. tracing hooks);
                         hooks=off installs none
    build=PATH           the shmq package of another checkout (PATH/shmq, its _ring built in place,
                         e.g. by an editable install there), loaded beside this one: a before/after
                         comparison in one run, e.g. build=../old+chunk_bytes=1024+n_chunks=1024
    sidecar=traces       a ``shmq exporter --traces`` process beside the row, tracing every message
                         from the flight records: what that costs the traced processes, with the
                         sidecar's CPU and the share of operations it traced in the note (sidecar.py)
    ring_bytes=INT       the ring's size (default: shmq's, 16 MiB)
    chunk_bytes=INT      with n_chunks: a ring sized as the fixed slots of shmq's layout 3 were,
    n_chunks=INT         n_chunks frames of chunk_bytes, larger messages in pieces of chunk_bytes

A name from PRESETS stands for its list: ``--compare tracing`` is what stats
and tracing cost (the factories are in tracing_hooks).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import sys

from shmq import hooks as hooks_module
from shmq import wait as wait_module

_SWITCH = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
PRESETS = {
    "tracing": ",".join(["stats=off", "stats=on", *(f"hooks=shmq.cli.bench.tracing_hooks:{factory}" for factory in (
        "tracing_disabled", "tracing_never_sampling", "tracing_1_percent", "tracing_1_percent_no_exporter"))]),
}


@dataclasses.dataclass(frozen=True)
class ShmqConfig:
    """One shmq configuration: a row label and the arguments it gives create() and attach()."""

    label: str  #: what the table's peer column shows
    wait: str = "SpinYieldPark"  #: name of a strategy in shmq.wait.ALL, then ":key=value" arguments
    stats: bool = True  #: shmq.create(stats=...)
    recorder: bool = True  #: the flight recorder
    flight_entries: int | None = None  #: its size; None: shmq's default
    lease: bool = False  #: read with reader.lease() instead of reader.get()
    hooks: str = ""  #: "module:callable" returning MessageHooks, or "" for none
    build: str = ""  #: the checkout whose shmq package the row runs; "" for this one
    sidecar: str = ""  #: "traces": a tracing exporter beside the row; "" for none
    ring_bytes: int | None = None  #: None: shmq's default ring
    chunk_bytes: int | None = None  #: with n_chunks, a ring sized as fixed slots were (shmq.create)
    n_chunks: int | None = None

    def create_arguments(self) -> dict:
        """shmq.create()'s keyword arguments for this configuration."""
        geometry = {key: value for key, value in (("ring_bytes", self.ring_bytes), ("chunk_bytes", self.chunk_bytes),
                                                  ("n_chunks", self.n_chunks)) if value is not None}
        return {"wait": self.strategy(), "stats": self.stats, **geometry,
                **({} if self.recorder and self.flight_entries is None else
                   {"flight_entries": self.flight_entries if self.recorder else 0})}

    def module(self):
        """The shmq package this row runs: this one, or the one in `build`."""
        return _build(self.build) if self.build else sys.modules["shmq"]

    def strategy(self):
        name, *arguments = self.wait.split(":")
        return self.module().wait.ALL[name](**dict(_strategy_argument(a) for a in arguments))

    def install_hooks(self) -> None:
        """Install this configuration's hooks in the calling process (each process has its own)."""
        if not self.hooks:
            return
        module_name, _, attr = self.hooks.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        hooks_module.install(factory())


def parse_spec(spec: str) -> ShmqConfig:
    """One ``key=value+key=value`` spec; raises ValueError naming the bad part."""
    options: dict = {}
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"--compare: {part!r} in {spec!r} is not key=value")
        options[key] = _parse_value(key, value, spec)
    return ShmqConfig(label=f"shmq {spec}", **options)


def parse_specs(text: str) -> list[ShmqConfig]:
    """A comma-separated list of specs, or the name of one of PRESETS."""
    text = PRESETS.get(text.strip(), text)
    configs = [parse_spec(spec) for spec in text.split(",") if spec.strip()]
    if not configs:
        raise ValueError("--compare needs at least one configuration, e.g. stats=on,stats=off")
    return configs


def _parse_value(key: str, value: str, spec: str):
    if key == "wait":
        name, *arguments = value.split(":")
        if name not in wait_module.ALL:
            raise ValueError(f"--compare {spec!r}: wait must be one of {', '.join(wait_module.ALL)}, not {name!r}")
        try:
            wait_module.ALL[name](**dict(_strategy_argument(a) for a in arguments))
        except (TypeError, ValueError) as e:
            raise ValueError(f"--compare {spec!r}: {name} does not take {':'.join(arguments)!r} ({e})") from None
        return value
    if key in ("stats", "lease", "recorder"):
        if value.lower() not in _SWITCH:
            raise ValueError(f"--compare {spec!r}: {key} must be on or off, not {value!r}")
        return _SWITCH[value.lower()]
    if key == "build":
        if not os.path.isfile(os.path.join(value, "shmq", "__init__.py")):
            raise ValueError(f"--compare {spec!r}: build must be a checkout holding shmq/__init__.py, not {value!r}")
        return os.path.abspath(value)
    if key == "hooks":
        if value == "off":
            return ""
        if ":" not in value:
            raise ValueError(f"--compare {spec!r}: hooks must be MODULE:CALLABLE, not {value!r}")
        return value
    if key == "sidecar":
        if value != "traces":
            raise ValueError(f"--compare {spec!r}: sidecar must be traces, not {value!r}")
        return value
    if key in ("ring_bytes", "chunk_bytes", "n_chunks", "flight_entries"):
        try:
            return int(value, 0)
        except ValueError:
            raise ValueError(f"--compare {spec!r}: {key} must be an integer, not {value!r}") from None
    raise ValueError(f"--compare {spec!r}: unknown key {key!r} (use wait, stats, recorder, flight_entries, lease, "
                     "hooks, build, sidecar, ring_bytes, chunk_bytes, n_chunks)")


@functools.cache
def _build(checkout: str):
    """The shmq package of another checkout, imported as shmq_build_<n> (its modules import each other
    relatively, so the copy and this one do not meet)."""
    name = "shmq_build_" + hashlib.sha1(checkout.encode()).hexdigest()[:8]
    package = os.path.join(checkout, "shmq")
    spec = importlib.util.spec_from_file_location(name, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _strategy_argument(text: str) -> tuple[str, float]:
    """``spins=50`` -> ("spins", 50): integers stay integers, anything else is a float."""
    key, _, value = text.partition("=")
    number = float(value)
    return key, int(number) if number.is_integer() and "." not in value else number


def strategy_rows() -> list[ShmqConfig]:
    """The default shmq rows: one per wait strategy, the default last."""
    return [ShmqConfig(label=f"shmq {name}", wait=name)
            for name in ("BusySpin", "Yield", "Backoff", "Adaptive", "SpinYieldPark")]


LEASE = ShmqConfig(label="shmq SpinYieldPark lease", lease=True)

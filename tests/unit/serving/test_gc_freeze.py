"""Startup objects leave the collector's walks; later garbage is still collected."""

import gc
import weakref

from serving.gc_freeze import freeze_startup_objects


class _Node:
    pass


def test_startup_objects_are_frozen_and_later_cycles_still_collected():
    try:
        frozen = freeze_startup_objects()
        assert frozen > 1000 and gc.get_freeze_count() == frozen  # this process's modules, at least
        cycle = _Node()
        cycle.self = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None  # made after the freeze: collected as usual
    finally:
        gc.unfreeze()

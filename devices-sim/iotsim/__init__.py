"""iotsim: a simulator of MQTT device fleets (MQTT 3.1.1 and 5.0) for load and accounting.

Thousands of simulated devices share one asyncio event loop (uvloop when available);
``--workers N`` splits a fleet across processes. Every simulated PUBLISH carries a run id,
a source id, a sequence number and a timestamp, so monitor subscribers can account for
every message (delivered, lost, duplicated, out of order, per QoS) and measure end-to-end
latency.

The only part of ``iotbroker`` this package uses is :mod:`iotbroker.codec` (bytes <->
packets). Entry points: the ``iotsim`` command (:mod:`iotsim.cli`, started by
:mod:`iotsim.launcher`; it needs the ``sim`` extra, ``rich``) and
:func:`iotsim.runner.run` for tests and scripts.
"""

__version__ = "0.1.0"

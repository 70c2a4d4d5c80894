"""The what-if simulator: replay task traces through the real policy and the alternatives.

Not imported by the Lambda; standard library only (plots in the benchmark use matplotlib).
"""

from celery_autoscaler.sim.engine import SimSettings, StartDelay
from celery_autoscaler.sim.simulate import POLICIES, PolicyOutcome, as_json, simulate
from celery_autoscaler.sim.traces import BUILTIN, ServiceModel, Trace, builtin, read_csv, write_csv

__all__ = [
    "BUILTIN",
    "POLICIES",
    "PolicyOutcome",
    "ServiceModel",
    "SimSettings",
    "StartDelay",
    "Trace",
    "as_json",
    "builtin",
    "read_csv",
    "simulate",
    "write_csv",
]

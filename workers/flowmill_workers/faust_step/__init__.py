"""A Faust step: a user's Faust agent run as one step of a Pipeline (docs/faust.md).

`flowmill worker --step NAME` of a step with `faust:` lands here instead of the batched
runtime: binding.py imports the user's app with flowmill's broker, app id (the step's
consumer group) and topic names; monitor.py feeds the same Prometheus series as the
other workers (plus Faust's own); launcher.py runs the Faust worker with /healthz,
/readyz and /metrics on the worker port.
"""

from flowmill_workers.faust_step.binding import FaustStepError
from flowmill_workers.faust_step.launcher import run_faust_step

__all__ = ["FaustStepError", "run_faust_step"]

"""An example speechfuse plug-in: importing it registers three components that configs name like built-ins.

    upstreams: [example-mfcc]                     # speechfuse_example.upstream.MfccUpstream
    interface: {name: example_mean_linear}        # speechfuse_example.interface.MeanLinear
    task: example_smoothed_classify               # speechfuse_example.task.SmoothedClassifyTask
"""
from .interface import MeanLinear
from .task import SmoothedClassifyTask
from .upstream import MfccUpstream

__all__ = ["MfccUpstream", "MeanLinear", "SmoothedClassifyTask"]

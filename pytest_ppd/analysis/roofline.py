"""The physical floor, where the analysis has always imported it from: it lives in ``pytest_ppd.roofline``
(the bottom of the import graph, shared with the router and the sim's cost model).

    >>> round(floor_ms("Llama-3.1-8B", "H100-SXM", 1, 4096, 8192))
    151
"""

from pytest_ppd.roofline import Work, append_work, attention_flops, bound_s, floor_ms, floor_s, operator_times_s

__all__ = ["Work", "append_work", "attention_flops", "bound_s", "floor_ms", "floor_s", "operator_times_s"]

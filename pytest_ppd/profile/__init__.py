"""`ppd profile`: Dynamo-compatible prefill and decode sweeps, plus the cached-context sweep Dynamo lacks.

    from pytest_ppd.profile import ProfileDesign, run_profile
    result = run_profile("Llama-3.1-8B", "H100-SXM", 1, Path("profile"), design=ProfileDesign(prefill_reps=5))

    ppd profile --backend virtual --model Llama-3.1-8B --gpu H100-SXM --tp 1 -o DIR

What runs (``measure.py``): each sweep on its own colocated engine of the virtual-time deployment simulator,
built from the served sim's argv (Dynamo also profiles prefill and decode on aggregated engines). Grids
(``sweeps.py``) are Dynamo 1.6.1's: prefill ISL from 100 to the context minus 512 in 16 steps at
concurrency 1; decode ISL in 6 steps x concurrency in 6 steps up to the pool, max_kv_tokens // (isl + 500),
OSL 500; plus TTFT over (fresh m, cached L). Every request's cache state is proven from SGLang's
``meta_info.cached_tokens``; a request that fails its proof is reported and left out of every table.

What it writes (``formats.py``): Dynamo's ``selected_{prefill,decode}_interpolation/raw_data.npz`` and JSON
fallbacks, the Mocker's ``perf_data.npz``, our ``cached_context.json`` and its npz, ``profile_records.jsonl``
(one line per point; a rerun with the same design skips what it holds), ``profile_manifest.json`` and PNG plots.
Other backends (sim, sglang, external over HTTP) are not available yet.
"""

from pytest_ppd.profile.cli import add_arguments, cmd_profile
from pytest_ppd.profile.formats import CachedTable, DecodeTable, PrefillTable, read_cached, read_decode, read_prefill
from pytest_ppd.profile.run import ProfileResult, run_profile
from pytest_ppd.profile.sweeps import ProfileDesign

__all__ = ["CachedTable", "DecodeTable", "PrefillTable", "ProfileDesign", "ProfileResult", "add_arguments",
           "cmd_profile", "read_cached", "read_decode", "read_prefill", "run_profile"]

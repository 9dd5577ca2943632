"""Every way of running one model, side by side: `wordlm bench` (`run`), its tables and plots
(`report`) and the tutorial's flow (`demo`).

The top of the house: may import any workflow package (engines, export, quantize, evaluate) and, for
the torch rows and the demo, torch.
"""

from wordlm.bench.run import ALL_VARIANTS, BenchConfig, run_bench, write_results

__all__ = ["ALL_VARIANTS", "BenchConfig", "run_bench", "write_results"]

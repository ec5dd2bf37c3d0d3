"""Tensor and expert parallelism over torch.distributed (docs/PARALLEL.md).

  plan.py             which slice of each weight a rank holds; `check_split` (impossible splits, before any process)
  layers.py           row-parallel linear, vocabulary-parallel embedding / LM head, expert-parallel MoE experts
  tensor_parallel.py  `parallelize(model, group)`: applied to a built model from outside
  loading.py          `load_parallel` / `load_shard`: each rank reads only its slices from the safetensors files
  runner.py           rank 0 broadcasts each step's inputs; the other ranks run them (`serve_steps`)
  ranks.py            what every rank does: join the process group, load its shard, serve rank 0's steps
  launch.py           spawn the ranks (or join torchrun's), and stop them: what `LLM(tensor_parallel_size=N)` uses
  testing.py          `run_ranks(fn, n)`: a function on n local gloo ranks, for tests
"""

from qwen3vl.parallel.plan import ParallelSplitError, check_split
from qwen3vl.parallel.runner import TensorParallelError
from qwen3vl.parallel.tensor_parallel import parallelize

__all__ = ["ParallelSplitError", "TensorParallelError", "check_split", "parallelize"]

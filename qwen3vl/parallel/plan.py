"""Which slice of each weight a rank holds, and which splits are possible at all (checked before any process starts).

Legend: N ranks, r this rank, H query heads, K kv heads, Dh head dim, E experts, V vocabulary.

* attention: rank r holds query heads [r*H/N, (r+1)*H/N). With N <= K it holds kv heads [r*K/N, (r+1)*K/N);
  with N > K (and N % K == 0) each kv head is replicated on N/K ranks and rank r holds kv head r // (N/K),
  the one its query heads attend with.
* dense MLP: intermediate columns [r*I/N, (r+1)*I/N).
* MoE: experts [r*E/N, (r+1)*E/N) (expert parallelism; each expert stays whole).
* vocabulary (embedding rows, LM-head rows): contiguous chunks of ceil(V/N) rows, the last one shorter, so any
  vocabulary size splits (fine-tuned vocabularies are often odd).
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen3vl.config import Qwen3VLConfig


class ParallelSplitError(ValueError):
    """The model cannot be split over the requested number of ranks."""


@dataclass(frozen=True)
class Shard:
    """The rows (or columns, ...) of a full tensor that one rank holds: the concatenation along `dim` of `ranges`
    (start, stop) of the full tensor of shape `full_shape`."""

    dim: int
    ranges: tuple[tuple[int, int], ...]
    full_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        out = list(self.full_shape)
        out[self.dim] = sum(b - a for a, b in self.ranges)
        return tuple(out)

    def index(self, a: int, b: int) -> tuple[slice, ...]:
        """The indexing tuple that selects [a, b) along `dim` of the full tensor."""
        return (slice(None),) * self.dim + (slice(a, b),)


def chunk(total: int, n: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's equal share of `total` items (total % n == 0)."""
    size = total // n
    return rank * size, (rank + 1) * size


def vocab_chunk(vocab: int, n: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's vocabulary rows: ceil(V/N) each, the last rank takes what is left."""
    size = -(-vocab // n)
    return min(rank * size, vocab), min((rank + 1) * size, vocab)


def kv_head_range(kv_heads: int, n: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the kv heads rank holds (one replicated head when N > K)."""
    if n <= kv_heads:
        return chunk(kv_heads, n, rank)
    head = rank // (n // kv_heads)
    return head, head + 1


def local_kv_heads(cfg: Qwen3VLConfig, n: int) -> int:
    """kv heads per rank: what each rank's KV cache holds."""
    a, b = kv_head_range(cfg.text_config.num_key_value_heads, n, 0)
    return b - a


def split_problems(cfg: Qwen3VLConfig, n: int) -> list[str]:
    """Every reason `cfg` cannot be split over n ranks (empty: it can)."""
    t = cfg.text_config
    out = []
    if n < 1:
        return [f"tensor_parallel_size must be >= 1, got {n}"]
    h, k = t.num_attention_heads, t.num_key_value_heads
    if h % n:
        out.append(f"text_config.num_attention_heads ({h}) is not divisible by {n}")
    if n <= k and k % n:
        out.append(f"text_config.num_key_value_heads ({k}) is not divisible by {n}")
    if n > k and n % k:
        out.append(f"{n} ranks cannot share text_config.num_key_value_heads ({k}) kv heads: with more ranks than "
                   f"kv heads, the rank count must be a multiple of the kv heads (each head is replicated)")
    dense_layers = [i for i in range(t.num_hidden_layers) if not t.is_moe_layer(i)]
    if dense_layers and t.intermediate_size % n:
        out.append(f"text_config.intermediate_size ({t.intermediate_size}) is not divisible by {n}")
    if t.num_experts > 0 and t.num_experts % n:
        out.append(f"text_config.num_experts ({t.num_experts}) is not divisible by {n} (expert parallelism puts "
                   f"E/N whole experts on each rank)")
    if t.vocab_size < n:
        out.append(f"text_config.vocab_size ({t.vocab_size}) is smaller than the rank count {n}")
    return out


def valid_sizes(cfg: Qwen3VLConfig, limit: int = 64) -> list[int]:
    return [n for n in range(1, limit + 1) if not split_problems(cfg, n)]


def check_split(cfg: Qwen3VLConfig, n: int) -> None:
    """Raise `ParallelSplitError` naming every config field that does not split over n ranks."""
    problems = split_problems(cfg, n)
    if problems:
        sizes = ", ".join(map(str, valid_sizes(cfg)))
        raise ParallelSplitError(f"cannot split this model over tensor_parallel_size={n}: " + "; ".join(problems)
                                 + f". Sizes that work for this model: {sizes}")

"""The demo model's held-out loss, as `qwen3vl train demo` prints it ("step N: eval loss X") but for any model folder:
the mean cross-entropy per assistant target token over the fixed held-out set (seed 1, 110 examples of the default
task mix, the model's own scene sizes), batch 16, bf16 autocast. Lets a stretch be cut between its evals and still
be judged by the ship rule (lower held-out loss than the shipped model).

    python scripts/demo_heldout.py qwen3vl/assets/demo          # the shipped model
    python scripts/demo_heldout.py /tmp/run/export-step-005250  # a checkpoint exported by demo_stretch.sh wait
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.processing.processor import load_processor
    from qwen3vl.train.data import BucketedBatches, ListSource
    from qwen3vl.train.demo import DemoConfig, synthetic_config_for
    from qwen3vl.train.sft import evaluate_loss
    from qwen3vl.train.synthetic import TASKS, make_dataset

    d = DemoConfig()
    synth = synthetic_config_for(args.model, d.second_event_p)
    held_out = ListSource([ex.messages for ex in make_dataset(d.eval_seed, d.eval_examples, TASKS, synth)])
    model = load_model(args.model, dtype=torch.float32)
    batches = list(BucketedBatches(held_out, load_processor(args.model), d.batch_size, shuffle=False).epoch(0))
    print(json.dumps({"model": args.model, "held_out_loss": round(evaluate_loss(model, batches, d.bf16), 5)}))


if __name__ == "__main__":
    main()

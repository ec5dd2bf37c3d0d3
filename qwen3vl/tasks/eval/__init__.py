"""Evaluation: metrics (metrics.py), answer extraction (answers.py), JSONL datasets and the runner (runner.py).

    from qwen3vl.tasks.eval.runner import load_dataset, evaluate
    report = evaluate(load_dataset("bench.jsonl"), backend)
    print(report.table())
"""

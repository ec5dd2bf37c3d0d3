#!/usr/bin/env bash
# A demo-model training stretch that outlives the command that starts it, for machines lent in short calls (a GPU
# for minutes at a time): start it, wait for it in later calls, and take its model out in pieces small enough to copy.
#
#   bash scripts/demo_stretch.sh start DIR [train demo options...]   # background run; its PID in DIR/run.pid
#   bash scripts/demo_stretch.sh wait DIR SECONDS [OUT]             # wait up to SECONDS; then export the newest
#                                                                    # checkpoint (or the final model) into OUT
#   bash scripts/demo_stretch.sh status DIR
#
# `start` runs `qwen3vl train demo --out DIR/model --work-dir DIR/work --save-every 250 ...` under setsid, so it
# survives the calling shell, with its log in DIR/train.log. `wait` checks the PID with `kill -0` (never `pgrep -f`,
# whose pattern matches the waiting shell's own command line) and, whatever happened, leaves OUT/model.safetensors
# split into OUT/model.part.aa, .ab, ... of at most 12 MB (join with `cat OUT/model.part.* > model.safetensors`),
# plus OUT/metrics.jsonl and the last lines of the log, so a machine taken back loses minutes, not the run.
# Example (the H200 stretch of docs/TRAINING.md):
#   bash scripts/demo_stretch.sh start /tmp/gpu --init-from qwen3vl/assets/demo --seed 20 --device cuda \
#       --workers 13 --batch-size 128 --lr 5e-4 --steps 3000 --shuffle-turns 0.5 --video-steps --eval-every 500
set -euo pipefail
cmd=${1:?usage: demo_stretch.sh start|wait|status DIR ...}
dir=${2:?a run folder}
py=${PYTHON:-python3}

running() { [[ -f "$dir/run.pid" ]] && kill -0 "$(cat "$dir/run.pid")" 2>/dev/null; }

case "$cmd" in
start)
    shift 2
    mkdir -p "$dir"
    if running; then echo "already running: PID $(cat "$dir/run.pid")" >&2; exit 1; fi
    setsid nohup "$py" -m qwen3vl.cli train demo --out "$dir/model" --work-dir "$dir/work" --save-every 250 "$@" \
        > "$dir/train.log" 2>&1 < /dev/null &
    echo $! > "$dir/run.pid"
    echo "started PID $(cat "$dir/run.pid"); log $dir/train.log"
    ;;
wait)
    seconds=${3:?seconds to wait}
    out=${4:-$dir/out}
    end=$((SECONDS + seconds))
    while running && ((SECONDS < end)); do sleep 5; done
    mkdir -p "$out"
    if running; then echo "still running after ${seconds}s"; else echo "finished"; fi
    model="$dir/model"
    if running || [[ ! -f "$model/model.safetensors" ]]; then  # not done: the newest checkpoint, as a model
        last=$(ls -d "$dir"/work/run/checkpoints/step-* 2>/dev/null | sort | tail -1 || true)
        if [[ -z "$last" ]]; then echo "no checkpoint yet" >&2; tail -c 2000 "$dir/train.log" >&2; exit 1; fi
        model="$dir/export-$(basename "$last")"
        "$py" -m qwen3vl.cli train export "$last" --out "$model" > /dev/null
        base=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["model"])' "$last/trainer.json")
        cp "$base/synthetic_config.json" "$model/" 2>/dev/null || true  # the scene sizes, beside the weights
        echo "exported $last"
    fi
    rm -f "$out"/model.part.*
    split -b 12M "$model/model.safetensors" "$out/model.part."
    cp "$dir/work/run/metrics.jsonl" "$out/" 2>/dev/null || true
    tail -c 3000 "$dir/train.log" | tr '\r' '\n' | tail -20 > "$out/train.tail"
    grep -a "eval loss" "$dir/train.log" | tail -5 || true
    ls -la "$out"
    ;;
status)
    if running; then echo "running: PID $(cat "$dir/run.pid")"; else echo "not running"; fi
    grep -a "eval loss" "$dir/train.log" 2>/dev/null | tail -3 || true
    tail -c 400 "$dir/train.log" 2>/dev/null | tr '\r' '\n' | tail -2 || true
    ;;
*)
    echo "unknown command $cmd (start, wait, status)" >&2
    exit 2
    ;;
esac

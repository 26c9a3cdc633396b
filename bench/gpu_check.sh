#!/usr/bin/env bash
# GPU check (under 5 minutes) for a machine with an NVIDIA GPU:
#   1. the same digits trial on CPU, under OneDeviceStrategy on the GPU, and under mixed
#      precision, with samples/s for each;
#   2. the slot plan of a 2-slot worker: one process per GPU (CUDA_VISIBLE_DEVICES), or
#      the pinning it would do on a 1-GPU machine.
# Usage: bash bench/gpu_check.sh   (after make install; nothing in make test needs a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi -L || { echo "no NVIDIA GPU visible"; exit 1; }

run_trial() {  # $1 label, $2 CUDA_VISIBLE_DEVICES, $3 strategy, $4 mixed_precision
  CUDA_VISIBLE_DEVICES="$2" "$PY" - "$1" "$3" "$4" <<'PYEOF'
import json, sys, tempfile, time
from tunecluster.spec import parse_spec
from tunecluster.spec.space import build_space, space_to_json
from tunecluster.worker.runtime import JobRuntime
from tunecluster.worker.trial import TrialRequest, run_trial
label, strategy, mp = sys.argv[1:4]
spec = parse_spec({"name": "gpu-check", "data": {"dataset": "digits"},
                   "model": {"builtin": "mlp"}, "search": {"objective": "val_accuracy"},
                   "train": {"epochs": 20, "batch_size": 256, "mixed_precision": mp},
                   "resources": {"strategy": strategy}})
rt = JobRuntime.prepare("gpu", spec, space_to_json(build_space({})), tempfile.mkdtemp())
class Quiet:
    def epoch(self, e, m): return False
values = {"n_hidden": 3, "n_neurons": 1024, "learning_rate": 1e-3, "optimizer": "adam"}
run_trial(rt, TrialRequest("warm", values), Quiet())  # tracing and CUDA start-up
t0 = time.perf_counter(); r = run_trial(rt, TrialRequest("timed", values), Quiet())
secs = r.timings["fit_s"]
print(json.dumps({"run": label, "samples_per_s": round(len(rt.splits.x_train) * 20 / secs),
                  "val_accuracy": round(r.score, 4), **r.distribution}))
PYEOF
}

run_trial cpu -1 default off
run_trial gpu-one-device 0 one_device off
run_trial gpu-mixed-precision 0 one_device on
run_trial gpu-auto 0 auto auto

"$PY" - <<'PYEOF'
from tunecluster.worker.slots import plan_slots, visible_gpus
gpus = visible_gpus()
print("visible GPUs:", gpus)
print("2-slot plan (1 GPU per trial):", plan_slots(gpus, 1, 2))
print("a 2-GPU machine would pin:", plan_slots(["0", "1"], 1))
PYEOF

#!/usr/bin/env bash
# GPU check (under 5 minutes) for a machine with an NVIDIA GPU:
#   1. the same digits trial on CPU, under OneDeviceStrategy on the GPU, and under mixed
#      precision, with samples/s for each;
#   2. the slot plan of a 2-slot worker: one process per GPU (CUDA_VISIBLE_DEVICES), or
#      the pinning it would do on a 1-GPU machine;
#   3. trials per hour on GPU 0 with 1, 2, 4 and 8 trials per GPU
#      (tunecluster worker --trials-per-gpu N, each trial process capped at its share of
#      the GPU's memory): a real Redis, chief and one worker, the same job for each N
#      ($PACK_TRIALS trials of the course's MLP, $PACK_EPOCHS epochs), timed from the
#      first trial's claim to the last one's end, the trial processes already warm.
# Usage: bash bench/gpu_check.sh   (after make install; nothing in make test needs a GPU)
#        PACK_ONLY=1 bash bench/gpu_check.sh   (part 3 only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
# ALLOW_NO_GPU=1 PACK_ONLY=1 PACK_SIZES=1: a dry run of part 3 on CPU (the harness only)
[ -n "${ALLOW_NO_GPU:-}" ] || nvidia-smi -L || { echo "no NVIDIA GPU visible"; exit 1; }

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

if [ -z "${PACK_ONLY:-}" ]; then
run_trial cpu -1 default off
run_trial gpu-one-device 0 one_device off
run_trial gpu-mixed-precision 0 one_device on
run_trial gpu-auto 0 auto auto

"$PY" - <<'PYEOF'
from tunecluster.worker.slots import gpu_memory_mb, plan_slots, visible_gpus
gpus = visible_gpus()
print("visible GPUs:", gpus)
print("2-slot plan (1 GPU per trial):", plan_slots(gpus, 1, 2))
print("a 2-GPU machine would pin:", plan_slots(["0", "1"], 1))
print("4 trials per GPU:", plan_slots(gpus, None, None, 4, gpu_memory_mb()))
PYEOF
fi

# 3. trials per hour, N trials per GPU (GPU 0 only).
CUDA_VISIBLE_DEVICES=0 PACK_TRIALS=${PACK_TRIALS:-16} PACK_EPOCHS=${PACK_EPOCHS:-5} \
  PACK_SIZES=${PACK_SIZES:-1 2 4 8} "$PY" - <<'PYEOF'
import json, os, subprocess, sys, tempfile, time
from tunecluster.api.submission import PreparedJob, search_space, submit, wait
from tunecluster.cluster import RedisServer
from tunecluster.spec import parse_spec
from tunecluster.store import Store

trials, epochs = int(os.environ["PACK_TRIALS"]), int(os.environ["PACK_EPOCHS"])
spec = parse_spec({"name": "pack", "data": {"dataset": "digits"},
                   "model": {"builtin": "mlp", "hyperparameters": {
                       "n_hidden": {"int": [1, 3]}, "n_neurons": {"int": [16, 256], "step": 16},
                       "learning_rate": {"float": [1e-4, 1e-2], "sampling": "log"},
                       "optimizer": {"choice": ["sgd", "adam"]}}},
                   "search": {"objective": "val_accuracy",
                   "max_trials": trials, "seed": 7},
                   "train": {"epochs": epochs, "batch_size": 32}})
job = PreparedJob(spec, search_space(spec))
rows = []
for n in [int(x) for x in os.environ["PACK_SIZES"].split()]:
    with RedisServer() as redis, tempfile.TemporaryDirectory() as art:
        role = [sys.executable, "-m", "tunecluster"]
        procs = [subprocess.Popen([*role, "chief", "--redis", redis.url, "--artifacts", art],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                 subprocess.Popen([*role, "worker", "--redis", redis.url, "--artifacts", art,
                                   "--trials-per-gpu", str(n)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            store = Store.from_url(redis.url)
            deadline = time.monotonic() + 120
            while sum(int(w.get("slots", 0)) for w in store.workers.live(10).values()) < n:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    sys.exit(f"{n} trials per GPU: the worker did not come up")
                time.sleep(0.5)
            time.sleep(20)  # the trial processes import TensorFlow before the clock starts
            job_id = submit(store, job)
            results = wait(store, job_id, timeout_s=900)
            every = store.jobs.trials(job_id)
            done = [r for r in every if r.get("state") == "COMPLETED"]
            if len(done) < len(every):
                print("not completed:", [(r["trial"], r.get("state"), r.get("error", "")[:200]) for r in every if r not in done], flush=True)
            span = (max(int(r["finished"]) for r in done)
                    - min(int(r["started"]) for r in done)) / 1000
            rows.append({"trials_per_gpu": n, "completed": len(done), "span_s": round(span, 1),
                         "trials_per_hour": round(len(done) / span * 3600),
                         "best_val_accuracy": results.get("best", {}).get("score")})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
base = rows[0]["trials_per_hour"] if rows else 0
for r in rows:
    print(f"{r['trials_per_gpu']} per GPU: {r['trials_per_hour']} trials/hour"
          f" ({r['trials_per_hour'] / base:.2f}x of 1 per GPU)")
PYEOF

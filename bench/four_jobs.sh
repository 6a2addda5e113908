#!/usr/bin/env bash
# The experiment's four jobs through a running `make serve`, with curl only: submit all four, wait,
# then print each one's accuracy, parameter count and wall time from its submit to succeeded.
# Usage: bench/four_jobs.sh [API base, default localhost:8000]
set -euo pipefail
API=${1:-localhost:8000}
work=$(mktemp -d)
for job in "fc null" "cnn null" "fc 42" "cnn 42"; do
  set -- $job
  submitted=$(date +%s.%N)
  curl -sf -X POST "$API/v1/jobs" -H 'content-type: application/json' \
       -d "{\"architecture\": \"$1\", \"permutation_seed\": $2, \"epochs\": 1}" > "$work/job"
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/job")
  echo "$id $submitted" >> "$work/ids"
done
while read -r id submitted; do
  until curl -sf "$API/v1/jobs/$id" | grep -q '"status":"\(succeeded\|failed\|cancelled\)"'; do sleep 0.05; done
  curl -sf "$API/v1/jobs/$id" > "$work/$id.json"
done < "$work/ids"
python3 - "$work" <<'PY'
import json, sys
from datetime import datetime
from pathlib import Path
work = Path(sys.argv[1])
first, last = None, None
for line in (work / "ids").read_text().split("\n"):
    if not line:
        continue
    job_id, submitted = line.split()
    job = json.loads((work / f"{job_id}.json").read_text())
    result = job["result"] or {}
    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
    first = min(first or float(submitted), float(submitted))
    last = max(last or finished, finished)
    print(f"{job['architecture']:3} permutation_seed={str(job['spec']['permutation_seed']):4} {job['status']:9} "
          f"accuracy={result.get('test_accuracy')} params={job['param_count']} "
          f"submit->end={finished - float(submitted):.2f}s train={result.get('train_seconds', 0):.2f}s")
print(f"first submit -> last end: {last - first:.2f}s")
PY
rm -rf "$work"

#!/usr/bin/env bash
# The GPU check (issue 13): the CUDA-marked tests, the cost constants and the engine benchmark on
# a CUDA device, in under 10 minutes, written as one JSON.
#
#   bench/device_check.sh [--cpu] [--out FILE]      (default FILE: runs/device_check.json)
#
# --cpu is the dry run: the same steps on the CPU at smoke size (the tests with
# PLASTICITY_TEST_DEVICE=cpu, the costs at |V| = 300, bench_engine.py --smoke); about a minute.
# Exit status: 0 when every step passed, 1 when one failed (the JSON says which), 2 on bad usage
# or when --cpu is not given and there is no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
MODE=cuda
OUT=runs/device_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --out) OUT=${2:?--out needs a file}; shift ;;
    *) echo "usage: bench/device_check.sh [--cpu] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
if ! "$PY" -c "import torch, plasticity" 2>/dev/null; then
  echo "device_check: $PY cannot import torch and plasticity: set PY to the project's python (make setup)" >&2
  exit 2
fi
if [ "$MODE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "device_check: no CUDA device here (torch.cuda.is_available() is False); --cpu for the dry run" >&2
  exit 2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
export PLASTICITY_TRACKING_URI=none  # Ray keeps its token authentication (the platform sets RAY_AUTH_MODE=token)

step() {  # step NAME TIMEOUT CMD...: run, keep its output and exit status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$TMP/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$TMP/steps"
  tail -3 "$TMP/$name.log"
}

if [ "$MODE" = cuda ]; then
  step tests 240 env PLASTICITY_TEST_DEVICE=cuda "$PY" -m pytest -q -m cuda tests/test_cuda.py \
    -p no:cacheprovider --junitxml="$TMP/junit.xml"
  step costs 60 "$PY" bench/device_costs.py --device cuda --V 1000 --out "$TMP/costs.json"
  step bench 420 "$PY" bench/bench_engine.py --quick --device cuda --out "$TMP/bench.json"
else
  step tests 240 env PLASTICITY_TEST_DEVICE=cpu "$PY" -m pytest -q -m cuda tests/test_cuda.py \
    -p no:cacheprovider --junitxml="$TMP/junit.xml"
  step costs 60 "$PY" bench/device_costs.py --device cpu --V 300 --reps 5 --out "$TMP/costs.json"
  step bench 240 "$PY" bench/bench_engine.py --smoke --threads 1 --out "$TMP/bench.json"
fi

mkdir -p "$(dirname "$OUT")"
"$PY" - "$TMP" "$OUT" "$MODE" "$START" <<'PYEOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
tmp, out, mode, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
steps = {}
for line in (tmp / "steps").read_text().splitlines():
    name, rc, secs = line.split()
    steps[name] = {"rc": int(rc.split("=")[1]), "seconds": int(secs.rstrip("s")),
                   "log_tail": (tmp / f"{name}.log").read_text()[-2000:]}
try:
    suite = ET.parse(tmp / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    steps["tests"]["counts"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, KeyError):
    pass
for name in ("costs", "bench"):
    f = tmp / f"{name}.json"
    if f.exists():
        steps[name]["result"] = json.loads(f.read_text())
ok = all(s["rc"] == 0 for s in steps.values())
tests = steps.get("tests", {}).get("counts", {})
if mode == "cuda" and tests and tests.get("skipped") == tests.get("tests"):
    ok = False  # every CUDA test skipped: the device was not used
bench = steps.get("bench", {}).get("result", {})
res = {"mode": mode, "ok": ok, "seconds": int(time.time()) - start,
       "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
       "device": bench.get("info", {}).get("device_name"), "summary": bench.get("summary", {}),
       "steps": steps}
out.write_text(json.dumps(res, indent=1))
print(f"device_check ({mode}): {'ok' if ok else 'FAILED'} in {res['seconds']} s -> {out}")
sys.exit(0 if ok else 1)
PYEOF

#!/usr/bin/env bash
# The study in resumable parts, after the premise probe, on the study preset's settings:
#   scripts/run_study.sh [OUT_DIR [medssr study options...]]   (default .medssr/study/smollm2; rerun to resume)
# e.g. scripts/run_study.sh .medssr/study/smollm2 --config docs/results/study-smollm2-run5.yaml
# The probe decides, by its rule fixed before it runs (Wilson 95% lower bound of the base model's permuted
# majority vote >= chance + 10 points), which knowledge question types synthesis makes; when no type passes,
# that is the finding and the study runs on every type, so its positive control and precision curve still say
# what the setup can detect. Each part resumes the same folder; a finished step is never redone.
set -euo pipefail
out=${1:-.medssr/study/smollm2}
shift || true
options=("$@")
medssr=${MEDSSR:-.venv/bin/medssr}
python=${PYTHON:-.venv/bin/python}
labeling_tokens=$($python -c "from medssr.pipelines.presets import preset_values; print(preset_values('study')['labeling']['max_tokens'])")

$medssr probe --out-dir "$out/probe" --max-tokens "$labeling_tokens"
types=$($python - "$out/probe/probe.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["types"]
going = [row["question_type"] for row in rows if row["goes_on"]]
print(json.dumps({kind: 1.0 for kind in going}, separators=(",", ":")) if going else "")
PY
)
params=()
if [ -n "$types" ]; then
  params=(--param "synthesis.question_types=$types")
  echo "question types that go on: $types"
else
  echo "no question type goes on (see $out/probe/probe.md): the study runs on every type"
fi
# the parts, in this order, each of the arms these options make (oracle-Nsteps and planted-P go with their kind)
parts=$($python - "${options[@]}" <<'PY'
import sys
from medssr.cli import build_parser
from medssr.configs import from_args
from medssr.study import StudyConfig

arms = list(from_args(StudyConfig, build_parser().parse_args(["study", *sys.argv[1:]])).plan.arms)
kinds = [lambda a: a in ("base", "chance"), lambda a: a == "rl-real", lambda a: a in ("self", "medssr"),
         lambda a: a == "oracle" or a.startswith("oracle-"), lambda a: a.startswith("planted-"), lambda a: "-seed" in a]
for kind in kinds:
    part = [arm for arm in arms if kind(arm)]
    if part:
        print(",".join(part))
PY
)
for arms in $parts; do
  echo "== part $arms $(date -u +%FT%TZ)"
  $medssr study --out-dir "$out" --arms "$arms" "${options[@]}" "${params[@]}"
done

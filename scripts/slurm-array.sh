#!/usr/bin/env bash
# Convert a model zoo with a Slurm job array: task K of N converts the models whose relative
# path hashes to shard K (modelshrink reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT
# itself), and writes its own report, $OUT/report-K.jsonl.
#
# Variables (pass them with --export or set them in the submitting shell; sbatch's default
# --export=ALL forwards the environment):
#   IN     input folder (or model file) to convert; required. Must be visible from every node.
#   OUT    output folder, shared by all tasks; required. The output tree mirrors IN.
#   MSH    path to the modelshrink binary (default: `modelshrink` on PATH)
#   OPTS   extra convert options, split on whitespace, e.g. OPTS="--fp16 --resume"
#          (--resume makes a re-submitted array skip the models a task already converted).
# Each task runs `--jobs $SLURM_CPUS_PER_TASK` when --cpus-per-task is set (an --jobs in OPTS
# wins, it comes later).
#
# The array must be 0-based and contiguous (--array=0-(N-1), a %throttle is fine): the shard of
# a task is its SLURM_ARRAY_TASK_ID, out of SLURM_ARRAY_TASK_COUNT shards. Options given to
# sbatch override the #SBATCH lines below, e.g. --array=0-15 for 16 shards.
#
#   JOBID=$(sbatch --parsable --export=ALL,IN=/data/zoo,OUT=/data/zoo-out,MSH=$PWD/build/modelshrink \
#           scripts/slurm-array.sh)
#
# Then merge the per-task reports into one, as a job that starts when every task succeeded
# (use afterany instead of afterok to merge after failures too; `report merge` exits 1 when a
# merged record has status "error"):
#
#   sbatch --dependency=afterok:$JOBID --job-name=modelshrink-merge \
#          --output=/data/zoo-out/merge-%j.out \
#          --wrap 'build/modelshrink report merge /data/zoo-out/report-*.jsonl -o /data/zoo-out/report.jsonl'
#
# or, once the array is done, on any machine that sees $OUT:
#
#   modelshrink report merge "$OUT"/report-*.jsonl -o "$OUT/report.jsonl"
#
#SBATCH --job-name=modelshrink
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --output=modelshrink-%A_%a.out
set -euo pipefail

die() {
    echo "slurm-array.sh: $*" >&2
    exit 2
}

[ -n "${IN:-}" ] || die "set IN to the input folder (sbatch --export=ALL,IN=...,OUT=...)"
[ -n "${OUT:-}" ] || die "set OUT to the output folder (sbatch --export=ALL,IN=...,OUT=...)"
MSH="${MSH:-modelshrink}"

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ] || [ -z "${SLURM_ARRAY_TASK_COUNT:-}" ]; then
    die "not a job array task (submit with sbatch --array=0-N-1)"
fi
# A task id is a shard only when the ids are exactly 0..COUNT-1.
if [ "${SLURM_ARRAY_TASK_MIN:-0}" != 0 ] ||
    [ "${SLURM_ARRAY_TASK_MAX:-$((SLURM_ARRAY_TASK_COUNT - 1))}" != "$((SLURM_ARRAY_TASK_COUNT - 1))" ]; then
    die "the array must be --array=0-$((SLURM_ARRAY_TASK_COUNT - 1)) (0-based, step 1);" \
        "got ids ${SLURM_ARRAY_TASK_MIN:-?}..${SLURM_ARRAY_TASK_MAX:-?} for $SLURM_ARRAY_TASK_COUNT tasks"
fi

opts=()
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then opts+=(--jobs "$SLURM_CPUS_PER_TASK"); fi
read -r -a extra <<<"${OPTS:-}" # split on whitespace, no glob expansion
opts+=("${extra[@]}")

mkdir -p "$OUT"
echo "slurm-array.sh: task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT on $(hostname):" \
    "$MSH convert --report $OUT/report-$SLURM_ARRAY_TASK_ID.jsonl ${opts[*]:+${opts[*]} }$IN -o $OUT"
# exec: the task's exit status is modelshrink's (0 all ok, 1 a model failed, 2 usage), and
# scancel's SIGTERM reaches it directly (it removes its temporary files and closes the report).
exec "$MSH" convert --report "$OUT/report-$SLURM_ARRAY_TASK_ID.jsonl" "${opts[@]}" "$IN" -o "$OUT"

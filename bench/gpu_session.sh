#!/usr/bin/env bash
# One GPU lease (about 10 minutes): train two demo-model candidates side by side while the device correctness checks
# run, then time the device alone. Results land in $OUT (8 files at most come back).
#   run(command="bash bench/gpu_session.sh", timeout_s=600)
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
TRAIN_S=${TRAIN_S:-360}                # each training run's seconds
END=${END_S:-585}                    # seconds after which nothing may still run (the call's limit is 600)
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
mkdir -p /tmp/runs && cp -r engine/demo/model /tmp/runs/resume
common="--device cuda --workers ${WORKERS:-6} --threads 1 --minutes $(python3 -c "print($TRAIN_S / 60)") --advance-on passkey --advance-at 0.9 --stats-every 4"
train_limit=$((TRAIN_S + 90))
(timeout $train_limit python3 -m engine.demo.train --out /tmp/runs/resume --resume $common \
    > $OUT/train_resume.log 2>&1; echo "exit $?" >> $OUT/train_resume.log) &
(timeout $train_limit python3 -m engine.demo.train --out /tmp/runs/scratch --batch-scale 2 $common \
    > $OUT/train_scratch.log 2>&1; echo "exit $?" >> $OUT/train_scratch.log) &
timeout 300 python3 -m bench.gpu_check --sections kernels,policies,host_syncs --json $OUT/gpu_check_shared.json \
    > $OUT/gpu_check_shared.log 2>&1
echo "shared checks done at ${SECONDS}s"
python3 -c "from bench.common import checkpoint; checkpoint('tinyllama')" && echo "1.1B checkpoint at ${SECONDS}s"
wait
echo "training done at ${SECONDS}s"
for run in resume scratch; do
    tar czf $OUT/$run.tgz --exclude=train_state.pt -C /tmp/runs $run
done
timeout $((END - SECONDS)) python3 -m bench.gpu_check --sections kernels,decode,decode_1b \
    --json $OUT/gpu_check_alone.json > $OUT/gpu_check_alone.log 2>&1
echo "finished at ${SECONDS}s"
tail -c 1500 $OUT/train_resume.log; echo; tail -c 1500 $OUT/train_scratch.log; echo
grep -v "it/s\]$" $OUT/gpu_check_shared.log | tail -c 3000; tail -c 3000 $OUT/gpu_check_alone.log

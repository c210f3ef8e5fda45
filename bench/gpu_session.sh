#!/usr/bin/env bash
# One GPU lease (about 10 minutes): continue training the bundled demo model while the device correctness checks
# run, then time the device alone. Results land in $OUT (8 files at most come back; each ≤ 16 MiB).
#   run(command="bash bench/gpu_session.sh", timeout_s=600)
# Session 4 ran an earlier form of it (two candidates side by side: bench/RESULTS.md).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
TRAIN_S=${TRAIN_S:-390}              # the training run's seconds
END=${END_S:-585}                    # seconds after which nothing may still run (the call's limit is 600)
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
mkdir -p /tmp/runs && cp -r engine/demo/model /tmp/runs/demo
(timeout $((TRAIN_S + 90)) python3 -m engine.demo.train --out /tmp/runs/demo --resume --batch-scale 2 \
    --device cuda --workers ${WORKERS:-12} --threads 1 --minutes $(python3 -c "print($TRAIN_S / 60)") \
    --advance-on passkey --advance-at 0.9 --stats-every 4 > $OUT/train.log 2>&1; echo "exit $?" >> $OUT/train.log) &
timeout 300 python3 -m bench.gpu_check --sections kernels,policies,host_syncs --json $OUT/gpu_check_shared.json \
    > $OUT/gpu_check_shared.log 2>&1
echo "shared checks done at ${SECONDS}s"
python3 -c "from bench.common import checkpoint; checkpoint('tinyllama')" && echo "1.1B checkpoint at ${SECONDS}s"
wait
echo "training done at ${SECONDS}s"
tar czf $OUT/demo.tgz --exclude=train_state.pt -C /tmp/runs demo
timeout $((END - SECONDS)) python3 -m bench.gpu_check --sections kernels,profile,decode,decode_1b \
    --json $OUT/gpu_check_alone.json > $OUT/gpu_check_alone.log 2>&1
echo "finished at ${SECONDS}s"
tail -c 1500 $OUT/train.log; echo
grep -v "it/s\]$" $OUT/gpu_check_shared.log | tail -c 3000; grep -v "^profile" $OUT/gpu_check_alone.log | tail -c 3000

"""The worker scores on `inference_threads` threads: FAISS and NumPy's BLAS are held to it too
(their defaults take every core). In a subprocess: the limits are process-wide."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import json
import faiss
from threadpoolctl import threadpool_info
from stream_app.worker import limit_threads

limit_threads(1)
blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
print(json.dumps([faiss.omp_get_max_threads(), blas]))
"""


def test_limit_threads_holds_faiss_and_blas_to_one_thread():
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}  # as if unset on 2 cores
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    faiss_threads, blas = json.loads(out.stdout.strip().splitlines()[-1])
    assert faiss_threads == 1
    assert blas and set(blas) == {1}, blas  # NumPy's OpenBLAS and FAISS's own

"""Root pytest configuration, shared by tests/ and the nbval run over notebooks/.

Notebooks write their runs, reports and metrics.json under $IMGSIM_OUTPUT_DIR: point it at a
temporary folder so a test run leaves nothing in the working tree. ``tests/notebook_checks.py``
checks what nbval's run of each notebook cell showed (figures render, no library noise).
"""

import os
import sys
import tempfile

os.environ.setdefault("IMGSIM_OUTPUT_DIR", tempfile.mkdtemp(prefix="imgsim-test-output-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenMP waits sleep, as the imgsim command has them (imgsim.cli.set_thread_waits): on shared CI cores
# spinning FAISS threads made the IVF-PQ tests 3x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests"))
pytest_plugins = ["notebook_checks"]

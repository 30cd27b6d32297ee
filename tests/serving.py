"""A real uvicorn server on a free local port, in a thread, for tests that need real HTTP; and
a served model calibrated for a while, with an abstention level."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from geoconcept_cli.inference.abstention import Abstention
from geoconcept_cli.inference.calibration_record import Calibration


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port the OS picks) and yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def abstaining_below(predictor, level: float) -> Iterator[Calibration]:
    """``predictor`` calibrated (temperature 1, a 90% region within 25 km) with an abstention
    level ``level``, as calibrate --target-accuracy would store it, until the block ends."""
    cal = Calibration(temperature=1.0, alpha=0.1, radius_km=25.0, threshold=0.9, photos=500,
                      nll_before=1.0, nll_after=1.0, model="", gallery="", clip={},
                      abstention=Abstention(level=level, target=0.8, delta=0.1, photos=250,
                                            kept=0.4, accuracy=0.85))  # fmt: skip
    before, predictor.calibration = predictor.calibration, cal
    try:
        yield cal
    finally:
        predictor.calibration = before

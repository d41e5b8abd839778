"""Benchmarks as a library: the timing core (:mod:`.timing`), the ``sld bench`` grid (:mod:`.grid`),
the naive reference formulation every fast path is timed against (:mod:`.reference`), the
training-step bench (:mod:`.step`), the streamed-loader bench (:mod:`.loader`, images/s per worker),
the device-resident CIFAR batches of one checkout against another (:mod:`.resident`),
the grid-throughput bench (:mod:`.jobs`, runs per hour with ``--jobs N``) and where a fused CPU
call's time goes (:mod:`.kernel_calls`). ``sld bench`` and the
pytest-benchmark suites in ``benchmarks/`` import it; it imports neither."""
